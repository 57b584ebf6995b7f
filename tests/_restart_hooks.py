"""The trainer with scripted faults, for the restart tests in ``test_restart.py``.

Run as ``python tests/_restart_hooks.py TRAIN_ARGS...`` or under torchrun in its place.
The faults are the trainer's hooks (``multimodal.training.hooks.TrainerHooks``), set by
environment variables; they strike on the first attempt only (a torchrun restart,
``TORCHELASTIC_RESTART_COUNT`` > 0, runs clean), at a given optimiser step: deterministic,
whatever the machine's speed.

- ``FAULT=kill:RANK:STEP``: SIGKILL right after step STEP on rank RANK.
- ``FAULT=kill-while-saving:RANK:STEP``: SIGKILL half-way through writing the checkpoint of STEP.
- ``FAULT=stall:RANK:STEP``: after step STEP, wait without end (as a hung process), SIGTERM kills.
- ``SECONDS_PER_STEP=S``: the checkpoint clock reads S seconds per step trained (not the wall clock);
  with ``CLOCK_RANK=R``, on rank R only (the others' clocks stand still).
- ``FAULT_TIMES=DIR``: the fault's time (``fault``) and the time a process left after losing its
  peer (``left-RANK``) are written there, as ``time.time()``.
"""
import os
import signal
import sys
import time
from pathlib import Path

from multimodal.training import trainer
from multimodal.training.hooks import TrainerHooks
from multimodal.training.process_group import leave_now
from multimodal.training.run_checkpoints import TRAINING_STATE_FILE

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


def fault_while_saving(step: int, unfinished: Path) -> None:
    """The trainer's ``while_saving`` hook: the planned kill half-way through the checkpoint of its step."""
    planned = fault()
    if planned is not None and planned == ("kill-while-saving", step):
        # Killed half-way: the weights and config are written, the training state only begun.
        (unfinished / TRAINING_STATE_FILE).write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)


def leave_noting_time(status: int) -> None:
    """The trainer's ``leave`` hook: notes the time, then leaves as a run does."""
    note_time(f"left-{RANK}")
    leave_now(status)


def checkpoint_clock():
    """What time-based checkpoints read: ``SECONDS_PER_STEP`` a step trained (standing still off ``CLOCK_RANK``)."""
    if "SECONDS_PER_STEP" not in os.environ:
        return time.monotonic
    seconds = float(os.environ["SECONDS_PER_STEP"])
    if int(os.environ.get("CLOCK_RANK", RANK)) != RANK:
        seconds = 0.0
    return lambda: steps_done * seconds


if __name__ == "__main__":
    trainer.main(sys.argv[1:], hooks=TrainerHooks(after_step=fault_after_step, while_saving=fault_while_saving,
                                                  clock=checkpoint_clock(), leave=leave_noting_time))
