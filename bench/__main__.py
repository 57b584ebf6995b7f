"""``python -m bench [NAME ...] [--quick] [--rounds N]``: runs the benchmarks in turn and prints each one's summary line.

Every benchmark is the module ``bench.bench_<NAME>`` and runs in a process of its own,
so one benchmark's allocator state, thread pools and caches cannot colour the next
one's timings, and a failure in one does not stop the others. A benchmark's summary is
the last line it prints; all of them are repeated together at the end.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from collections.abc import Sequence

BENCHMARKS = (
    "train_step", "learning", "patch_dropout", "audio", "resample", "inference", "attention", "data", "augment", "presets",
    "search", "threads", "finetune", "remote",
)


def available() -> list[str]:
    """The benchmarks whose module exists (``bench_data`` is optional)."""
    return [name for name in BENCHMARKS if importlib.util.find_spec(f"bench.bench_{name}") is not None]


def run_one(name: str, extra: Sequence[str]) -> tuple[str, bool]:
    """Runs ``bench.bench_<name>``, echoing its output; returns (summary line, succeeded)."""
    command = [sys.executable, "-m", f"bench.bench_{name}", *extra]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    last_line = ""
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last_line = line.strip()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        return f"{name}: FAILED with exit code {process.returncode} after {seconds:.0f} s", False
    return f"{last_line} [{seconds:.0f} s]", True


def main(argv: Sequence[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {names})")
    parser.add_argument("--quick", action="store_true", help="each benchmark's smallest configuration, one round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timed rounds per comparison")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; available: {names}")
    extra = (["--quick"] if args.quick else []) + (["--rounds", str(args.rounds)] if args.rounds else [])
    results = [run_one(name, extra) for name in args.names or names]
    print("\n=== summary")
    for summary, _ in results:
        print(summary)
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
