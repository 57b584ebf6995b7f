"""What the converters share: reading checkpoint files and mapping keys with a full account.

A converter describes our state dict as a recipe over the source's keys (one
:meth:`StateReader.take` per tensor of ours). Before anything is built, whatever the
recipe expects but the source lacks, and whatever the source holds but the recipe
never uses, end up in one ValueError: an unsupported layout is refused with the keys
that did not map instead of loading half a model.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file

_LISTED = 20  # keys shown per list in an error message

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    return f"{shown}{' ...' if len(keys) > _LISTED else ''}"


def layout_error(source: str, what: str, unmapped: Iterable[str], missing: Iterable[str], hint: str = "") -> ValueError:
    """One ValueError naming the keys that did not map and the expected keys that are missing."""
    unmapped, missing = sorted(unmapped), sorted(missing)
    lines = [f"{source} is not {what} this converter can read:"]
    if unmapped:
        lines.append(f"  keys that did not map ({len(unmapped)}): {_listing(unmapped)}")
    if missing:
        lines.append(f"  expected keys that are missing ({len(missing)}): {_listing(missing)}")
    if hint:
        lines.append(f"  {hint}")
    return ValueError("\n".join(lines))


class StateReader:
    """A source state dict and the recipe that maps it to ours; ``finish()`` refuses leftovers and absences together.

    Args:
        state: the source tensors by name.
        source: how to name the source in messages (a path, or a description).
        what: the layout expected, for messages ("an open_clip ViT CLIP checkpoint").
        layout: patterns (full match) of the keys this layout can hold; used to name the
            foreign keys when a key needed to infer the architecture is absent.
        ignore: patterns (full match) of keys that carry nothing to convert (buffers such as
            ``position_ids``); they are neither mapped nor reported.
    """

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        source: str,
        what: str,
        *,
        layout: Iterable[str] = (),
        ignore: Iterable[str] = (),
    ) -> None:
        ignored = [re.compile(pattern) for pattern in ignore]
        self.state = {k: v for k, v in state.items() if not any(p.fullmatch(k) for p in ignored)}
        self.source = source
        self.what = what
        self.layout = [re.compile(pattern) for pattern in layout]
        self.recipe: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]] = {}

    def has(self, key: str) -> bool:
        return key in self.state

    def foreign_keys(self) -> list[str]:
        """Keys that no pattern of the layout accounts for."""
        return sorted(k for k in self.state if not any(p.fullmatch(k) for p in self.layout))

    def peek(self, key: str) -> torch.Tensor:
        """A tensor needed to infer the architecture; refuses at once when it is absent."""
        if key not in self.state:
            raise layout_error(self.source, self.what, self.foreign_keys(), [key])
        return self.state[key]

    def take(self, ours: str, *theirs: str, fn: Callable[..., torch.Tensor] | None = None) -> None:
        """Our tensor ``ours`` is ``fn(*tensors under theirs)`` (or the one tensor as it is); checked by ``finish``."""
        assert ours not in self.recipe, f"{ours} mapped twice"
        self.recipe[ours] = (theirs, fn or (lambda tensor: tensor))

    def block_indices(self, prefix: str) -> list[int]:
        """Sorted indices N of keys ``{prefix}N.…`` (the blocks of a stack)."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = {int(m.group(1)) for key in self.state if (m := pattern.match(key))}
        return sorted(found)

    def num_blocks(self, prefix: str) -> int:
        """Depth of a block stack: highest index + 1 (a gap shows up as missing keys)."""
        indices = self.block_indices(prefix)
        return indices[-1] + 1 if indices else 0

    def finish(self, hint: str = "") -> dict[str, torch.Tensor]:
        """Our state dict by the recipe; one ValueError if a key is missing or a key was left unmapped."""
        used = {key for theirs, _ in self.recipe.values() for key in theirs}
        missing = sorted(used - set(self.state))
        unmapped = set(self.state) - used
        if missing or unmapped:
            raise layout_error(self.source, self.what, unmapped, missing, hint)
        return {
            ours: fn(*(self.state[key] for key in theirs)).contiguous() for ours, (theirs, fn) in self.recipe.items()
        }


def mlp_ratio_for(width: int, hidden: int) -> float:
    """A ratio r with ``int(width * r) == hidden``, which is how the MLP's hidden width is computed."""
    ratio = hidden / width
    if int(width * ratio) != hidden:
        ratio = (hidden + 0.5) / width  # float rounding pushed width * ratio just below hidden
    return ratio


# Reading files ----------------------------------------------------------------------


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pt/.pth/.bin`` file read with ``torch.load(weights_only=True)``.

    A training checkpoint that holds the weights under ``"state_dict"`` is unwrapped and
    the ``module.`` prefix of DistributedDataParallel is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        state = load_file(str(path))
    elif path.suffix in TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling raises many kinds
            raise ValueError(
                f"could not read {path} as a state dict with torch.load(weights_only=True): {error}. "
                "OpenAI's original CLIP .pt files are TorchScript archives: load them with open_clip and save "
                "model.state_dict() (or convert them to .safetensors) first"
            ) from error
    else:
        raise ValueError(
            f"{path}: unknown checkpoint file type {path.suffix!r}; "
            f"expected {SAFETENSORS_SUFFIX} or one of {TORCH_SUFFIXES}"
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def load_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a sharded Hugging Face checkpoint from its ``*.index.json``."""
    index = json.loads(index_path.read_text())
    shards = sorted(set(index.get("weight_map", {}).values()))
    if not shards:
        raise ValueError(f"{index_path} lists no shards in its weight_map")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_state_file(index_path.parent / shard))
    return state


def load_weights_from_directory(directory: Path, candidates: Iterable[str]) -> tuple[dict[str, torch.Tensor], Path]:
    """The first weights file of ``candidates`` found in ``directory`` (a ``.index.json`` means shards)."""
    candidates = list(candidates)
    for name in candidates:
        path = directory / name
        if path.is_file():
            return (load_sharded(path) if name.endswith(".index.json") else load_state_file(path)), path
    raise FileNotFoundError(f"{directory} holds none of the weight files {candidates}")


def read_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({what}): {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} must hold a JSON object")
    return data
