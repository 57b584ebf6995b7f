"""Streaming batches from tar shards: :func:`make_loader` and the :class:`ShardLoader` it returns.

A :class:`ShardLoader` is an iterable of batch dicts (the project's batch convention,
see :mod:`multimodal.data.pipeline.batches`; "image" arrives as normalised float (B, 3, S, S)
unless ``normalize_images=False``), each from one source (a
:class:`multimodal.data.pipeline.source_spec.SourceSpec`) and holding that source's
modalities.

The way of one batch: :func:`make_loader` checks the settings and makes a
:class:`ShardLoader`; :meth:`ShardLoader.__iter__` runs a DataLoader whose workers make
whole batches (:mod:`multimodal.data.pipeline.batches`, read in order: shards, one
source's samples, sources mixed by weight, collation); :func:`finish_batch` moves each to
its device, where each modality's definition finishes its entries
(:meth:`multimodal.data.modalities.base.Modality.after_loader`: images travel from the
workers as uint8 and are normalised here).

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

Determinism: the same seed, epoch, rank, world size, worker count and batch size
give the same batches in the same order (see :mod:`multimodal.data.pipeline.batches`).
Each pass over a loader is the next epoch: every stream gets a new seed, so a
second pass does not repeat the first. To continue a run, make a new loader with a
new seed (the trainer derives one from the step it restarts at).

Bad data is skipped and counted (:mod:`multimodal.data.pipeline.skip_counts`); ``loader.stats`` adds
up the workers' reports. A source with no valid sample at all is an error naming
it: raised by a worker in resampled mode (see :mod:`multimodal.data.pipeline.batches`),
and at the end of a finite pass for a source of which this rank read nothing valid.
"""
from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from multimodal.data.pipeline.batches import BatchStream, Tokenize
from multimodal.data.modalities.registry import DEFINITIONS, get_modality
from multimodal.data.pipeline.main_process import RecycledBuffers
from multimodal.data.pipeline.remote import RemoteConfig
from multimodal.data.seeds import stable_int
from multimodal.data.pipeline.shard_reader import expand_shards
from multimodal.data.pipeline.source_spec import SourceSpec, source_name
from multimodal.data.pipeline.skip_counts import DataStats

logger = logging.getLogger(__name__)


def finish_batch(
    batch: dict,
    preprocess: Mapping[str, object],
    device: torch.device | None = None,
    buffers: RecycledBuffers | None = None,
    *,
    workers_busy: bool = False,
) -> dict:
    """Moves tensors to ``device`` (if given), then each modality of the batch with a config in
    ``preprocess`` finishes its entries there (:meth:`multimodal.data.modalities.base.Modality.after_loader`:
    uint8 images are normalised); a modality without one is left as the workers made it.

    ``buffers`` supplies float CPU batches (see :class:`multimodal.data.pipeline.main_process.RecycledBuffers`).
    ``workers_busy``: worker processes are decoding on the CPU's other cores, so
    work on the CPU here uses one thread (see :func:`multimodal.data.pipeline.main_process.one_cpu_thread`).
    """
    if device is not None:
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    for name, definition in DEFINITIONS.items():
        if name in batch and preprocess.get(name) is not None:
            definition.after_loader(batch, preprocess[name], buffers=buffers, workers_busy=workers_busy)
    return batch


class ShardLoader:
    """An iterable of batches over a :class:`torch.utils.data.DataLoader` of shard streams.

    Made by :func:`make_loader`. Iterating runs one epoch (forever for a resampled
    stream without ``samples_per_epoch``) and then advances :attr:`epoch`, so the
    next pass draws new shards, shuffles and crops. Attributes: ``stats``
    (:class:`multimodal.data.pipeline.skip_counts.DataStats`), ``epoch`` (passes completed),
    ``num_batches`` (batches per epoch per rank, or None when unknown).
    """

    def __init__(
        self,
        dataset: BatchStream,
        *,
        num_workers: int,
        prefetch_factor: int,
        device: torch.device | None,
        finish_preprocess: Mapping[str, object],
        world_size: int,
        log_skips_every: int,
        allow_empty: bool = False,
    ) -> None:
        self.dataset = dataset
        self.allow_empty = allow_empty
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.device = device
        self.finish_preprocess = finish_preprocess
        self.world_size = world_size
        self.stats = DataStats(dataset.names, log_skips_every)
        self._buffers = RecycledBuffers()
        self.epoch = 0

    @property
    def num_batches(self) -> int | None:
        return self.dataset.batches_per_epoch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this loader has no length: finite streams and endless resampled ones are not counted ahead")
        return self.num_batches

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
        dataset.epoch = self.epoch
        self._assign_rank_shards()
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
            yield finish_batch(
                item, self.finish_preprocess, self.device, self._buffers, workers_busy=self.num_workers > 0
            )
        if not dataset.resampled and not self.allow_empty:
            self._check_sources_read()
        self.epoch += 1

    def _check_sources_read(self) -> None:
        for name, shards in zip(self.dataset.names, self.dataset.rank_shards):
            if shards and self.stats.samples.get(name, 0) == 0:
                raise ValueError(
                    f"source {name!r} yielded no valid sample from its {len(shards)} shards on this rank "
                    f"(first: {shards[0]}); skipped: {self.stats.skipped.get(name) or 'nothing'}. "
                    "Check the shards and the source's keys."
                )


def _check_arguments(
    sources: list[SourceSpec],
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int,
    worker_nice: int,
    resampled: bool,
    samples_per_epoch: int | None,
) -> None:
    """Refuses the settings of :func:`make_loader` that cannot make a stream, naming the one at fault."""
    if not sources:
        raise ValueError("make_loader needs at least one source")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if not 0 <= worker_nice <= 19:
        raise ValueError(f"worker_nice must be in 0-19 (a niceness added to the workers), got {worker_nice}")
    if samples_per_epoch is not None:
        if not resampled:
            raise ValueError("samples_per_epoch sets the length of a resampled stream; a finite one reads each shard once")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be at least 1, got {samples_per_epoch}")


def _source_names(sources: list[SourceSpec]) -> list[str]:
    """Each source's name (see :func:`source_name`); distinct, as they key the statistics."""
    names = [source_name(spec, index) for index, spec in enumerate(sources)]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be distinct, got {names}")
    return names


def _check_sources(sources: list[SourceSpec], names: list[str], train: bool, preprocess: Mapping[str, object]) -> None:
    """Refuses a source that this mode cannot read, or whose modality has no preprocessing given."""
    for spec, name in zip(sources, names):
        if train and spec.all_captions:
            raise ValueError(f"source {name!r}: all_captions is for evaluation; training reads one caption per sample")
        if train and len(spec.modalities) < 2:
            raise ValueError(
                f"source {name!r}: a training batch needs at least two modalities to contrast, got {spec.modalities}"
            )
        for modality in spec.modalities:
            if get_modality(modality).reads_files and preprocess.get(modality) is None:
                raise ValueError(f"source {name!r} has {modality} but make_loader got no {modality}_config: "
                                 f"give preprocess={{{modality!r}: ...}}")


def _shard_lists(sources: list[SourceSpec], names: list[str], resampled: bool, readers: int) -> list[list[str]]:
    """Each source's shard URLs; in a finite pass, a warning for each source with fewer shards than ``readers``."""
    shard_lists = [expand_shards(spec.shards) for spec in sources]
    if not resampled:
        _warn_of_idle_readers(names, shard_lists, readers)
    return shard_lists


def _warn_of_idle_readers(names: list[str], shard_lists: list[list[str]], readers: int) -> None:
    """Warns of a source with fewer shards than ranks x workers: in a finite pass some of them read nothing."""
    for name, urls in zip(names, shard_lists):
        if len(urls) < readers:
            logger.warning(
                "source %r has %d shards for %d ranks x workers: some read nothing in a finite pass",
                name,
                len(urls),
                readers,
            )


def _batches_per_epoch(samples_per_epoch: int | None, batch_size: int, world_size: int) -> int | None:
    """Batches per rank in an epoch of ``samples_per_epoch`` over all ranks; None: the stream never ends."""
    if samples_per_epoch is None:
        return None
    return math.ceil(samples_per_epoch / (batch_size * world_size))


def make_loader(
    sources: Sequence[SourceSpec],
    *,
    batch_size: int,
    train: bool,
    tokenize: Tokenize | None = None,
    preprocess: Mapping[str, object] | None = None,
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
    worker_nice: int = 0,
    remote: RemoteConfig | None = None,
    allow_empty: bool = False,
) -> ShardLoader:
    """Batches from weighted tar-shard sources, for training (``train=True``) or evaluation.

    Args:
        sources: the :class:`SourceSpec` list; each batch comes from one of them.
        batch_size: samples per batch (per rank).
        train: random crops, random caption choice, shuffling; False: deterministic
            centre crops, first non-empty caption, whole audio clips as windows.
        tokenize: ``tokenize(list[str]) -> (ids int64 (B, L), padding_mask bool (B, L) or None)``;
            None leaves "text" as the list of caption strings. Runs in the workers
            (so it must pickle when workers are not forked).
        preprocess: each media modality's preprocessing config by name (``{"image":
            ImagePreprocessConfig, "audio": AudioPreprocessConfig}``, as a model's
            ``ModelConfig.preprocess`` gives them); required for each modality a source reads from files.
        seed: base of every RNG (with epoch, rank and worker id).
        rank / world_size: this process's place among data-parallel processes.
        num_workers: DataLoader worker processes (0: in this process).
        resampled: endless shard resampling (default: ``train``) or each shard once.
        samples_per_epoch: resampled only: samples per epoch over all ranks.
        shuffle_buffer: per source and worker, raw samples held for shuffling
            (default 1000 in training, 0 in evaluation).
        drop_last: drop a source's last incomplete batch in a finite stream (default: ``train``).
        prefetch_factor: batches each worker prepares ahead.
        device: where batches are delivered; each modality's definition finishes its
            entries there (:func:`finish_batch`: images are normalised; pinned memory for
            CUDA). None: the CPU. Images cross processes and the bus as uint8, 4x fewer
            bytes than float.
        normalize_images: False delivers batches as the workers made them, with no
            modality's step after the loader: images as uint8 (B, 3, S, S) crops, to be
            normalised by the consumer (:func:`multimodal.data.preprocess.image_transforms.normalize_image`), e.g.
            after its own augmentations on the GPU.
        log_skips_every: log a summary every this many skipped shards or samples.
        worker_nice: niceness added to each worker process (0-19; 0: the trainer's priority).
            Where workers and trainer share few cores, a lower priority for the workers
            keeps the trainer's threads running (see :func:`multimodal.data.pipeline.batches.lower_priority`).
        remote: how shards over HTTP(S) and from ``pipe:`` commands are read: stall timeout,
            retries, shards fetched ahead at once (see :class:`multimodal.data.pipeline.remote.RemoteConfig`;
            None: its defaults).
        allow_empty: a finite pass over a source that gives no valid sample ends quietly
            (its skips are in ``stats``) instead of raising ValueError: for a caller that
            reports every sample itself (``multimodal embed``, one part per shard).
    """
    sources = list(sources)
    resampled = train if resampled is None else resampled
    _check_arguments(sources, batch_size, rank, world_size, num_workers, worker_nice, resampled, samples_per_epoch)
    names = _source_names(sources)
    preprocess = dict(preprocess or {})
    _check_sources(sources, names, train, preprocess)
    shard_lists = _shard_lists(sources, names, resampled, readers=world_size * max(num_workers, 1))
    dataset = BatchStream(
        sources, names, shard_lists, batch_size=batch_size, tokenize=tokenize, train=train, resampled=resampled,
        shuffle_buffer=(1000 if train else 0) if shuffle_buffer is None else shuffle_buffer,
        drop_last=train if drop_last is None else drop_last,
        preprocess=preprocess, seed=seed, rank=rank,
        batches_per_epoch=_batches_per_epoch(samples_per_epoch, batch_size, world_size), worker_nice=worker_nice,
        remote=remote,
    )
    return ShardLoader(
        dataset,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        device=torch.device(device) if device is not None else None,
        # uint8 crops are normalised where they arrive (see finish_batch), unless the consumer does it.
        finish_preprocess=preprocess if normalize_images else {},
        world_size=world_size,
        log_skips_every=log_skips_every,
        allow_empty=allow_empty,
    )


__all__ = ["ShardLoader", "finish_batch", "make_loader"]
