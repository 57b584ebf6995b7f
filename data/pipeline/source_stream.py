"""One source's samples inside one worker: its shards, the shuffle buffer, preprocessing, when it has failed.

A :class:`SourceStream` reads raw samples from its shards (resampled: drawn with
replacement, forever; finite: each of its shards once, in order), passes them
through a shuffle buffer and turns each into a preprocessed sample (image crop
uint8 (3, S, S), audio windows (T, F), caption string (every caption, a list, for an
``all_captions`` source), label int).

Augmentation: in training, a source's :class:`multimodal.data.pipeline.source_spec.AugmentConfig`
is drawn for each image after its crop (applied to the batch's crops at once when they
are collated, see :mod:`multimodal.data.pipeline.collate`) and applied to each waveform before
its crop and filterbank (its ``spec_augment`` lever to the features after); evaluation
never augments.

Determinism: shard draws, the shuffle buffer and every sample's random choices
(crop, caption, audio crop, SpecAugment, augmentation) come from RNGs seeded with
:func:`multimodal.data.seeds.stable_int` of (seed, epoch, rank, worker, source). A
sample's own RNG is seeded by its position in its source's stream, so a skipped
sample does not shift the choices made for later ones. Nothing depends on torch's
global RNG. Evaluation makes no random choice at all.

Bad data: a sample that lacks a modality of the source or whose data does not
decode is counted (see :mod:`multimodal.data.pipeline.skip_counts`) and skipped, and its shard goes
on. A sample without the source's image or audio member is dropped as it is read,
before the shuffle buffer, and the others keep only the members the source reads:
the buffer's slots and memory go to samples the source can use.

A resampled source with no valid sample at all is an error naming it, raised once a
whole pass over its shards yielded nothing valid: every shard read to its end at
least once (shards that cannot be read, are empty or break before their first sample
count as read) and every sample read until then judged; or, for sources of many
shards, once 10,000 failures spread over 10 or more shards were counted with no
valid sample. A finite pass is checked by the loader at its end instead.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from multimodal.data.pipeline.fetch_ahead import FetchAhead, ShardRead
from multimodal.data.modalities.registry import MODALITIES, get_modality
from multimodal.data.pipeline.remote import RemoteConfig, is_fetched
from multimodal.data.pipeline.sample_fields import UnusableSample
from multimodal.data.seeds import stable_int
from multimodal.data.pipeline.shard_reader import ShardProblem, read_shard
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.pipeline.skip_counts import WorkerCounts

# A resampled source is declared empty before a whole pass is judged only after this
# many failures spread over at least EMPTY_SOURCE_MIN_SHARDS shards, none valid: a
# source of thousands of shards would otherwise be read through before it is reported.
EMPTY_SOURCE_FAILURES = 10_000
EMPTY_SOURCE_MIN_SHARDS = 10


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
    """Raw samples of one source in one worker (shards, shuffle buffer) and their preprocessing.

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
        self._raw = self._shuffled(self._raw_samples())

    # Raw samples

    def _shard_order(self) -> Iterator[int]:
        if self.settings.resampled:
            while True:
                yield self.shard_rng.randrange(len(self.urls))
        else:
            yield from range(len(self.urls))

    def _shard_reads(self) -> Iterator[ShardRead]:
        """Samples of the shards as drawn, each shard's end with its problems.

        Shards over HTTP(S) or from ``pipe:`` commands are fetched ahead, several at
        once (:mod:`multimodal.data.pipeline.fetch_ahead`); local files are read one after the other.
        """
        draws = ((shard_index, self.urls[shard_index]) for shard_index in self._shard_order())
        if any(is_fetched(url) for url in self.urls):
            yield from FetchAhead(draws, self.settings.remote).reads()
            return
        for shard_index, url in draws:
            problems: list[ShardProblem] = []
            for sample in read_shard(url, problems):
                yield shard_index, url, sample, None
            yield shard_index, url, None, problems

    def _raw_samples(self) -> Iterator[dict]:
        for shard_index, _, sample, problems in self._shard_reads():
            if sample is not None:
                sample["__shard__"] = shard_index
                sample["__read__"] = self.samples_read
                self.samples_read += 1
                if self._has_members(sample):
                    yield {name: data for name, data in sample.items() if name in self.members_read or name[:2] == "__"}
                continue
            for problem in problems:
                self._skip(problem.reason, f"{problem.url}: {problem.message}", shard=problem.url)
                if problem.samples_read == 0:
                    self.failures += 1
                    self.failed_shards.add(shard_index)
            self.finished_shards.add(shard_index)
            if self.pass_end is None and len(self.finished_shards) == len(self.urls):
                self.pass_end = self.samples_read
            self._check_not_empty()

    def _has_members(self, raw: dict) -> bool:
        """False (the sample counted and dropped) when it lacks the image or audio member the source reads.

        Checked before the shuffle buffer: on shards where only some samples carry a
        modality, the buffer then holds usable samples only, so it shuffles as many of
        them as it is sized for, and a source with none is judged after one pass.
        """
        try:
            for modality in self.member_modalities:
                self.fields.member(raw, modality)
        except UnusableSample as skip:
            self._judged(raw)
            self._reject(raw, skip)
            return False
        return True

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

    def _next_raw(self) -> dict | None:
        """The next raw sample out of the shuffle buffer, or None when a finite stream is exhausted."""
        try:
            sample = next(self._raw)
        except StopIteration:
            self.exhausted = True
            return None
        self.position += 1
        return sample

    # Failure accounting

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

    # Preprocessing

    def next_sample(self) -> dict | None:
        """The next valid preprocessed sample (bad ones are counted and skipped), or None when exhausted."""
        while True:
            raw = self._next_raw()
            if raw is None:
                return None
            self._judged(raw)
            try:
                # Evaluation makes no random choice; training seeds each sample by its stream position.
                rng = random.Random(self.sample_seed ^ self.position) if self.settings.train else None
                sample = self._preprocess(raw, rng)
            except UnusableSample as skip:
                self._reject(raw, skip)
                continue
            self.valid_samples += 1
            self.counts.valid(self.name, _sample_name(raw))
            return sample

    def _preprocess(self, raw: dict, rng: random.Random | None) -> dict:
        fields, settings = self.fields, self.settings
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
                    data, settings.preprocess[modality], train=settings.train, rng=rng, levers=self.levers[modality]
                ))
            except ValueError as error:
                raise UnusableSample(f"bad_{modality}", str(error)) from None
        return sample


__all__ = ["EMPTY_SOURCE_FAILURES", "EMPTY_SOURCE_MIN_SHARDS", "SourceStream", "StreamSettings"]
