"""The patch dropout benchmark: what one timed step does, and its smoke run."""
import re
import statistics

import torch

from bench import bench_patch_dropout
from bench import common as bench_common
from multimodal.presets import tiny


def test_a_step_trains_the_tower_on_the_kept_tokens_only():
    bench = bench_patch_dropout.ImageTowerStep(tiny(modalities=("image",)).image, batch_size=4, embed_dim=16)
    assert [bench.tokens_per_sample(rate) for rate in bench_patch_dropout.RATES] == [1 + 16, 1 + 8, 1 + 4]
    before = {name: p.detach().clone() for name, p in bench.tower.named_parameters()}
    bench.runner(0.75)()
    assert bench.tower.training and bench.tower.patch_dropout.rate == 0.75
    assert all(not torch.equal(before[name], p) for name, p in bench.tower.named_parameters())
    assert all(p.grad is None for p in bench.tower.parameters())  # cleared for the next timed step


# Seconds the fake clock gives each timed step, per rate, one per round. Rounds alternate
# their order (0, 0.5, 0.75, then reversed), so the clock hands them out in call order.
FAKE_SECONDS = {0.0: [1.0, 2.0, 3.0], 0.5: [0.4, 1.6, 1.0], 0.75: [0.2, 0.8, 1.0]}


def test_quick_run_reports_the_median_per_round_speed_up(monkeypatch, capsys):
    """Figures from a known clock: the speed-up is the median of per-round ratios (2.50 and 3.00),
    not the ratio of medians (2.00 and 2.50); throughput is the batch over the median time."""
    order = [[0.0, 0.5, 0.75], [0.75, 0.5, 0.0], [0.0, 0.5, 0.75]]
    seconds = iter(FAKE_SECONDS[rate][index] for index, rates in enumerate(order) for rate in rates)

    def fake_time_call(step):
        step()  # every timed step still runs
        return next(seconds)

    monkeypatch.setattr(bench_common, "time_call", fake_time_call)
    summary = bench_patch_dropout.main(["--quick", "--rounds", "3"])
    assert next(seconds, None) is None  # every figure came from the fake clock
    assert summary.endswith("median per-round speed-up over 0: tiny 0.5 x2.50; tiny 0.75 x3.00")

    row = r"patch_dropout (\S+) +median +([\d.]+) ms.*? ([\d.]+) samples/s.*? (\d+) tokens +x([\d.]+) vs 0"
    rows = re.findall(row, capsys.readouterr().out)
    batch_size = bench_patch_dropout.CONFIGS["tiny"][1]
    expected = []
    for rate, times in FAKE_SECONDS.items():
        median = statistics.median(times)
        speed_up = statistics.median(base / own for base, own in zip(FAKE_SECONDS[0.0], times))
        expected.append((f"{rate:g}", f"{median * 1e3:.1f}", f"{batch_size / median:.1f}", str(1 + int(16 * (1 - rate))),
                         f"{speed_up:.2f}"))
    assert rows == expected
