"""CSV and JSONL manifests: one row per file, its caption and other fields, paired into samples.

Required columns / fields: ``path`` (relative to the manifest's folder, or absolute) and
``caption``; optional ``key`` (default: the path without extension); every other column /
field is kept in the sample's ``.json``. Empty CSV cells are left out.

Rows sharing a key are one sample by the rule every layout follows
(:func:`multimodal.data.writing.pairing.pair_media`): ``instruments/guitar.svg`` and
``instruments/guitar.ogg`` are an image-audio sample; the same file on several rows, or a
picture and a sound of one name captioned differently, give one sample with every caption (a caption
list: training draws one, evaluation takes the first); two files of one modality under one
key are two samples, each with the captions of its own rows. Fields of rows of one sample
are merged, the first row's value kept where two differ.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from multimodal.data.writing.pairing import Draft, SampleSource, keyed_samples, pair_media


def samples_from_manifest(path: str | Path) -> list[SampleSource]:
    """List the samples of a CSV (with a header row) or JSONL manifest (see the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv_manifest(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl_manifest(path)
    else:
        raise ValueError(f"manifest {path} must be a .csv or .jsonl file")
    groups: dict[str, list[tuple[int, Path, dict[str, Any]]]] = {}
    for line_number, row in rows:
        relative = Path(str(row.pop("path")))
        media_path = relative if relative.is_absolute() else path.parent / relative
        name = str(row.pop("key", None) or relative.with_suffix("").as_posix())
        groups.setdefault(name, []).append((line_number, media_path, row))
    drafts = [draft for name, group in groups.items() for draft in _group_drafts(path, name, group)]
    return keyed_samples(drafts)


def _group_drafts(manifest: Path, name: str, group: list[tuple[int, Path, dict[str, Any]]]) -> list[Draft]:
    """The samples of the rows sharing one key: files paired, each sample with the captions and fields of its files' rows."""
    paths = list(dict.fromkeys(media_path for _, media_path, _ in group))
    drafts = []
    for sample_name, media in pair_media(name, paths):
        rows = [(line_number, row) for line_number, media_path, row in group if media_path in media.values()]
        captions = list(dict.fromkeys(str(row["caption"]) for _, row in rows if row.get("caption") is not None))
        extra: dict[str, Any] = {}
        for _, row in rows:
            for field, value in row.items():
                if field != "caption":
                    extra.setdefault(field, value)
        lines = ",".join(str(line_number) for line_number, _ in rows)
        drafts.append(Draft(sample_name, media, "\n".join(captions) if captions else None, extra or None,
                            f"{manifest}:{lines} ({', '.join(str(value) for value in media.values())})"))
    return drafts


def _require_columns(path: Path, found: Iterable[str], where: str) -> None:
    missing = [name for name in ("path", "caption") if name not in found]
    if missing:
        raise ValueError(f"manifest {path}{where} lacks {missing}; found {sorted(found)}. Needed: path, caption")


def _read_csv_manifest(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        _require_columns(path, reader.fieldnames or [], " header")
        rows = []
        for row in reader:
            rows.append((reader.line_num, {name: value for name, value in row.items() if value not in ("", None)}))
    for line_number, row in rows:
        row.setdefault("caption", None)
        if "path" not in row:
            raise ValueError(f"manifest {path} line {line_number} has an empty path")
        yield line_number, row


def _read_jsonl_manifest(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as file:
        lines = file.readlines()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"manifest {path} line {line_number} is not valid JSON: {error}") from error
        if not isinstance(row, dict):
            raise ValueError(f"manifest {path} line {line_number} is not a JSON object")
        _require_columns(path, row.keys(), f" line {line_number}")
        yield line_number, row


__all__ = ["samples_from_manifest"]
