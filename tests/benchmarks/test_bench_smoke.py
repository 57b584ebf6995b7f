"""The benchmarks' pieces that decide what they compare: timing order, weight import, the bf16 recipe, the runner."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import bench_attention, bench_train_step
from bench.common import Comparison, alternate

ROOT = Path(__file__).resolve().parents[2]


def test_alternate_reverses_the_order_every_other_round():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    comparison = alternate(runners, rounds=3, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["c", "b", "a"] + ["a", "b", "c"]
    assert all(len(times) == 3 for times in comparison.times.values())


def test_ratio_is_the_median_of_per_round_ratios():
    comparison = Comparison({"slow": [4.0, 10.0, 6.0], "fast": [2.0, 2.0, 3.0]})
    assert comparison.ratios("slow", "fast") == [2.0, 5.0, 2.0]
    assert comparison.ratio("slow", "fast") == 2.0
    assert comparison.spread("fast") == pytest.approx(0.5)


def test_the_inference_bench_compares_open_clip_with_its_conversion():
    pytest.importorskip("open_clip")
    from bench.bench_inference import converted_pair

    config = bench_train_step.CONFIGS["tiny"]
    torch.manual_seed(0)
    theirs, ours = converted_pair(config)
    batch = bench_train_step.make_batch(config)
    images, text = batch["image"], batch["text"]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode("image", images), theirs.encode_image(images, normalize=True))
        torch.testing.assert_close(ours.encode("text", text), theirs.encode_text(text, normalize=True))


def test_bf16_master_weights_step_like_fp32_adamw_on_the_masters():
    torch.manual_seed(0)
    model = bench_train_step.our_model(bench_train_step.CONFIGS["tiny"])
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = bench_train_step.Bf16MasterWeights(model, lr=1e-3, weight_decay=0.1)
    assert model.encoders["image"].patch_embed.proj.weight.dtype == torch.bfloat16
    assert model.logit_scales["text_image"].dtype == torch.float32  # scalars stay fp32
    batch = bench_train_step.make_batch(bench_train_step.CONFIGS["tiny"])
    loss, _ = model.loss(model({"image": batch["image"].bfloat16(), "text": batch["text"]}))
    loss.backward()
    grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
    trainer.step()

    reference = {name: value.clone().requires_grad_() for name, value in initial.items() if name in grads}
    for name, value in reference.items():
        value.grad = grads[name]
    optimizer = torch.optim.AdamW(reference.values(), lr=1e-3, weight_decay=0.1)
    optimizer.step()
    masters = dict(zip([n for n, p in model.named_parameters() if p.ndim > 0], trainer.masters))
    for name, expected in reference.items():
        parameter = dict(model.named_parameters())[name]
        if name in masters:
            torch.testing.assert_close(masters[name], expected.detach(), rtol=1e-5, atol=1e-6)
            # refreshed from the master exactly (the master itself matches the reference only to float rounding,
            # which may cross a bf16 rounding boundary)
            assert torch.equal(parameter, masters[name].to(torch.bfloat16))
        else:
            torch.testing.assert_close(parameter, expected.detach(), rtol=1e-5, atol=1e-6)
        assert parameter.grad is None


def test_updates_below_bf16_resolution_accumulate_in_the_masters():
    layer = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    trainer = bench_train_step.Bf16MasterWeights(layer, lr=5e-4, weight_decay=0.0)
    for _ in range(40):  # each step moves the weights by ~lr = 5e-4, below half of bf16's 2^-8 spacing under 1.0
        layer(torch.ones(1, 4, dtype=torch.bfloat16)).sum().backward()
        trainer.step()
    assert torch.allclose(trainer.masters[0], torch.full((4, 4), 1.0 - 40 * 5e-4), atol=1e-4)
    assert torch.all(layer.weight < 1.0)  # the bf16 copy moved too, because the masters did


def test_attention_runner_times_the_same_computation_on_every_backend():
    outputs = {backend: bench_attention.attention_runner(17, torch.float32, True, backend, causal=True, tokens=34)()
               for backend in ("fused", "explicit", "auto")}
    reference_out, reference_grad = outputs["explicit"]
    assert reference_grad is not None and reference_out.shape == (2, bench_attention.HEADS, 17, bench_attention.HEAD_DIM)
    for backend, (out, grad) in outputs.items():
        torch.testing.assert_close(out, reference_out, atol=1e-5, rtol=1e-5, msg=backend)
        torch.testing.assert_close(grad, reference_grad, atol=1e-5, rtol=1e-5, msg=backend)


def test_unknown_benchmark_is_named():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "no_such_benchmark"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "unknown benchmarks ['no_such_benchmark']" in result.stderr


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_on_the_cpu():
    """``make bench-gpu`` is only ever run on a lent GPU machine: its quick CPU run keeps it from rotting."""
    pytest.importorskip("open_clip")
    done = subprocess.run([sys.executable, "-m", "bench.bench_gpu", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("gpu: train step: ours pd0.0") and "embeddings: images x" in summary
    assert "loader: 64 images of 224 px to cpu" in summary
