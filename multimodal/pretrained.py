"""Starting from a pretrained checkpoint: its towers' architecture and weights, locking, layer decay, WiSE-FT.

A run that starts from a checkpoint (ours, or one converted from open_clip or Hugging
Face) builds its model with :func:`init_model_config` (the towers the checkpoint holds
keep the checkpoint's architecture and preprocessing; towers the run adds come from the
run's config), fills it with :func:`load_pretrained`, may lock towers (or all but their
last blocks) with :func:`lock_towers`, and may give earlier layers smaller learning rates
with :func:`multimodal.training.optimizer.layer_decay_groups`. Binding a new modality into a locked
image-text space (ImageBind's recipe) is the same mechanism, with the new tower's pairs as
the only ones trained. :func:`interpolate_checkpoints` blends a fine-tuned checkpoint with
the one it started from (WiSE-FT).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    read_config,
    write_directory_atomically,
)
from multimodal.config_parser import flatten, from_dict, to_dict
from multimodal.data.modalities.registry import MODALITIES
from multimodal.model import ModelConfig, MultimodalModel

# ModelConfig fields that describe the shared space rather than one tower: a run started
# from a checkpoint takes them from the checkpoint (its projections, temperatures and
# biases are loaded; a tower the run adds projects into the same space).
_SPACE_FIELDS = (
    "embed_dim", "share_trunk", "projection_bias", "loss", "init_logit_scale", "init_logit_bias", "max_logit_scale",
)


def checkpoint_model_config(directory: str | Path, what: str = "init_from") -> ModelConfig:
    """The ModelConfig a checkpoint directory describes; ``what`` (the option that named it) starts each error.

    Raises FileNotFoundError for a path that does not exist and CheckpointError
    (a ValueError) for a folder that is not a checkpoint this version reads.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{what} {directory}: no such directory; give a checkpoint directory "
                                f"({CONFIG_FILE}, {WEIGHTS_FILE})")
    try:
        config = read_config(directory)
        return from_dict(ModelConfig, config["model"], "model")
    except (TypeError, ValueError) as error:  # CheckpointError, broken JSON, a config this version does not read
        where = what if str(directory) in str(error) else f"{what} {directory}"  # read_config names the path itself
        raise CheckpointError(f"{where}: {error}") from error


def _preprocess_field(modality: str) -> str | None:
    """The ModelConfig field holding ``modality``'s preprocessing (``image_preprocess``), or None (text has none)."""
    name = f"{modality}_preprocess"
    return name if name in {f.name for f in dataclasses.fields(ModelConfig)} else None


def init_model_config(run_model: ModelConfig, checkpoint_dir: str | Path) -> ModelConfig:
    """The model of a run that starts from ``checkpoint_dir`` (``train.py --init_from DIR``).

    The run's config says which towers the model has. A tower the checkpoint holds comes
    with the checkpoint's encoder config and preprocessing (``image_preprocess``, ...), so
    its weights load and its inputs are prepared as in pretraining; a tower only the run
    has (an audio tower added to a CLIP checkpoint) comes from the run's config and starts
    fresh. The shared space comes from the checkpoint (``embed_dim``, ``projection_bias``,
    ``share_trunk``, ``loss`` and its temperature settings): an added tower's projection
    maps its width to the checkpoint's ``embed_dim``. ``loss_pairs`` is the run's.

    A checkpoint tower the run's config lacks is left out. Settings the user gave for a
    checkpoint's tower (``drop_path``, ``patch_dropout``) are the caller's to apply on top.
    """
    checkpoint = checkpoint_model_config(checkpoint_dir)
    values = {name: copy.deepcopy(getattr(checkpoint, name)) for name in _SPACE_FIELDS}
    values["loss_pairs"] = list(run_model.loss_pairs)
    added = []
    for modality in MODALITIES:
        if getattr(run_model, modality) is None:
            continue
        source = checkpoint if getattr(checkpoint, modality) is not None else run_model
        if source is run_model:
            added.append(modality)
        values[modality] = copy.deepcopy(getattr(source, modality))
        preprocess = _preprocess_field(modality)
        if preprocess is not None:
            values[preprocess] = copy.deepcopy(getattr(source, preprocess))
    if checkpoint.share_trunk and added:
        _check_shared_trunk(checkpoint, values, added, checkpoint_dir)
    return ModelConfig(**values)


def _check_shared_trunk(checkpoint: ModelConfig, values: dict, added: list[str], checkpoint_dir) -> None:
    """An added tower of a shared-trunk model runs on the checkpoint's block stack: its settings must be the same."""
    trunk = getattr(checkpoint, checkpoint.modalities[0]).transformer
    for modality in added:
        if values[modality].transformer != trunk:
            raise ValueError(
                f"init_from {checkpoint_dir}: the checkpoint shares one block stack between its towers (share_trunk), "
                f"so the added {modality} tower must use its transformer settings {to_dict(trunk)}; "
                f"set model.{modality}.transformer to them"
            )


def load_pretrained(model: MultimodalModel, checkpoint_dir: str | Path) -> dict[str, list[str]]:
    """Loads into ``model`` the towers ``checkpoint_dir`` holds; the model's other towers stay as initialised.

    Loaded: ``encoders.<m>.*`` and ``projections.<m>.*`` of every tower both have, and
    the temperatures (``logit_scales``, and ``logit_biases`` where both have them) of
    every pair both have. A loaded tower must have exactly the checkpoint's keys and
    shapes (build the model with :func:`init_model_config`); otherwise a ValueError names
    the first differing key. Returns ``{"loaded": [...], "fresh": [...], "unused": [...],
    "temperatures": [...]}``: towers loaded, towers left as initialised, checkpoint
    towers the model lacks, and pairs whose temperature was loaded.
    """
    directory = Path(checkpoint_dir)
    checkpoint = checkpoint_model_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"init_from {directory}: {WEIGHTS_FILE} is missing")
    loaded = [m for m in model.modalities if m in checkpoint.modalities]
    pairs = [p for p in model.logit_scales if p in checkpoint.pairs]
    prefixes = tuple(f"{part}.{m}." for m in loaded for part in ("encoders", "projections"))
    wanted = {f"logit_scales.{p}" for p in pairs}
    if model.logit_biases is not None and checkpoint.loss == "sigmoid":
        wanted |= {f"logit_biases.{p}" for p in pairs}
    with safe_open(str(weights), framework="pt") as handle:
        names = [name for name in handle.keys() if name.startswith(prefixes) or name in wanted]
        state = {name: handle.get_tensor(name) for name in names}
    _check_subset(model, state, prefixes, f"init_from {directory}")
    model.load_state_dict(state, strict=False)  # a shared trunk's other names are aliases: filled too
    return {
        "loaded": loaded,
        "fresh": [m for m in model.modalities if m not in loaded],
        "unused": [m for m in checkpoint.modalities if m not in model.modalities],
        "temperatures": pairs,
    }


def _check_subset(model: nn.Module, state: dict[str, torch.Tensor], prefixes: tuple[str, ...], source: str) -> None:
    """Refuses ``state`` unless it fills the model's tensors under ``prefixes`` exactly, in keys and shapes."""
    expected = model.state_dict()
    for name in sorted(state):
        if name not in expected:
            raise CheckpointError(f"{source}: the checkpoint holds {name}, which this run's model lacks; "
                                  "its towers must keep the checkpoint's architecture")
    wrong = sorted(name for name, tensor in state.items() if tuple(tensor.shape) != tuple(expected[name].shape))
    if wrong:
        more = f" (and {len(wrong) - 1} more keys)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{source}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)} in the checkpoint and "
            f"{tuple(expected[wrong[0]].shape)} in this run's model{more}; its towers must keep the checkpoint's "
            "architecture"
        )
    filled = {_identity(expected[name]) for name in state}
    missing = [name for name, tensor in expected.items()
               if name.startswith(prefixes) and name not in state and _identity(tensor) not in filled]
    if missing:
        raise CheckpointError(f"{source}: this run's model has {missing[0]}, which the checkpoint lacks "
                              f"({len(missing)} such keys); its towers must keep the checkpoint's architecture")


def _identity(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    """What one tensor shared under several names (a shared trunk) has the same under each."""
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def pretrained_towers_that_train(run_model: ModelConfig, checkpoint_dir: str | Path, freeze: Iterable[str],
                                 unlocked_blocks: int = 0) -> list[str]:
    """The towers a run from ``checkpoint_dir`` loads from it and trains (not locked, or locked with blocks unlocked).

    None: every tower that trains starts fresh (binding a new tower into a locked
    space), and the from-scratch learning rate suits it; otherwise the run fine-tunes.
    """
    held = checkpoint_model_config(checkpoint_dir).modalities
    locked = set(freeze) if unlocked_blocks == 0 else set()
    return [m for m in run_model.modalities if m in held and m not in locked]


# --------------------------------------------------------------------------- locking towers


def lock_towers(model: MultimodalModel, modalities: Iterable[str], unlocked_blocks: int = 0) -> dict:
    """Stops gradients into the named towers (encoder and projection), except their last ``unlocked_blocks`` blocks.

    With ``unlocked_blocks`` > 0 the tower's final norm, attention pooling (if any) and
    projection train too, as open_clip's ``--lock-image-unlocked-groups k + 1`` (LiT
    locks everything: 0). A pair's temperature locks when both its towers are wholly
    locked (their space cannot move). Locked parameters get no optimiser state
    (``build_optimizer`` skips them); call :func:`keep_locked_in_eval` after every
    ``model.train()`` so that their dropout and drop-path stay off.

    Returns, for the start-up log, ``{"towers": {m: {"locked": parameters, "trainable":
    parameters, "unlocked_blocks": k}}, "temperatures": [pairs locked]}``.
    """
    modalities = list(dict.fromkeys(modalities))
    if unlocked_blocks < 0:
        raise ValueError(f"freeze: unlocked_blocks must be 0 or more, got {unlocked_blocks}")
    for modality in modalities:
        if modality not in model.encoders:
            raise ValueError(f"freeze: this model has no {modality!r} tower (it has {', '.join(model.modalities)})")
    if model.config.share_trunk and modalities and set(modalities) != set(model.modalities):
        raise ValueError(
            f"freeze: this model's towers share one block stack (share_trunk), so locking {', '.join(modalities)} "
            f"would lock the others' blocks too; lock every tower ({', '.join(model.modalities)}) or none"
        )
    towers = {modality: _lock_tower(model, modality, unlocked_blocks) for modality in modalities}
    temperatures = []
    if unlocked_blocks == 0:
        temperatures = [pair for pair in model.logit_scales if all(m in modalities for m in pair.split("_"))]
        for pair in temperatures:
            model.logit_scales[pair].requires_grad_(False)
            if model.logit_biases is not None:
                model.logit_biases[pair].requires_grad_(False)
    return {"towers": towers, "temperatures": temperatures}


def _lock_tower(model: MultimodalModel, modality: str, unlocked_blocks: int) -> dict[str, int]:
    """Locks one tower but its last ``unlocked_blocks`` blocks and (then) its head; returns its parameter counts."""
    encoder, projection = model.encoders[modality], model.projections[modality]
    blocks = encoder.trunk.transformer.blocks
    if unlocked_blocks > len(blocks):
        raise ValueError(f"freeze: unlocked_blocks={unlocked_blocks} but the {modality} tower has only "
                         f"{len(blocks)} blocks")
    for parameter in chain(encoder.parameters(), projection.parameters()):
        parameter.requires_grad_(False)
    if unlocked_blocks:
        head = [encoder.trunk.norm, projection]
        if encoder.trunk.attention_pool is not None:
            head.append(encoder.trunk.attention_pool)
        for module in [*blocks[len(blocks) - unlocked_blocks:], *head]:
            module.requires_grad_(True)
    parameters = list(chain(encoder.parameters(), projection.parameters()))
    return {
        "locked": sum(p.numel() for p in parameters if not p.requires_grad),
        "trainable": sum(p.numel() for p in parameters if p.requires_grad),
        "unlocked_blocks": unlocked_blocks,
    }


def keep_locked_in_eval(model: nn.Module) -> int:
    """Puts every submodule whose parameters are all frozen in eval mode; returns how many subtrees it set.

    ``model.train()`` turns dropout, drop-path and patch dropout on everywhere; a locked
    tower should compute as the checkpoint did (as open_clip's ``freeze_bn_stats``, and so
    that a wholly locked tower's features are those of evaluation). A module with no
    parameters of its own (DropPath, PatchDropout) follows the smallest module around it
    that has some: in an unlocked block it keeps training. Call it after every
    ``model.train()`` (on the unwrapped model).
    """
    def visit(module: nn.Module) -> int:
        parameters = list(module.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            module.eval()
            return 1
        return sum(visit(child) for child in module.children())

    return visit(model)


# --------------------------------------------------------------------------- WiSE-FT


# Model settings that change training only (regularisation, augmentation, speed): two
# checkpoints that differ in them still share an architecture.
_TRAINING_ONLY = {
    "drop_path", "patch_dropout", "attention_backend", "grad_checkpointing", "loss_pairs", "init_logit_scale",
    "init_logit_bias", "max_logit_scale", "train_crop_scale",
}


def _check_same_architecture(a_dir: Path, b_dir: Path) -> None:
    """Refuses two checkpoints whose model configs differ beyond training-only settings, naming the first key."""
    a = flatten(to_dict(checkpoint_model_config(a_dir, "interpolate")), "model")
    b = flatten(to_dict(checkpoint_model_config(b_dir, "interpolate")), "model")
    for key in sorted(set(a) | set(b)):
        if key.rsplit(".", 1)[-1] in _TRAINING_ONLY:
            continue
        if a.get(key) != b.get(key):
            raise ValueError(
                f"interpolate: {a_dir} and {b_dir} differ in {key} ({json.dumps(a.get(key))} vs "
                f"{json.dumps(b.get(key))}); interpolate a fine-tuned checkpoint with the one it started from"
            )
    _check_same_tokenizer(a_dir, b_dir)


def same_tokenizer(a: str | Path, b: str | Path) -> bool:
    """Whether two tokenizer.json files (or the checkpoints holding them) map text to the same ids.

    Their vocabularies and added tokens are compared: a text tower's embedding rows mean
    what its tokenizer's ids mean. True where either file is missing (nothing to compare).
    """
    a, b = (Path(p) / TOKENIZER_FILE if Path(p).is_dir() else Path(p) for p in (a, b))
    if not (a.is_file() and b.is_file()):
        return True
    a_json, b_json = json.loads(a.read_text()), json.loads(b.read_text())
    return all(a_json.get(section) == b_json.get(section) for section in ("model", "added_tokens"))


def _check_same_tokenizer(a_dir: Path, b_dir: Path) -> None:
    """Refuses two checkpoints whose tokenizers map text to other ids: their text towers' rows mean other things."""
    a, b = a_dir / TOKENIZER_FILE, b_dir / TOKENIZER_FILE
    if not same_tokenizer(a_dir, b_dir):
        raise ValueError(f"interpolate: {a} and {b} are different tokenizers; interpolate a fine-tuned checkpoint "
                         "with the one it started from")


def blend(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * a + alpha * b`` in at least float32, in ``b``'s dtype; exactly ``a`` at 0 and ``b`` at 1."""
    dtype = torch.promote_types(b.dtype, torch.float32)
    return ((1.0 - alpha) * a.to(dtype) + alpha * b.to(dtype)).to(b.dtype)


def interpolate_checkpoints(a_dir: str | Path, b_dir: str | Path, alpha: float, out_dir: str | Path) -> Path:
    """Writes the checkpoint whose weights are ``(1 - alpha) * A + alpha * B`` (WiSE-FT); returns ``out_dir``.

    A is typically the pretrained (zero-shot) checkpoint and B the one fine-tuned from it:
    ``alpha`` 0 gives A's weights, 1 B's. Both must have one architecture (model configs
    equal but for training-only settings such as ``drop_path``, the same keys and shapes,
    the same tokenizer); each refusal names the first difference. Floating-point tensors
    are blended, others taken from B. The output holds B's config.json (with an
    ``"interpolated"`` record of A, B and alpha) and tokenizer.json, and is written
    atomically: a checkpoint every command reads. An existing ``out_dir`` is replaced only
    if it is a checkpoint; A and B themselves are never overwritten.
    """
    a_dir, b_dir, out_dir = Path(a_dir), Path(b_dir), Path(out_dir)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"interpolate: alpha must be a number in [0, 1] (0: {a_dir}, 1: {b_dir}), got {alpha!r}")
    _check_same_architecture(a_dir, b_dir)
    _check_output(out_dir, a_dir, b_dir)
    state = _blended_state(a_dir, b_dir, alpha)
    config = read_config(b_dir)
    config["interpolated"] = {"from": str(a_dir), "to": str(b_dir), "alpha": alpha}

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if (b_dir / TOKENIZER_FILE).is_file():
            shutil.copyfile(b_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)

    return write_directory_atomically(out_dir, write)


def _check_output(out_dir: Path, a_dir: Path, b_dir: Path) -> None:
    if out_dir.resolve() in (a_dir.resolve(), b_dir.resolve()):
        raise ValueError(f"interpolate: the output {out_dir} is one of the checkpoints read; choose a new directory")
    if out_dir.exists() and not (out_dir / CONFIG_FILE).is_file():
        raise ValueError(f"interpolate: the output {out_dir} exists and is not a checkpoint; choose a new directory")


def _blended_state(a_dir: Path, b_dir: Path, alpha: float) -> dict[str, torch.Tensor]:
    """B's tensors blended with A's, key by key (one of A's in memory at a time); refuses another key set or shape."""
    for directory in (a_dir, b_dir):
        if not (directory / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"interpolate {directory}: {WEIGHTS_FILE} is missing")
    state = load_file(str(b_dir / WEIGHTS_FILE))
    with safe_open(str(a_dir / WEIGHTS_FILE), framework="pt") as a_file:
        a_names = set(a_file.keys())
        for name in sorted(a_names ^ set(state)):
            holder, other = (a_dir, b_dir) if name in a_names else (b_dir, a_dir)
            raise ValueError(f"interpolate: {holder} holds {name} but {other} does not; interpolate a fine-tuned "
                             "checkpoint with the one it started from")
        for name in sorted(state):
            a = a_file.get_tensor(name)
            b = state[name]
            if a.shape != b.shape:
                raise ValueError(f"interpolate: {name} has shape {tuple(a.shape)} in {a_dir} and {tuple(b.shape)} "
                                 f"in {b_dir}")
            if b.is_floating_point():
                state[name] = blend(a, b, alpha)
    return state
