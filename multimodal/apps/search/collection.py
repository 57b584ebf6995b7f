"""What ``multimodal embed`` wrote, read back as parts of a collection to index.

Shapes: N rows of a part, E embedding width.

An input is an output file of ``multimodal embed`` (``.npy`` with its ``.keys.json``,
``.safetensors`` or ``.parquet``), or a folder of the parts it writes for shards
(``part-<shard>.npy`` ...). A part read here carries, beside its vectors and keys,
what its file records of how it was made (modality, width, checkpoint id, shard: in the
``.safetensors`` or ``.parquet`` metadata, or the ``.meta.json`` beside an ``.npy``;
``.npy`` outputs of earlier versions record none) and, for each row, what is needed to
show it as a hit:

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

from multimodal.data.modalities.registry import CAPTION_MODALITY, get_modality
from multimodal.data.pipeline.shard_reader import expand_shards, is_remote, read_shard
from multimodal.apps.embedding import PART_PREFIX, shard_part_name, shard_sample_input
from multimodal.apps.embedding_outputs import OUTPUT_FORMATS, keys_path, metadata_path, read_embeddings, read_metadata
from multimodal.errors import ArgumentNeeded

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
    """SHA-256 of a file's bytes (with the sidecars of an ``.npy``): how an input already indexed is recognised."""
    digest = hashlib.sha256()
    files = [path, keys_path(path)] if path.suffix == ".npy" else [path]
    if path.suffix == ".npy" and metadata_path(path).is_file():  # outputs of earlier versions have none
        files.append(metadata_path(path))
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


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


def _same_shard(url: str) -> str:
    """A shard's identity: a local path made absolute and normal (so one shard spelt two ways is one), URLs as they are."""
    if is_remote(url):
        return url
    return os.path.abspath(url)


def shards_by_part_name(spec: str | Sequence[str] | None) -> dict[str, list[str]]:
    """``part name -> the shard URLs of spec with that name``, as ``multimodal embed`` names their parts.

    Shards in different folders may share a file name (``emoji-val/shard-000000.tar`` and
    ``emoji-train/shard-000000.tar``), and so a part name: each name keeps every shard
    that has it, told apart by full path (one shard given twice counts once).
    """
    if not spec:
        return {}
    named: dict[str, list[str]] = {}
    for url in expand_shards(spec):
        candidates = named.setdefault(shard_part_name(url), [])
        if all(_same_shard(url) != _same_shard(known) for known in candidates):
            candidates.append(url)
    return named


def part_shard(part: Part, shards: dict[str, list[str]]) -> str | None:
    """The shard a part was embedded from: the one its file records, else the one shard of its name in ``shards``.

    ``shards`` is :func:`shards_by_part_name` of the spec the parts were embedded from.
    A part that records none and whose name several shards have is refused
    (ArgumentNeeded naming them): attributing its rows to either could be wrong.
    None when the part records no shard and none of ``shards`` has its name.
    """
    if part.shard:
        return part.shard
    name = part.path.name[: -len(part.path.suffix)]
    if not name.startswith(PART_PREFIX):
        return None
    shard_name = name[len(PART_PREFIX):]
    candidates = shards.get(shard_name, [])
    if len(candidates) > 1:
        raise ArgumentNeeded(
            f"{part.path} may be the part of any of the shards {', '.join(candidates)} (all named {shard_name}) and "
            "does not record which: give {shards} only the shard it was embedded from (index each folder of parts "
            "on its own), or embed it again (parts record their shard now)",
            shards=("shards=", "--shards"),
        )
    return candidates[0] if candidates else None


@dataclass
class _ShardContents:
    """What one pass over a shard gives: every sample's key, the captions, and whether it read to the end."""

    keys: set[str]
    captions: dict[str, str]
    complete: bool


def _read_shard_contents(url: str) -> _ShardContents:
    """The keys and ``key -> caption`` (of the samples that have one) of one shard: what could be read of it."""
    problems: list = []
    keys: set[str] = set()
    captions: dict[str, str] = {}
    for sample in read_shard(url, problems):
        keys.add(sample["__key__"])
        try:
            captions[sample["__key__"]] = shard_sample_input(sample, CAPTION_MODALITY)[:CAPTION_CHARS]
        except (ValueError, UnicodeDecodeError, json.JSONDecodeError):
            continue
    return _ShardContents(keys, captions, complete=not problems)


def _check_keys_in_shard(part: Part, shard: str, contents: _ShardContents) -> None:
    """Refuses a part whose rows are not samples of the shard it is attributed to (when that shard read to its end)."""
    missing = [key for key in part.keys if key not in contents.keys]
    if not contents.complete or not missing:
        return
    where = f"{len(missing)} of its {len(part.keys)} keys (the first: {missing[0]!r}) are not in shard {shard}"
    if part.shard:  # the shard it records: the shard was rewritten since
        raise ValueError(f"{part.path}: {where}, the shard it records: the shard has changed since it was embedded; "
                         "embed it again from the shards as they are")
    raise ArgumentNeeded(f"{part.path}: {where}, the shard of its name that {{shards}} gives: it was embedded from "
                         "another shard; give the shard it was embedded from, or embed it again",
                         shards=("shards=", "--shards"))


def _resolved_file(key: str) -> str | None:
    path = Path(key)
    return str(path.resolve()) if path.is_file() else None


def describe_rows(part: Part, modality: str, shard: str | None, *, read_captions: bool = True) -> None:
    """Fills ``part.sources`` and ``part.captions``: where each row came from and its caption, if any.

    * a shard part: every row's source is the shard; when ``read_captions``, one pass over
      the shard reads the captions and checks that every row's key is a sample of it
      (refused when the shard, read to its end, lacks some: see :func:`part_shard`);
    * a files part: a key that is a file (relative paths are taken from the current
      folder, as ``multimodal embed`` was given them) is the source; a text key
      ``captions.txt:12`` gives the caption file and its 12th line.
    """
    if shard is not None:
        captions: dict[str, str] = {}
        if read_captions:
            contents = _read_shard_contents(shard)
            _check_keys_in_shard(part, shard, contents)
            captions = contents.captions
        part.sources = [shard] * len(part.keys)
        part.captions = [captions.get(key) for key in part.keys]
        return
    part.sources, part.captions = [], []
    lines_of: dict[str, list[str] | None] = {}
    rows_are_captions = not get_modality(modality).reads_files  # text: a row's caption is the row itself
    for key in part.keys:
        source = _resolved_file(key)
        caption = None
        if source is not None and rows_are_captions:  # a folder of .txt files: one caption per file
            try:
                caption = Path(source).read_text(encoding="utf-8").strip()[:CAPTION_CHARS]
            except (OSError, UnicodeDecodeError):
                caption = None
        elif rows_are_captions:
            source, caption = _caption_line(key, lines_of)
        part.sources.append(source)
        part.captions.append(caption)


def _caption_line(key: str, lines_of: dict[str, list[str] | None]) -> tuple[str | None, str | None]:
    """(caption file, caption) of a text key ``captions.txt:12``; (None, None) when it names no file."""
    match = _CAPTION_LINE_KEY.match(key)
    if not match or not Path(match["path"]).is_file():
        return None, None
    source = str(Path(match["path"]).resolve())
    if source not in lines_of:
        try:
            lines_of[source] = Path(source).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines_of[source] = None
    lines = lines_of[source]
    number = int(match["line"])
    if lines is not None and 1 <= number <= len(lines):
        return source, lines[number - 1].strip()[:CAPTION_CHARS]
    return source, None


__all__ = ["Part", "describe_rows", "file_digest", "part_files", "part_shard", "read_metadata", "read_part",
           "shards_by_part_name"]
