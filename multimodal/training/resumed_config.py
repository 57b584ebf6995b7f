"""The settings of a resumed run: its own, with only the resumable ones taken from the command line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from multimodal.checkpoint import CheckpointError, read_config
from multimodal.config_parser import apply_overrides, flatten, from_dict, load_config_file, lookup, to_dict
from multimodal.data.preprocess.preprocess_config import take_retired_masks
from multimodal.training.retired_masks import move_masks_to_levers

T = TypeVar("T")

# What a resumed run may change: how long it runs, what it logs and evaluates, how often it
# saves, where and how it computes. Everything else (model, data, optimiser, seed) is the run's.
RESUMABLE_KEYS = (
    "optim.steps", "log_every", "eval_every", "checkpoint_every", "checkpoint_every_minutes", "keep_last", "tensorboard", "wandb", "wandb_project",
    "plot", "mixed_precision", "grad_checkpointing", "compile", "distributed", "dist_timeout_s", "threads", "data.num_workers",
    "data.worker_nice", "data.remote",
    "data.eval_batch_size", "data.eval",
    "resume", "output_dir", "run_name",
)

# Settings added since a run may have started, with the value that keeps what such a run
# trained with (a new default applies to new runs only).
_EARLIER_BEHAVIOUR = {("data", "demo_label_positives"): False}


def resumed_config(given_config: T, checkpoint: Path, *, given: dict[str, str]) -> T:
    """The configuration a checkpoint was trained with, with the resumable settings of this command line.

    ``given_config`` is the configuration this command line makes (a ``TrainConfig``)
    and ``given`` its overrides as typed. A setting given now that is not resumable must
    equal the run's (repeating the original flags is fine); otherwise the resume is
    refused, naming each such key.
    """
    saved = read_config(checkpoint).get("train")
    if saved is None:
        raise CheckpointError(f"{checkpoint} holds no training configuration (config.json has no 'train' section)")
    saved = _with_earlier_behaviour(saved)
    masks = take_retired_masks(saved.get("model"))  # SpecAugment set the old way: moved to the sources' levers
    run_config = from_dict(type(given_config), saved, "train")
    move_masks_to_levers(run_config, masks, str(checkpoint))
    run_tree, given_tree = to_dict(run_config), to_dict(given_config)
    explicit = set(given) - {"config"}
    if "config" in given:  # a file given again counts as settings given
        explicit |= set(flatten(load_config_file(given["config"])))
    changed = sorted(
        key for key in explicit
        if not _is_resumable(key) and lookup(given_tree, key) != lookup(run_tree, key)
    )
    if changed:
        details = "; ".join(
            f"{key}: run {json.dumps(lookup(run_tree, key))}, given {json.dumps(lookup(given_tree, key))}"
            for key in changed
        )
        raise ValueError(
            f"--resume continues {checkpoint} with its own settings; these cannot change: {details}. "
            f"Resumable: {', '.join(RESUMABLE_KEYS)}. Start a new run (another --run_name) to change the others."
        )
    resumable = {key: lookup(given_tree, key) for key in explicit if _is_resumable(key)}
    resumable.update(resume=given_config.resume, output_dir=given_config.output_dir, run_name=given_config.run_name)
    return apply_overrides(run_config, resumable)


def _with_earlier_behaviour(saved: dict) -> dict:
    """A saved training configuration with every later-added setting it lacks set to the behaviour it had."""
    saved = json.loads(json.dumps(saved))  # a copy
    for (section, key), value in _EARLIER_BEHAVIOUR.items():
        if isinstance(saved.get(section), dict) and key not in saved[section]:
            saved[section][key] = value
    return saved


def _is_resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_KEYS)
