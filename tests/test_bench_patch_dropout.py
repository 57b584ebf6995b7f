"""The patch dropout benchmark: what one timed step does, and its smoke run."""
import torch

from bench import bench_patch_dropout
from multimodal.presets import tiny


def test_a_step_trains_the_tower_on_the_kept_tokens_only():
    bench = bench_patch_dropout.ImageTowerStep(tiny(modalities=("image",)).image, batch_size=4, embed_dim=16)
    assert [bench.tokens_per_sample(rate) for rate in bench_patch_dropout.RATES] == [1 + 16, 1 + 8, 1 + 4]
    before = {name: p.detach().clone() for name, p in bench.tower.named_parameters()}
    bench.runner(0.75)()
    assert bench.tower.training and bench.tower.patch_dropout.rate == 0.75
    assert all(not torch.equal(before[name], p) for name, p in bench.tower.named_parameters())
    assert all(p.grad is None for p in bench.tower.parameters())  # cleared for the next timed step


def test_quick_run_reports_every_rate(capsys):
    summary = bench_patch_dropout.main(["--quick"])
    assert summary.startswith("patch_dropout: image-tower fp32 train step")
    assert "tiny 0.5 x" in summary and "tiny 0.75 x" in summary
    printed = capsys.readouterr().out
    assert "threads; native bf16" in printed  # the machine line, with the CPU model
    assert printed.count(" tokens ") == 3
