"""How a DataLoader worker makes batches: shards -> one source's samples -> sources mixed by weight -> collation.

The way of one batch, in the order the code below is written (the loader's side,
in its own process, is :mod:`multimodal.data.pipeline.loader`):

1. :meth:`SourceStream._shard_reads`: the source's shards as drawn (resampled: with
   replacement, forever; finite: each once), read by
   :func:`multimodal.data.pipeline.shard_reader.read_shard` or fetched ahead;
2. :meth:`SourceStream._raw_samples`: the samples the source can use (a sample without
   one of its members is counted and dropped), through the shuffle buffer;
3. :meth:`SourceStream.next_sample`: a raw sample -> a preprocessed one: captions and label
   from its fields, each member by its definition's ``load_member`` (decode, crop,
   augmentation levers drawn);
4. :meth:`BatchStream.__iter__`: a source drawn by weight, ``batch_size`` samples taken
   from it;
5. :func:`collate_samples`: the samples -> one batch dict, each modality by its
   definition's ``collate_into`` (images stay uint8, augmented at once).

The loader then delivers the batch and each definition finishes its entries there
(:func:`multimodal.data.pipeline.loader.finish_batch`: images normalised).

Batch convention (what :func:`collate_samples` makes)::

    {"image": uint8 (B, 3, S, S),                        # normalised later, see multimodal.data.pipeline.loader.finish_batch
     "audio": float (W, T, F), "audio_padding_mask": bool (W, T),  # mask only when a row is padded
     "audio_window_clip": int64 (W,),                    # evaluation only: the sample of each row
     "text": int64 (M, L), "text_padding_mask": bool (M, L),       # from the tokenize callable, L cut to the longest row
     "text_item": int64 (M,),                            # all_captions sources only: the sample of each row
     "label": int64 (B,),                                # only for sources with a label_key
     "__key__": list[str], "__source__": str}

In training W == B (one crop per clip). In evaluation a long clip is covered by
several windows (see :func:`multimodal.data.preprocess.audio_features.eval_audio_windows`): "audio" then
has one row per window (W >= B rows) and "audio_window_clip" says which sample each
row belongs to; embed the rows and average them per sample. Every evaluation batch
with audio carries it (``arange(B)`` when each clip fits in one window).

"text" has one row per sample (M == B), except from a source read with
``all_captions`` (evaluation: COCO-style items with several captions each): then every
caption of every sample is a row, in sample order, and "text_item" says which sample
each row belongs to. Caption embeddings are never averaged: retrieval ranks each
caption on its own and counts an item found when any of its captions is.

Batches are made inside DataLoader workers (webdataset's WebLoader pattern:
``DataLoader(batch_size=None)`` over a stream of whole batches). Each worker keeps one
:class:`SourceStream` per source; for every batch it draws a source by weight from a
seeded RNG and fills the batch from that source alone, so a batch holds one source's
modalities. The draw depends on (seed, epoch, worker), not on the rank: in distributed
training the ranks' batches of one step are gathered into one contrastive batch, so
they must hold the same modalities. Which shards a worker reads: resampled, every worker
draws from the source's whole list; finite, the worker takes
``rank_shards[worker::num_workers]`` of the shards the loader gave this rank. Each worker
attaches its new counts to every batch (key ``"__stats__"``) and ends with one report of
its own (``{"__stats__": ..., "__end__": True}``).

Augmentation: in training, a source's :class:`multimodal.data.pipeline.source_spec.AugmentConfig`
is drawn for each image after its crop (applied to the batch's crops at once when they
are collated) and applied to each waveform before its crop and filterbank (its
``spec_augment`` lever to the features after); evaluation never augments.

Determinism: shard draws, the shuffle buffer, the mixing of sources and every sample's
random choices (crop, caption, audio crop, SpecAugment, augmentation) come from RNGs
seeded with :func:`multimodal.data.seeds.stable_int` of (seed, epoch, rank, worker,
source). A sample's own RNG is seeded by its position in its source's stream, so a
skipped sample does not shift the choices made for later ones. Nothing depends on
torch's global RNG. Evaluation makes no random choice at all.

Bad data: a sample that lacks a modality of the source or whose data does not decode is
counted (see :mod:`multimodal.data.pipeline.skip_counts`) and skipped, and its shard goes on.
A resampled source with no valid sample at all is an error naming it, raised once a
whole pass over its shards yielded nothing valid: every shard read to its end at
least once (shards that cannot be read, are empty or break before their first sample
count as read) and every sample read until then judged; or, for sources of many
shards, once 10,000 failures spread over 10 or more shards were counted with no
valid sample. A finite pass is checked by the loader at its end instead.
"""
from __future__ import annotations

import functools
import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info

from multimodal.data.modalities.registry import MEDIA_FIRST, MODALITIES, get_modality
from multimodal.data.pipeline.allocator import retain_freed_memory
from multimodal.data.pipeline.fetch_ahead import FetchAhead, ShardRead
from multimodal.data.pipeline.remote import RemoteConfig, exit_with_parent, is_fetched
from multimodal.data.pipeline.sample_fields import UnusableSample
from multimodal.data.pipeline.shard_reader import ShardProblem, read_shard
from multimodal.data.pipeline.skip_counts import WorkerCounts
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.seeds import stable_int

# ``tokenize(captions) -> (ids int64 (B, L), padding_mask bool (B, L) or None)``.
Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]

# A resampled source is declared empty before a whole pass is judged only after this
# many failures spread over at least EMPTY_SOURCE_MIN_SHARDS shards, none valid: a
# source of thousands of shards would otherwise be read through before it is reported.
EMPTY_SOURCE_FAILURES = 10_000
EMPTY_SOURCE_MIN_SHARDS = 10


# Shards -> samples of one source


@dataclass
class StreamSettings:
    """What every source stream of one worker shares."""

    train: bool
    resampled: bool
    shuffle_buffer: int
    preprocess: dict[str, object]  # each media modality's preprocessing config, by name
    seed_parts: tuple  # (seed, epoch, rank, worker)
    remote: RemoteConfig  # how shards over HTTP(S) and from pipe: commands are read


def _sample_name(raw: dict) -> str:
    """A raw sample's name among all a source reads: its shard and key (counted once however often drawn)."""
    return f"{raw['__url__']}\0{raw['__key__']}"


class SourceStream:
    """One source's samples in one worker: its shards, the shuffle buffer, preprocessing, when it has failed.

    Preprocessed samples hold an image crop uint8 (3, S, S), audio windows (T, F), a
    caption string (every caption, a list, for an ``all_captions`` source), a label int.
    ``index`` is the source's place in the loader's list (part of every seed), ``urls``
    the shards this worker reads, ``counts`` the worker's counts the skips go to.
    """

    def __init__(
        self, index: int, spec: SourceSpec, name: str, urls: list[str], settings: StreamSettings, counts: WorkerCounts
    ) -> None:
        self.spec, self.name, self.urls, self.settings, self.counts = spec, name, urls, settings, counts
        self.fields = spec.sample_fields()
        # Read from a member of their own, in the registry's order (the order their random draws are made in).
        self.member_modalities = [m for m in MODALITIES if m in spec.modalities and get_modality(m).reads_files]
        # Each one's augmentation levers where they apply: training, and some lever on.
        self.levers = {m: spec.augment.levers_for(m) if settings.train and spec.augment.enabled_for(m) else None
                       for m in self.member_modalities}
        self.definitions = {m: get_modality(m) for m in self.member_modalities}
        # Read from the sample's captions (text): the modalities with no member of their own.
        self.caption_modalities = [m for m in MODALITIES if m in spec.modalities and not get_modality(m).reads_files]
        self.members_read = self.fields.members_read(spec.modalities)  # the rest is dropped as a sample is read
        self.sample_seed = stable_int("sample", *settings.seed_parts, index)
        self.shard_rng = random.Random(stable_int("shards", *settings.seed_parts, index))
        self.buffer_rng = random.Random(stable_int("buffer", *settings.seed_parts, index))
        self.position = 0  # raw samples taken out of the shuffle buffer so far
        self.exhausted = False
        # Failure accounting (see the module docstring).
        self.valid_samples = 0
        self.failures = 0  # skipped samples and shards that gave no sample
        self.failed_shards: set[int] = set()
        self.skip_counts: dict[str, int] = {}  # every skip of this stream, by reason
        self.samples_read = 0  # raw samples read out of shards, before the shuffle buffer
        self.finished_shards: set[int] = set()  # read to their end (or their failure) at least once
        self.pass_end: int | None = None  # samples_read when every shard had been finished
        self.judged_in_pass = 0  # samples of that first pass judged valid or not
        self._raw = self._raw_samples()

    def _shard_reads(self) -> Iterator[ShardRead]:
        """(shard index, url, sample, None) for each sample of the shards as drawn, and
        (shard index, url, None, problems) at each shard's end.

        Resampled: shards drawn with replacement, forever; finite: each of them once, in
        order. Shards over HTTP(S) or from ``pipe:`` commands are fetched ahead, several at
        once (:mod:`multimodal.data.pipeline.fetch_ahead`); local files are read one after the other.
        """
        if self.settings.resampled:
            order = (self.shard_rng.randrange(len(self.urls)) for _ in itertools.count())
        else:
            order = range(len(self.urls))
        draws = ((shard_index, self.urls[shard_index]) for shard_index in order)
        if any(is_fetched(url) for url in self.urls):
            yield from FetchAhead(draws, self.settings.remote).reads()
            return
        for shard_index, url in draws:
            problems: list[ShardProblem] = []
            for sample in read_shard(url, problems):
                yield shard_index, url, sample, None
            yield shard_index, url, None, problems

    def _raw_samples(self) -> Iterator[dict]:
        """The samples read that the source can use, through the shuffle buffer.

        A sample lacking a member the source reads (its image, its audio) is counted and
        dropped here, before the buffer, and the others keep only the members the source
        reads: on shards where only some samples carry a modality, the buffer then holds
        usable samples only, so it shuffles as many of them as it is sized for, and a
        source with none is judged after one pass. Each sample read into a full buffer
        takes the place of one drawn at random, which goes on.
        """
        size = self.settings.shuffle_buffer
        buffer: list[dict] = []
        for shard_index, _, raw, problems in self._shard_reads():
            if raw is None:
                self._shard_ended(shard_index, problems)
                continue
            raw["__shard__"] = shard_index
            raw["__read__"] = self.samples_read
            self.samples_read += 1
            try:
                for modality in self.member_modalities:
                    self.fields.member(raw, modality)
            except UnusableSample as skip:
                self._judged(raw)
                self._reject(raw, skip)
                continue
            sample = {name: data for name, data in raw.items() if name in self.members_read or name[:2] == "__"}
            if size <= 1:
                yield sample
            elif len(buffer) < size:
                buffer.append(sample)
            else:
                slot = self.buffer_rng.randrange(size)
                yield buffer[slot]
                buffer[slot] = sample
        self.buffer_rng.shuffle(buffer)  # a finite stream's end: the buffer's rest, in random order
        yield from buffer

    def next_sample(self) -> dict | None:
        """The next valid preprocessed sample (bad ones are counted and skipped), or None when exhausted."""
        fields, settings = self.fields, self.settings
        while True:
            try:
                raw = next(self._raw)
            except StopIteration:
                self.exhausted = True
                return None
            self.position += 1
            self._judged(raw)
            # Evaluation makes no random choice; training seeds each sample by its stream position.
            rng = random.Random(self.sample_seed ^ self.position) if settings.train else None
            try:
                # Cheap checks first: a sample missing a field is rejected before anything is decoded
                # (a missing member was already dropped before the shuffle buffer).
                members = {modality: fields.member(raw, modality) for modality in self.member_modalities}
                sample: dict = {"__key__": raw["__key__"]}
                for modality in self.caption_modalities:
                    # A list (every caption) only for an evaluation source that asks for it; make_loader refuses it in training.
                    sample[modality] = fields.captions(raw) if self.spec.all_captions else fields.caption(raw, rng)
                if fields.label_key is not None:
                    sample["label"] = fields.label(raw)
                for modality, data in members.items():
                    try:
                        sample.update(self.definitions[modality].load_member(
                            data, settings.preprocess[modality], train=settings.train, rng=rng,
                            levers=self.levers[modality],
                        ))
                    except ValueError as error:
                        raise UnusableSample(f"bad_{modality}", str(error)) from None
            except UnusableSample as skip:
                self._reject(raw, skip)
                continue
            self.valid_samples += 1
            self.counts.valid(self.name, _sample_name(raw))
            return sample

    # Failure accounting (off the way of a good sample)

    def _shard_ended(self, shard_index: int, problems: list[ShardProblem]) -> None:
        """Counts a shard's problems; the first pass ends when every shard has ended once."""
        for problem in problems:
            self._skip(problem.reason, f"{problem.url}: {problem.message}", shard=problem.url)
            if problem.samples_read == 0:
                self.failures += 1
                self.failed_shards.add(shard_index)
        self.finished_shards.add(shard_index)
        if self.pass_end is None and len(self.finished_shards) == len(self.urls):
            self.pass_end = self.samples_read
        self._check_not_empty()

    def _skip(self, reason: str, message: str, shard: str | None = None, sample: str | None = None) -> None:
        self.skip_counts[reason] = self.skip_counts.get(reason, 0) + 1
        self.counts.skip(self.name, reason, message, shard, sample)

    def _judged(self, raw: dict) -> None:
        if self.pass_end is None or raw["__read__"] < self.pass_end:
            self.judged_in_pass += 1

    def _reject(self, raw: dict, skip: UnusableSample) -> None:
        self._skip(skip.reason, f"{raw['__url__']} sample {raw['__key__']}: {skip}", sample=_sample_name(raw))
        self.failures += 1
        self.failed_shards.add(raw["__shard__"])
        self._check_not_empty()

    def _check_not_empty(self) -> None:
        """Raises in a resampled stream that has shown it holds no valid sample."""
        if not self.settings.resampled or self.valid_samples > 0:
            return
        whole_pass = self.pass_end is not None and self.judged_in_pass >= self.pass_end
        many = self.failures >= EMPTY_SOURCE_FAILURES and len(self.failed_shards) >= min(
            len(self.urls), EMPTY_SOURCE_MIN_SHARDS
        )
        if whole_pass or many:
            extent = (
                f"a whole pass over its {len(self.urls)} shards gave none" if whole_pass
                else f"{self.failures} failures over {len(self.failed_shards)} of its {len(self.urls)} shards "
                "and not one valid"
            )
            raise ValueError(
                f"source {self.name!r} yields no valid sample: {extent} "
                f"(skipped: {dict(sorted(self.skip_counts.items()))}). "
                f"Check its shards ({self.urls[0]} ...) and keys: {self.spec.describe_keys()}"
            )


# Sources mixed by weight, one batch at a time


@functools.cache
def lower_priority(niceness: int) -> None:
    """Raises this worker process's niceness by ``niceness`` (once per process; 0: unchanged).

    Where the CPU is shared, as on a laptop, the trainer's threads and the workers want
    the same cores. At equal priority a worker that takes a core stalls the trainer's
    other threads at their next barrier, and a step can take twice its time; a lower
    priority lets the trainer run whenever it can and the workers fill the cycles it
    leaves (its waits, its serial parts). Where cores are idle, nothing changes.
    """
    if niceness > 0 and hasattr(os, "nice"):
        os.nice(niceness)


class BatchStream(IterableDataset):
    """What each DataLoader worker iterates: batches from mixed sources, then one final report.

    ``epoch`` (set by the loader before each pass) and ``rank_shards`` (this rank's
    shards of each source in a finite stream) change between passes; the rest is fixed.
    ``batches_per_epoch``: batches of the whole pass on this rank, shared out over the
    workers as DataLoader asks them in turn; None: until the shards run out (finite)
    or forever (resampled).
    """

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
        preprocess: dict[str, object],
        seed: int,
        rank: int,
        batches_per_epoch: int | None,
        worker_nice: int = 0,
        remote: RemoteConfig | None = None,
    ) -> None:
        super().__init__()
        self.worker_nice = worker_nice
        self.remote = remote if remote is not None else RemoteConfig()
        self.sources, self.names, self.shard_lists = sources, names, shard_lists
        self.batch_size, self.tokenize, self.train = batch_size, tokenize, train
        self.resampled, self.shuffle_buffer, self.drop_last = resampled, shuffle_buffer, drop_last
        self.preprocess = preprocess
        self.seed, self.rank, self.batches_per_epoch = seed, rank, batches_per_epoch
        self.epoch = 0
        self.rank_shards: list[list[str]] = shard_lists  # set by the loader per epoch in finite mode

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:  # a worker process of ours: its malloc settings are ours to choose
            retain_freed_memory()
            lower_priority(self.worker_nice)
            exit_with_parent()  # a worker blocked on a read must not outlive a killed run
        counts = WorkerCounts()
        settings = StreamSettings(
            train=self.train,
            resampled=self.resampled,
            shuffle_buffer=self.shuffle_buffer,
            preprocess=self.preprocess,
            seed_parts=(self.seed, self.epoch, self.rank, worker),
            remote=self.remote,
        )
        streams: list[SourceStream | None] = []
        for index, (spec, name) in enumerate(zip(self.sources, self.names)):
            urls = self.shard_lists[index] if self.resampled else self.rank_shards[index][worker::num_workers]
            streams.append(SourceStream(index, spec, name, urls, settings, counts) if urls else None)
        active = [index for index, stream in enumerate(streams) if stream is not None]
        weights = [spec.weight for spec in self.sources]
        mix_rng = random.Random(stable_int("mix", self.seed, self.epoch, worker))
        # DataLoader asks its workers in turn, so this worker makes batches worker, worker + num_workers, ...
        own_batches = None
        if self.batches_per_epoch is not None:
            own_batches = len(range(worker, self.batches_per_epoch, num_workers))
        done = 0
        while active and (own_batches is None or done < own_batches):
            index = mix_rng.choices(active, weights=[weights[i] for i in active])[0]
            stream = streams[index]
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
            batch = collate_samples(samples, self.tokenize, self.names[index], train=self.train)
            batch["__stats__"] = counts.take()
            done += 1
            yield batch
        yield {"__stats__": counts.take(), "__end__": True}


# Collation


def trim_padding_columns(ids: torch.Tensor, padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drops the trailing columns that are padding in every row: (M, L) -> (M, L'), L' the longest caption.

    A tokenizer pads every caption to the context length (16 in the tiny preset, 77 in
    CLIP's), where the demo's captions hold at most 8 tokens: the text tower would spend
    half its work on padding. Padded positions are masked keys and come after the
    end-of-text token, so no output changes (tests compare the embeddings).
    """
    used = (~padding_mask).any(dim=0).nonzero()  # columns holding a token in some row
    longest = int(used[-1]) + 1 if len(used) else 1
    if longest >= ids.shape[1]:
        return ids, padding_mask
    return ids[:, :longest].contiguous(), padding_mask[:, :longest].contiguous()


def collate_samples(
    samples: list[dict], tokenize: Tokenize | None, source: str, *, train: bool = True
) -> dict:
    """Preprocessed samples of one source -> a batch dict (images stay uint8; see the module docstring).

    Samples carrying "image_draws" (:func:`multimodal.data.preprocess.augment_image.draw_image_levers`)
    have their images augmented here, the batch at once (:func:`~multimodal.data.preprocess.augment_image.augment_images`).

    A sample's "audio" is a list of (T, F) windows: one crop in training; in
    evaluation (``train=False``) every window of the clip, each a row of
    "audio", with "audio_window_clip" int64 (W,) giving the sample each row belongs
    to. "audio_padding_mask" is present when some row is shorter than the longest.
    A sample's "text" is its caption, or the list of all its captions: then each is a
    row of "text" and "text_item" int64 (M,) gives the sample each row belongs to.
    ``tokenize(captions) -> (ids (B, L), padding_mask (B, L) or None)``; None keeps
    "text" as the list of caption strings.
    """
    batch: dict = {"__key__": [sample["__key__"] for sample in samples], "__source__": source}
    first = samples[0]
    for modality in MEDIA_FIRST:  # members, then captions: the order batches have always been built in
        if modality in first:
            get_modality(modality).collate_into(batch, samples, tokenize=tokenize, train=train)
    if "label" in first:
        batch["label"] = torch.tensor([sample["label"] for sample in samples], dtype=torch.int64)  # (B,)
    return batch


__all__ = [
    "EMPTY_SOURCE_FAILURES",
    "EMPTY_SOURCE_MIN_SHARDS",
    "BatchStream",
    "SourceStream",
    "StreamSettings",
    "Tokenize",
    "collate_samples",
    "lower_priority",
    "trim_padding_columns",
]
