"""Writing webdataset tar shards from a folder or a manifest (the library side of ``multimodal shards``).

A sample in a shard is a group of tar members sharing a key::

    {key}.png | .jpg | .webp | .gif | .flac | .wav | .ogg | .mp3   the media, bytes as they were
    {key}.txt                                                      the caption (UTF-8)
    {key}.json                                                     extra fields (label, class name, ...)

(the extensions of :mod:`multimodal.data.modalities.registry`, ``.jpeg`` written as ``.jpg``).

Shards are named ``{prefix}-000000.tar``, ``{prefix}-000001.tar`` ... and a
``sizes.json`` beside them maps each shard's file name to its sample count
(as open_clip's ``get_dataset_size`` reads it). Beside them too:

- ``image_stats.json``: the per-channel mean and std of the split's images
  (see :mod:`multimodal.data.preprocess.image_stats`), for training's normalisation;
- ``classes.json``, given ``class_names`` (the class-folder layout gives them): the class
  names in label order, so that evaluation need not read every sample for them
  (see :mod:`multimodal.data.writing.class_record`);
- ``skipped.jsonl`` (in the output folder): one JSON object per sample not
  written, ``{"origin": ..., "reason": ..., "detail": ...}``, ``reason`` one of
  :data:`SKIP_REASONS`, then one per other file no sample uses, ``reason`` one of
  :data:`UNUSED_FILE_REASONS`; empty when every file was used.

What a messy folder holds, and what becomes of it:

- files of types not read (``.dat``, ``.xcf`` ...) are ignored, counted per extension
  (:attr:`WriteResult.ignored_files`) and named in ``skipped.jsonl``; they never cost
  the sample of their name its media;
- an SVG is rasterised to PNG when ``resvg-py`` is installed (the ``svg`` extra,
  see :mod:`multimodal.data.preprocess.svg`); else a sample whose only media it was is skipped as
  ``svg_unsupported``, and one with a sound is written without it, the SVG named;
- a caption file of several non-empty lines (a caption and its translations, or
  several descriptions): by default (``caption_lines="lines"``) every non-empty line
  is one caption, written as the list ``{"caption": [...]}`` in the sample's
  ``.json`` (no ``.txt``), which the training pipeline reads as it reads other
  caption lists: training draws one per sample, evaluation takes the first.
  ``"first"`` keeps only the first line as ``.txt``; ``"whole"`` the whole text.
  A one-line caption is always ``.txt``. Such captions are counted
  (:attr:`WriteResult.multi_line_captions`).

Guarantees:

- nothing is half-written under a final name: each shard is written to
  ``{name}.partial`` and renamed when complete, ``sizes.json`` last;
- the tar bytes depend only on the samples (fixed mtime, uid, gid, mode and
  member order), so writing the same data twice gives identical shards;
- each media file is decoded before it is written (the same decoders training
  uses); what fails is skipped and reported with the reason, never silently.

Given a model's limits (``lengths``, see :mod:`multimodal.data.lengths`), every sample
written is measured against them: :attr:`WriteResult.lengths` counts the clips longer
than the audio window and the captions longer than the text context, which training cuts.

The functions here compute and return; progress goes to a callback, nothing is printed.
"""
from __future__ import annotations

import json
import os
import random
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from multimodal.data.preprocess import svg
from multimodal.data.writing.class_record import write_class_record
from multimodal.data.preprocess.preprocess_config import WHITE
from multimodal.data.atomic_files import write_json_atomically, write_text_atomically
# Listing is part of the writer's API: its names are exported from here too.
from multimodal.data.writing.listing import (
    CAPTION_EXTENSION,
    EXTRA_EXTENSION,
    MEDIA_EXTENSIONS,
    READ_EXTENSIONS,
    UNUSED_REASONS,
    FolderListing,
    SampleSource,
    list_folder,
    make_key,
    normalize_extension,
    samples_from_folder,
    samples_from_manifest,
)
from multimodal.data.modalities.registry import MEDIA_MODALITIES, get_modality, modality_of_extension
from multimodal.data.pipeline.sample_fields import SampleFields, UnusableSample
from multimodal.data.seeds import stable_fraction
from multimodal.data.writing.tar_shards import ShardSequence, existing_shards, merged_sizes, shard_spec

if TYPE_CHECKING:
    from multimodal.data.preprocess.image_stats import ImageStats
    from multimodal.data.lengths import LengthCounts, LengthLimits

TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "val"
ALL_SPLIT = "all"  # the one split when no validation fraction is asked for

# What becomes of a caption file of several non-empty lines (see the module docstring).
CAPTION_LINES = ("lines", "first", "whole")
SKIPPED_FILE = "skipped.jsonl"
# Images measured per split for image_stats.json: the first ones written, in the shuffled order.
STATS_MAX_IMAGES = 10_000

# Where training sources read a sample by default: what the length report measures.
_TRAINING_FIELDS = SampleFields()

# Why a sample was not written, and what to do about it.
SKIP_REASONS = {
    "no_media": "a caption or .json with no image or audio file of the same name",
    "svg_unsupported": f"its only image is an SVG: {svg.INSTALL_HINT}",
    "unsupported_type": (
        f"its media file is of a type not read (read: {', '.join(MEDIA_EXTENSIONS)}); convert it first"
    ),
    "no_caption": "no caption: put a same-name .txt beside each media file, or use one sub-folder per class",
    "empty_caption": "the caption file is empty",
    "bad_caption": "the caption file is not UTF-8 text; re-save it as UTF-8",
    "bad_json": "the same-name .json is not a JSON object",
    "caption_conflict": "a multi-line caption file and a 'caption' field in the .json: keep one",
    **{f"bad_{name}": f"the {name} does not decode (damaged, or not what its extension says)"
       for name in MEDIA_MODALITIES},
    "empty_file": "an empty media file",
    "unreadable": "a file could not be read",
    "bad_key": "its key holds a '.' or '/' or is empty (see make_key)",
    "duplicate_key": "another sample has the same key",
}
# Why a file was used by no sample, though the sample of its name may have been written.
UNUSED_FILE_REASONS = {
    **UNUSED_REASONS,
    "svg_unsupported": f"an SVG beside a sound, left out (the sound is written): {svg.INSTALL_HINT}",
}

class SkippedSample(NamedTuple):
    """A sample not written: where it came from, why (a key of :data:`SKIP_REASONS`), the details."""

    origin: str
    reason: str
    detail: str


@dataclass(frozen=True)
class WriteProgress:
    """Counts passed to the ``progress`` callback after each sample."""

    processed: int
    total: int
    written: int
    skipped: int


@dataclass
class SplitResult:
    """The shards written for one split, and the statistics of its images (None without images).

    ``class_names``: the names recorded in the split's ``classes.json`` (label order), None when none were.
    """

    directory: Path
    shards: list[Path] = field(default_factory=list)
    num_samples: int = 0
    image_stats: ImageStats | None = None
    class_names: list[str] | None = None

    @property
    def spec(self) -> str:
        """The shards as one brace pattern, e.g. ``dir/data-{000000..000007}.tar`` ("" when none)."""
        return shard_spec(self.shards)


@dataclass
class WriteResult:
    """What :func:`write_shards` did.

    ``splits`` is keyed ``"train"`` / ``"val"`` when a validation fraction was
    given, else ``"all"``. ``skipped`` lists every sample not written;
    ``unused_files`` every other file no sample written uses (its ``reason`` a key of
    :data:`UNUSED_FILE_REASONS`), files of unread types among them;
    ``skipped_file`` is where both were written, one JSON object a line.
    ``ignored_files`` counts files of unread types per extension (``{"dat": 528}``;
    ``""`` for files without one). ``num_listed`` counts the samples offered.
    ``lengths``: the clips and captions written, measured against the ``lengths`` limits
    given to :func:`write_shards` (None without them).
    """

    splits: dict[str, SplitResult]
    skipped: list[SkippedSample]
    skipped_file: Path
    num_listed: int
    ignored_files: dict[str, int] = field(default_factory=dict)
    multi_line_captions: int = 0
    caption_lines: str = "lines"
    svgs_rasterised: int = 0
    lengths: LengthCounts | None = None  # the samples written against the limits given, if any
    unused_files: list[SkippedSample] = field(default_factory=list)

    @property
    def unused_counts(self) -> dict[str, int]:
        """Files not used per reason, the most frequent first (ties by name)."""
        return _by_count(Counter(entry.reason for entry in self.unused_files))

    @property
    def num_written(self) -> int:
        return sum(split.num_samples for split in self.splits.values())

    @property
    def shards(self) -> list[Path]:
        return [shard for split in self.splits.values() for shard in split.shards]

    @property
    def skip_counts(self) -> dict[str, int]:
        """Skipped samples per reason, the most frequent first (ties by name)."""
        return _by_count(Counter(skip.reason for skip in self.skipped))

    @property
    def skip_fraction(self) -> float:
        """Skipped samples over samples listed (0 when none were listed)."""
        return len(self.skipped) / self.num_listed if self.num_listed else 0.0

    @property
    def training_split(self) -> SplitResult:
        """The split to train on: ``"train"``, or ``"all"`` without a validation fraction."""
        return self.splits.get(TRAIN_SPLIT) or self.splits[ALL_SPLIT]


def _decode_media(extension: str, data: bytes, background: tuple[int, int, int] = WHITE) -> object:
    """Decodes with the decoders training uses (see ``Modality.check_decodes``): an image's uint8
    (3, H, W), else None. Raises ValueError when the bytes do not decode.
    """
    modality = modality_of_extension(extension)
    return get_modality(modality).check_decodes(data, background=background) if modality is not None else None


class _SampleError(Exception):
    """A sample that cannot be written: ``reason`` (a key of SKIP_REASONS) and the details."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in SKIP_REASONS, reason
        super().__init__(detail)
        self.reason = reason


@dataclass
class _PreparedSample:
    """A sample's tar members ``{extension: bytes}`` and what the report counts of it."""

    members: dict[str, bytes]
    unused: list[SkippedSample] = field(default_factory=list)  # media files of the sample left out
    multi_line_caption: bool = False
    rasterised_svg: bool = False
    image: object = None  # the decoded image, when validation decoded one
    image_bytes: bytes | None = None
    labelled: tuple[object, object] | None = None  # its json's (label, class_name), when it has either


@dataclass(frozen=True)
class _Preparation:
    """How every sample is prepared: the write_shards options that concern one sample."""

    validate: bool
    validator: Callable[[str, bytes], object]
    caption_lines: str
    rasterise_svg: bool


def _preparation(validate: bool, validator: Callable[[str, bytes], object] | None, caption_lines: str,
                 background: tuple[int, int, int]) -> _Preparation:
    """The write_shards options that concern one sample; without a validator, training's decoders check the media."""
    return _Preparation(
        validate=validate,
        validator=validator or (lambda extension, data: _decode_media(extension, data, background)),
        caption_lines=caption_lines,
        rasterise_svg=svg.svg_support_available(),
    )


def _read_bytes(value: bytes | Path, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    try:
        return Path(value).read_bytes()
    except OSError as error:
        raise _SampleError("unreadable", f"cannot read {what} {value}: {error.strerror or error}") from error


def _caption_text(source: SampleSource) -> str:
    caption = source.caption
    if isinstance(caption, Path):
        try:
            # utf-8-sig: a byte-order mark some editors write is not part of the caption.
            caption = _read_bytes(caption, "caption file").decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise _SampleError("bad_caption", f"caption file {source.caption} is not UTF-8: {error}") from error
    if caption is None:
        raise _SampleError("no_caption", "no caption (no same-name .txt file, 'caption' field or class folder)")
    return caption


def _extra_fields(source: SampleSource) -> dict[str, Any]:
    extra = source.extra
    if isinstance(extra, Path):
        try:
            extra = json.loads(_read_bytes(extra, "JSON file").decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _SampleError("bad_json", f"{source.extra} is not valid JSON: {error}") from error
        if not isinstance(extra, dict):
            raise _SampleError("bad_json", f"{source.extra} holds a JSON {type(extra).__name__}, expected an object")
    return dict(extra or {})


def _caption_members(source: SampleSource, caption_lines: str, extra: dict[str, Any]) -> tuple[dict[str, bytes], bool]:
    """The caption as a ``.txt`` member, or as ``extra["caption"]`` (a list) for several lines; multi-line or not."""
    text = _caption_text(source)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise _SampleError("empty_caption", f"the caption{f' file {source.caption}' if isinstance(source.caption, Path) else ''} is empty")
    if len(lines) == 1:
        return {CAPTION_EXTENSION: lines[0].encode("utf-8")}, False
    if caption_lines == "first":
        return {CAPTION_EXTENSION: lines[0].encode("utf-8")}, True
    if caption_lines == "whole":
        return {CAPTION_EXTENSION: text.strip().encode("utf-8")}, True
    if "caption" in extra:
        fields = f"{source.extra}" if isinstance(source.extra, Path) else "the extra fields"
        caption = f"caption file {source.caption}" if isinstance(source.caption, Path) else "caption"
        raise _SampleError(
            "caption_conflict",
            f"{fields} has a 'caption' field and the {caption} has {len(lines)} lines; "
            "rename the field, or keep one line per caption (caption_lines='first')",
        )
    extra["caption"] = lines
    return {}, True


def _media_members(source: SampleSource, preparation: _Preparation, prepared: _PreparedSample) -> None:
    """Reads, converts and checks the media into ``prepared``; raises _SampleError for a bad sample."""
    media = {normalize_extension(extension): value for extension, value in source.media.items()}
    if "svg" in media and not preparation.rasterise_svg:
        drawing = media.pop("svg")
        where = str(drawing) if isinstance(drawing, Path) else f"{source.describe()} (.svg)"
        prepared.unused.append(SkippedSample(where, "svg_unsupported", UNUSED_FILE_REASONS["svg_unsupported"]))
        if not media:
            raise _SampleError("svg_unsupported", f"the only image is an SVG, and SVGs are not rasterised here: {svg.INSTALL_HINT}")
    for extension, value in sorted(media.items()):
        if extension not in READ_EXTENSIONS:
            raise _SampleError(
                "unsupported_type",
                f"unsupported file type '.{extension}' (supported: {', '.join(READ_EXTENSIONS)}); convert it first",
            )
        data = _read_bytes(value, "media file")
        if not data:
            raise _SampleError("empty_file", f"empty {extension} file")
        if extension == "svg":
            try:
                data = svg.rasterise_svg(data)
            except ValueError as error:
                raise _SampleError("bad_image", f"svg does not rasterise: {error}") from error
            extension = "png"
            prepared.rasterised_svg = True
        decoded = None
        if preparation.validate:
            try:
                decoded = preparation.validator(extension, data)
            except (ValueError, RuntimeError) as error:
                # Every extension read here is a registered one: an SVG was rasterised to png above.
                reason = f"bad_{modality_of_extension(extension)}"
                raise _SampleError(reason, f"{extension} does not decode: {error}") from error
        _keep_for_image_statistics(prepared, extension, data, decoded)
        prepared.members[extension] = data


def _keep_for_image_statistics(prepared: _PreparedSample, extension: str, data: bytes, decoded: object) -> None:
    """Keeps an image member (and its pixels, when validation decoded them) for the split's image_stats.json:
    statistics of images' pixels, which only images have."""
    if get_modality(modality_of_extension(extension)).writer_measures:
        prepared.image_bytes = data
        if decoded is not None:
            prepared.image = decoded


def _prepare(source: SampleSource, preparation: _Preparation) -> _PreparedSample:
    """The sample's tar members and what the report counts of it, or _SampleError saying why not."""
    if not source.key or "." in source.key or "/" in source.key:
        raise _SampleError("bad_key", f"key {source.key!r} must be non-empty with no '.' or '/' (see make_key)")
    ignored = [normalize_extension(path.suffix) for path in source.ignored]
    if not source.media:
        only = f" (beside it only {', '.join(sorted({f'.{e}' for e in ignored}))}, not read)" if ignored else ""
        raise _SampleError("no_media", f"no image or audio file (a caption or .json without its media file){only}")
    # Cheap checks first: a sample without a caption is rejected before its media is decoded.
    extra = _extra_fields(source)
    caption_members, multi_line = _caption_members(source, preparation.caption_lines, extra)
    prepared = _PreparedSample(members={}, multi_line_caption=multi_line)
    _media_members(source, preparation, prepared)
    prepared.members.update(caption_members)
    if "label" in extra or "class_name" in extra:
        prepared.labelled = (extra.get("label"), extra.get("class_name"))
    if extra:
        try:
            prepared.members[EXTRA_EXTENSION] = json.dumps(extra, sort_keys=True, ensure_ascii=False).encode("utf-8")
        except TypeError as error:
            raise _SampleError("bad_json", f"extra fields are not JSON-serialisable: {error}") from error
    return prepared


def _is_validation(key: str, seed: int, fraction: float) -> bool:
    """Deterministic split by a hash of (seed, key): a sample keeps its split when others are added."""
    return stable_fraction(seed, key) < fraction


def _check_arguments(
    max_samples_per_shard: int, max_bytes_per_shard: int, validation_fraction: float, prefix: str, caption_lines: str
) -> None:
    if max_samples_per_shard < 1:
        raise ValueError(f"max_samples_per_shard must be at least 1, got {max_samples_per_shard}")
    if max_bytes_per_shard < tarfile.RECORDSIZE:
        raise ValueError(f"max_bytes_per_shard must be at least {tarfile.RECORDSIZE} (one tar record), got {max_bytes_per_shard}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", prefix):
        raise ValueError(f"prefix {prefix!r} may hold only letters, digits, '_' and '-'")
    if caption_lines not in CAPTION_LINES:
        raise ValueError(f"caption_lines must be one of {CAPTION_LINES}, got {caption_lines!r}")


def _split_directories(output_dir: Path, validation_fraction: float, prefix: str, overwrite: bool) -> dict[str, Path]:
    """The folder of each split, created; existing shards of ``prefix`` there are an error unless ``overwrite``."""
    if validation_fraction > 0:
        directories = {TRAIN_SPLIT: output_dir / TRAIN_SPLIT, VALIDATION_SPLIT: output_dir / VALIDATION_SPLIT}
    else:
        directories = {ALL_SPLIT: output_dir}
    stale = [path for directory in directories.values() for path in existing_shards(directory, prefix)]
    if stale and not overwrite:
        raise ValueError(
            f"{stale[0].parent} already holds {len(stale)} shard(s) named {prefix}-*.tar; "
            "choose another output folder or prefix, or pass overwrite=True to replace them"
        )
    for directory in directories.values():
        directory.mkdir(parents=True, exist_ok=True)
    return directories


def _split_writers(directories: dict[str, Path], prefix: str, max_samples: int, max_bytes: int, background,
                   stats_max_images: int, class_names: Sequence[str] | None) -> dict[str, _SplitWriter]:
    """One :class:`_SplitWriter` per split folder (``directories``: split name to folder)."""
    return {
        name: _SplitWriter(directory, prefix, max_samples, max_bytes, background, stats_max_images,
                           list(class_names) if class_names else None)
        for name, directory in directories.items()
    }


class _SplitWriter:
    """One split's shards, the statistics of its images and the class names to record beside them."""

    def __init__(self, directory: Path, prefix: str, max_samples: int, max_bytes: int, background,
                 stats_max_images: int, class_names: list[str] | None = None):
        from multimodal.data.preprocess.image_stats import ImageStatsAccumulator

        self.shards = ShardSequence(directory, prefix, max_samples, max_bytes)
        self.stats = ImageStatsAccumulator(background, stats_max_images)
        self.class_names = class_names

    def add(self, key: str, prepared: _PreparedSample) -> None:
        self.shards.add(key, prepared.members)
        if self.class_names is not None and prepared.labelled is not None:
            label, name = prepared.labelled
            named = not isinstance(label, bool) and isinstance(label, int) and 0 <= label < len(self.class_names)
            if not named or self.class_names[label] != name:
                # A sample's own fields say otherwise (a .json beside a file outside the class folders):
                # a record that contradicts the samples would be worse than none.
                self.class_names = None
        if prepared.image_bytes is None:
            return
        self.stats.images_written += 1
        if not self.stats.wants_more():
            return
        image = prepared.image
        if image is None:  # not validated, or by a validator that returns nothing
            try:
                image = _decode_media("png", prepared.image_bytes, self.stats.background)
            except ValueError:
                return  # training will skip it too; the statistics need not count it
        self.stats.add(image)

    def finish(self, prefix: str) -> SplitResult:
        from multimodal.data.preprocess.image_stats import write_image_stats

        directory = self.shards.directory
        # Shards left from an earlier, larger run under the same prefix would be read as data.
        for path in existing_shards(directory, prefix):
            if path not in self.shards.shards:
                path.unlink()
        stats = self.stats.result()
        write_image_stats(directory, stats)
        write_class_record(directory, prefix, self.class_names)
        write_json_atomically(directory / "sizes.json", merged_sizes(directory, prefix, self.shards.sizes))
        return SplitResult(directory, self.shards.shards, sum(self.shards.sizes.values()), stats,
                           list(self.class_names) if self.class_names else None)


def _by_count(counts: Counter[str]) -> dict[str, int]:
    """Counts, the largest first, ties in name order (the order samples came in is shuffled)."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _length_counts(limits: LengthLimits | None) -> LengthCounts | None:
    if limits is None:
        return None
    # Imported here: the audio stack is not needed to write shards unmeasured.
    from multimodal.data.lengths import LengthCounts

    return LengthCounts(limits)


def _count_lengths(counts: LengthCounts, prepared: _PreparedSample) -> None:
    """Adds a written sample's clips, and its captions as training reads them (default caption keys), to ``counts``."""
    for extension, data in prepared.members.items():
        modality = modality_of_extension(extension)  # None for captions and fields
        if modality is not None and get_modality(modality).cut_to == "window":
            counts.add_clip(data)
    try:
        counts.add_captions(_TRAINING_FIELDS.captions(prepared.members))
    except UnusableSample:
        pass  # a caption training reads as empty (a text of "[]"): skipped there, so not measured here



def _write_skipped_file(path: Path, skipped: list[SkippedSample]) -> None:
    lines = [json.dumps(skip._asdict(), ensure_ascii=False) + "\n" for skip in skipped]
    write_text_atomically(path, "".join(lines))


@dataclass
class _Tally:
    """What the writing loop counts, sample by sample, for the :class:`WriteResult`."""

    length_counts: LengthCounts | None
    skipped: list[SkippedSample] = field(default_factory=list)
    unused: list[SkippedSample] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    seen_keys: set[str] = field(default_factory=set)
    multi_line: int = 0
    rasterised: int = 0
    written: int = 0
    listed: int = 0

    def result(self, splits: dict[str, SplitResult], skipped_file: Path, caption_lines: str) -> WriteResult:
        return WriteResult(
            splits=splits,
            skipped=self.skipped,
            skipped_file=skipped_file,
            num_listed=self.listed,
            ignored_files=_by_count(self.ignored),
            multi_line_captions=self.multi_line,
            caption_lines=caption_lines,
            svgs_rasterised=self.rasterised,
            lengths=self.length_counts,
            unused_files=self.unused,
        )

    def name_unused(self, source: SampleSource) -> None:
        """Counts and names the files of ``source`` that no sample uses."""
        self.ignored.update(normalize_extension(path.suffix) for path in source.ignored)
        for path in source.ignored:
            detail = f"not read: '{path.suffix or '(no extension)'}' is not a type shards reads"
            self.unused.append(SkippedSample(str(path), "type_not_read", detail))
        self.unused.extend(SkippedSample(str(path), reason, UNUSED_REASONS[reason]) for path, reason in source.unused)


@dataclass(frozen=True)
class _SplitChooser:
    """Which split a sample's key goes to: ``"all"`` without a validation fraction."""

    seed: int
    validation_fraction: float

    def __call__(self, key: str) -> str:
        if self.validation_fraction <= 0:
            return ALL_SPLIT
        return VALIDATION_SPLIT if _is_validation(key, self.seed, self.validation_fraction) else TRAIN_SPLIT


def _prepare_new_key(source: SampleSource, preparation: _Preparation, seen_keys: set[str]) -> _PreparedSample:
    """:func:`_prepare`, refusing a key another sample already has: a key must name one sample."""
    if source.key in seen_keys:
        raise _SampleError("duplicate_key", f"duplicate key {source.key!r}: another sample already has it")
    return _prepare(source, preparation)


def _write_source(
    source: SampleSource,
    preparation: _Preparation,
    writers: dict[str, _SplitWriter],
    tally: _Tally,
    choose_split: _SplitChooser,
) -> None:
    """Writes one source into its split's shards, or records why not; counts it in ``tally``."""
    tally.name_unused(source)
    if source.only_ignored:
        return
    tally.listed += 1
    try:
        prepared = _prepare_new_key(source, preparation, tally.seen_keys)
    except _SampleError as error:
        tally.skipped.append(SkippedSample(source.describe(), error.reason, str(error)))
        return
    tally.seen_keys.add(source.key)
    tally.unused.extend(prepared.unused)
    tally.multi_line += prepared.multi_line_caption
    tally.rasterised += prepared.rasterised_svg
    writers[choose_split(source.key)].add(source.key, prepared)
    tally.written += 1
    if tally.length_counts is not None:
        _count_lengths(tally.length_counts, prepared)


def _write_sources(
    sources: list[SampleSource],
    preparation: _Preparation,
    writers: dict[str, _SplitWriter],
    tally: _Tally,
    choose_split: _SplitChooser,
    progress: Callable[[WriteProgress], None] | None,
) -> None:
    """Writes every source and closes the shards; on any error, aborts them so no partial shard remains."""
    try:
        for processed, source in enumerate(sources, start=1):
            _write_source(source, preparation, writers, tally, choose_split)
            if progress is not None:
                progress(WriteProgress(processed=processed, total=len(sources), written=tally.written,
                                       skipped=len(tally.skipped)))
        for writer in writers.values():
            writer.shards.close()
    except BaseException:
        for writer in writers.values():
            writer.shards.abort()
        raise


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
    caption_lines: str = "lines",
    background: tuple[int, int, int] = WHITE,
    stats_max_images: int = STATS_MAX_IMAGES,
    progress: Callable[[WriteProgress], None] | None = None,
    validator: Callable[[str, bytes], object] | None = None,
    lengths: LengthLimits | None = None,
    class_names: Sequence[str] | None = None,
) -> WriteResult:
    """Write samples into webdataset tar shards.

    Args:
        samples: what to write (see :func:`samples_from_folder`, :func:`samples_from_manifest`).
        output_dir: where the shards go; with a validation fraction, into
            ``output_dir/train`` and ``output_dir/val``, each with its ``sizes.json``
            and ``image_stats.json``. ``skipped.jsonl`` goes into ``output_dir``.
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
        caption_lines: a caption of several non-empty lines becomes a list of captions
            (``"lines"``), its first line (``"first"``) or one caption of the whole text
            (``"whole"``); see the module docstring.
        background: what transparent pixels are composited onto for the image
            statistics; give the ``image_preprocess.background`` training will use.
        stats_max_images: images measured per split for ``image_stats.json``.
        progress: called with :class:`WriteProgress` after each sample.
        validator: ``(extension, bytes) -> decoded image or None`` raising ValueError for
            bad media; default decodes with ``multimodal.data.preprocess.image_transforms`` / ``multimodal.data.preprocess.audio_features``.
        lengths: a model's audio window and text context (and tokenizer): every sample written
            is measured against them (:class:`multimodal.data.lengths.LengthCounts`); None: not measured.
        class_names: the names of the samples' json ``label`` values in label order (a
            :class:`FolderListing`'s ``class_names``), recorded in each split's ``classes.json``;
            not recorded in a split where a sample's ``label``/``class_name`` contradicts them.
            None: no record (and an earlier one of ``prefix`` there is removed).

    Returns:
        A :class:`WriteResult`: shards, counts and image statistics per split, the skipped
        samples with reasons, the ignored files and multi-line captions counted, the lengths
        measured.
    """
    _check_arguments(max_samples_per_shard, max_bytes_per_shard, validation_fraction, prefix, caption_lines)
    output_dir = Path(output_dir)
    directories = _split_directories(output_dir, validation_fraction, prefix, overwrite)
    sources = list(samples)
    if shuffle:
        random.Random(seed).shuffle(sources)
    preparation = _preparation(validate, validator, caption_lines, background)
    writers = _split_writers(directories, prefix, max_samples_per_shard, max_bytes_per_shard, background,
                             stats_max_images, class_names)
    tally = _Tally(length_counts=_length_counts(lengths))
    _write_sources(sources, preparation, writers, tally, _SplitChooser(seed, validation_fraction), progress)

    splits = {name: writer.finish(prefix) for name, writer in writers.items()}
    skipped_file = output_dir / SKIPPED_FILE
    _write_skipped_file(skipped_file, tally.skipped + tally.unused)
    return tally.result(splits, skipped_file, caption_lines)

__all__ = [
    "ALL_SPLIT",
    "CAPTION_LINES",
    "SKIPPED_FILE",
    "SKIP_REASONS",
    "SampleSource",
    "SkippedSample",
    "SplitResult",
    "FolderListing",
    "TRAIN_SPLIT",
    "UNUSED_FILE_REASONS",
    "VALIDATION_SPLIT",
    "WriteProgress",
    "WriteResult",
    "list_folder",
    "make_key",
    "samples_from_folder",
    "samples_from_manifest",
    "shard_spec",
    "write_shards",
]
