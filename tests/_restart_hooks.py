"""The trainer with scripted faults, for the restart tests in ``test_restart.py``.

Run as ``python tests/_restart_hooks.py TRAIN_ARGS...`` or under torchrun in its place.
The faults are set by environment variables and strike on the first attempt only (a
torchrun restart, ``TORCHELASTIC_RESTART_COUNT`` > 0, runs clean), at a given optimiser
step: deterministic, whatever the machine's speed.

- ``FAULT=kill:RANK:STEP``: SIGKILL right after step STEP on rank RANK.
- ``FAULT=kill-while-saving:RANK:STEP``: SIGKILL half-way through writing the checkpoint of STEP.
- ``FAULT=stall:RANK:STEP``: after step STEP, wait without end (as a hung process), SIGTERM kills.
- ``SECONDS_PER_STEP=S``: the checkpoint clock reads S seconds per step trained (not the wall clock);
  with ``CLOCK_RANK=R``, on rank R only (the others' clocks stand still).
- ``FAULT_TIMES=DIR``: the fault's time (``fault``) and the time a process left after losing its
  peer (``left-RANK``) are written there, as ``time.time()``.
"""
import functools
import os
import signal
import sys
import time
from pathlib import Path

import torch

from multimodal.training import run_checkpoints, trainer

RANK = int(os.environ.get("RANK", "0"))
FIRST_ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
TIMES = Path(os.environ["FAULT_TIMES"]) if "FAULT_TIMES" in os.environ else None
steps_done = 0  # steps trained by this process


def note_time(name: str) -> None:
    if TIMES is not None:
        TIMES.mkdir(parents=True, exist_ok=True)
        (TIMES / name).write_text(repr(time.time()))


def fault() -> tuple[str, int] | None:
    """This process's planned fault: its kind and step."""
    if "FAULT" not in os.environ or not FIRST_ATTEMPT:
        return None
    kind, rank, step = os.environ["FAULT"].split(":")
    return (kind, int(step)) if int(rank) == RANK else None


def fault_after_step(step: int) -> None:
    """The trainer's ``after_step`` hook: counts the steps trained, and strikes after the planned one."""
    global steps_done
    steps_done += 1
    planned = fault()
    if planned is not None and planned[1] == step:
        if planned[0] == "kill":
            note_time("fault")
            os.kill(os.getpid(), signal.SIGKILL)
        if planned[0] == "stall":
            note_time("fault")
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a hung process: the launcher's SIGTERM ends it
            while True:
                time.sleep(1)


def save_with_faults(real_save, obj, path, *args, **kwargs):
    planned = fault()
    if planned is not None and planned[0] == "kill-while-saving" and f"step-{planned[1]:07d}" in str(path):
        # Killed half-way: the weights and config are written, the training state is not.
        Path(path).write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *args, **kwargs)


def leave_noting_time(real_leave, status: int) -> None:
    note_time(f"left-{RANK}")
    real_leave(status)


if __name__ == "__main__":
    run_checkpoints.torch.save = functools.partial(save_with_faults, torch.save)
    trainer.leave_now = functools.partial(leave_noting_time, trainer.leave_now)
    if "SECONDS_PER_STEP" in os.environ:
        seconds = float(os.environ["SECONDS_PER_STEP"])
        if int(os.environ.get("CLOCK_RANK", RANK)) != RANK:
            seconds = 0.0
        trainer.CheckpointClock = functools.partial(run_checkpoints.CheckpointClock, clock=lambda: steps_done * seconds)
    trainer.main(sys.argv[1:], after_step=fault_after_step)
