"""Streaming batches from tar shards: sources, shard splitting, shuffling, preprocessing, mixing, collation.

Entry point: :func:`make_loader` returns a :class:`ShardLoader`, an iterable of batch
dicts (the project's batch convention)::

    {"image": float (B, 3, S, S),                       # normalised
     "audio": float (B, T, F), "audio_padding_mask": bool (B, T),  # mask only when a clip is padded
     "text": int64 (B, L), "text_padding_mask": bool (B, L),       # from the tokenize callable
     "label": int64 (B,),                               # only for sources with a label_key
     "__key__": list[str], "__source__": str}

In evaluation a long clip is covered by several windows (see
:func:`multimodal.data.audio.eval_audio_windows`): "audio" then has one row per window (W >= B
rows) and "audio_window_clip" int64 (W,) says which sample each row belongs to; embed
the rows and average them per sample. Every evaluation batch with audio carries it
(``arange(B)`` when each clip fits in one window).

Each batch comes from one source (a :class:`SourceSpec`) and holds that source's
modalities (at least two). Batches are made inside DataLoader workers (webdataset's
WebLoader pattern: ``DataLoader(batch_size=None)`` over a stream of whole batches);
images travel from the workers as uint8 and are normalised in the loader's process.

Modes
-----
- *Resampled* (training default): every (rank, worker) draws shards with replacement
  from the source's whole list, forever, from an RNG seeded with (seed, epoch, rank,
  worker, source). ``samples_per_epoch`` (global, over all ranks) makes an epoch of
  ``ceil(samples_per_epoch / (batch_size * world_size))`` batches per rank; without it
  the stream never ends.
- *Finite* (evaluation default): each shard once. Shards (shuffled by (seed, epoch)
  in training, identically on every rank) are split over ranks
  (``shards[rank::world_size]``) then over workers, so ranks x workers read disjoint
  shards and together every sample exactly once.

Mixing: each worker keeps one sample stream per source; for every batch it draws a
source by weight from a seeded RNG and fills the batch from that source alone.

Determinism: the same seed, epoch, rank, world size, worker count and batch size
give the same batches in the same order. Shard draws, the shuffle buffer, the source
of each batch and every sample's random choices (crop, caption, audio crop,
SpecAugment) come from RNGs derived from those numbers; a sample's own RNG is seeded
by its position in its source's stream, so skipping samples does not shift the
choices made for later ones. Nothing depends on torch's global RNG.

Epochs and resuming
-------------------
After a complete pass the loader moves to the next epoch by itself (a new seed for
every stream). To resume a run, save ``loader.state_dict()`` (epoch and batches
yielded in it) with the checkpoint and call ``loader.load_state_dict(state)`` on a
loader built with the same arguments; the next iteration re-creates that epoch's
streams and skips the batches already seen *without decoding them* (each worker
reads past its share of raw samples). The stream then continues exactly as it would
have if no sample in the skipped part was bad (a bad sample is replaced by the next
one in the uninterrupted run, which the skip cannot know without decoding); it is
deterministic either way. ``set_epoch(epoch, start_batch=...)`` does the same by hand.
It relies on DataLoader's round-robin over workers, so keep ``num_workers`` (and the
batch size and world size) when resuming; a mismatch is reported as a warning.

Bad data
--------
Bad shards and samples are skipped and counted by reason, per source: shards that
are ``unreadable_shard`` / ``empty_shard`` / ``truncated_shard`` (counted per shard),
samples with ``missing_image`` / ``missing_audio`` / ``missing_caption`` /
``missing_label`` or whose data is ``bad_image`` / ``bad_audio`` / ``bad_caption`` /
``bad_label``. Workers attach their new counts to every batch (key ``"__stats__"``,
removed before the batch is yielded) and once more when they finish; the loader adds
them up in ``loader.stats`` (a :class:`DataStats`), logs the first skip of each kind
with its reason and a summary every ``log_skips_every`` skips. A source with no valid
sample at all is an error naming it: raised by a worker in resampled mode once every
shard of the source has failed (or 10,000 samples from 10+ shards did), and at the
end of a finite pass for a source of which this rank read nothing valid.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from multimodal.data.allocator import retain_freed_memory
from multimodal.data.audio import collate_audio, eval_audio_windows, load_waveform, train_audio_features
from multimodal.data.config import MODALITIES, AudioPreprocessConfig, ImagePreprocessConfig
from multimodal.data.image import collate_images, decode_image, eval_crop, normalize_image, train_crop
from multimodal.data.seeds import stable_int
from multimodal.data.shards import ShardProblem, expand_shards, read_shard

logger = logging.getLogger(__name__)

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]

SAMPLE_SKIP_REASONS = (
    "missing_image",
    "missing_audio",
    "missing_caption",
    "missing_label",
    "bad_image",
    "bad_audio",
    "bad_caption",
    "bad_label",
)
SHARD_SKIP_REASONS = ("unreadable_shard", "empty_shard", "truncated_shard")

# A resampled source is declared empty early (before every shard failed) only after this
# many failures spread over at least _EMPTY_SOURCE_MIN_SHARDS shards, none valid.
_EMPTY_SOURCE_FAILURES = 10_000
_EMPTY_SOURCE_MIN_SHARDS = 10


@dataclass
class SourceSpec:
    """One data source: its shards, mixing weight, modalities and where each field is in a sample.

    Keys are ``;``-separated alternatives tried in order; an entry is a file
    extension in the sample (``"txt"``, ``"jpg"``) or ``"json:FIELD"`` for a field of
    its ``.json`` file. A caption field may hold a string or a list of strings
    (training picks one at random, evaluation the first). The defaults read
    img2dataset shards (``jpg`` + ``txt`` + ``json``) and CLAP/WavCaps shards
    (``flac`` + ``json`` with ``text``) as they are.

    Args:
        shards: a shard spec (see :func:`multimodal.data.shards.expand_shards`).
        modalities: one to three of "text", "image", "audio"; training needs at
            least two (a contrastive pair), evaluation and embedding may read one.
        weight: relative share of batches drawn from this source.
        name: used in counts, logs and errors; default ``source{index}``.
        image_keys / audio_keys / caption_keys: where each modality is found.
        label_key: optional class label (``"json:label"``, ``"cls"``), read as int into "label".
    """

    shards: str | list[str]
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])
    weight: float = 1.0
    name: str | None = None
    image_keys: str = "jpg;jpeg;png;webp"
    audio_keys: str = "flac;wav;ogg;mp3"
    caption_keys: str = "txt;json:text;json:caption"
    label_key: str | None = None

    def __post_init__(self) -> None:
        self.modalities = list(self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"source {self.name or self.shards!r}: unknown modalities {unknown}; use {MODALITIES}")
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ValueError(f"source {self.name or self.shards!r}: modalities must be distinct and not empty, "
                             f"got {self.modalities}")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"source {self.name or self.shards!r}: weight must be a positive number, got {self.weight}")
        for name in ("image_keys", "audio_keys", "caption_keys"):
            if not _parse_keys(getattr(self, name)):
                raise ValueError(f"source {self.name or self.shards!r}: {name} is empty")


def _parse_keys(keys: str) -> list[tuple[str, str]]:
    """``"txt;json:text"`` -> [("ext", "txt"), ("json", "text")]."""
    parsed = []
    for entry in keys.split(";"):
        entry = entry.strip()
        if entry.startswith("json:"):
            parsed.append(("json", entry[len("json:") :]))
        elif entry:
            parsed.append(("ext", entry.lower()))
    return parsed


# Counting skipped data --------------------------------------------------------------


class DataStats:
    """Valid samples and skipped data per source, added up from the workers' reports.

    ``samples[source]`` counts valid samples; ``skipped[source][reason]`` counts
    skipped samples (sample reasons) or shards (shard reasons); ``examples`` keeps the
    first message seen for each (source, reason).
    """

    def __init__(self, sources: Sequence[str], log_every: int = 100) -> None:
        self.samples: dict[str, int] = {name: 0 for name in sources}
        self.skipped: dict[str, dict[str, int]] = {name: {} for name in sources}
        self.examples: dict[tuple[str, str], str] = {}
        self.log_every = log_every
        self._next_log = log_every

    def add(self, delta: dict) -> None:
        """Adds a worker's report ``{"samples": {source: n}, "skipped": {source: {reason: n}}, "examples": ...}``."""
        for source, count in delta.get("samples", {}).items():
            self.samples[source] = self.samples.get(source, 0) + count
        for source, reasons in delta.get("skipped", {}).items():
            counts = self.skipped.setdefault(source, {})
            for reason, count in reasons.items():
                counts[reason] = counts.get(reason, 0) + count
        for source, reasons in delta.get("examples", {}).items():
            for reason, message in reasons.items():
                if (source, reason) not in self.examples:
                    self.examples[(source, reason)] = message
                    logger.warning(
                        "source %r: skipping data (%s): %s; counted in loader.stats, summarised every %d skips",
                        source,
                        reason,
                        message,
                        self.log_every,
                    )
        total = self.total_skipped()
        if self.log_every > 0 and total >= self._next_log:
            logger.warning("skipped so far (%d): %s", total, self._compact())
            self._next_log = (total // self.log_every + 1) * self.log_every

    def total_skipped(self) -> int:
        """Everything skipped, all sources and reasons (shards and samples alike)."""
        return sum(sum(reasons.values()) for reasons in self.skipped.values())

    def summary(self) -> dict:
        """A plain dict: ``{"samples": {...}, "skipped": {source: {reason: n}}, "total_skipped": n}``."""
        return {
            "samples": dict(self.samples),
            "skipped": {source: dict(reasons) for source, reasons in self.skipped.items() if reasons},
            "total_skipped": self.total_skipped(),
        }

    def _compact(self) -> str:
        parts = []
        for source, reasons in self.skipped.items():
            if reasons:
                inner = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
                parts.append(f"{source}: {inner} (valid {self.samples.get(source, 0)})")
        return "; ".join(parts) or "nothing"

    def __repr__(self) -> str:
        return f"DataStats({self._compact()})"


class _WorkerCounts:
    """A worker's counts since its last report."""

    def __init__(self) -> None:
        self.samples: dict[str, int] = {}
        self.skipped: dict[str, dict[str, int]] = {}
        self.examples: dict[str, dict[str, str]] = {}
        self._reported_examples: set[tuple[str, str]] = set()

    def valid(self, source: str) -> None:
        self.samples[source] = self.samples.get(source, 0) + 1

    def skip(self, source: str, reason: str, message: str) -> None:
        reasons = self.skipped.setdefault(source, {})
        reasons[reason] = reasons.get(reason, 0) + 1
        if (source, reason) not in self._reported_examples:
            self._reported_examples.add((source, reason))
            self.examples.setdefault(source, {})[reason] = message

    def take(self) -> dict:
        delta = {"samples": self.samples, "skipped": self.skipped, "examples": self.examples}
        self.samples, self.skipped, self.examples = {}, {}, {}
        return delta


# One source inside one worker ----------------------------------------------------------


class _SkipSample(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _StreamSettings:
    """What every source stream of one worker shares."""

    train: bool
    resampled: bool
    shuffle_buffer: int
    image_config: ImagePreprocessConfig | None
    audio_config: AudioPreprocessConfig | None
    seed_parts: tuple  # (seed, epoch, rank, worker)


class _SourceStream:
    """Raw samples of one source in one worker (shards, shuffle buffer) and their preprocessing."""

    def __init__(
        self, index: int, spec: SourceSpec, name: str, urls: list[str], settings: _StreamSettings, counts: _WorkerCounts
    ) -> None:
        self.spec, self.name, self.urls, self.settings, self.counts = spec, name, urls, settings, counts
        self.image_keys = [key for _, key in _parse_keys(spec.image_keys)]
        self.audio_keys = [key for _, key in _parse_keys(spec.audio_keys)]
        self.caption_keys = _parse_keys(spec.caption_keys)
        self.label_keys = _parse_keys(spec.label_key) if spec.label_key else []
        self.sample_seed = stable_int("sample", *settings.seed_parts, index)
        self.shard_rng = random.Random(stable_int("shards", *settings.seed_parts, index))
        self.buffer_rng = random.Random(stable_int("buffer", *settings.seed_parts, index))
        self.position = 0  # raw samples taken from this stream so far
        self.valid_samples = 0
        self.failures = 0
        self.failed_shards: set[int] = set()
        self.exhausted = False
        self._raw = self._shuffled(self._raw_samples())

    # Raw samples

    def _shard_order(self) -> Iterator[int]:
        if self.settings.resampled:
            while True:
                yield self.shard_rng.randrange(len(self.urls))
        else:
            yield from range(len(self.urls))

    def _raw_samples(self) -> Iterator[dict]:
        for shard_index in self._shard_order():
            url = self.urls[shard_index]
            problems: list[ShardProblem] = []
            for sample in read_shard(url, problems):
                sample["__shard__"] = shard_index
                yield sample
            for problem in problems:
                self.counts.skip(self.name, problem.reason, f"{problem.url}: {problem.message}")
                if problem.samples_read == 0:
                    self._failed(shard_index)

    def _shuffled(self, samples: Iterator[dict]) -> Iterator[dict]:
        size = self.settings.shuffle_buffer
        if size <= 1:
            yield from samples
            return
        buffer: list[dict] = []
        for sample in samples:
            if len(buffer) < size:
                buffer.append(sample)
                continue
            slot = self.buffer_rng.randrange(size)
            yield buffer[slot]
            buffer[slot] = sample
        self.buffer_rng.shuffle(buffer)
        yield from buffer

    def next_raw(self) -> dict | None:
        """The next raw sample, or None when a finite stream is exhausted."""
        try:
            sample = next(self._raw)
        except StopIteration:
            self.exhausted = True
            return None
        self.position += 1
        return sample

    # Failure accounting

    def _failed(self, shard_index: int) -> None:
        self.failures += 1
        self.failed_shards.add(shard_index)
        if not self.settings.resampled or self.valid_samples > 0:
            return
        every_shard = len(self.failed_shards) == len(self.urls)
        many = self.failures >= _EMPTY_SOURCE_FAILURES and len(self.failed_shards) >= min(
            len(self.urls), _EMPTY_SOURCE_MIN_SHARDS
        )
        if every_shard or many:
            counts = self.counts.skipped.get(self.name, {})
            raise ValueError(
                f"source {self.name!r} yields no valid sample: {self.failures} failures over "
                f"{len(self.failed_shards)} of its {len(self.urls)} shards (latest counts: {counts}). "
                f"Check its shards ({self.urls[0]} ...) and keys: modalities={self.spec.modalities}, "
                f"image_keys={self.spec.image_keys!r}, audio_keys={self.spec.audio_keys!r}, "
                f"caption_keys={self.spec.caption_keys!r}, label_key={self.spec.label_key!r}"
            )

    # Preprocessing

    def next_sample(self) -> dict | None:
        """The next valid preprocessed sample (bad ones are counted and skipped), or None when exhausted."""
        while True:
            raw = self.next_raw()
            if raw is None:
                return None
            try:
                # Evaluation makes no random choice; training seeds each sample by its stream position.
                rng = random.Random(self.sample_seed ^ self.position) if self.settings.train else None
                sample = self._preprocess(raw, rng)
            except _SkipSample as skip:
                self.counts.skip(self.name, skip.reason, f"{raw['__url__']} sample {raw['__key__']}: {skip}")
                self._failed(raw["__shard__"])
                continue
            self.valid_samples += 1
            self.counts.valid(self.name)
            return sample

    def _find(self, raw: dict, keys: list[str], reason: str) -> bytes:
        for key in keys:
            if key in raw:
                return raw[key]
        present = sorted(k for k in raw if not k.startswith("__"))
        raise _SkipSample(reason, f"none of {keys} in the sample (it has {present})")

    def _field(self, raw: dict, keys: list[tuple[str, str]], what: str) -> object | None:
        """The first of ``keys`` present: decoded text of an extension, or a json field's value."""
        parsed_json = None
        for kind, key in keys:
            if kind == "ext":
                if key in raw:
                    try:
                        return raw[key].decode("utf-8")
                    except UnicodeDecodeError as error:
                        raise _SkipSample(f"bad_{what}", f"{key} is not UTF-8: {error}") from None
            elif "json" in raw:
                if parsed_json is None:
                    try:
                        parsed_json = json.loads(raw["json"])
                    except (json.JSONDecodeError, UnicodeDecodeError) as error:
                        raise _SkipSample(f"bad_{what}", f"json does not parse: {error}") from None
                if isinstance(parsed_json, dict) and parsed_json.get(key) is not None:
                    return parsed_json[key]
        return None

    def _caption(self, raw: dict, rng: random.Random | None) -> str:
        value = self._field(raw, self.caption_keys, "caption")
        if value is None:
            raise _SkipSample("missing_caption", f"no caption under {self.spec.caption_keys!r}")
        candidates = [value] if isinstance(value, str) else value
        if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
            raise _SkipSample("bad_caption", f"a caption must be a string or a list of strings, got {value!r:.80}")
        candidates = [c.strip() for c in candidates if c.strip()]
        if not candidates:
            raise _SkipSample("missing_caption", "the caption is empty")
        return rng.choice(candidates) if self.settings.train else candidates[0]

    def _label(self, raw: dict) -> int:
        value = self._field(raw, self.label_keys, "label")
        if value is None:
            raise _SkipSample("missing_label", f"no label under {self.spec.label_key!r}")
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise _SkipSample("bad_label", f"label {value!r:.40} is not an integer") from None

    def _preprocess(self, raw: dict, rng: random.Random | None) -> dict:
        modalities = self.spec.modalities
        # Cheap checks first: a sample missing a field is rejected before anything is decoded.
        image_bytes = self._find(raw, self.image_keys, "missing_image") if "image" in modalities else None
        audio_bytes = self._find(raw, self.audio_keys, "missing_audio") if "audio" in modalities else None
        sample: dict = {"__key__": raw["__key__"]}
        if "text" in modalities:
            sample["text"] = self._caption(raw, rng)
        if self.label_keys:
            sample["label"] = self._label(raw)
        settings = self.settings
        if image_bytes is not None:
            try:
                image = decode_image(image_bytes, settings.image_config.background)
            except ValueError as error:
                raise _SkipSample("bad_image", str(error)) from None
            config = settings.image_config
            sample["image"] = train_crop(image, config, rng) if settings.train else eval_crop(image, config)
        if audio_bytes is not None:
            config = settings.audio_config
            try:
                waveform = load_waveform(audio_bytes, config)
                if settings.train:
                    sample["audio"] = [train_audio_features(waveform, config, rng)]
                else:
                    sample["audio"] = eval_audio_windows(waveform, config)
            except ValueError as error:
                raise _SkipSample("bad_audio", str(error)) from None
        return sample


# The stream of batches one worker makes ----------------------------------------------------


def collate_samples(
    samples: list[dict], tokenize: Tokenize | None, source: str, *, audio_windows: bool = False
) -> dict:
    """Preprocessed samples of one source -> a batch dict (images stay uint8: see :func:`finish_batch`).

    A sample's "audio" is a list of (T, F) windows: one crop in training; in
    evaluation (``audio_windows=True``) every window of the clip, each a row of
    "audio", with "audio_window_clip" int64 (W,) giving the sample each row belongs
    to. "audio_padding_mask" is present when some row is shorter than the longest.
    """
    batch: dict = {"__key__": [sample["__key__"] for sample in samples], "__source__": source}
    first = samples[0]
    if "image" in first:
        batch["image"] = collate_images([sample["image"] for sample in samples])  # (B, 3, S, S)
    if "audio" in first:
        windows = [window for sample in samples for window in sample["audio"]]
        audio, padding_mask = collate_audio(windows)  # (W, T, F), (W, T)
        batch["audio"] = audio
        if bool(padding_mask.any()):
            batch["audio_padding_mask"] = padding_mask
        if audio_windows:
            owners = [row for row, sample in enumerate(samples) for _ in sample["audio"]]
            batch["audio_window_clip"] = torch.tensor(owners, dtype=torch.int64)  # (W,)
    if "text" in first:
        captions = [sample["text"] for sample in samples]
        if tokenize is None:
            batch["text"] = captions
        else:
            ids, padding_mask = tokenize(captions)
            if not (isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape[0] == len(captions)):
                raise ValueError(f"tokenize must return ids (B, L) for B={len(captions)} captions, got {ids!r:.80}")
            batch["text"] = ids.to(torch.int64)
            if padding_mask is not None:
                if padding_mask.shape != ids.shape:
                    raise ValueError(
                        f"tokenize returned a padding mask {tuple(padding_mask.shape)} for ids {tuple(ids.shape)}"
                    )
                batch["text_padding_mask"] = padding_mask.to(torch.bool)
    if "label" in first:
        batch["label"] = torch.tensor([sample["label"] for sample in samples], dtype=torch.int64)  # (B,)
    return batch


class _BatchStream(IterableDataset):
    """What each DataLoader worker iterates: batches from mixed sources, then one final report."""

    def __init__(
        self,
        sources: list[SourceSpec],
        names: list[str],
        shard_lists: list[list[str]],
        *,
        batch_size: int,
        tokenize: Tokenize | None,
        train: bool,
        resampled: bool,
        shuffle_buffer: int,
        drop_last: bool,
        image_config: ImagePreprocessConfig | None,
        audio_config: AudioPreprocessConfig | None,
        seed: int,
        rank: int,
        batches_per_epoch: int | None,
    ) -> None:
        super().__init__()
        self.sources, self.names, self.shard_lists = sources, names, shard_lists
        self.batch_size, self.tokenize, self.train = batch_size, tokenize, train
        self.resampled, self.shuffle_buffer, self.drop_last = resampled, shuffle_buffer, drop_last
        self.image_config, self.audio_config = image_config, audio_config
        self.seed, self.rank, self.batches_per_epoch = seed, rank, batches_per_epoch
        self.epoch = 0
        self.start_batch = 0
        self.rank_shards: list[list[str]] = shard_lists  # set by the loader per epoch in finite mode

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        process, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:  # a worker process of ours: its malloc settings are ours to choose
            retain_freed_memory()
        # DataLoader asks its workers in turn, from worker process 0; batch i of the epoch
        # belongs to stream i % num_workers. A run resumed at start_batch first asks
        # process 0 for batch start_batch, so each process plays the stream it meets.
        worker = (process + self.start_batch) % num_workers
        counts = _WorkerCounts()
        settings = _StreamSettings(
            train=self.train,
            resampled=self.resampled,
            shuffle_buffer=self.shuffle_buffer,
            image_config=self.image_config,
            audio_config=self.audio_config,
            seed_parts=(self.seed, self.epoch, self.rank, worker),
        )
        streams = []
        for index, (spec, name) in enumerate(zip(self.sources, self.names)):
            urls = self.shard_lists[index] if self.resampled else self.rank_shards[index][worker::num_workers]
            streams.append(_SourceStream(index, spec, name, urls, settings, counts) if urls else None)
        active = [index for index, stream in enumerate(streams) if stream is not None]
        weights = [spec.weight for spec in self.sources]
        # The source of each batch must not depend on the rank: in distributed training all
        # ranks' batches of a step are gathered into one contrastive batch, so they must hold
        # the same modalities. (seed, epoch, worker) gives every rank the same sequence.
        seed, epoch, _rank, worker_id = settings.seed_parts
        mix_rng = random.Random(stable_int("mix", seed, epoch, worker_id))
        # This stream makes the epoch's batches worker, worker + num_workers, ...
        own_batches = None if self.batches_per_epoch is None else len(range(worker, self.batches_per_epoch, num_workers))
        to_skip = len(range(worker, self.start_batch, num_workers))
        done = 0
        while active and (own_batches is None or done < own_batches):
            index = mix_rng.choices(active, weights=[weights[i] for i in active])[0]
            stream = streams[index]
            if done < to_skip:
                for _ in range(self.batch_size):
                    if stream.next_raw() is None:
                        break
                if stream.exhausted:
                    active.remove(index)
                done += 1
                continue
            samples = []
            while len(samples) < self.batch_size:
                sample = stream.next_sample()
                if sample is None:
                    break
                samples.append(sample)
            if stream.exhausted:
                active.remove(index)
            if not samples or (self.drop_last and len(samples) < self.batch_size):
                continue
            batch = collate_samples(samples, self.tokenize, self.names[index], audio_windows=not self.train)
            batch["__stats__"] = counts.take()
            done += 1
            yield batch
        yield {"__stats__": counts.take(), "__end__": True}


# The loader ------------------------------------------------------------------------


class _RecycledBuffers:
    """Float image batches whose memory is reused once nothing refers to it any more.

    A fresh CPU batch above glibc's mmap threshold (32 MiB: 64 images at 224 px) is
    new pages every time, and faulting them in costs several times the arithmetic of
    normalising. The pool keeps a few storages and hands one out again only when its
    use count shows that no tensor or view (nor numpy array) of the consumer still
    holds it, so a batch kept by the consumer is never overwritten.
    """

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self.storages: list[torch.UntypedStorage] = []
        # A private torch function; without it every batch is simply allocated anew.
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)

    def empty(self, shape: torch.Size) -> torch.Tensor:
        """An uninitialised contiguous float32 CPU tensor of ``shape``."""
        if self._use_count is None:
            return torch.empty(shape, dtype=torch.float32)
        num_bytes = math.prod(shape) * 4
        for storage in self.storages:
            if storage.nbytes() == num_bytes and self._use_count(storage._cdata) == 1:
                return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
        if len(self.storages) >= self.capacity:
            self.storages.pop(0)
        storage = torch.UntypedStorage(num_bytes)
        self.storages.append(storage)
        return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)


@contextlib.contextmanager
def _one_cpu_thread() -> Iterator[None]:
    """Runs the body with torch on one CPU thread, then restores the thread count.

    While worker processes decode on the other cores, a parallel region in the main
    process waits at its barrier for a thread that has no core, spinning: normalising
    a batch on two threads next to one busy worker cost 3x the CPU time of doing it
    on one (measured on 2 cores: 470 against 160 us per image for the whole main process).
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def finish_batch(
    batch: dict,
    image_config: ImagePreprocessConfig | None,
    device: torch.device | None = None,
    buffers: _RecycledBuffers | None = None,
    *,
    workers_busy: bool = False,
) -> dict:
    """Moves tensors to ``device`` (if given) and normalises uint8 images there (not when ``image_config`` is None).

    ``workers_busy``: worker processes are decoding on the CPU's other cores, so
    normalising on the CPU uses one thread (see :func:`_one_cpu_thread`).
    """
    if device is not None:
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    image = batch.get("image")
    if image is not None and image.dtype == torch.uint8 and image_config is not None:
        on_cpu = image.device.type == "cpu"
        out = buffers.empty(image.shape) if buffers is not None and on_cpu else None
        with _one_cpu_thread() if on_cpu and workers_busy else contextlib.nullcontext():
            batch["image"] = normalize_image(image, image_config, out=out)
    return batch


class ShardLoader:
    """An iterable of batches over a :class:`torch.utils.data.DataLoader` of shard streams.

    Made by :func:`make_loader`. Iterating runs one epoch (forever for a resampled
    stream without ``samples_per_epoch``) and then advances :attr:`epoch`. Attributes:
    ``stats`` (:class:`DataStats`), ``epoch``, ``num_batches`` (batches per epoch per
    rank, or None when unknown).
    """

    def __init__(
        self,
        dataset: _BatchStream,
        *,
        num_workers: int,
        prefetch_factor: int,
        device: torch.device | None,
        image_config: ImagePreprocessConfig | None,
        world_size: int,
        log_skips_every: int,
    ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.device = device
        self.image_config = image_config
        self.world_size = world_size
        self.stats = DataStats(dataset.names, log_skips_every)
        self._buffers = _RecycledBuffers()
        self.epoch = 0
        self.start_batch = 0
        self.batches_in_epoch = 0
        self._assign_rank_shards()

    @property
    def num_batches(self) -> int | None:
        return self.dataset.batches_per_epoch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this loader has no length: finite streams and endless resampled ones are not counted ahead")
        return self.num_batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration runs epoch ``epoch`` from its batch ``start_batch`` (earlier ones skipped undecoded)."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be non-negative, got {epoch}, {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch
        self._assign_rank_shards()

    def state_dict(self) -> dict:
        """Where the stream is: save it with a checkpoint, give it to :meth:`load_state_dict` to resume."""
        return {
            "epoch": self.epoch,
            "batch": self.start_batch + self.batches_in_epoch,
            "num_workers": self.num_workers,
            "batch_size": self.dataset.batch_size,
            "world_size": self.world_size,
            "seed": self.dataset.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resumes at ``state["epoch"]``, batch ``state["batch"]``; warns when the stream cannot match exactly."""
        for key, current in (
            ("num_workers", self.num_workers),
            ("batch_size", self.dataset.batch_size),
            ("world_size", self.world_size),
            ("seed", self.dataset.seed),
        ):
            if key in state and state[key] != current:
                warnings.warn(
                    f"resuming data with {key}={current} where the saved run had {state[key]}: "
                    "the stream continues but not as the same sequence of batches",
                    stacklevel=2,
                )
        self.set_epoch(int(state["epoch"]), int(state["batch"]))

    def _assign_rank_shards(self) -> None:
        dataset = self.dataset
        if dataset.resampled:
            return
        rank_shards = []
        for index, urls in enumerate(dataset.shard_lists):
            urls = list(urls)
            if dataset.train:  # the same order on every rank, so the rank slices stay disjoint
                random.Random(stable_int("shard-order", dataset.seed, self.epoch, index)).shuffle(urls)
            rank_shards.append(urls[dataset.rank :: self.world_size])
        dataset.rank_shards = rank_shards

    def __iter__(self) -> Iterator[dict]:
        dataset = self.dataset
        dataset.epoch, dataset.start_batch = self.epoch, self.start_batch
        self.batches_in_epoch = 0
        pin = self.device is not None and self.device.type == "cuda"
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            pin_memory=pin,
            persistent_workers=False,
        )
        for item in loader:
            self.stats.add(item.pop("__stats__"))
            if item.pop("__end__", False):
                continue
            self.batches_in_epoch += 1
            yield finish_batch(
                item, self.image_config, self.device, self._buffers, workers_busy=self.num_workers > 0
            )
        if not dataset.resampled:
            self._check_sources_read()
        self.epoch += 1
        self.start_batch = 0
        self.batches_in_epoch = 0
        self._assign_rank_shards()

    def _check_sources_read(self) -> None:
        for name, shards in zip(self.dataset.names, self.dataset.rank_shards):
            if shards and self.stats.samples.get(name, 0) == 0:
                raise ValueError(
                    f"source {name!r} yielded no valid sample from its {len(shards)} shards on this rank "
                    f"(first: {shards[0]}); skipped: {self.stats.skipped.get(name) or 'nothing'}. "
                    "Check the shards and the source's keys."
                )


def make_loader(
    sources: Sequence[SourceSpec],
    *,
    batch_size: int,
    train: bool,
    tokenize: Tokenize | None = None,
    image_config: ImagePreprocessConfig | None = None,
    audio_config: AudioPreprocessConfig | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    resampled: bool | None = None,
    samples_per_epoch: int | None = None,
    shuffle_buffer: int | None = None,
    drop_last: bool | None = None,
    prefetch_factor: int = 2,
    device: torch.device | str | None = None,
    normalize_images: bool = True,
    log_skips_every: int = 100,
) -> ShardLoader:
    """Batches from weighted tar-shard sources, for training (``train=True``) or evaluation.

    Args:
        sources: the :class:`SourceSpec` list; each batch comes from one of them.
        batch_size: samples per batch (per rank).
        train: random crops, random caption choice, shuffling; False: deterministic
            centre crops, first caption, whole audio clips as windows.
        tokenize: ``tokenize(list[str]) -> (ids int64 (B, L), padding_mask bool (B, L) or None)``;
            None leaves "text" as the list of caption strings. Runs in the workers
            (so it must pickle when workers are not forked).
        image_config / audio_config: preprocessing; required when a source has that modality.
        seed: base of every RNG (with epoch, rank and worker id).
        rank / world_size: this process's place among data-parallel processes.
        num_workers: DataLoader worker processes (0: in this process).
        resampled: endless shard resampling (default: ``train``) or each shard once.
        samples_per_epoch: resampled only: samples per epoch over all ranks.
        shuffle_buffer: per source and worker, raw samples held for shuffling
            (default 1000 in training, 0 in evaluation).
        drop_last: drop a source's last incomplete batch in a finite stream (default: ``train``).
        prefetch_factor: batches each worker prepares ahead.
        device: where batches are delivered; images are normalised there (pinned
            memory for CUDA). None: the CPU. Images cross processes and the bus as
            uint8, 4x fewer bytes than float.
        normalize_images: False delivers images as uint8 (B, 3, S, S) crops, to be
            normalised by the consumer (:func:`multimodal.data.image.normalize_image`), e.g.
            after its own augmentations on the GPU.
        log_skips_every: log a summary every this many skipped shards or samples.
    """
    sources = list(sources)
    if not sources:
        raise ValueError("make_loader needs at least one source")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    resampled = train if resampled is None else resampled
    if samples_per_epoch is not None:
        if not resampled:
            raise ValueError("samples_per_epoch sets the length of a resampled stream; a finite one reads each shard once")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be at least 1, got {samples_per_epoch}")
    names = [spec.name or f"source{index}" for index, spec in enumerate(sources)]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be distinct, got {names}")
    for spec, name in zip(sources, names):
        if train and len(spec.modalities) < 2:
            raise ValueError(
                f"source {name!r}: a training batch needs at least two modalities to contrast, got {spec.modalities}"
            )
        if "image" in spec.modalities and image_config is None:
            raise ValueError(f"source {name!r} has images but make_loader got no image_config")
        if "audio" in spec.modalities and audio_config is None:
            raise ValueError(f"source {name!r} has audio but make_loader got no audio_config")
    shard_lists = [expand_shards(spec.shards) for spec in sources]
    if not resampled:
        readers = world_size * max(num_workers, 1)
        for name, urls in zip(names, shard_lists):
            if len(urls) < readers:
                logger.warning(
                    "source %r has %d shards for %d ranks x workers: some read nothing in a finite pass",
                    name,
                    len(urls),
                    readers,
                )
    batches_per_epoch = None
    if samples_per_epoch is not None:
        batches_per_epoch = math.ceil(samples_per_epoch / (batch_size * world_size))
    dataset = _BatchStream(
        sources,
        names,
        shard_lists,
        batch_size=batch_size,
        tokenize=tokenize,
        train=train,
        resampled=resampled,
        shuffle_buffer=(1000 if train else 0) if shuffle_buffer is None else shuffle_buffer,
        drop_last=train if drop_last is None else drop_last,
        image_config=image_config,
        audio_config=audio_config,
        seed=seed,
        rank=rank,
        batches_per_epoch=batches_per_epoch,
    )
    return ShardLoader(
        dataset,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        device=torch.device(device) if device is not None else None,
        image_config=image_config if normalize_images else None,
        world_size=world_size,
        log_skips_every=log_skips_every,
    )


__all__ = [
    "DataStats",
    "MODALITIES",
    "SHARD_SKIP_REASONS",
    "SAMPLE_SKIP_REASONS",
    "ShardLoader",
    "SourceSpec",
    "collate_samples",
    "finish_batch",
    "make_loader",
]
