"""CUDA: the fused attention path in bf16, the training step and the loader's normalisation on the GPU."""
import pytest
import torch

from multimodal.encoders.attention import scaled_dot_product
from multimodal.model import MultimodalModel
from multimodal.presets import tiny
from tests.test_model import random_batch

pytestmark = pytest.mark.gpu


def test_fused_and_explicit_attention_agree_on_cuda_in_bf16():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    padding = torch.zeros(2, 300, dtype=torch.bool, device="cuda")
    padding[1, 250:] = True
    fused = scaled_dot_product(q, k, v, is_causal=True, padding_mask=padding, backend="fused")
    explicit = scaled_dot_product(q.float(), k.float(), v.float(), is_causal=True, padding_mask=padding,
                                  backend="explicit")
    assert (fused.float() - explicit).abs().max() < 3e-2


def test_training_step_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = MultimodalModel(tiny())
    batch = random_batch(model.config, 4)
    cpu_loss, _ = model.loss(model(batch))
    gpu_model = model.to("cuda")
    gpu_loss, _ = gpu_model.loss(gpu_model({k: v.cuda() for k, v in batch.items()}))
    gpu_loss.backward()
    assert abs(gpu_loss.item() - cpu_loss.item()) < 1e-3
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu_model.parameters() if p.requires_grad)


def test_loader_moves_uint8_images_to_cuda_and_normalises_them_there(tmp_path):
    from multimodal.data.source_spec import SourceSpec
    from tests.test_pipeline import loader, write_img2dataset

    write_img2dataset(tmp_path, num_shards=1)
    source = SourceSpec(str(tmp_path / "img-00000.tar"), ["image", "text"])
    on_cpu = next(iter(loader([source], train=False)))
    on_gpu = next(iter(loader([source], train=False, device="cuda")))
    assert on_gpu["image"].device.type == "cuda" and on_gpu["image"].dtype == torch.float32
    assert on_gpu["text"].device.type == "cuda"
    torch.testing.assert_close(on_gpu["image"].cpu(), on_cpu["image"], rtol=0, atol=1e-5)
