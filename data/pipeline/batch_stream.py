"""The stream of whole batches one DataLoader worker makes: its share of the shards, sources mixed by weight.

Batches are made inside DataLoader workers (webdataset's WebLoader pattern:
``DataLoader(batch_size=None)`` over a stream of whole batches). Each worker keeps one
:class:`multimodal.data.pipeline.source_stream.SourceStream` per source; for every batch it
draws a source by weight from a seeded RNG and fills the batch from that source
alone, so a batch holds one source's modalities. The draw depends on (seed, epoch,
worker), not on the rank: in distributed training the ranks' batches of one step are
gathered into one contrastive batch, so they must hold the same modalities.

Which shards a worker reads: resampled, every worker draws from the source's whole
list; finite, the worker takes ``rank_shards[worker::num_workers]`` of the shards the
loader gave this rank. Each worker attaches its new counts to every batch (key
``"__stats__"``) and ends with one report of its own (``{"__stats__": ..., "__end__": True}``).
"""
from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterator

from torch.utils.data import IterableDataset, get_worker_info

from multimodal.data.pipeline.allocator import retain_freed_memory
from multimodal.data.pipeline.collate import Tokenize, collate_samples
from multimodal.data.pipeline.remote import RemoteConfig, exit_with_parent
from multimodal.data.seeds import stable_int
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.pipeline.source_stream import SourceStream, StreamSettings
from multimodal.data.pipeline.skip_counts import WorkerCounts


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


__all__ = ["BatchStream"]
