"""Writing webdataset tar shards from a folder or a manifest (the library side of ``multimodal shards``).

A sample in a shard is a group of tar members sharing a key::

    {key}.png | .jpg | .webp | .flac | .wav | .ogg | .mp3   the media, bytes as they were
    {key}.txt                                               the caption (UTF-8)
    {key}.json                                              extra fields (label, class name, ...)

Shards are named ``{prefix}-000000.tar``, ``{prefix}-000001.tar`` ... and a
``sizes.json`` beside them maps each shard's file name to its sample count
(as open_clip's ``get_dataset_size`` reads it).

Guarantees:

- nothing is half-written under a final name: each shard is written to
  ``{name}.partial`` and renamed when complete, ``sizes.json`` last;
- the tar bytes depend only on the samples (fixed mtime, uid, gid, mode and
  member order), so writing the same data twice gives identical shards;
- each media file is decoded before it is written (the same decoders training
  uses); what fails is skipped and reported with the reason, never silently.

The functions here compute and return; progress goes to a callback, nothing is printed.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multimodal.data.files import write_json_atomically
from multimodal.data.seeds import stable_fraction
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + AUDIO_EXTENSIONS
# Spellings of the same format mapped to the key the readers expect.
_EXTENSION_ALIASES = {"jpeg": "jpg"}

TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "val"
ALL_SPLIT = "all"  # the one split when no validation fraction is asked for

DEFAULT_CAPTION_TEMPLATES = {"image": "a photo of {}.", "audio": "the sound of {}."}

# Reproducible tar headers: same samples, same bytes.
_TAR_MTIME = 0
_TAR_MODE = 0o644
_TAR_FORMAT = tarfile.PAX_FORMAT
_PARTIAL_SUFFIX = ".partial"


def normalize_extension(extension: str) -> str:
    """``".JPEG"`` -> ``"jpg"``: lower case, no dot, aliases folded."""
    extension = extension.lower().lstrip(".")
    return _EXTENSION_ALIASES.get(extension, extension)


def modality_of_extension(extension: str) -> str | None:
    """``"image"``, ``"audio"`` or None for a (normalised) media extension."""
    if extension in IMAGE_EXTENSIONS:
        return "image"
    if extension in AUDIO_EXTENSIONS:
        return "audio"
    return None


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
    """

    key: str
    media: Mapping[str, bytes | Path]
    caption: str | Path | None = None
    extra: Mapping[str, Any] | Path | None = None
    origin: str = ""

    def describe(self) -> str:
        if self.origin:
            return self.origin
        for value in self.media.values():
            if isinstance(value, Path):
                return str(value)
        return self.key


@dataclass(frozen=True)
class WriteProgress:
    """Counts passed to the ``progress`` callback after each sample."""

    processed: int
    total: int
    written: int
    skipped: int


@dataclass
class SplitResult:
    """The shards written for one split."""

    directory: Path
    shards: list[Path] = field(default_factory=list)
    num_samples: int = 0

    @property
    def spec(self) -> str:
        """The shards as one brace pattern, e.g. ``dir/data-{000000..000007}.tar`` ("" when none)."""
        return shard_spec(self.shards)


@dataclass
class WriteResult:
    """What :func:`write_shards` did.

    ``splits`` is keyed ``"train"`` / ``"val"`` when a validation fraction was
    given, else ``"all"``; ``skipped`` lists ``(origin, reason)`` for every sample
    not written.
    """

    splits: dict[str, SplitResult]
    skipped: list[tuple[str, str]]

    @property
    def num_written(self) -> int:
        return sum(split.num_samples for split in self.splits.values())

    @property
    def shards(self) -> list[Path]:
        return [shard for split in self.splits.values() for shard in split.shards]


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


# Listing samples -------------------------------------------------------------------


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

    Hidden files are ignored; files of other types are listed so that they are
    reported as skipped rather than vanish unnoticed.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; pass the folder that holds the images/audio and captions")
    if layout not in ("auto", "captions", "classes"):
        raise ValueError(f"layout must be 'auto', 'captions' or 'classes', got {layout!r}")
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    if layout == "auto":
        layout = "captions" if any(path.suffix.lower() == ".txt" for path in files) else "classes"
    if layout == "captions":
        return _samples_with_caption_files(root, files)
    return _samples_from_class_folders(root, files, caption_template)


def _samples_with_caption_files(root: Path, files: list[Path]) -> list[SampleSource]:
    groups: dict[Path, dict[str, Path]] = {}
    for path in files:
        stem = path.relative_to(root).with_suffix("")
        groups.setdefault(stem, {})[normalize_extension(path.suffix)] = path
    samples = []
    for stem, group in sorted(groups.items()):
        caption = group.pop("txt", None)
        extra = group.pop("json", None)
        samples.append(
            SampleSource(
                key=make_key(stem.as_posix()),
                media=group,
                caption=caption,
                extra=extra,
                origin=str(root / stem) + ".*",
            )
        )
    return samples


def _samples_from_class_folders(
    root: Path, files: list[Path], caption_template: str | Mapping[str, str] | None
) -> list[SampleSource]:
    templates = _caption_templates(caption_template)
    in_classes = [path for path in files if len(path.relative_to(root).parts) > 1]
    class_names = sorted({path.relative_to(root).parts[0] for path in in_classes})
    if not class_names:
        raise ValueError(
            f"{root} has neither caption files (.txt beside each media file) nor class sub-folders; "
            "see samples_from_folder's docstring for the two layouts"
        )
    labels = {name: index for index, name in enumerate(class_names)}
    samples = []
    for path in files:
        relative = path.relative_to(root)
        extension = normalize_extension(path.suffix)
        if len(relative.parts) == 1:
            # A file beside the class folders belongs to no class.
            samples.append(SampleSource(make_key(relative.with_suffix("").as_posix()), {extension: path}, origin=str(path)))
            continue
        class_name = relative.parts[0]
        readable_name = class_name.replace("_", " ")
        template = templates.get(modality_of_extension(extension) or "image")
        samples.append(
            SampleSource(
                key=make_key(relative.with_suffix("").as_posix()),
                media={extension: path},
                caption=template.format(readable_name),
                extra={"label": labels[class_name], "class_name": readable_name},
                origin=str(path),
            )
        )
    return samples


def _caption_templates(caption_template: str | Mapping[str, str] | None) -> dict[str, str]:
    if caption_template is None:
        templates = dict(DEFAULT_CAPTION_TEMPLATES)
    elif isinstance(caption_template, str):
        templates = {"image": caption_template, "audio": caption_template}
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


# Writing ----------------------------------------------------------------------------


def _default_validator(extension: str, data: bytes) -> None:
    """Decode with the decoders training uses; raises ValueError when the bytes do not decode."""
    # Imported here: listing and writing need neither torch nor the audio stack.
    modality = modality_of_extension(extension)
    if modality == "image":
        from multimodal.data.image import decode_image

        decode_image(data)
    elif modality == "audio":
        from multimodal.data.audio import decode_audio

        decode_audio(data)


class _SampleError(Exception):
    """A sample that cannot be written; the message is the reason reported."""


def _read_bytes(value: bytes | Path, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    try:
        return Path(value).read_bytes()
    except OSError as error:
        raise _SampleError(f"cannot read {what} {value}: {error.strerror or error}") from error


def _prepare(source: SampleSource, validate: bool, validator: Callable[[str, bytes], None]) -> dict[str, bytes]:
    """The sample's tar members ``{extension: bytes}``, or _SampleError saying why not."""
    if not source.media:
        raise _SampleError("no image or audio file (a caption or .json without its media file)")
    members: dict[str, bytes] = {}
    for extension, value in source.media.items():
        extension = normalize_extension(extension)
        if extension not in MEDIA_EXTENSIONS:
            raise _SampleError(
                f"unsupported file type '.{extension}' (supported: {', '.join(MEDIA_EXTENSIONS)}); convert it first"
            )
        data = _read_bytes(value, "media file")
        if not data:
            raise _SampleError(f"empty {extension} file")
        if validate:
            try:
                validator(extension, data)
            except (ValueError, RuntimeError) as error:
                raise _SampleError(f"{extension} does not decode: {error}") from error
        members[extension] = data
    caption = source.caption
    if isinstance(caption, Path):
        try:
            caption = _read_bytes(caption, "caption file").decode("utf-8")
        except UnicodeDecodeError as error:
            raise _SampleError(f"caption file {source.caption} is not UTF-8: {error}") from error
    if caption is None or not caption.strip():
        raise _SampleError("no caption (no same-stem .txt file, 'caption' field or class folder)")
    members["txt"] = caption.strip().encode("utf-8")
    extra = source.extra
    if isinstance(extra, Path):
        try:
            extra = json.loads(_read_bytes(extra, "JSON file").decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _SampleError(f"{source.extra} is not valid JSON: {error}") from error
        if not isinstance(extra, dict):
            raise _SampleError(f"{source.extra} holds a JSON {type(extra).__name__}, expected an object")
    if extra:
        try:
            members["json"] = json.dumps(dict(extra), sort_keys=True, ensure_ascii=False).encode("utf-8")
        except TypeError as error:
            raise _SampleError(f"extra fields are not JSON-serialisable: {error}") from error
    return members


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


class _ShardSequence:
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


def _is_validation(key: str, seed: int, fraction: float) -> bool:
    """Deterministic split by a hash of (seed, key): a sample keeps its split when others are added."""
    return stable_fraction(seed, key) < fraction


def _merged_sizes(directory: Path, prefix: str, sizes: dict[str, int]) -> dict[str, int]:
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


def _existing_shards(directory: Path, prefix: str) -> list[Path]:
    pattern = re.compile(re.escape(prefix) + r"-\d{6}\.tar")
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if pattern.fullmatch(path.name))


def write_shards(
    samples: Iterable[SampleSource],
    output_dir: str | os.PathLike,
    *,
    prefix: str = "shard",
    max_samples_per_shard: int = 10_000,
    max_bytes_per_shard: int = 1 << 30,
    validation_fraction: float = 0.0,
    seed: int = 0,
    shuffle: bool = True,
    validate: bool = True,
    overwrite: bool = False,
    progress: Callable[[WriteProgress], None] | None = None,
    validator: Callable[[str, bytes], None] | None = None,
) -> WriteResult:
    """Write samples into webdataset tar shards.

    Args:
        samples: what to write (see :func:`samples_from_folder`, :func:`samples_from_manifest`).
        output_dir: where the shards go; with a validation fraction, into
            ``output_dir/train`` and ``output_dir/val``, each with its ``sizes.json``.
        prefix: shard file names are ``{prefix}-{index:06d}.tar``.
        max_samples_per_shard: most samples in one shard.
        max_bytes_per_shard: largest shard file; a single sample larger than this
            gets a shard of its own.
        validation_fraction: share of samples held out for validation, in [0, 1).
            The split is by a hash of (seed, key), so it is deterministic, independent
            of sample order, and approximate (a binomial draw around the fraction).
        seed: seeds the split and the shuffle.
        shuffle: write samples in a seeded random order, so each shard mixes classes
            (lists the sources, not their bytes, in memory).
        validate: decode each media file first and skip those that fail.
        overwrite: replace existing ``{prefix}-*.tar`` shards in the output folders;
            without it, existing shards are an error.
        progress: called with :class:`WriteProgress` after each sample.
        validator: ``(extension, bytes) -> None`` raising ValueError for bad media;
            default decodes with ``multimodal.data.image`` / ``multimodal.data.audio``.

    Returns:
        A :class:`WriteResult`: shards and counts per split, and the skipped samples with reasons.
    """
    if max_samples_per_shard < 1:
        raise ValueError(f"max_samples_per_shard must be at least 1, got {max_samples_per_shard}")
    if max_bytes_per_shard < tarfile.RECORDSIZE:
        raise ValueError(f"max_bytes_per_shard must be at least {tarfile.RECORDSIZE} (one tar record), got {max_bytes_per_shard}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", prefix):
        raise ValueError(f"prefix {prefix!r} may hold only letters, digits, '_' and '-'")
    output_dir = Path(output_dir)
    if validation_fraction > 0:
        directories = {TRAIN_SPLIT: output_dir / TRAIN_SPLIT, VALIDATION_SPLIT: output_dir / VALIDATION_SPLIT}
    else:
        directories = {ALL_SPLIT: output_dir}
    stale = [path for directory in directories.values() for path in _existing_shards(directory, prefix)]
    if stale and not overwrite:
        raise ValueError(
            f"{stale[0].parent} already holds {len(stale)} shard(s) named {prefix}-*.tar; "
            "choose another output folder or prefix, or pass overwrite=True to replace them"
        )
    for directory in directories.values():
        directory.mkdir(parents=True, exist_ok=True)

    sources = list(samples)
    if shuffle:
        random.Random(seed).shuffle(sources)
    validator = validator or _default_validator
    writers = {
        name: _ShardSequence(directory, prefix, max_samples_per_shard, max_bytes_per_shard)
        for name, directory in directories.items()
    }
    skipped: list[tuple[str, str]] = []
    seen_keys: set[str] = set()
    written = 0
    try:
        for processed, source in enumerate(sources, start=1):
            try:
                if not source.key or "." in source.key or "/" in source.key:
                    raise _SampleError(f"key {source.key!r} must be non-empty with no '.' or '/' (see make_key)")
                if source.key in seen_keys:
                    raise _SampleError(f"duplicate key {source.key!r}: another sample already has it")
                members = _prepare(source, validate, validator)
            except _SampleError as error:
                skipped.append((source.describe(), str(error)))
            else:
                seen_keys.add(source.key)
                split = ALL_SPLIT
                if validation_fraction > 0:
                    split = VALIDATION_SPLIT if _is_validation(source.key, seed, validation_fraction) else TRAIN_SPLIT
                writers[split].add(source.key, members)
                written += 1
            if progress is not None:
                progress(WriteProgress(processed=processed, total=len(sources), written=written, skipped=len(skipped)))
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise

    splits = {}
    for name, writer in writers.items():
        # Shards left from an earlier, larger run under the same prefix would be read as data.
        for path in _existing_shards(writer.directory, prefix):
            if path not in writer.shards:
                path.unlink()
        write_json_atomically(writer.directory / "sizes.json", _merged_sizes(writer.directory, prefix, writer.sizes))
        splits[name] = SplitResult(writer.directory, writer.shards, sum(writer.sizes.values()))
    return WriteResult(splits=splits, skipped=skipped)
