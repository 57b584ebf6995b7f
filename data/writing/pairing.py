"""Files become samples by one rule, in every layout (caption files, class folders, names, manifests).

Files sharing a name (a relative path without extension, or a manifest's key) are one
sample when each is of another modality: ``guitar.svg`` + ``guitar.ogg`` is an
image-audio sample. Two files of one modality under one name (``cow.svg`` and
``cow.webp``) are both kept: the first, in the order raster image formats first
(``png`` before ``webp`` as :data:`READ_EXTENSIONS` lists them), then SVG, makes the
sample with the name's key and the other modalities' files; each further one is a sample
of its own, named with its extension (``cow.svg`` -> key ``cow_svg``), with the same
caption. A file that is used by no sample is named with its reason
(:data:`UNUSED_REASONS`), never dropped unsaid.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multimodal.data.writing.keys import make_key, unique_keys
from multimodal.data.modalities.image_modality import DRAWING_EXTENSIONS, IMAGE
from multimodal.data.modalities.registry import MEDIA_EXTENSIONS, MEDIA_MODALITIES, modality_of_extension, normalize_extension

# Drawings, rasterised to PNG when written if the svg extra is installed: images, read last.
# The image definition's own list, so a file the writer pairs is one the API reads.
VECTOR_EXTENSIONS = DRAWING_EXTENSIONS
READ_EXTENSIONS = MEDIA_EXTENSIONS + VECTOR_EXTENSIONS  # media files; captions and fields are read beside them
CAPTION_EXTENSION = "txt"
EXTRA_EXTENSION = "json"

# Why a file was used by no sample (besides the samples skipped, see the writer's SKIP_REASONS).
UNUSED_REASONS = {
    "type_not_read": (
        f"a type shards does not read (media: {', '.join(READ_EXTENSIONS)}; captions .txt, fields .json)"
    ),
    "captions_from_names": "a .txt file where captions come from file names (--captions names)",
    "captions_from_classes": "a .txt or .json file in the class-folder layout, where captions come from folder names",
    "same_name_twice": "a second caption or fields file under one name (x.txt and x.TXT): the first is used",
}


@dataclass(frozen=True)
class SampleSource:
    """One sample to write: its media (in memory or on disk), caption and extra fields.

    Args:
        key: unique name of the sample inside the shards (see :mod:`multimodal.data.writing.keys`).
        media: extension (``"png"``, ``"flac"`` ...) -> file contents or a path to read them from.
            Several entries make one multimodal sample (an image and its sound).
        caption: the caption, or a path to a UTF-8 text file holding it.
        extra: fields written as ``{key}.json``, or a path to a JSON file holding them.
        origin: where the sample came from, for skip reports (default: the first media path or the key).
        ignored: files of the same name whose type is not read; counted per extension and
            named in ``skipped.jsonl``. A source with nothing but ignored or unused files is
            no sample: they are only counted and named.
        unused: ``(path, reason)`` for other files of the same name no sample uses, ``reason``
            a key of :data:`UNUSED_REASONS`.
    """

    key: str
    media: Mapping[str, bytes | Path]
    caption: str | Path | None = None
    extra: Mapping[str, Any] | Path | None = None
    origin: str = ""
    ignored: tuple[Path, ...] = ()
    unused: tuple[tuple[Path, str], ...] = ()

    def describe(self) -> str:
        if self.origin:
            return self.origin
        for value in self.media.values():
            if isinstance(value, Path):
                return str(value)
        return self.key

    @property
    def only_ignored(self) -> bool:
        """True for files not read that belong to no sample."""
        return not self.media and self.caption is None and self.extra is None and bool(self.ignored or self.unused)


@dataclass
class Draft:
    """A sample before its key is chosen: ``name`` is the relative path (or manifest key) it is keyed by."""

    name: str
    media: dict[str, Path] = field(default_factory=dict)
    caption: str | Path | None = None
    extra: Mapping[str, Any] | Path | None = None
    origin: str = ""
    ignored: tuple[Path, ...] = ()
    unused: tuple[tuple[Path, str], ...] = ()


def media_modality(path: Path) -> str | None:
    """``"image"`` (SVG included), ``"audio"``, or None for a file no modality reads."""
    extension = normalize_extension(path.suffix)
    return IMAGE.name if extension in VECTOR_EXTENSIONS else modality_of_extension(extension)


def _preference(path: Path) -> tuple[int, str]:
    extension = normalize_extension(path.suffix)
    order = READ_EXTENSIONS.index(extension) if extension in READ_EXTENSIONS else len(READ_EXTENSIONS)
    return order, path.name


def pair_media(name: str, paths: Sequence[Path]) -> list[tuple[str, dict[str, Path]]]:
    """The one pairing rule for the media files sharing ``name``: ``[(sample name, {extension: path})]``.

    The first file of each modality (see the module docstring for the order) joins the sample
    named ``name``; every further file makes a sample of its own named ``name`` + its suffix.
    A file of a type no modality reads (only a manifest names such files) is a sample alone,
    so that it fails alone.
    """
    by_modality: dict[str, list[Path]] = {}
    unread = []
    for path in paths:
        modality = media_modality(path)
        if modality is None:
            unread.append(path)
        else:
            by_modality.setdefault(modality, []).append(path)
    first: dict[str, Path] = {}
    further: list[Path] = []
    for modality in MEDIA_MODALITIES:
        ranked = sorted(by_modality.get(modality, []), key=_preference)
        if ranked:
            first[normalize_extension(ranked[0].suffix)] = ranked[0]
            further.extend(ranked[1:])
    samples = [(name, first)] if first else []
    for path in further + unread:
        if not samples:  # an unread file alone under its name keeps the name
            samples.append((name, {normalize_extension(path.suffix): path}))
        else:
            samples.append((name + path.suffix, {normalize_extension(path.suffix): path}))
    return samples


def keyed_samples(drafts: Iterable[Draft]) -> list[SampleSource]:
    """The drafts as :class:`SampleSource`, each keyed by :func:`multimodal.data.writing.keys.unique_keys` of the names.

    Drafts of unread files only are named but never written: they take no part in choosing keys.
    """
    drafts = list(drafts)
    writable = [draft.name for draft in drafts if draft.media or draft.caption is not None or draft.extra is not None]
    keys = unique_keys(writable)
    return [
        SampleSource(
            key=keys.get(draft.name) or make_key(draft.name),
            media=draft.media,
            caption=draft.caption,
            extra=draft.extra,
            origin=draft.origin,
            ignored=draft.ignored,
            unused=draft.unused,
        )
        for draft in drafts
    ]


__all__ = [
    "CAPTION_EXTENSION",
    "Draft",
    "EXTRA_EXTENSION",
    "READ_EXTENSIONS",
    "SampleSource",
    "UNUSED_REASONS",
    "VECTOR_EXTENSIONS",
    "keyed_samples",
    "media_modality",
    "pair_media",
]
