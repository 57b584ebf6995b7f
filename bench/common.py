"""Timing helpers shared by the benchmarks: warm-up, alternating runs, medians and ratios, matmul peak, FLOPs.

The machine a benchmark runs on may be shared, so every comparison runs the
implementations alternately, one run each per round with the order reversed every
other round: a burst of someone else's load then slows both sides instead of one.
Each figure is a median over rounds; a comparison is the median of the per-round
ratios, and the spread of those ratios says how noisy the run was. The fastest run
(noise only ever adds time) is printed beside the median.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from multimodal.precision import cpu_has_native_bf16


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """The options every benchmark takes: ``--quick`` (smallest configuration, fewest rounds) and ``--rounds``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smallest configuration and fewest rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timed rounds per comparison")
    return parser.parse_args(argv)


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Comparison:
    """Wall-clock seconds of each implementation, one entry per round, rounds aligned across names."""

    times: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def best(self, name: str) -> float:
        return min(self.times[name])

    def ratios(self, slower: str, faster: str) -> list[float]:
        """Per-round speed-up of ``faster`` over ``slower``: time(slower) / time(faster)."""
        return [s / f for s, f in zip(self.times[slower], self.times[faster])]

    def ratio(self, slower: str, faster: str) -> float:
        """Median per-round speed-up of ``faster`` over ``slower`` (> 1: ``faster`` is faster)."""
        return statistics.median(self.ratios(slower, faster))

    def spread(self, name: str) -> float:
        """(slowest - fastest) / median over rounds: 0 on a quiet machine."""
        runs = self.times[name]
        return (max(runs) - min(runs)) / statistics.median(runs)

    def describe(self, name: str, items: float | None = None, unit: str = "items/s") -> str:
        """One line: median and fastest time, throughput when ``items`` per run is given, spread."""
        median, best = self.median(name), self.best(name)
        line = f"{name:<28} median {median * 1e3:9.1f} ms  best {best * 1e3:9.1f} ms"
        if items is not None:
            line += f"  {items / median:9.1f} {unit}"
        return line + f"  spread {self.spread(name):5.0%}"


def alternate(runners: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Comparison:
    """Times each runner once per round, alternating the order; ``warmup`` untimed calls each first."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(time_call(runners[name]))
    return Comparison(times)


def matmul_peak_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """Median GFLOP/s of a square (size x size) @ (size x size) matmul in ``dtype`` on this CPU."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    times = [time_call(lambda: torch.mm(a, b, out=out)) for _ in range(repeats)]
    return 2 * size**3 / statistics.median(times) / 1e9


def matmul_peaks(sizes: Sequence[int] = (1024, 2048), repeats: int = 5) -> dict[torch.dtype, float]:
    """The best median matmul throughput over ``sizes``, GFLOP/s, for fp32 and (where supported) bf16."""
    peaks = {torch.float32: max(matmul_peak_gflops(torch.float32, s, repeats) for s in sizes)}
    if bf16_supported():
        peaks[torch.bfloat16] = max(matmul_peak_gflops(torch.bfloat16, s, repeats) for s in sizes)
    return peaks


def bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively: the same check training and the inference API make."""
    return cpu_has_native_bf16()


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul and convolution FLOPs (forward and backward) of one call, as torch's FLOP counter counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def machine_summary() -> str:
    """CPU model, threads torch uses, bf16 support, torch version and the current load average."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{model}; torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"native bf16: {'yes' if bf16_supported() else 'no'}; load average {load}"
    )


def noise_note(comparison: Comparison) -> str:
    """How noisy a comparison was: the largest spread of any implementation."""
    worst = max(comparison.spread(name) for name in comparison.times)
    return f"largest spread across rounds {worst:.0%}" + (" (noisy: the machine was busy)" if worst > 0.3 else "")


@contextlib.contextmanager
def busy_neighbours(count: int) -> Iterator[None]:
    """``count`` single-core busy loops, each a process of its own, for the body's duration.

    They stand for what shares a machine with training: another job, a browser tab,
    a test suite. Each runs at normal priority and never sleeps.
    """
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()
