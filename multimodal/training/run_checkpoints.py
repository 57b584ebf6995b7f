"""A run's directory and its training checkpoints: choosing the folder, saving, finding and resuming.

A training checkpoint is a model checkpoint (see multimodal/checkpoint.py) with the
state to resume beside it: the optimiser, the schedule, the random states, the step,
and the averaged weights when the run keeps an average.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from multimodal.checkpoint import (
    RUN_CHECKPOINTS,
    TRAINER_FILE,
    CheckpointError,
    list_checkpoints,
    load_model,
    load_state_checked,
    save_checkpoint,
    unique_state_dict,
)
from multimodal.config_parser import to_dict
from multimodal.training.ema import WeightAverage
from multimodal.training.random_state import python_rng_state, rng_state, set_python_rng_state, set_rng_state
from multimodal.training.fsdp import full_model_state, full_optimizer_state, is_sharded, load_optimizer_state

if TYPE_CHECKING:
    from multimodal.training.train_config import TrainConfig

TRAINING_STATE_FILE = "training_state.pt"
EMA_DIR = "ema"  # in a training checkpoint: the averaged weights, a checkpoint directory of their own


def step_checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the run in ``run_dir`` keeps its checkpoint of ``step``."""
    return run_dir / RUN_CHECKPOINTS / f"step-{step:07d}"


class CheckpointClock:
    """Time-based checkpoints (``--checkpoint_every_minutes``): due once that long has passed since the last save.

    They bound the work a preemption without warning loses (a killed node, an evicted
    pod) whatever a step costs. The main process's clock decides for every process (see
    ``StopRequest.agreed_with_checkpoint``).
    """

    def __init__(self, minutes: float | None, clock=time.monotonic) -> None:
        self.seconds = None if minutes is None else minutes * 60.0
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        """Whether the time since the last save (or the start) has reached the interval."""
        return self.seconds is not None and self.clock() - self.last >= self.seconds

    def saved(self) -> None:
        """A checkpoint was just written: the interval starts again."""
        self.last = self.clock()


def whole_weights(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's weights whole: gathered to the main process when sharded (collective), else its own."""
    return full_model_state(model) if is_sharded(model) else unique_state_dict(model)


def save_training_checkpoint(accelerator, model, optimizer, scheduler, tokenizer, config: TrainConfig,
                             run_dir: Path, step: int, ema: WeightAverage | None = None,
                             while_saving: Callable[[int, Path], None] | None = None) -> Path | None:
    """Model + tokenizer + everything needed to resume, written atomically; keeps the last ``keep_last``.

    Every process calls it: under FSDP the weights, the optimiser state and the weight
    average are gathered whole to the main process, which writes the one format every
    run reads (the optimiser state keyed by parameter name). With ``ema`` the averaged
    weights go beside, as a checkpoint directory of their own (``EMA_DIR``).
    ``while_saving`` (see ``TrainerHooks``) is called with ``step`` and the unfinished
    folder once the weights are in it, before the training state.
    """
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    weights = whole_weights(unwrapped)
    optimizer_state = full_optimizer_state(unwrapped, getattr(optimizer, "optimizer", optimizer))
    averaged = ema.state_dict() if ema is not None else None
    path = None
    if accelerator.is_main_process:
        state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_state()}
        extra_config = {"train": to_dict(config)}

        def write_training_state(tmp: Path) -> None:
            if while_saving is not None:
                while_saving(step, tmp)
            torch.save(state, tmp / TRAINING_STATE_FILE)
            (tmp / TRAINER_FILE).write_text(json.dumps({"step": step, "python_rng": python_rng_state()}))
            if averaged is not None:
                save_checkpoint(unwrapped, tmp / EMA_DIR, tokenizer=tokenizer, state={**weights, **averaged},
                                extra_config={**extra_config, "ema": {"decay": ema.decay, "step": step}})

        path = save_checkpoint(unwrapped, step_checkpoint_dir(run_dir, step), tokenizer=tokenizer, state=weights,
                               extra_config=extra_config, write_extra=write_training_state)
        for old in list_checkpoints(run_dir)[: -config.keep_last]:
            _remove_tree(old)
    accelerator.wait_for_everyone()
    return path


def _remove_tree(path: Path) -> None:
    # Rename first so that a crash half-way never leaves a half-deleted checkpoint under its name.
    doomed = path.with_name(f".{path.name}.deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


AUTO = "auto"  # --resume auto: the run's latest complete checkpoint if it has one, else a fresh start


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint ``--resume`` names: a checkpoint directory, or the latest of the run.

    ``--resume auto`` gives the run's latest complete checkpoint, or None when it has none
    yet (the run then starts): one command serves a first start and every restart.
    """
    if config.resume == AUTO:
        if config.run_name is None:
            raise ValueError("--resume auto needs --run_name NAME: a restarted job finds its run again by its "
                             "name (a time stamp differs at every start)")
        checkpoints = list_checkpoints(resolve_run_dir(config))
        return checkpoints[-1] if checkpoints else None
    if config.resume != "latest":
        path = Path(config.resume)
        if not (path / TRAINER_FILE).is_file():
            raise ValueError(f"--resume {path}: not a training checkpoint ({TRAINER_FILE} is missing)")
        return path
    run_dir = resolve_run_dir(config)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"--resume latest: no checkpoint under {run_dir / RUN_CHECKPOINTS}")
    return checkpoints[-1]


def resolve_run_dir(config: TrainConfig) -> Path:
    """The run's directory: the resumed checkpoint's run, ``output_dir/run_name``, the latest run, or a time stamp."""
    output = Path(config.output_dir)
    if config.resume not in (None, "latest", AUTO):
        return Path(config.resume).resolve().parents[1]  # RUN/checkpoints/step-N
    if config.run_name is not None:
        return output / config.run_name
    if config.resume == "latest":
        runs = sorted((p for p in output.glob("*") if list_checkpoints(p)), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ValueError(f"--resume latest: no run with checkpoints under {output}")
        return runs[-1]
    return output / time.strftime("%Y%m%d-%H%M%S")


def remove_unfinished_checkpoints(run_dir: Path) -> list[Path]:
    """Clears what a process killed while saving left under the run's checkpoints; returns what it removed.

    A checkpoint is written into a hidden temporary folder and renamed when complete
    (see ``write_directory_atomically``), so a kill mid-write leaves only such a folder,
    never listed nor resumed. One killed between the two renames that replace a
    checkpoint of the same step leaves the complete earlier copy aside: it is put back.
    Call on the main process, before the run saves anything.
    """
    root = run_dir / RUN_CHECKPOINTS
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.glob(".step-*")):
        name, _, kind = path.name[1:].partition(".")
        if kind.startswith("old-") and not (root / name).exists():
            os.replace(path, root / name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def check_run_dir_is_free(run_dir: Path) -> None:
    """A new run never takes over the folder of an earlier one that has checkpoints."""
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        raise ValueError(
            f"{run_dir} already holds a run (checkpoints up to {checkpoints[-1].name}); continue it with "
            f"--run_name {run_dir.name} --resume latest, or choose another --run_name"
        )


def load_weights(path: Path, model: nn.Module) -> None:
    """A checkpoint's weights into the (not yet sharded) model, every key and shape checked."""
    load_state_checked(model, load_model(path).state_dict(), str(path))


def load_training_state(path: Path, model, optimizer, scheduler, ema: WeightAverage | None = None) -> int:
    """Restores optimiser, schedule, random states and the weight average; returns the step to continue from.

    The optimiser state is keyed by parameter name, so it loads whatever world size or
    sharding saved it (checkpoints from before that format hold it by position).
    """
    if ema is not None:
        if not (path / EMA_DIR).is_dir():
            raise CheckpointError(f"{path} has no averaged weights ({EMA_DIR}/) to continue ema.decay from")
        ema.load_state_dict(load_model(path / EMA_DIR).state_dict(), str(path / EMA_DIR))
    # weights_only: tensors and plain containers only, never arbitrary pickled objects.
    state = torch.load(path / TRAINING_STATE_FILE, weights_only=True)
    inner = getattr(optimizer, "optimizer", optimizer)
    if all(isinstance(name, str) for group in state["optimizer"]["param_groups"] for name in group["params"]):
        load_optimizer_state(model, inner, state["optimizer"])
    else:
        inner.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    trainer = json.loads((path / TRAINER_FILE).read_text())
    set_python_rng_state(trainer["python_rng"])
    return trainer["step"]
