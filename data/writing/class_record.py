"""The class names of labelled shards, recorded beside them in ``classes.json``.

``multimodal shards --layout classes`` numbers the class folders in sorted order and writes
each sample's ``label`` and ``class_name`` into its json. Evaluation needs the names in
label order; reading them out of every sample means reading the whole shards. So the writer
also records them once per split folder, in ``classes.json`` beside ``sizes.json``, keyed by
shard prefix (shards of several prefixes may share a folder, as ``sizes.json`` allows)::

    {"shard": ["cat", "dog house", "zebra"]}

The list holds every class of the listing, label ``i`` named by its ``i``-th entry, even a
class none of whose samples landed in this split. Written only for labelled layouts: a
folder of captions gets no entry, and rewriting a prefix without labels drops its entry.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from multimodal.data.atomic_files import write_json_atomically
from multimodal.data.writing.tar_shards import existing_shards

FILE_NAME = "classes.json"
# A shard the writer names: {prefix}-{index:06d}.tar (see multimodal.data.writing.tar_shards).
_WRITTEN_SHARD = re.compile(r"(?P<prefix>[A-Za-z0-9_\-]+)-\d{6}\.tar")


def _read(path: Path) -> dict[str, list[str]]:
    """The record at ``path`` ({} when there is none); ValueError when it is not one."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read as a class record ({error}); delete it to read the class names "
                         "from the samples instead") from error
    valid = isinstance(record, dict) and all(
        isinstance(names, list) and all(isinstance(name, str) for name in names) for names in record.values())
    if not valid:
        raise ValueError(f"{path} is not a class record (a JSON object: shard prefix -> list of class names); "
                         "delete it to read the class names from the samples instead")
    return record


def write_class_record(directory: Path, prefix: str, class_names: Sequence[str] | None) -> None:
    """Records ``class_names`` (label order) for the shards ``{prefix}-*.tar`` of ``directory``.

    ``None`` (or no name) removes the prefix's entry (its shards are now unlabelled). Entries of other
    prefixes are kept while their shards exist; the file is removed when no entry is left.
    """
    path = directory / FILE_NAME
    try:
        previous = _read(path)
    except ValueError:
        previous = {}  # replaced below: the writer owns this file
    record = {other: names for other, names in previous.items()
              if other != prefix and existing_shards(directory, other)}
    if class_names:
        record[prefix] = list(class_names)
    if record:
        write_json_atomically(path, record)
    else:
        path.unlink(missing_ok=True)


def recorded_beside(urls: Sequence[str]) -> list[str] | None:
    """The class names recorded beside the shards ``urls``, in label order; None where there is no such record.

    A record applies when every URL is a local shard the writer names (``{prefix}-000000.tar``)
    whose folder's ``classes.json`` has an entry for its prefix, and those entries agree.
    Otherwise (shards written before the record existed, by another tool, remote or
    renamed) None: the names are then to be read from the samples. Nothing but the
    ``classes.json`` files is opened.
    """
    found: list[str] | None = None
    records: dict[Path, dict[str, list[str]]] = {}
    for url in urls:
        path = Path(url[len("file:"):] if url.startswith("file:") else url)
        match = _WRITTEN_SHARD.fullmatch(path.name)
        if "://" in url or url.startswith("pipe:") or match is None:
            return None
        if path.parent not in records:
            records[path.parent] = _read(path.parent / FILE_NAME)
        names = records[path.parent].get(match["prefix"])
        if not names or (found is not None and names != found):
            return None
        found = names
    return found


__all__ = ["FILE_NAME", "recorded_beside", "write_class_record"]
