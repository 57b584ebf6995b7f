"""A job restarts itself: ``--resume auto``, atomic checkpoints, time-based checkpoints, torchrun restarts.

The faults (a process killed after a step or while saving, a process that hangs) are
scripted by tests/_restart_hooks.py at a given step, so every test is deterministic.
Under torchrun on CPU the processes talk over gloo on 127.0.0.1.
"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multimodal.training import trainer
from multimodal.training.train_config import parse_config
from multimodal.checkpoint import list_checkpoints, load_model
from multimodal.training.hooks import TrainerHooks
from multimodal.training.process_group import describe_lost_peer, lost_peer_error
from multimodal.training.run_checkpoints import CheckpointClock, remove_unfinished_checkpoints
from tests.training.test_train import losses_by_step, tiny_dataset_at

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "tests" / "_restart_hooks.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_dataset_at(tmp_path_factory.mktemp("restart-data"))


def train_args(dataset, output_dir: Path, steps: int, *extra: str) -> list[str]:
    """A tiny image-text run named "run" that resumes itself: the one command for every start."""
    sources = json.dumps([{"shards": dataset["spec"], "modalities": ["image", "text"]}])
    return [
        "--model.audio", "null", "--data.train", sources, "--data.tokenizer", dataset["tokenizer"],
        "--data.num_workers", "0", "--data.batch_size", "8", "--optim.steps", str(steps),
        "--optim.warmup_steps", "2", "--log_every", "1", "--keep_last", "5", "--plot", "false",
        "--mixed_precision", "no", "--threads", "1", "--output_dir", str(output_dir), "--run_name", "run",
        "--resume", "auto", *extra,
    ]


def run_alone(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """The trainer in one process, with the faults ``env`` scripts."""
    return subprocess.run([sys.executable, str(HOOKS), *args], env={**ENV, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(args: list[str], *, restarts: int = 0, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """Two processes under one torchrun agent (static rendezvous on 127.0.0.1), with the faults ``env`` scripts."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts",
               str(restarts), "--monitor-interval", "0.2", "--master_addr", "127.0.0.1", "--master_port",
               str(free_port()), str(HOOKS), *args]
    return subprocess.run(command, env={**ENV, **env}, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_model(run_dir / "checkpoints" / f"step-{step:07d}").state_dict()


def assert_same_weights(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    different = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


def test_resume_auto_needs_a_run_name():
    with pytest.raises(ValueError, match=r"--resume auto needs --run_name NAME: a restarted job finds its run again "
                                         r"by its name \(a time stamp differs at every start\)"):
        parse_config(["--resume", "auto"])


def test_resume_auto_on_a_run_without_checkpoint_is_a_new_run(dataset, tmp_path):
    config = parse_config(train_args(dataset, tmp_path, 5))
    assert config.resume is None and config.run_name == "run"
    # A run folder from a start that died before its first checkpoint holds nothing to resume.
    (tmp_path / "run" / "checkpoints" / ".step-0000003.tmp-x").mkdir(parents=True)
    assert parse_config(train_args(dataset, tmp_path, 5)).resume is None
    # Said in a config file, the same: a new run (whose init_from, say, applies).
    (tmp_path / "run.json").write_text(json.dumps({"resume": "auto", "run_name": "run", "output_dir": str(tmp_path)}))
    assert parse_config(["--config", str(tmp_path / "run.json")]).resume is None


def test_unfinished_checkpoints_are_removed_and_a_replaced_one_put_back(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-0000003", ".step-0000006.tmp-abc", ".step-0000003.deleting", ".step-0000009.old-42"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer.json").write_text("{}")
    removed = remove_unfinished_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == [".step-0000003.deleting", ".step-0000006.tmp-abc"]
    # Killed between the two renames that replace step 9: the complete earlier copy is step 9 again.
    assert sorted(p.name for p in root.iterdir()) == ["step-0000003", "step-0000009"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000003", "step-0000009"]


def test_a_lost_peer_is_found_under_the_loaders_complaint_and_named_in_one_line():
    """torchrun stops the job's processes (their loader workers too) while the survivor handles gloo's error."""
    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:538] Read error [127.0.0.1]:9392: Connection reset by peer"
    try:
        try:
            raise RuntimeError(gloo)
        except RuntimeError:
            raise RuntimeError("DataLoader worker (pid 27225) is killed by signal: Terminated. ")
    except RuntimeError as error:
        found = lost_peer_error(error)
    assert str(found) == gloo
    assert describe_lost_peer(found, 0, 2, 300) == (
        "rank 0 of 2 stops: rank 1 died, stalled or left (a collective call failed or waited more than "
        f"--dist_timeout_s 300 s): {gloo}")
    assert describe_lost_peer(found, 3, 8, 60).startswith("rank 3 of 8 stops: another rank died")
    assert lost_peer_error(RuntimeError("CUDA out of memory")) is None
    assert lost_peer_error(ValueError("a wrong setting")) is None


def test_the_checkpoint_clock_is_due_once_its_interval_passed():
    now = [0.0]
    clock = CheckpointClock(0.5, clock=lambda: now[0])
    assert not clock.due()
    now[0] = 29.9
    assert not clock.due()
    now[0] = 30.0
    assert clock.due()
    clock.saved()
    now[0] = 59.0
    assert not clock.due()
    assert not CheckpointClock(None, clock=lambda: 1e9).due()


def test_the_hooks_see_every_step_and_every_checkpoint_half_written(dataset, tmp_path):
    """after_step before the step's checkpoint; while_saving with the weights written and the training state not yet."""
    seen = []

    def while_saving(step: int, unfinished: Path) -> None:
        written = sorted(path.name for path in unfinished.iterdir())
        seen.append(("saving", step, unfinished.name.startswith(f".step-{step:07d}.tmp-"),
                     "model.safetensors" in written, "training_state.pt" in written))

    def batches(stream):  # a stream starts at the start and again after every checkpoint
        seen.append(("batches",))
        return stream

    hooks = TrainerHooks(after_step=lambda step: seen.append(("step", step)), while_saving=while_saving,
                         batches=batches)
    result = trainer.main(train_args(dataset, tmp_path, 3, "--checkpoint_every", "2"), hooks=hooks)
    assert seen == [("batches",), ("step", 1), ("step", 2), ("saving", 2, True, True, False),
                    ("batches",), ("step", 3), ("saving", 3, True, True, False)]
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step-0000002", "step-0000003"]
    assert result["step"] == 3


def train_in_process(args: list[str], seconds_per_step: float) -> None:
    """The trainer in this process (its modules are imported already), its checkpoint clock reading steps."""
    steps = []
    trainer.main(args, hooks=TrainerHooks(after_step=steps.append, clock=lambda: len(steps) * seconds_per_step))


@pytest.mark.slow
def test_a_kill_while_saving_is_never_resumed_and_the_same_command_finishes_the_run(dataset, tmp_path):
    """Checkpoints every minute (20 s a step on the hooks' clock: steps 3, 6, 9); a kill while saving step 6.

    The same command then resumes step 3, never the half-written 6, and the run ends
    exactly as an uninterrupted one: the data stream restarts after a time-based
    checkpoint as after any other.
    """
    extra = ("--checkpoint_every", "100", "--checkpoint_every_minutes", "1")
    train_in_process(train_args(dataset, tmp_path / "reference", 11, *extra), 20.0)
    reference_dir = tmp_path / "reference" / "run"
    assert [c.name for c in list_checkpoints(reference_dir)] == [
        "step-0000003", "step-0000006", "step-0000009", "step-0000011"]

    args = train_args(dataset, tmp_path / "killed", 11, *extra)
    killed = run_alone(args, FAULT="kill-while-saving:0:6", SECONDS_PER_STEP="20")
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "killed" / "run"
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-0000003"]
    assert any(p.name.startswith(".step-0000006.tmp-") for p in (run_dir / "checkpoints").iterdir())

    again = run_alone(args, SECONDS_PER_STEP="20")  # the same command, as a requeued job runs it
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step-0000003'} at step 3" in again.stdout
    assert "a checkpoint left unfinished by a process that stopped while saving" in again.stderr
    assert not any(p.name.startswith(".") for p in (run_dir / "checkpoints").iterdir())
    expected, got = losses_by_step(reference_dir), losses_by_step(run_dir)
    assert [got[step] for step in range(4, 12)] == [expected[step] for step in range(4, 12)]
    assert_same_weights(final_weights(run_dir, 11), final_weights(reference_dir, 11))


# Checkpoints every 10 steps and every minute; the clock reads 20 s a step on rank 0 and stands
# still on rank 1: rank 0 decides for both, so both save at 3, 6, 9, 10, 13, ... (a save restarts
# the clock), or the save, a collective call, would hang.
EVERY_10_STEPS_AND_MINUTE = ("--checkpoint_every", "10", "--checkpoint_every_minutes", "1")
RANK_0_CLOCK = {"SECONDS_PER_STEP": "20", "CLOCK_RANK": "0"}


@pytest.fixture(scope="module")
def restarted_job(dataset, tmp_path_factory):
    """torchrun, 2 processes, ``--max-restarts 2``: rank 1 killed after step 21 of 30 (checkpoints every 10).

    Returns the run directory, the job's output and the directory of the fault's times.
    """
    output_dir = tmp_path_factory.mktemp("restarted")
    times = output_dir / "times"
    done = torchrun(train_args(dataset, output_dir, 30, *EVERY_10_STEPS_AND_MINUTE), restarts=2,
                    FAULT="kill:1:21", FAULT_TIMES=str(times), **RANK_0_CLOCK)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output_dir / "run", output, times


@pytest.fixture(scope="module")
def two_agent_run(dataset, tmp_path_factory):
    """Two nodes simulated on one machine: two torchrun agents of one process each, c10d rendezvous on 127.0.0.1.

    Uninterrupted, 30 steps, checkpoints every 10: returns its run directory.
    """
    output_dir = tmp_path_factory.mktemp("two-agents")
    args = train_args(dataset, output_dir, 30, *EVERY_10_STEPS_AND_MINUTE)
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                          "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "two-nodes",
                          str(HOOKS), *args],
                         env={**ENV, **RANK_0_CLOCK}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for _ in range(2)
    ]
    try:
        outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    for agent, output in zip(agents, outputs):
        assert agent.returncode == 0, output[-3000:]
    return output_dir / "run"


@pytest.mark.slow
def test_torchrun_restarts_a_killed_rank_and_the_job_finishes_as_if_uninterrupted(restarted_job, two_agent_run):
    """Rank 0 leaves at once, torchrun restarts both, they resume step 20 and end where an uninterrupted run ends."""
    run_dir, output, times = restarted_job
    assert ("train.py: error: rank 0 of 2 stops: rank 1 died, stalled or left (a collective call failed or waited "
            "more than --dist_timeout_s 300 s)") in output
    left_after = float((times / "left-0").read_text()) - float((times / "fault").read_text())
    assert 0 <= left_after < 60, f"the survivor left {left_after:.1f} s after its peer was killed"
    # The restarted processes join afresh: none reads the dead attempt's addresses.
    assert f"resumed from {run_dir / 'checkpoints' / 'step-0000020'} at step 20" in output
    assert "connectFullMesh" not in output
    assert_same_weights(final_weights(run_dir, 30), final_weights(two_agent_run, 30))
    # Saved at the steps rank 0's clock chose, by both processes: 20 by steps, then 23, 26, 29 by time.
    assert [c.name for c in list_checkpoints(run_dir)] == [
        "step-0000020", "step-0000023", "step-0000026", "step-0000029", "step-0000030"]


@pytest.mark.slow
def test_two_torchrun_agents_train_as_one_agent_with_two_processes(restarted_job, two_agent_run):
    """The losses of every step: the one-agent job logged 1-21 before the kill and 21-30 after its restart."""
    config = json.loads((two_agent_run / "config.json").read_text())
    assert "processes on this node" not in config["machine"]["limited_by"]  # each agent's process is alone on its node
    expected, got = losses_by_step(restarted_job[0]), losses_by_step(two_agent_run)
    assert sorted(got) == sorted(expected) == list(range(1, 31))
    assert [got[step] for step in range(1, 31)] == [expected[step] for step in range(1, 31)]


@pytest.mark.slow
def test_a_rank_whose_peer_hangs_leaves_after_dist_timeout_naming_the_rank(dataset, tmp_path):
    times = tmp_path / "times"
    done = torchrun(train_args(dataset, tmp_path, 30, "--checkpoint_every", "10", "--dist_timeout_s", "5"),
                    timeout=120, FAULT="stall:1:4", FAULT_TIMES=str(times))
    assert done.returncode != 0
    assert "train.py: error: rank 0 of 2 stops: rank 1 died, stalled or left (a collective call failed or waited " \
           "more than --dist_timeout_s 5 s)" in done.stderr
    left_after = float((times / "left-0").read_text()) - float((times / "fault").read_text())
    assert 5 <= left_after < 60, f"the survivor left {left_after:.1f} s after its peer hung"
