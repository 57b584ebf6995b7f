"""Numbered tar shards written reproducibly and atomically, and the ``sizes.json`` beside them.

Each shard is written to ``{name}.partial`` and renamed when complete; tar headers
are fixed (mtime, uid, gid, mode) and members sorted, so the same samples give the
same bytes.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

# Reproducible tar headers: same samples, same bytes.
_TAR_MTIME = 0
_TAR_MODE = 0o644
_TAR_FORMAT = tarfile.PAX_FORMAT
_PARTIAL_SUFFIX = ".partial"


def shard_spec(shards: list[Path]) -> str:
    """Brace pattern for consecutive shards named ``{prefix}-{index:06d}.tar`` in one directory."""
    if not shards:
        return ""
    if len(shards) == 1:
        return str(shards[0])
    first, last = shards[0], shards[-1]
    prefix, first_index = first.stem.rsplit("-", 1)
    last_index = last.stem.rsplit("-", 1)[1]
    return str(first.parent / f"{prefix}-{{{first_index}..{last_index}}}.tar")


def _tar_header(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _TAR_MTIME
    info.mode = _TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _tar_file_size(content_bytes: int) -> int:
    """Size of a tar file whose members take ``content_bytes``: end marker, then padding to a record."""
    return _round_up(content_bytes + 2 * tarfile.BLOCKSIZE, tarfile.RECORDSIZE)


class ShardSequence:
    """Numbered shards in one directory, each under a temporary name until complete."""

    def __init__(self, directory: Path, prefix: str, max_samples: int, max_bytes: int):
        self.directory = directory
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.shards: list[Path] = []
        self.sizes: dict[str, int] = {}
        self._file = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._content_bytes = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        # Sorted extensions: member order (hence the bytes) does not depend on how the sample was built.
        headers = [(_tar_header(f"{key}.{extension}", len(members[extension])), extension) for extension in sorted(members)]
        sample_bytes = sum(
            len(info.tobuf(_TAR_FORMAT, tarfile.ENCODING, "surrogateescape")) + _round_up(info.size, tarfile.BLOCKSIZE)
            for info, _ in headers
        )
        full = self._count >= self.max_samples or _tar_file_size(self._content_bytes + sample_bytes) > self.max_bytes
        if self._tar is not None and full:
            self._finish_shard()
        if self._tar is None:
            self._start_shard()
        for info, extension in headers:
            self._tar.addfile(info, io.BytesIO(members[extension]))
        self._count += 1
        self._content_bytes += sample_bytes

    def close(self) -> None:
        if self._tar is not None:
            self._finish_shard()

    def abort(self) -> None:
        """Remove the shard in progress (after an error): it never gets a final name."""
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._partial_path().unlink(missing_ok=True)
            self._tar = None

    def _final_path(self) -> Path:
        return self.directory / f"{self.prefix}-{len(self.shards):06d}.tar"

    def _partial_path(self) -> Path:
        path = self._final_path()
        return path.with_name(path.name + _PARTIAL_SUFFIX)

    def _start_shard(self) -> None:
        self._file = open(self._partial_path(), "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=_TAR_FORMAT)
        self._count = 0
        self._content_bytes = 0

    def _finish_shard(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self._final_path()
        os.replace(self._partial_path(), final)
        self.shards.append(final)
        self.sizes[final.name] = self._count
        self._tar = None


def merged_sizes(directory: Path, prefix: str, sizes: dict[str, int]) -> dict[str, int]:
    """Our shards' counts, plus the entries of other prefixes' shards that still exist in the folder."""
    path = directory / "sizes.json"
    merged: dict[str, int] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = {}
        ours = re.compile(re.escape(prefix) + r"-\d{6}\.tar")
        if isinstance(previous, dict):
            merged = {
                name: count
                for name, count in previous.items()
                if not ours.fullmatch(name) and (directory / name).is_file()
            }
    merged.update(sizes)
    return merged


def existing_shards(directory: Path, prefix: str) -> list[Path]:
    pattern = re.compile(re.escape(prefix) + r"-\d{6}\.tar")
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if pattern.fullmatch(path.name))
