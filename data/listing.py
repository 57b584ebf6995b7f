"""What to write into shards: the samples of a folder or a manifest, listed, not yet read.

Two folder layouts (see :func:`samples_from_folder`) and CSV / JSONL manifests (see
:func:`samples_from_manifest`) give :class:`SampleSource` lists for
:func:`multimodal.data.writer.write_shards`. Listing reads no media: it groups files
by name and decides what each one is for.
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multimodal.data.modalities import (
    IMAGE_EXTENSIONS,
    MEDIA_EXTENSIONS,
    MEDIA_MODALITIES,
    get_modality,
    modality_of_extension,
    normalize_extension,
)

# Drawings, rasterised to PNG when written if the svg extra is installed.
VECTOR_EXTENSIONS = ("svg",)
READ_EXTENSIONS = MEDIA_EXTENSIONS + VECTOR_EXTENSIONS  # anything else is ignored (and counted)
CAPTION_EXTENSION = "txt"
EXTRA_EXTENSION = "json"

DEFAULT_CAPTION_TEMPLATES = {name: get_modality(name).class_caption for name in MEDIA_MODALITIES}


_UNSAFE_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-]+")


def make_key(name: str) -> str:
    """A shard key from a relative path without extension: ``"cats/tabby 01"`` -> ``"cats__tabby_01"``.

    Keys hold no dot (webdataset splits key and extension at the first dot of the
    member name) and no slash (one flat level of members).
    """
    parts = [_UNSAFE_KEY_CHARACTERS.sub("_", part).strip("_") or "_" for part in re.split(r"[/\\]", name) if part]
    return "__".join(parts)


@dataclass(frozen=True)
class SampleSource:
    """One sample to write: its media (in memory or on disk), caption and extra fields.

    Args:
        key: unique name of the sample inside the shards (see :func:`make_key`).
        media: extension (``"png"``, ``"flac"`` ...) -> file contents or a path to read them from.
            Several entries make one multimodal sample (an image and its sound).
        caption: the caption, or a path to a UTF-8 text file holding it.
        extra: fields written as ``{key}.json``, or a path to a JSON file holding them.
        origin: where the sample came from, for skip reports (default: the first media path or the key).
        ignored: files of the same name whose type is not read; counted per extension.
            A source with nothing but ignored files is no sample: it is only counted.
    """

    key: str
    media: Mapping[str, bytes | Path]
    caption: str | Path | None = None
    extra: Mapping[str, Any] | Path | None = None
    origin: str = ""
    ignored: tuple[Path, ...] = ()

    def describe(self) -> str:
        if self.origin:
            return self.origin
        for value in self.media.values():
            if isinstance(value, Path):
                return str(value)
        return self.key

    @property
    def only_ignored(self) -> bool:
        """True for files of unread types that belong to no sample."""
        return not self.media and self.caption is None and self.extra is None and bool(self.ignored)



def samples_from_folder(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    caption_template: str | Mapping[str, str] | None = None,
) -> list[SampleSource]:
    """List the samples of a folder, in sorted order.

    Two layouts:

    - ``"captions"``: every media file has a caption in a same-stem ``.txt``
      (``dogs/01.jpg`` + ``dogs/01.txt``) and optionally extra fields in a
      same-stem ``.json``. Files sharing a stem make one sample, so
      ``x.png`` + ``x.flac`` + ``x.txt`` is an image-audio-text sample.
    - ``"classes"``: one sub-folder per class (``root/golden_retriever/*.jpg``);
      the caption is the template filled with the class name (underscores as
      spaces) and ``{"label": i, "class_name": name}`` goes to ``.json``, with
      ``i`` the index of the class in sorted order.

    ``"auto"`` picks ``"captions"`` when any ``.txt`` file exists, else ``"classes"``.

    Args:
        caption_template: for ``"classes"``: one template for all (``"a photo of a {}"``)
            or one per modality (``{"image": ..., "audio": ...}``); default
            ``"a photo of {}."`` / ``"the sound of {}."``.

    Hidden files and folders are left out. Files of types not read (neither media,
    ``.svg``, ``.txt`` nor ``.json``) are attached to the sample of the same name as
    ``ignored``, or listed alone, so that they are counted rather than vanish unnoticed;
    an ``.svg`` beside a raster image of the same name is ignored too (the raster is the
    original more often than not).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; pass the folder that holds the images/audio and captions")
    if layout not in ("auto", "captions", "classes"):
        raise ValueError(f"layout must be 'auto', 'captions' or 'classes', got {layout!r}")
    files = visible_files(root)
    if layout == "auto":
        layout = "captions" if any(path.suffix.lower() == ".txt" for path in files) else "classes"
    if layout == "captions":
        return _samples_with_caption_files(root, files)
    return _samples_from_class_folders(root, files, caption_template)


def _split_group(group: dict[str, Path]) -> tuple[dict[str, Path], tuple[Path, ...]]:
    """Same-name files ``{extension: path}`` -> (media to write, files ignored)."""
    media = {extension: path for extension, path in group.items() if extension in READ_EXTENSIONS}
    ignored = [path for extension, path in group.items() if extension not in READ_EXTENSIONS]
    if "svg" in media and any(extension in IMAGE_EXTENSIONS for extension in media):
        ignored.append(media.pop("svg"))
    return media, tuple(sorted(ignored))


def _samples_with_caption_files(root: Path, files: list[Path]) -> list[SampleSource]:
    groups: dict[Path, dict[str, Path]] = {}
    for path in files:
        stem = path.relative_to(root).with_suffix("")
        groups.setdefault(stem, {})[normalize_extension(path.suffix)] = path
    samples = []
    for stem, group in sorted(groups.items()):
        caption = group.pop(CAPTION_EXTENSION, None)
        extra = group.pop(EXTRA_EXTENSION, None)
        media, ignored = _split_group(group)
        samples.append(
            SampleSource(
                key=make_key(stem.as_posix()),
                media=media,
                caption=caption,
                extra=extra,
                origin=str(root / stem) + ".*",
                ignored=ignored,
            )
        )
    return samples


def visible_files(root: Path) -> list[Path]:
    """Every file under ``root``, sorted, leaving out hidden files and whatever is in hidden folders.

    Linked folders are followed (a class folder is often a link to where the files are),
    each real folder once, so a link back up the tree cannot loop.
    """
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        # Sorted, so which of two links to one folder is read is the same on every machine.
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        files.extend(Path(folder) / name for name in names if not name.startswith("."))
    return sorted(path for path in files if path.is_file())


def class_folder_files(root: Path, files: list[Path] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """The one rule by which class sub-folders are labelled, in ``shards`` and ``eval`` alike.

    The classes are the sub-folders of ``root`` holding at least one visible file (at any
    depth), sorted by name; a class's label is its place in that order. Returns (the class
    folders' names, every visible file inside them with its label), ``files`` being
    :func:`visible_files` of ``root`` when not given. Files beside the folders belong to none.
    """
    files = visible_files(root) if files is None else files
    in_classes = [path for path in files if len(path.relative_to(root).parts) > 1]
    names = sorted({path.relative_to(root).parts[0] for path in in_classes})
    labels = {name: index for index, name in enumerate(names)}
    return names, [(path, labels[path.relative_to(root).parts[0]]) for path in in_classes]


def class_name_in_words(folder: str) -> str:
    """A class folder's name as captions and class lists say it: ``golden_retriever`` -> ``golden retriever``."""
    return folder.replace("_", " ")


def _samples_from_class_folders(
    root: Path, files: list[Path], caption_template: str | Mapping[str, str] | None
) -> list[SampleSource]:
    templates = _caption_templates(caption_template)
    class_names, labelled = class_folder_files(root, files)
    if not class_names:
        raise ValueError(
            f"{root} has neither caption files (.txt beside each media file) nor class sub-folders; "
            "see samples_from_folder's docstring for the two layouts"
        )
    labels = dict(labelled)
    samples = []
    for path in files:
        relative = path.relative_to(root)
        extension = normalize_extension(path.suffix)
        key = make_key(relative.with_suffix("").as_posix())
        if extension not in READ_EXTENSIONS:
            samples.append(SampleSource(key, {}, origin=str(path), ignored=(path,)))
            continue
        if len(relative.parts) == 1:
            # A file beside the class folders belongs to no class.
            samples.append(SampleSource(key, {extension: path}, origin=str(path)))
            continue
        readable_name = class_name_in_words(relative.parts[0])
        template = templates.get(modality_of_extension(extension) or "image")
        samples.append(
            SampleSource(
                key=key,
                media={extension: path},
                caption=template.format(readable_name),
                extra={"label": labels[path], "class_name": readable_name},
                origin=str(path),
            )
        )
    return samples


def _caption_templates(caption_template: str | Mapping[str, str] | None) -> dict[str, str]:
    if caption_template is None:
        templates = dict(DEFAULT_CAPTION_TEMPLATES)
    elif isinstance(caption_template, str):
        templates = dict.fromkeys(MEDIA_MODALITIES, caption_template)
    else:
        templates = {**DEFAULT_CAPTION_TEMPLATES, **caption_template}
    for modality, template in templates.items():
        if "{}" not in template:
            raise ValueError(f"caption template for {modality} {template!r} needs a '{{}}' where the class name goes")
    return templates


def samples_from_manifest(path: str | os.PathLike) -> list[SampleSource]:
    """List the samples of a CSV (with a header row) or JSONL manifest.

    Required columns / fields: ``path`` (relative to the manifest's folder, or
    absolute) and ``caption``; optional ``key`` (default: from the path); every
    other column / field is kept in the sample's ``.json``. Empty CSV cells are
    left out.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv_manifest(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl_manifest(path)
    else:
        raise ValueError(f"manifest {path} must be a .csv or .jsonl file")
    samples = []
    for line_number, row in rows:
        relative = Path(str(row.pop("path")))
        media_path = relative if relative.is_absolute() else path.parent / relative
        key = row.pop("key", None) or relative.with_suffix("").as_posix()
        caption = row.pop("caption")
        samples.append(
            SampleSource(
                key=make_key(str(key)),
                media={normalize_extension(relative.suffix): media_path},
                caption=None if caption is None else str(caption),
                extra=row or None,
                origin=f"{path}:{line_number} ({media_path})",
            )
        )
    return samples


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
