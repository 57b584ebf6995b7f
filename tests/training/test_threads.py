"""The trainer's thread count: from the cores the process may use (affinity, cgroup quota, processes per node),
less the loader's workers and the cores other work keeps busy; a setting or OMP_NUM_THREADS overrides."""
import json
import os
import time
from pathlib import Path

import pytest

from multimodal.training import threads


def write_cgroup_v2(root, text):
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def test_cgroup_quota_v2_and_v1(tmp_path):
    assert threads.cgroup_cpu_limit(write_cgroup_v2(tmp_path / "v2", "150000 100000\n")) == 1.5
    assert threads.cgroup_cpu_limit(write_cgroup_v2(tmp_path / "unlimited", "max 100000\n")) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "v1") == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path / "v1") is None
    assert threads.cgroup_cpu_limit(tmp_path / "nothing") is None


def machine(cores: int, cgroup_root: Path | None = None, busy: float | None = None, quota: float | None = None):
    """A machine of ``cores`` cores, its quota read under ``cgroup_root`` or given.

    Reading its neighbours' load fails the test unless ``busy`` gives it.
    """
    def busy_cores_elsewhere() -> float:
        if busy is None:
            pytest.fail("the neighbours' load was measured")
        return busy

    return threads.Machine(
        affinity_cores=lambda: cores,
        cgroup_cpu_limit=(lambda: threads.cgroup_cpu_limit(cgroup_root)) if cgroup_root is not None else lambda: quota,
        busy_cores_elsewhere=busy_cores_elsewhere,
    )


def test_usable_cores_take_the_tightest_of_affinity_quota_and_processes_per_node(tmp_path):
    assert threads.usable_cores(1, machine(8, tmp_path / "none")) == (8, "affinity")
    # A quota of 2.5 cores: two whole cores (a third busy thread would be throttled every period).
    quota = write_cgroup_v2(tmp_path / "quota", "250000 100000\n")
    assert threads.usable_cores(1, machine(8, quota)) == (2, "cgroup quota")
    assert threads.usable_cores(1, machine(8, write_cgroup_v2(tmp_path / "big", "1600000 100000\n"))) == (8, "affinity")
    assert threads.usable_cores(1, machine(8, write_cgroup_v2(tmp_path / "tiny", "50000 100000\n"))) == (
        1, "cgroup quota")
    # Four processes of one node share its eight cores.
    assert threads.usable_cores(4, machine(8, tmp_path / "none")) == (2, "4 processes on this node")


@pytest.mark.parametrize("cores, workers, neighbours, expected", [
    (2, 2, 0, 1),   # the demo on 2 cores: one compute thread, the workers share the other core
    (2, 0, 0, 2),
    (2, 2, 1, 1),   # never fewer than one
    (16, 2, 0, 14),
    (16, 2, 3, 11),  # three cores busy with other work are left to it
    (1, 1, 0, 1),
])
def test_choose_threads(cores, workers, neighbours, expected):
    assert threads.choose_threads(cores, workers, neighbours) == expected


def test_choose_workers():
    assert [threads.choose_workers(cores, on_gpu=False) for cores in (1, 2, 16)] == [1, 2, 2]
    assert [threads.choose_workers(cores, on_gpu=True) for cores in (2, 8, 16, 64)] == [2, 4, 8, 8]


def proc_stat(per_cpu: list[tuple[int, int]]) -> str:
    """A /proc/stat with (busy, idle) jiffies per CPU (busy as user time)."""
    lines = [f"cpu  {sum(b for b, _ in per_cpu)} 0 0 {sum(i for _, i in per_cpu)} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in enumerate(per_cpu)]
    return "\n".join(lines) + "\nintr 0\n"


def test_busy_cores_elsewhere_counts_the_cpus_of_this_process_only(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    snapshots = iter([
        proc_stat([(10, 10), (10, 10), (10, 10)]),
        # over the sample: cpu0 fully busy, cpu1 a quarter, cpu2 (not ours) fully busy
        proc_stat([(110, 10), (35, 85), (110, 10)]),
    ])
    real_read_text = type(stat).read_text
    monkeypatch.setattr(type(stat), "read_text", lambda self, *a, **k: next(snapshots) if self == stat
                        else real_read_text(self, *a, **k))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    busy = threads.busy_cores_elsewhere(seconds=0.01, stat=stat)
    assert busy == pytest.approx(1.25, abs=0.05)


def test_plan_leaves_out_cores_that_other_work_keeps_busy(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for busy, neighbours in ((0.3, 0), (0.6, 1), (2.7, 3), (40.0, 7)):
        plan = threads.plan_threads(None, None, machine=machine(8, busy=busy))
        assert (plan.neighbour_cores, plan.workers, plan.threads) == (neighbours, 2, max(1, 8 - 2 - neighbours))
    assert "1 compute thread(s): 8 core(s) usable (affinity), 7 busy with other work" in plan.describe()


def test_a_setting_or_omp_num_threads_overrides_the_choice(monkeypatch):
    unmeasured = machine(8)  # an override measures nothing
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    plan = threads.plan_threads(None, 2, machine=unmeasured)
    assert (plan.threads, plan.source) == (3, "OMP_NUM_THREADS")
    plan = threads.plan_threads(5, 0, machine=unmeasured)
    assert (plan.threads, plan.workers, plan.source) == (5, 0, "threads setting")
    assert plan.describe().startswith("5 compute thread(s) (threads setting)")


@pytest.mark.parametrize("threads_, workers, cores, nice", [
    (1, 2, 2, 0),    # one compute thread: no parallel region for a worker to stall
    (2, 2, 2, 19),   # two threads on the workers' cores: the workers yield
    (14, 2, 16, 0),  # the workers have cores of their own
    (16, 2, 16, 19),
])
def test_the_workers_yield_only_where_they_would_stall_a_parallel_region(threads_, workers, cores, nice):
    assert threads.choose_worker_nice(threads_, workers, cores) == nice
    assert threads.plan_threads(threads_, workers, machine=machine(cores)).worker_nice == nice


def test_siblings_starting_on_the_node_are_not_counted_as_neighbours(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plan = threads.plan_threads(None, 2, local_processes=4, machine=machine(16))  # measuring would count the siblings
    assert (plan.cores, plan.neighbour_cores, plan.threads) == (4, 0, 2)


def test_under_a_cgroup_quota_other_containers_load_is_not_counted(monkeypatch):
    """A pod with a 4-core quota on a busy 64-core node keeps its 4 cores: the busy ones are other pods'."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plan = threads.plan_threads(None, 2, machine=machine(64, busy=60.0, quota=4.0))
    assert (plan.cores, plan.limited_by, plan.neighbour_cores, plan.threads) == (4, "cgroup quota", 0, 2)


def test_the_threads_bench_reads_training_seconds_from_the_runs_log(tmp_path):
    from bench.bench_threads import training_seconds

    rows = [{"step": 20, "loss": 4.0, "samples_per_s": 256.0}, {"step": 20, "image_zeroshot/accuracy@1": 0.5},
            {"step": 30, "loss": 3.0, "samples_per_s": 128.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    # 20 steps of 128 samples at 256/s, then 10 at 128/s; evaluation rows do not count.
    assert training_seconds(tmp_path) == pytest.approx(10.0 + 10.0)


def test_busy_neighbours_run_for_the_body_only():
    from bench.common import busy_neighbours

    with busy_neighbours(2):
        # Read for up to 10 s: on a loaded machine a child's /proc entry can lag its start.
        deadline = time.monotonic() + 10
        while len(children := [p for p in Path("/proc").glob("[0-9]*") if _is_busy_loop(p)]) < 2:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(children) >= 2
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_busy_loop(p) and _parent(p) == os.getpid()]


def _is_busy_loop(proc: Path) -> bool:
    try:
        return b"while True: pass" in (proc / "cmdline").read_bytes() and _parent(proc) == os.getpid()
    except OSError:
        return False


def _parent(proc: Path) -> int:
    return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])


def test_the_workers_chosen_are_a_record_of_the_machine_not_the_runs_settings():
    """A run resumed on another machine chooses again: the choice never becomes data.num_workers / worker_nice."""
    from multimodal.training.train_config import parse_config
    from multimodal.training.trainer import plan_machine

    # plan_machine only chooses (start_run applies the plan): this test process keeps its threads.
    config = parse_config(["--threads", "1"])
    plan = plan_machine(config)
    assert plan.workers >= 1 and (config.data.num_workers, config.data.worker_nice) == (None, None)
