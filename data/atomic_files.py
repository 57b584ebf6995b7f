"""Writing files so that a reader never sees half of one, with the permissions the user's umask asks for.

Everything the project writes for a person to keep (shards' ``sizes.json``, tokenizers,
embeddings, checkpoints) goes through here: the content goes to a temporary sibling,
reaches the disk, and is renamed onto the final name in one step.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def permissions(*, directory: bool = False) -> int:
    """The mode a new file (0666) or directory (0777) gets under the current umask.

    ``tempfile`` creates 0600 files and 0700 directories; what we rename into place must
    look like anything else the user writes (0644 / 0755 under the usual umask 022).
    """
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Calls ``write(temporary_path)``, then renames the temporary file onto ``path``; returns ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, permissions())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path``, atomically."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> Path:
    """``value`` as JSON (keys sorted, one trailing newline) to ``path``, atomically."""
    return write_text_atomically(path, json.dumps(value, indent=indent, sort_keys=True) + "\n")
