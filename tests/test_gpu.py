"""CUDA: the fused attention path in bf16, the training step and the loader's normalisation on the GPU."""
import pytest
import torch

from multimodal.encoders.attention import scaled_dot_product
from multimodal.model import MultimodalModel
from multimodal.presets import tiny
from tests.model.test_model import random_batch

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
    """The same fp32 step on CUDA: equal loss, gradients and updated weights (TF32 off, as fp32 means)."""
    import copy

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cpu_model = MultimodalModel(tiny())
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    batch = random_batch(cpu_model.config, 4)
    results = {}
    for device, model in (("cpu", cpu_model), ("cuda", gpu_model)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss, _ = model.loss(model({k: v.to(device) for k, v in batch.items()}))
        loss.backward()
        gradients = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        results[device] = (loss.item(), gradients, {n: p.detach().cpu() for n, p in model.named_parameters()})
    (cpu_loss, cpu_grads, cpu_after), (gpu_loss, gpu_grads, gpu_after) = results["cpu"], results["cuda"]
    assert abs(gpu_loss - cpu_loss) < 1e-4
    assert set(gpu_grads) == set(cpu_grads) and len(cpu_grads) > 50
    for name, expected in cpu_grads.items():
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        torch.testing.assert_close(gpu_grads[name], expected, rtol=1e-3, atol=1e-4 * scale + 1e-9, msg=name)
    # Adam's first step is about lr x sign(gradient) wherever the gradient is not tiny.
    for name, expected in cpu_after.items():
        torch.testing.assert_close(gpu_after[name], expected, rtol=0, atol=2.5e-3, msg=name)


def test_loader_moves_uint8_images_to_cuda_and_normalises_them_there(tmp_path):
    from multimodal.data.pipeline.source_spec import SourceSpec
    from tests.data.pipeline.test_pipeline import loader, write_img2dataset

    write_img2dataset(tmp_path, num_shards=1)
    source = SourceSpec(str(tmp_path / "img-00000.tar"), ["image", "text"])
    on_cpu = next(iter(loader([source], train=False)))
    on_gpu = next(iter(loader([source], train=False, device="cuda")))
    assert on_gpu["image"].device.type == "cuda" and on_gpu["image"].dtype == torch.float32
    assert on_gpu["text"].device.type == "cuda"
    torch.testing.assert_close(on_gpu["image"].cpu(), on_cpu["image"], rtol=0, atol=1e-5)


def test_linear_probe_on_cuda_matches_cpu():
    """Embeddings on the GPU (as training evaluates them): the same weight decay, probe and metrics as on the CPU."""
    from multimodal.eval import evaluate_linear_probe

    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(4, 16, generator=generator, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(30)
    features = centres[labels] + torch.randn(120, 16, generator=generator, dtype=torch.float64)
    train, test = slice(0, 120, 2), slice(1, 120, 2)
    results = {device: evaluate_linear_probe(features[train].to(device), labels[train].to(device),
                                             features[test].to(device), labels[test].to(device), fewshot_k=10, seed=1)
               for device in ("cpu", "cuda")}
    assert results["cuda"].probe.weight.device.type == "cuda"
    assert results["cuda"].probe.weight_decay == results["cpu"].probe.weight_decay
    assert results["cuda"].metrics == results["cpu"].metrics
    torch.testing.assert_close(results["cuda"].probe.weight.cpu(), results["cpu"].probe.weight, atol=1e-6, rtol=0)
