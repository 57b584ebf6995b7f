"""Embedding extraction over many inputs: files, folders, caption files or tar shards -> vectors on disk.

Shapes: N rows, E embedding width.

Two kinds of job:

* **Files** (:func:`embed_files`): image or audio files and folders (searched
  recursively by extension), or caption files (one caption per line), embedded into
  one output file.
* **Shards** (:func:`embed_shards`): every sample of every tar shard, one output part
  per shard (``OUTPUT_DIR/part-<shard name>.npy`` ...; shards of several folders are
  named by their path below the folder they share: ``part-train__shard-000000.npy``,
  see :func:`part_names`). A part is written to a temporary
  name and renamed when complete, so a run that stops can be started again and skips
  the parts already there. With several processes (``accelerate launch``, or RANK and
  WORLD_SIZE set) each process takes its own shards: ``shards[rank::world_size]``.

Shards are read by the loader that training and evaluation read them with
(:func:`multimodal.data.pipeline.loader.make_loader`, a finite pass in shard order with
evaluation preprocessing; one loader per shard); files, which are not shards, by a
DataLoader over their list with the API's preprocessing (:func:`prepare_input`). Both
are encoded by :meth:`EmbeddingModel.encode_prepared`, so an input gives the same bytes
from a shard as from a file.

Output formats, chosen by the file suffix (or ``format`` for shard parts), and how they are
read back: :mod:`multimodal.apps.embedding_outputs`.

An existing output file is refused unless ``overwrite=True``; parts of shards already
complete are kept (and written again with ``overwrite=True``). Outputs get the
permissions the umask gives any new file (0644 under umask 022).

An input that cannot be read (missing, not decodable, too short, ...) is skipped and
reported in the result with its reason; it takes no row, so keys and vectors stay
aligned. The functions here print nothing: progress goes to a callback.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from multimodal.data.modalities.registry import MEDIA_MODALITIES, MODALITIES, get_modality
from multimodal.data.pipeline.loader import ShardLoader, make_loader
from multimodal.data.pipeline.sample_fields import SampleFields
from multimodal.data.pipeline.shard_reader import SHARD_SUFFIXES, expand_shards, is_remote
from multimodal.data.pipeline.skip_counts import SAMPLE_SKIP_REASONS
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.apps.api import EmbeddingModel, prepare_input
from multimodal.apps.embedding_outputs import OUTPUT_FORMATS, check_new_output, check_format, is_complete, output_format, read_metadata, write_embeddings
from multimodal.model import ModelConfig

# Where each modality is found in a shard sample: the training sources' defaults.
SHARD_FIELDS = SampleFields()
PART_PREFIX = "part-"
_READ_ERRORS = (ValueError, TypeError, OSError, RuntimeError, EOFError)


# Inputs ------------------------------------------------------------------------------------


def is_shard_spec(text: str) -> bool:
    """True for what reads as tar shards: a ``.tar`` path, a brace pattern, a ``pipe:`` command."""
    text = str(text)
    return text.startswith("pipe:") or ".tar" in text or ("{" in text and "}" in text) or "::" in text


@dataclass(frozen=True)
class InputItem:
    """One input to embed: its key (what the output lists) and what to read (a path or a caption)."""

    key: str
    source: str | Path


def modality_of_file_name(path: str | os.PathLike) -> str | None:
    """The media modality whose input files have this name's extension, else None.

    Input files are a modality's :attr:`~multimodal.data.modalities.base.Modality.folder_extensions`:
    for images, the raster formats shards hold and SVG drawings (rasterised when read).
    """
    extension = Path(path).suffix.lower().lstrip(".")
    return next((name for name in MEDIA_MODALITIES if extension in get_modality(name).folder_extensions), None)


def file_modality(path: str | os.PathLike) -> str | None:
    """"image" or "audio" for a file, by its extension, else by its content; None when it is neither.

    The content decides for names without a known extension (``photo``, ``x.jfif``): each
    media modality is asked in turn (``Modality.recognises``: the first bytes of a JPEG,
    PNG, GIF or WebP image; a header soundfile reads). Raises OSError when the file
    cannot be opened.
    """
    path = Path(path)
    modality = modality_of_file_name(path)
    if modality is not None:
        return modality
    with open(path, "rb") as handle:
        head = handle.read(16)
    return next((name for name in MEDIA_MODALITIES if get_modality(name).recognises(path, head)), None)


def _files_in(folder: Path, extensions: Sequence[str]) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower().lstrip(".") in extensions
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def list_inputs(modality: str, inputs: Sequence[str | os.PathLike]) -> list[InputItem]:
    """File and folder inputs -> the items to embed, in order.

    * image / audio: a file is taken as it is (whatever its extension); a folder gives
      its files with the modality's extensions (see :mod:`multimodal.data.modalities.registry`),
      recursively, sorted, hidden ones left out. Key: the path.
    * text: a file holds one caption per line, key ``path:line``; a folder gives one
      caption per ``.txt`` file (its whole text), key: the path. An empty caption (a
      blank line, an empty file) is an item too, so that embedding skips it by name.

    Raises ValueError for an input that does not exist or a folder with nothing to embed.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected text, image or audio")
    definition = get_modality(modality)
    items: list[InputItem] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            extensions = definition.folder_extensions
            files = _files_in(path, extensions)
            if not files:
                raise ValueError(f"folder {path} holds no {modality} file (looked for {', '.join(extensions)})")
            items.extend(InputItem(str(file), definition.item_of_folder_file(file)) for file in files)
        elif path.is_file():
            items.extend(InputItem(key, item) for key, item in definition.items_of_file(path))
        else:
            raise ValueError(f"input {given} does not exist (expected a file or a folder)")
    return items


def _shard_location(url: str) -> tuple[str, ...]:
    """The path of a shard as components, the file name last: a local path made absolute, a URL's
    scheme and host then its path, a ``pipe:`` command's shard word (``pipe:curl -s https://h/a.tar -``)."""
    if url.startswith("pipe:"):
        words = [word for word in url[len("pipe:") :].split() if ".tar" in word or ".tgz" in word]
        url = words[-1] if words else url[len("pipe:") :]
    url = url.rstrip("/")
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return (f"{scheme}:", *rest.split("/"))
    parts = Path(os.path.abspath(url[len("file:") :] if url.startswith("file:") else url)).parts
    return parts[1:] if parts[0] == os.sep else parts  # the root names no folder


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("._")


def shard_part_name(url: str) -> str:
    """The part name of a shard: its file name without ``.tar``, made safe (``pipe:... /a/b-01.tar -`` -> ``b-01``)."""
    name = _shard_location(url)[-1]
    for suffix in SHARD_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _safe_name(name) or "shard"


def part_names(urls: Sequence[str]) -> dict[str, str]:
    """``shard url -> the name of its part`` for shards embedded together into one folder.

    Shards of one folder: each its file name without ``.tar`` (:func:`shard_part_name`,
    ``emb/part-shard-000000.npy``), as always. Shards of several folders (``train/`` and
    ``val/`` both hold ``shard-000000.tar``): each its path below the folder they all
    share, folders joined by ``__`` as the shard writer joins a key's folders
    (``train__shard-000000``, ``val__shard-000000``), so no two parts collide. The name
    depends only on the shards given, so a rerun with the same shards finds its parts.
    """
    locations = {url: _shard_location(url) for url in urls}
    folders = {location[:-1] for location in locations.values()}
    if len(folders) <= 1:
        return {url: shard_part_name(url) for url in urls}
    common = os.path.commonprefix(sorted(folders))  # the longest run of leading components they share
    names = {}
    for url, location in locations.items():
        below = [_safe_name(folder) or "_" for folder in location[len(common) : -1]]
        names[url] = "__".join([*below, shard_part_name(url)])
    return names


# Files: prepared, possibly in worker processes ----------------------------------------------
# Loose files are not shards, so the shard loader does not read them: a DataLoader over the
# list prepares them with the API's own preprocessing (prepare_input), one item per index.


def _identity(item: Any) -> Any:
    return item


@dataclass
class _Prepared:
    """What the file reader yields: a key and its prepared item, or the reason it was skipped."""

    key: str
    item: Any = None
    error: str | None = None


def _prepare(modality: str, key: str, raw: Any, config: ModelConfig) -> _Prepared:
    try:
        return _Prepared(key, prepare_input(modality, raw, config))
    except _READ_ERRORS as error:
        return _Prepared(key, error=f"{type(error).__name__}: {error}")


class _FileDataset(Dataset):
    def __init__(self, modality: str, items: list[InputItem], config: ModelConfig) -> None:
        self.modality, self.items, self.config = modality, items, config

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Prepared:
        item = self.items[index]
        return _prepare(self.modality, item.key, item.source, self.config)


def _loader(dataset: Dataset, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=None, collate_fn=_identity, num_workers=num_workers)


def shard_sample_input(sample: dict, modality: str) -> Any:
    """The raw input of ``modality`` in a raw shard sample: image or audio bytes, or the caption.

    Read as a training source's defaults read it (:data:`SHARD_FIELDS`, see
    :mod:`multimodal.data.pipeline.sample_fields`): images from jpg/jpeg/png/webp, audio from
    flac/wav/ogg/mp3, the caption from ``.txt`` or the json fields ``text`` /
    ``caption`` (the first non-empty one; from a list, its first non-empty entry).
    Raises :class:`multimodal.data.pipeline.sample_fields.UnusableSample` (a ValueError, with
    the reason in ``.reason``) when the sample has none or it does not read.
    """
    return SHARD_FIELDS.raw_input(sample, modality)


# Embedding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedProgress:
    """Counts passed to the ``progress`` callback after each batch (totals are None when unknown)."""

    embedded: int
    skipped: int
    total: int | None
    parts_done: int = 0
    parts_total: int | None = None
    absent: int = 0  # shard samples without the modality, passed over


@dataclass
class EmbedResult:
    """What an embedding job did.

    ``written``: output files written by this run; ``resumed``: parts found complete
    and left as they were; ``skipped``: ``(key or shard, reason)`` for every input not
    embedded; ``num_embedded``: rows written by this run; ``num_absent``: shard samples
    without the modality (not inputs of it, so not skipped).
    """

    written: list[Path] = field(default_factory=list)
    resumed: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    num_embedded: int = 0
    num_absent: int = 0


class _Counter:
    def __init__(self, progress: Callable[[EmbedProgress], None] | None, total: int | None, parts_total: int | None):
        self.progress, self.total, self.parts_total = progress, total, parts_total
        self.embedded = self.skipped = self.parts_done = self.absent = 0

    def report(self) -> None:
        if self.progress is not None:
            self.progress(EmbedProgress(self.embedded, self.skipped, self.total, self.parts_done, self.parts_total,
                                        self.absent))


def _embed_stream(
    model: EmbeddingModel, modality: str, stream: Iterator[_Prepared], result: EmbedResult, counter: _Counter
) -> tuple[np.ndarray, list[str]]:
    """Prepared files -> (embeddings (N, E), keys), in batches of ``model.batch_size``; skips recorded."""
    chunks: list[np.ndarray] = []
    keys: list[str] = []
    pending: list[_Prepared] = []

    def flush() -> None:
        if not pending:
            return
        embeddings = model.encode_prepared(modality, [entry.item for entry in pending])  # (B, E)
        chunks.append(embeddings.cpu().numpy())
        keys.extend(entry.key for entry in pending)
        counter.embedded += len(pending)
        pending.clear()
        counter.report()

    for entry in stream:
        if entry.error is not None:
            result.skipped.append((entry.key, entry.error))
            counter.skipped += 1
            continue
        pending.append(entry)
        if len(pending) >= model.batch_size:
            flush()
    flush()
    counter.report()
    return _rows(model, chunks), keys


def _rows(model: EmbeddingModel, chunks: list[np.ndarray]) -> np.ndarray:
    """Batches of embeddings (B_i, E) -> one (N, E) array; (0, E) when there are none."""
    return np.concatenate(chunks) if chunks else np.zeros((0, model.embed_dim), dtype=np.float32)


def _metadata(model: EmbeddingModel, modality: str) -> dict[str, str]:
    metadata = {"modality": modality, "embed_dim": str(model.embed_dim), "dtype": str(model.dtype).replace("torch.", "")}
    if model.checkpoint_id is not None:  # lets `multimodal index` refuse parts embedded by another checkpoint
        metadata["checkpoint_id"] = model.checkpoint_id
    return metadata


def embed_files(
    model: EmbeddingModel,
    modality: str,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: Callable[[EmbedProgress], None] | None = None,
) -> EmbedResult:
    """Embeds files / folders / caption files (see :func:`list_inputs`) into one ``output`` file.

    ``num_workers`` DataLoader processes read and preprocess the inputs (0: this process).
    The output is written once, at the end, atomically; an existing one is refused
    unless ``overwrite``.
    """
    output = Path(output)
    output_format(output)
    check_new_output(output, overwrite=overwrite)
    model._require(modality)
    items = list_inputs(modality, inputs)
    result = EmbedResult()
    counter = _Counter(progress, len(items), None)
    stream = iter(_loader(_FileDataset(modality, items, model.config), num_workers))
    embeddings, keys = _embed_stream(model, modality, stream, result, counter)
    result.written.append(write_embeddings(output, embeddings, keys, metadata=_metadata(model, modality)))
    result.num_embedded = len(keys)
    return result


# Shards: read by the data pipeline's loader, as evaluation reads them ------------------------


def _shard_loader(model: EmbeddingModel, modality: str, url: str, num_workers: int) -> ShardLoader:
    """One finite pass over one shard's samples, in shard order, prepared as evaluation prepares them.

    The source is named by the shard's URL. Captions stay strings (tokenised when encoded, as
    those of caption files are); images arrive normalised, on the CPU. Every skipped sample is
    kept with its reason (and named in the result), so none is logged.
    """
    spec = SourceSpec(url, [modality], name=url)
    loader = make_loader([spec], batch_size=model.batch_size, train=False, preprocess=model.config.preprocess,
                         num_workers=num_workers, log_skips_every=0, allow_empty=True)
    loader.stats.keep_skipped_samples()
    loader.stats.quiet(SAMPLE_SKIP_REASONS)
    return loader


def _batch_inputs(batch: dict, modality: str) -> list:
    """A loader batch's ``modality`` -> one prepared input per sample, as ``encode_prepared`` takes file inputs.

    Rows of a tensor (B, ...) and captions are taken as they are. Windows (W, T, F) go back to
    their clips, each the list of its (T_i, F) windows with the batch's padding cut off: encoded
    from there, a shard's sample gives the same bytes as the same clip given as a file.
    """
    inputs = batch[modality]
    owners = batch.get(f"{modality}_window_clip")  # (W,): the sample of each window row
    if owners is None:
        return list(inputs)
    padding = batch.get(f"{modality}_padding_mask")  # (W, T), True at the padding after a window's end
    lengths = (~padding).sum(dim=1).tolist() if padding is not None else [inputs.shape[1]] * len(owners)
    clips: list[list[torch.Tensor]] = [[] for _ in batch["__key__"]]
    for row, (owner, length) in enumerate(zip(owners.tolist(), lengths)):
        clips[owner].append(inputs[row, :length])  # (T_i, F)
    return clips


class _ShardPart:
    """One shard on its way into its part: its loader's batches, encoded one at a time (:meth:`advance`).

    ``absent``: the reason of a sample without the modality (``missing_image``): passed over and
    counted, not skipped; every other reason of a sample is a skip named by the sample's key.
    """

    def __init__(self, model: EmbeddingModel, modality: str, url: str, path: Path, num_workers: int) -> None:
        self.model, self.modality, self.url, self.path = model, modality, url, path
        self.loader = _shard_loader(model, modality, url, num_workers)
        self.batches = iter(self.loader)
        self.absent = f"missing_{modality}"
        self.chunks: list[np.ndarray] = []
        self.keys: list[str] = []
        self.counted = (0, 0)  # (skipped, absent) already added to the progress counter

    def advance(self, counter: _Counter) -> bool:
        """Encodes the shard's next batch; False once the shard is read to its end."""
        try:
            batch = next(self.batches)
        except StopIteration:
            # The skips after the last batch come with the workers' last report. A shard none of
            # whose samples had the modality or read ends here too, with a part of no row.
            self.count(counter)
            return False
        embeddings = self.model.encode_prepared(self.modality, _batch_inputs(batch, self.modality))  # (B, E)
        self.chunks.append(embeddings.cpu().numpy())
        self.keys.extend(batch["__key__"])
        counter.embedded += len(batch["__key__"])
        self.count(counter)
        return True

    def count(self, counter: _Counter) -> None:
        """Adds the samples skipped and passed over since the last call to ``counter``, and reports."""
        reasons = self.loader.stats.skipped.get(self.url, {})
        absent = reasons.get(self.absent, 0)
        skipped = sum(count for reason, count in reasons.items() if reason in SAMPLE_SKIP_REASONS) - absent
        counter.skipped += skipped - self.counted[0]
        counter.absent += absent - self.counted[1]
        self.counted = (skipped, absent)
        counter.report()

    def finish(self, result: EmbedResult) -> tuple[np.ndarray, list[str]]:
        """(embeddings (N, E), keys) of the part; its skipped samples, then its shard's problems, go to ``result``."""
        stats = self.loader.stats
        for reason, sample, message in stats.skipped_samples.get(self.url, []):
            if reason != self.absent:
                key = sample.split("\0", 1)[-1]  # a sample's name is its shard's URL and its key
                result.skipped.append((key, f"{reason}: {message.removeprefix(f'{self.url} sample {key}: ')}"))
        for reason in stats.skipped.get(self.url, {}):
            if reason not in SAMPLE_SKIP_REASONS:  # the shard's own: unreadable, empty, cut short
                message = stats.examples.get((self.url, reason), "")
                result.skipped.append((self.url, f"{reason}: {message.removeprefix(f'{self.url}: ')}"))
        result.num_absent += self.counted[1]
        return _rows(self.model, self.chunks), self.keys


def _embed_parts(
    model: EmbeddingModel, modality: str, todo: list[tuple[str, Path]], counter: _Counter, num_workers: int
) -> Iterator[_ShardPart]:
    """Reads and encodes the shards of ``todo`` ((url, part path), in order), yielding each part once read.

    A loader reads one shard in one worker process, so ``num_workers`` > 0 reads that many
    shards at once, each by a loader of one worker, their batches encoded in turn; parts are
    yielded as they complete. With 0, one shard after the other, in this process.
    """
    waiting, reading = list(todo), []
    while waiting or reading:
        while waiting and len(reading) < max(1, num_workers):
            url, path = waiting.pop(0)
            reading.append(_ShardPart(model, modality, url, path, num_workers=min(num_workers, 1)))
        for part in list(reading):
            if not part.advance(counter):
                reading.remove(part)
                yield part


def _known_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Sample counts from the ``sizes.json`` the shard writer leaves beside local shards."""
    sizes: dict[str, int] = {}
    for directory in sorted({os.path.dirname(url) for url in urls if not is_remote(url)}):
        path = Path(directory or ".") / "sizes.json"
        try:
            table = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for name, count in table.items() if isinstance(table, dict) else ():
            sizes[os.path.join(directory, name)] = int(count)
    return sizes


def _shard_identity(url: str) -> str:
    """One shard however it is spelt: a local path made absolute and normal, a URL or command as it is."""
    return url if is_remote(url) else os.path.abspath(url[len("file:") :] if url.startswith("file:") else url)


def _parts_by_shard(output_dir: Path, format: str) -> dict[str, Path]:
    """``shard -> part`` for the parts in ``output_dir`` that record their shard (in their metadata)."""
    found: dict[str, Path] = {}
    for path in sorted(output_dir.glob(f"{PART_PREFIX}*.{format}")) if output_dir.is_dir() else ():
        try:
            shard = read_metadata(path).get("shard")
        except (ValueError, OSError, KeyError, json.JSONDecodeError):
            continue
        if shard:
            found.setdefault(_shard_identity(shard), path)
    return found


def part_path(output_dir: str | os.PathLike, url: str, format: str = "npy", *, urls: Sequence[str] = ()) -> Path:
    """Where the part of shard ``url`` goes: ``output_dir/part-<part name>.<format>``.

    ``urls``: every shard embedded into ``output_dir`` together; their folders decide
    the part name (see :func:`part_names`). Left empty: ``url`` alone (its file name).
    """
    name = part_names(urls)[url] if url in urls else shard_part_name(url)
    return Path(output_dir) / f"{PART_PREFIX}{name}.{format}"


def embed_shards(
    model: EmbeddingModel,
    modality: str,
    shards: str | Sequence[str],
    output_dir: str | os.PathLike,
    *,
    format: str = "npy",
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: Callable[[EmbedProgress], None] | None = None,
) -> EmbedResult:
    """Embeds every sample of the shards, one part per shard in ``output_dir``, resumable.

    This process takes ``shards[rank::world_size]`` (in the order the spec lists them);
    parts already complete are left as they are (``result.resumed``), or written again
    with ``overwrite``. Parts are named by :func:`part_names`, but a shard whose part is
    in ``output_dir`` already under another name (embedded there alone before) keeps
    it, so no shard has two parts. Keys are the
    samples' ``__key__``. A sample without the modality is passed over (``num_absent``);
    one that does not decode is skipped, named by its key with the loader's reason
    (``bad_image: ...``); a shard that cannot be read (or is cut short) is reported under
    its URL, and its part holds what could be read.

    ``num_workers``: shards read at once, each by a loader with one worker process (a
    loader gives each shard to one worker); 0 reads one shard after the other in this
    process. Parts are then written as they complete, each still one shard's samples in
    shard order.
    """
    check_format(format)
    model._require(modality)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    output_dir = Path(output_dir)
    if output_dir.suffix.lower().lstrip(".") in OUTPUT_FORMATS:
        raise ValueError(
            f"with shard inputs the output is a folder of parts (one per shard), got the file name {output_dir}; "
            "give a folder and choose the format of the parts with format="
        )
    urls = expand_shards(shards)
    names = part_names(urls)
    by_name: dict[str, str] = {}
    for url in urls:
        name = names[url]
        if name in by_name and by_name[name] != url:
            raise ValueError(
                f"shards {by_name[name]} and {url} would both write part {PART_PREFIX}{name}; "
                "embed them into different output folders"
            )
        by_name[name] = url
    mine = urls[rank::world_size]
    sizes = _known_sizes(mine)
    total = sum(sizes.get(url, 0) for url in mine) if all(url in sizes for url in mine) else None
    result = EmbedResult()
    counter = _Counter(progress, total, len(mine))
    earlier = _parts_by_shard(output_dir, format)
    todo = []
    for url in mine:
        # A shard embedded here before under another name (alone, then beside another folder's)
        # keeps its part: a second part of it would give its rows twice to an index of the folder.
        path = earlier.get(_shard_identity(url)) or Path(output_dir) / f"{PART_PREFIX}{names[url]}.{format}"
        if not overwrite and is_complete(path):
            result.resumed.append(path)
            counter.parts_done += 1
            if total is not None:
                counter.total -= sizes[url]
            counter.report()
        else:
            todo.append((url, path))
    for part in _embed_parts(model, modality, todo, counter, num_workers):
        embeddings, keys = part.finish(result)
        metadata = {**_metadata(model, modality), "shard": part.url}
        result.written.append(write_embeddings(part.path, embeddings, keys, metadata=metadata))
        result.num_embedded += len(keys)
        counter.parts_done += 1
        counter.report()
    return result


def process_place() -> tuple[int, int, torch.device | None]:
    """(rank, world size, device) of this process among those embedding together.

    Under ``accelerate launch`` with several processes, from accelerate's PartialState
    (its device is this process's GPU); otherwise from the RANK and WORLD_SIZE
    environment variables (torchrun's), with no device preference; else (0, 1, None).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        from accelerate import PartialState  # reads the same variables, and knows this process's GPU

        state = PartialState()
        return state.process_index, state.num_processes, state.device
    return int(os.environ.get("RANK", "0")), world_size, None


__all__ = [
    "EmbedProgress",
    "EmbedResult",
    "InputItem",
    "SHARD_FIELDS",
    "embed_files",
    "embed_shards",
    "file_modality",
    "is_shard_spec",
    "list_inputs",
    "modality_of_file_name",
    "part_names",
    "part_path",
    "process_place",
    "shard_part_name",
    "shard_sample_input",
]
