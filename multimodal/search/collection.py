"""What ``multimodal embed`` wrote, read back as parts of a collection to index.

Shapes: N rows of a part, E embedding width.

An input is an output file of ``multimodal embed`` (``.npy`` with its ``.keys.json``,
``.safetensors`` or ``.parquet``), or a folder of the parts it writes for shards
(``part-<shard>.npy`` ...). A part read here carries, beside its vectors and keys,
what its file records of how it was made (modality, width, checkpoint id, shard: the
``.safetensors`` and ``.parquet`` formats keep these; ``.npy`` keeps none) and, for
each row, what is needed to show it as a hit:

* ``source``: the file the row was embedded from (an image, a clip, a caption file),
  or the tar shard that holds the sample, or None when neither can be found;
* ``caption``: the caption of a text row, or of a shard sample that has one (its
  ``.txt``, or the json ``text`` / ``caption`` field).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from multimodal.data.shards import expand_shards, read_shard
from multimodal.embed import OUTPUT_FORMATS, PART_PREFIX, keys_path, read_embeddings, shard_part_name, shard_sample_input

# A caption file's row key, as `multimodal embed --modality text` writes it: "captions.txt:12".
_CAPTION_LINE_KEY = re.compile(r"^(?P<path>.+):(?P<line>[0-9]+)$")
CAPTION_CHARS = 1000  # what a hit shows of a caption; the embedding saw the model's context length of it


@dataclass
class Part:
    """One embedding output: vectors float32 (N, E), keys, what the file records, and each row's source and caption."""

    path: Path
    vectors: np.ndarray
    keys: list[str]
    metadata: dict[str, str]
    sources: list[str | None] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)

    @property
    def shard(self) -> str | None:
        return self.metadata.get("shard")


def part_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Embedding outputs named by ``inputs``: files as given, folders' output files sorted by name.

    Raises ValueError for an input that does not exist, a file that is not an output
    format, or a folder that holds no output file.
    """
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                child for child in path.iterdir()
                if child.is_file() and not child.name.startswith(".") and child.suffix.lstrip(".") in OUTPUT_FORMATS
            )
            if not found:
                raise ValueError(f"folder {path} holds no output of multimodal embed (.npy, .safetensors or .parquet)")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower().lstrip(".") not in OUTPUT_FORMATS:
                raise ValueError(f"{path} is not an output of multimodal embed: expected .npy, .safetensors or .parquet")
            files.append(path)
        else:
            raise ValueError(f"input {given} does not exist (expected an output file of multimodal embed, or a folder of parts)")
    return files


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (with the ``.keys.json`` of an ``.npy``): how an input already indexed is recognised."""
    digest = hashlib.sha256()
    for file in (path, keys_path(path)) if path.suffix == ".npy" else (path,):
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def read_metadata(path: Path) -> dict[str, str]:
    """What an output file records of how it was made: {} for ``.npy``; safetensors or parquet metadata otherwise."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
        metadata.pop("keys", None)
        return metadata
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        schema_metadata = pq.read_schema(str(path)).metadata or {}
        return {k.decode(): v.decode() for k, v in schema_metadata.items() if not k.startswith(b"ARROW:")}
    return {}


def read_part(path: Path) -> Part:
    """One output file -> :class:`Part` (sources and captions not yet filled: see :func:`describe_rows`).

    Raises ValueError naming the file when it cannot be read or its rows and keys differ.
    """
    try:
        vectors, keys = read_embeddings(path)
        metadata = read_metadata(path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read as an output of multimodal embed ({type(error).__name__}: {error})") from None
    if vectors.ndim != 2:
        raise ValueError(f"{path}: embeddings must be (N, E), got shape {tuple(vectors.shape)}")
    if not np.isfinite(vectors).all():
        bad = int((~np.isfinite(vectors)).any(axis=1).sum())
        raise ValueError(f"{path}: {bad} row(s) hold NaN or infinite values; embed those inputs again")
    return Part(path, np.ascontiguousarray(vectors, dtype=np.float32), [str(key) for key in keys], metadata)


def shards_by_part_name(spec: str | Sequence[str] | None) -> dict[str, str]:
    """``part name -> shard URL`` for the shards of ``spec``, as ``multimodal embed`` names their parts."""
    if not spec:
        return {}
    return {shard_part_name(url): url for url in expand_shards(spec)}


def part_shard(part: Part, shards: dict[str, str]) -> str | None:
    """The shard a part was embedded from: its own metadata, else the shard whose part name its file has."""
    if part.shard:
        return part.shard
    name = part.path.name[: -len(part.path.suffix)]
    if name.startswith(PART_PREFIX):
        return shards.get(name[len(PART_PREFIX):])
    return None


def _shard_captions(url: str) -> dict[str, str]:
    """``key -> caption`` of the samples of one shard that have one; {} when the shard cannot be read."""
    captions: dict[str, str] = {}
    for sample in read_shard(url, []):
        try:
            captions[sample["__key__"]] = shard_sample_input(sample, "text")[:CAPTION_CHARS]
        except (ValueError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    return captions


def _resolved_file(key: str) -> str | None:
    path = Path(key)
    return str(path.resolve()) if path.is_file() else None


def describe_rows(part: Part, modality: str, shard: str | None, *, read_captions: bool = True) -> None:
    """Fills ``part.sources`` and ``part.captions``: where each row came from and its caption, if any.

    * a shard part: every row's source is the shard; captions are read from the shard
      (one pass over it) when ``read_captions`` and the shard can be read;
    * a files part: a key that is a file (relative paths are taken from the current
      folder, as ``multimodal embed`` was given them) is the source; a text key
      ``captions.txt:12`` gives the caption file and its 12th line.
    """
    rows = len(part.keys)
    if shard is not None:
        captions = _shard_captions(shard) if read_captions else {}
        part.sources = [shard] * rows
        part.captions = [captions.get(key) for key in part.keys]
        return
    part.sources, part.captions = [], []
    lines_of: dict[str, list[str] | None] = {}
    for key in part.keys:
        source = _resolved_file(key)
        caption = None
        if source is not None and modality == "text":  # a folder of .txt files: one caption per file
            try:
                caption = Path(source).read_text(encoding="utf-8").strip()[:CAPTION_CHARS]
            except (OSError, UnicodeDecodeError):
                caption = None
        elif modality == "text":
            match = _CAPTION_LINE_KEY.match(key)
            if match and Path(match["path"]).is_file():
                source = str(Path(match["path"]).resolve())
                if source not in lines_of:
                    try:
                        lines_of[source] = Path(source).read_text(encoding="utf-8").splitlines()
                    except (OSError, UnicodeDecodeError):
                        lines_of[source] = None
                lines = lines_of[source]
                number = int(match["line"])
                if lines is not None and 1 <= number <= len(lines):
                    caption = lines[number - 1].strip()[:CAPTION_CHARS]
        part.sources.append(source)
        part.captions.append(caption)


__all__ = ["Part", "describe_rows", "file_digest", "part_files", "part_shard", "read_metadata", "read_part",
           "shards_by_part_name"]
