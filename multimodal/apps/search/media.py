"""The bytes of an indexed row, to show it: its own file, or its sample's member in a local tar shard.

Only what the index records is ever read: a row's source is a file the collection was
embedded from, or a local shard holding its sample. ``pipe:`` commands and remote URLs
are never opened here (a server must not run a recorded command per request).
"""
from __future__ import annotations

import io
import mimetypes
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path

from multimodal.data.modalities.registry import MEDIA_TYPES, get_modality
from multimodal.data.pipeline.shard_reader import SHARD_SUFFIXES, is_remote

OPEN_SHARDS = 8  # tar files kept open, least recently used closed first
DRAWN_PIXELS = 512  # the longer side of the picture shown for a file not served as it is (an SVG)


def media_type(extension: str) -> str:
    """The MIME type of a file extension (``"png"`` -> ``"image/png"``)."""
    extension = extension.lower().lstrip(".")
    return MEDIA_TYPES.get(extension) or mimetypes.types_map.get(f".{extension}", "application/octet-stream")


def is_local_shard(source: str) -> bool:
    return source.endswith(SHARD_SUFFIXES) and not is_remote(source)


class MediaReader:
    """Reads rows' media for one modality; thread-safe; keeps a few shards open with their member tables."""

    def __init__(self, modality: str) -> None:
        # The members training reads the modality from, in the same order (none for captions).
        self.definition = get_modality(modality)
        self.extensions = self.definition.extensions
        self._shards: OrderedDict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, key: str, source: str | None) -> tuple[bytes, str] | None:
        """(bytes, MIME type) of a row, or None when it has nothing to show (a caption, or a source that is gone)."""
        if not source or not self.extensions:
            return None
        if is_local_shard(source):
            return self._from_shard(source, key)
        path = Path(source)
        extension = path.suffix.lower().lstrip(".")
        if not path.is_file() or extension not in self.definition.folder_extensions:
            return None
        if extension in self.extensions:
            return path.read_bytes(), media_type(extension)
        # A file the modality reads but a browser is not given as it is (an SVG may hold scripts):
        # the picture the modality draws of it, as PNG.
        picture = self.definition.thumbnail(path.read_bytes(), DRAWN_PIXELS)
        if picture is None:
            return None
        png = io.BytesIO()
        picture.save(png, format="PNG")
        return png.getvalue(), "image/png"

    def _members(self, shard: str) -> tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]:
        if shard in self._shards:
            self._shards.move_to_end(shard)
            return self._shards[shard]
        archive = tarfile.open(shard, "r:*")  # reads the headers once; members are then read by offset
        members = {info.name: info for info in archive.getmembers() if info.isfile()}
        self._shards[shard] = (archive, members)
        while len(self._shards) > OPEN_SHARDS:
            _, (old, _) = self._shards.popitem(last=False)
            old.close()
        return archive, members

    def _from_shard(self, shard: str, key: str) -> tuple[bytes, str] | None:
        if not Path(shard).is_file():
            return None
        with self._lock:
            try:
                archive, members = self._members(shard)
                for extension in self.extensions:
                    for name in (f"{key}.{extension}", f"{key}.{extension.upper()}"):
                        if name in members:
                            handle = archive.extractfile(members[name])
                            return handle.read(), media_type(extension)
            except (OSError, tarfile.TarError, EOFError):
                self._shards.pop(shard, None)
                return None
        return None

    def close(self) -> None:
        with self._lock:
            for archive, _ in self._shards.values():
                archive.close()
            self._shards.clear()


__all__ = ["MEDIA_TYPES", "MediaReader", "is_local_shard", "media_type"]
