"""Checkpoint directories a person can read: config.json, model.safetensors, tokenizer.json.

This module owns what a checkpoint directory holds, for every side that reads or
writes one (training, conversion, the inference API): the config with its format
version, the weights, the tokenizer and the ``"tokenizer": {"kind": ...}`` entry that
says which tokenizer class reads it, and the ``checkpoints/step-N`` layout of a run
directory.

Writing is atomic: everything goes to a temporary sibling directory that is renamed
into place, so a crash while saving never damages an existing checkpoint. Loading
never unpickles: tensors come from safetensors, the config from JSON, and every key
and shape is checked against the model the config describes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from multimodal.config_parser import from_dict, to_dict
from multimodal.data.tokenization.clip_tokenizer import ClipTokenizer
from multimodal.data.atomic_files import permissions
from multimodal.data.modalities.registry import DEFINITIONS
from multimodal.data.preprocess.preprocess_config import take_retired_masks
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.model import ModelConfig, MultimodalModel

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# Beside the model files, a training checkpoint holds trainer.json (step, Python RNG)
# and training_state.pt; a run directory keeps them as checkpoints/step-NNNNNNN.
TRAINER_FILE = "trainer.json"
RUN_CHECKPOINTS = "checkpoints"
TOKENIZER_KINDS = {"ours": Tokenizer, "clip": ClipTokenizer}


class CheckpointError(ValueError):
    """A checkpoint directory that does not match what loading expects."""


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tensors shared under several names (a shared trunk) kept once, under the first name."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if identity in seen:
            continue
        seen.add(identity)
        state[name] = tensor
    return state


def _fsync(path: Path) -> None:
    """Flushes a file's data, or a folder's entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_directory_atomically(directory: str | Path, write: Any) -> Path:
    """Calls ``write(tmp_dir)`` then moves ``tmp_dir`` to ``directory``, replacing it only once complete."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write(tmp)
        os.chmod(tmp, permissions(directory=True))  # mkdtemp made it 0700
        for path in [*tmp.rglob("*"), tmp]:  # data and file names on disk before the rename makes them visible
            _fsync(path)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
        _fsync(directory.parent)  # the rename itself survives a crash of the machine
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def save_checkpoint(
    model: MultimodalModel,
    directory: str | Path,
    *,
    tokenizer: Any = None,
    extra_config: dict | None = None,
    write_extra: Callable[[Path], None] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Writes ``model`` (and its tokenizer, if given) as a checkpoint directory.

    ``extra_config`` is stored in config.json beside the model config (e.g. the
    training configuration that produced it); ``write_extra(tmp_dir)`` may add files
    (training state) that become visible atomically with the rest. ``state``: the
    weights to write instead of the model's own (whole weights gathered from a sharded
    model, or averaged ones), under the model's names. Returns the directory.
    """
    config = {"format_version": FORMAT_VERSION, "model": to_dict(model.config)}
    if tokenizer is not None:
        config["tokenizer"] = {"kind": tokenizer_kind(tokenizer)}
    if extra_config:
        config.update(extra_config)
    if state is None:
        state = unique_state_dict(model)
    else:  # one entry per tensor, under the name the model gives it first (a shared trunk is stored once)
        names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
        missing = [name for name in names if name not in state]
        if missing:
            raise CheckpointError(f"the weights to save lack {len(missing)} of the model's (first: {missing[0]})")
        state = {name: state[name] for name in names}
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        if write_extra is not None:
            write_extra(tmp)

    return write_directory_atomically(directory, write)


def tokenizer_kind(tokenizer: Any) -> str:
    """The ``"kind"`` config.json records for ``tokenizer`` ("ours" or "clip")."""
    for kind, cls in TOKENIZER_KINDS.items():
        if isinstance(tokenizer, cls):
            return kind
    raise TypeError(f"cannot save a tokenizer of type {type(tokenizer).__name__}; expected one of {list(TOKENIZER_KINDS)}")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer | ClipTokenizer | None:
    """The tokenizer of a checkpoint directory (None when it has none), or of a tokenizer.json file.

    A checkpoint's config.json names the tokenizer's kind. Where it does not (a bare
    tokenizer.json, or a checkpoint written before the kind was recorded), the file is
    read as ours, or as CLIP's when it is not ours.
    """
    path = Path(path)
    if path.is_dir():
        directory, path = path, path / TOKENIZER_FILE
        if not path.is_file():
            return None
        kind = (read_config(directory).get("tokenizer") or {}).get("kind")
        if kind is not None:
            if kind not in TOKENIZER_KINDS:
                raise CheckpointError(
                    f"{directory}/{CONFIG_FILE} names tokenizer kind {kind!r}; this version reads {sorted(TOKENIZER_KINDS)}"
                )
            return TOKENIZER_KINDS[kind].load(path)
    try:
        return Tokenizer.load(path)
    except ValueError as ours_error:
        try:
            return ClipTokenizer.load(path)
        except ValueError:
            raise ours_error from None


def check_tokenizer_fits(model_config: ModelConfig, tokenizer: Any, source: str) -> None:
    """Refuses a tokenizer whose end-of-text id or vocabulary the text tower was not built for.

    The text tower pools at its ``eot_token_id``: a tokenizer that ends captions with
    another id would make it pool at the wrong token without a word.
    """
    text = model_config.text
    if text is None or tokenizer is None:
        return
    if tokenizer.eot_id != text.eot_token_id:
        raise CheckpointError(
            f"{source}: the tokenizer ends captions with id {tokenizer.eot_id} but the text encoder pools at "
            f"eot_token_id {text.eot_token_id}; they were not trained together"
        )
    if tokenizer.vocab_size > text.vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} ids but the text encoder embeds only "
            f"{text.vocab_size}; they were not trained together"
        )


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete training checkpoints of a run directory, oldest first.

    A checkpoint being written is a temporary directory starting with '.', and only a
    complete one has its trainer.json, so neither is listed.
    """
    root = Path(run_dir) / RUN_CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / TRAINER_FILE).is_file())


def read_config(directory: str | Path, *, as_written: bool = False) -> dict:
    """config.json of a checkpoint, with its format version checked.

    Settings added since it was written are filled in with what their absence meant
    (see :func:`_with_earlier_model_settings`), and the model's retired SpecAugment keys are
    dropped (``take_retired_masks``; a run that trains on moves its own into its sources'
    levers: :mod:`multimodal.training.retired_masks`), unless ``as_written``.
    """
    path = Path(directory) / CONFIG_FILE
    checkpoints = list_checkpoints(directory)
    if checkpoints:  # a run directory holds a config.json too, of the training run
        raise CheckpointError(
            f"{directory} is a training run's folder, not a checkpoint; its latest checkpoint is {checkpoints[-1]}"
        )
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint directory: {CONFIG_FILE} is missing")
    config = json.loads(path.read_text())
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported (this version reads {FORMAT_VERSION})"
        )
    if "model" not in config:
        raise CheckpointError(f"{path}: has no 'model' section")
    if not as_written:
        for model in (config["model"], (config.get("train") or {}).get("model")):
            _with_earlier_model_settings(model)
        take_retired_masks(config["model"])  # masks act in training only: for using the model, nothing to keep
    return config


def _with_earlier_model_settings(model: dict | None) -> None:
    """Fills in place what a model config written before a setting existed meant by leaving it out:
    each definition fills its own (:meth:`~multimodal.data.modalities.base.Modality.fill_earlier_settings`)."""
    if not isinstance(model, dict):
        return
    for name, definition in DEFINITIONS.items():
        definition.fill_earlier_settings(model.get(name), model.get(f"{name}_preprocess"))


def checkpoint_id(directory: str | Path) -> str:
    """What identifies a checkpoint's embedding space: 16 hex digits of SHA-256 over its model config and weights.

    Two directories with the same model config and the same ``model.safetensors`` bytes
    get the same id wherever they are; any other change to the weights (another
    training step, a fine-tune) gives another id. Indexes of embeddings record it, so a
    query is never embedded by a model whose space differs from the collection's.
    """
    directory = Path(directory)
    config = read_config(directory, as_written=True)  # the id of a checkpoint never changes with this code
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    digest = hashlib.sha256(json.dumps(config["model"], sort_keys=True).encode("utf-8"))
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``model`` after checking every key and shape; one error lists every mismatch."""
    expected = unique_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"{source} does not match the model its config describes:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}"
            )
        if wrong_shape:
            lines.append(f"  wrong shapes ({len(wrong_shape)}): " + "; ".join(wrong_shape[:20]))
        raise CheckpointError("\n".join(lines))
    # Shared tensors appear once in `state`; loading one name fills every alias.
    model.load_state_dict(state, strict=False)


def load_model(directory: str | Path, *, device: str | torch.device = "cpu") -> MultimodalModel:
    """Rebuilds the model a checkpoint directory describes and loads its weights (eval mode)."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        model_config = from_dict(ModelConfig, config["model"], "model")
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {error}") from error
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    model = MultimodalModel(model_config)
    load_state_checked(model, load_file(str(weights)), str(weights))
    return model.to(device).eval()
