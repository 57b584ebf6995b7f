"""How many threads a training process computes with, from the cores it actually gets.

torch's default is one intra-op thread per core of the machine. On a machine shared
with other work that is the wrong count three ways: the process may be allowed fewer
cores (``taskset``, a container's CPU quota, a cluster's cgroup); the loader's worker
processes need cores of their own; and a neighbour busy on a core stalls every
parallel region at its barrier, since each region waits for its slowest thread (on 2
cores, one busy single-core neighbour made the demo's 150 steps take 2.8x their time
alone on two threads, and 1.4x on one).

:func:`plan_threads` counts the cores this process may use (affinity, then the cgroup
quota, then shared among the processes of this node), gives the loader's workers
theirs, leaves out the cores other work kept busy while the run started, and computes
on the rest (at least one thread). ``threads`` in the training config or
``OMP_NUM_THREADS`` overrides the choice. The trainer logs the plan at start-up and
records it in the run's ``config.json``.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Cores other work keeps busy are counted over this long at start-up (before the loader starts).
NEIGHBOUR_SAMPLE_SECONDS = 0.25
# A core counts as taken by other work when it was at least this busy over the sample.
BUSY_CORE = 0.5


@dataclass
class ThreadPlan:
    """What a process computes with, and why.

    ``cores``: cores this process may use; ``limited_by``: what set that count
    (``"affinity"``, ``"cgroup quota"``, ``"N processes on this node"``);
    ``neighbour_cores``: cores other work kept busy at start-up; ``workers``: the
    loader's worker processes; ``threads``: torch's intra-op threads;
    ``source``: ``"auto"``, ``"threads setting"`` or ``"OMP_NUM_THREADS"``;
    ``worker_nice``: the niceness added to the workers (see :func:`choose_worker_nice`).
    """

    cores: int
    limited_by: str
    neighbour_cores: int
    workers: int
    threads: int
    source: str = "auto"
    worker_nice: int = 0

    def describe(self) -> str:
        neighbours = f", {self.neighbour_cores} busy with other work" if self.neighbour_cores else ""
        if self.source != "auto":
            return f"{self.threads} compute thread(s) ({self.source}); {self.cores} core(s) usable ({self.limited_by})" \
                   f"{neighbours}, {self.workers} loader worker(s)"
        nice = f" at niceness {self.worker_nice}" if self.worker_nice else ""
        return (f"{self.threads} compute thread(s): {self.cores} core(s) usable ({self.limited_by}){neighbours}, "
                f"{self.workers} for the loader's worker(s){nice}; override with --threads N")


def affinity_cores() -> int:
    """Cores the scheduler may run this process on (``taskset``, ``numactl``, a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (``cpu.max``, or v1's cfs quota), None when unlimited."""
    for quota_file, period_file in ((root / "cpu.max", None),
                                    (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")):
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            return int(quota) / int(period)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def usable_cores(local_processes: int = 1, machine: Machine | None = None) -> tuple[int, str]:
    """(cores this process may use, what limits them): affinity, the cgroup quota, shared by this node's processes.

    ``machine``: where the affinity and the quota are read (None: this machine).
    """
    machine = machine if machine is not None else Machine()
    cores, limited_by = machine.affinity_cores(), "affinity"
    quota = machine.cgroup_cpu_limit()
    if quota is not None and math.floor(quota) < cores:
        # A quota of 1.5 cores throttles a second busy thread half of every period: count whole cores.
        cores, limited_by = max(1, math.floor(quota)), "cgroup quota"
    if local_processes > 1:
        cores, limited_by = max(1, cores // local_processes), f"{local_processes} processes on this node"
    return cores, limited_by


def _cpu_times(cpus: set[int] | None, stat: Path = Path("/proc/stat")) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over ``cpus`` (None: the machine), or None where /proc/stat is not there."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or (cpus is None) != (name == "cpu"):
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [float(value) for value in fields[:8]]
        idle = values[3] + values[4]  # idle + iowait
        busy, total = busy + sum(values) - idle, total + sum(values)
    return (busy, total) if total > 0 else None


def busy_cores_elsewhere(seconds: float = NEIGHBOUR_SAMPLE_SECONDS, stat: Path = Path("/proc/stat")) -> float:
    """Cores of this process's affinity kept busy by other processes over ``seconds`` (this one sleeps meanwhile).

    0 where the machine does not say (no /proc/stat).
    """
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    start, own_start = _cpu_times(cpus, stat), time.process_time()
    if start is None:
        return 0.0
    time.sleep(seconds)
    end, own_end = _cpu_times(cpus, stat), time.process_time()
    if end is None or end[1] <= start[1]:
        return 0.0
    cores = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    busy = (end[0] - start[0]) / (end[1] - start[1]) * cores  # ours included
    return max(0.0, busy - (own_end - own_start) / seconds)


@dataclass(frozen=True)
class Machine:
    """What :func:`plan_threads` reads of the machine it runs on; each default reads this one.

    A caller gives readings of its own to plan for another machine (a test, a quota it
    knows of) without touching this module.
    """

    affinity_cores: Callable[[], int] = affinity_cores
    cgroup_cpu_limit: Callable[[], float | None] = cgroup_cpu_limit
    busy_cores_elsewhere: Callable[[], float] = busy_cores_elsewhere


def choose_threads(cores: int, workers: int, neighbour_cores: int) -> int:
    """Compute threads for ``cores`` usable cores, ``workers`` loader processes and cores taken by other work.

    The workers get a core each while cores remain; on 2 cores with 2 workers the
    trainer computes on one thread and the workers share the other core, which is
    also where a neighbour lands without stalling a parallel region.
    """
    return max(1, cores - workers - neighbour_cores)


def choose_workers(cores: int, on_gpu: bool) -> int:
    """Loader worker processes for ``cores`` usable cores.

    On a CPU the trainer and the workers share the cores: two workers (fewer on fewer
    cores) keep the demo's loader ahead of its trainer (``data_wait`` near 0). With a
    GPU computing, the CPU's cores are the loader's: half of them, 2 to 8.
    """
    if on_gpu:
        return max(2, min(8, cores // 2))
    return min(2, cores)


def choose_worker_nice(threads: int, workers: int, cores: int) -> int:
    """The niceness added to the loader's workers: 19 where they would stall the trainer's parallel regions, else 0.

    Several compute threads sharing their cores with the workers wait at every barrier
    for a thread a worker displaced; at the lowest priority the workers take only what
    the trainer leaves. One compute thread has no barrier to stall, and there the
    lowest priority starves the workers as soon as other work takes a core (the demo's
    150 steps beside a busy single-core process: 29 s with niceness 19, 22 s with 0, 17 s alone).
    """
    return 19 if threads > 1 and threads + workers > cores else 0


def plan_threads(setting: int | None, workers: int | None, *, on_gpu: bool = False, local_processes: int = 1,
                 measure_neighbours: bool = True, machine: Machine | None = None) -> ThreadPlan:
    """The plan for this process: ``setting`` (the run's ``threads``), else ``OMP_NUM_THREADS``, else chosen.

    ``workers``: the loader's worker processes as configured (None: chosen by :func:`choose_workers`);
    ``machine``: where the cores and their load are read (None: this machine).
    """
    machine = machine if machine is not None else Machine()
    cores, limited_by = usable_cores(local_processes, machine)
    if workers is None:
        workers = choose_workers(cores, on_gpu)
    from_environment = os.environ.get("OMP_NUM_THREADS", "").strip()
    if setting is not None:
        threads, source, neighbours = setting, "threads setting", 0
    elif from_environment.isdigit() and int(from_environment) > 0:
        threads, source, neighbours = int(from_environment), "OMP_NUM_THREADS", 0
    else:
        neighbours = 0
        # Measured only where affinity alone limits the cores: with several processes on the node the
        # busy cores at start-up are the siblings starting too (their share is already left out), and
        # under a cgroup quota the busy cores are other containers', which do not shrink the quota.
        if measure_neighbours and cores > 1 and limited_by == "affinity":
            # Only whole cores kept busy count: a short burst elsewhere should not cost a thread for the whole run.
            neighbours = min(cores - 1, int(machine.busy_cores_elsewhere() + (1 - BUSY_CORE)))
        threads, source = choose_threads(cores, workers, neighbours), "auto"
    return ThreadPlan(cores, limited_by, neighbours, workers, threads, source,
                      choose_worker_nice(threads, workers, cores))


def apply_plan(plan: ThreadPlan) -> None:
    """Sets torch's intra-op threads to the plan's."""
    import torch

    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)


__all__ = ["Machine", "ThreadPlan", "affinity_cores", "apply_plan", "busy_cores_elsewhere", "cgroup_cpu_limit",
           "choose_threads", "choose_worker_nice", "choose_workers", "plan_threads", "usable_cores"]
