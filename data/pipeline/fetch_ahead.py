"""Shards from elsewhere, fetched ahead and several at once, so that one slow shard never stops the others.

:class:`FetchAhead` takes the shards a stream draws, in order, and keeps up to
``fetch_ahead`` of them downloading at once (:class:`multimodal.data.pipeline.remote.Download`,
each into memory, within ``memory_mb``). It reads them in the order they were drawn
while the shard at the head brings bytes, so that with no fault the samples come in
the same order every time; the head's samples are parsed as its bytes arrive. A shard
that brings nothing for a while (two seconds, or half the stall timeout if shorter)
or has failed a try is passed over for one that goes on, and read once its download
ends, skipping the samples it gave already: a stall costs the stream nothing but that
shard.

A shard drawn again while it downloads shares the download. A shard that failed for
good is skipped at once, with its reason, when it is drawn again within
``retry_failed_after`` seconds.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from multimodal.data.pipeline.remote import Download, RemoteConfig, seconds
from multimodal.data.pipeline.shard_reader import ShardProblem, read_problem, tar_samples

# What the stream reads: (shard index, url, a sample or None, None or the shard's problems at its end).
ShardRead = tuple[int, str, "dict | None", "list[ShardProblem] | None"]

_PATIENCE = 2.0  # seconds without a byte before a shard is passed over (capped at half the stall timeout)


class _Deferred(Exception):
    """The shard being read brings nothing and another can go on: read that one first."""


class _Failed:
    """A shard that failed for good not long ago: stands in for its download, done, with the reason."""

    def __init__(self, url: str, error: str) -> None:
        self.url, self.error, self.data, self.done, self.waiting, self.total = url, error, b"", True, False, None
        self.tries = 1
        self.last_progress = time.monotonic()

    def cancel(self) -> None:
        pass


@dataclass
class _Entry:
    """One draw of a shard: its download (shared by draws of the same URL) and the samples it gave."""

    shard_index: int
    url: str
    download: Download | _Failed
    samples_given: int = 0


class _GrowingReader:
    """A file over a download's bytes: waits for bytes still to come, or leaves when the shard stalls."""

    def __init__(self, fetch: FetchAhead, entry: _Entry) -> None:
        self.fetch, self.entry, self.offset = fetch, entry, 0

    def read(self, size: int = -1) -> bytes:
        download, condition = self.entry.download, self.fetch.condition
        with condition:
            while not download.done and (size < 0 or len(download.data) - self.offset < size):
                if self.fetch.should_leave(self.entry):
                    raise _Deferred
                condition.wait(self.fetch.patience / 4)
            end = len(download.data) if size < 0 else self.offset + size
            with memoryview(download.data) as view:  # one copy; released before the download appends again
                data = bytes(view[self.offset : end])
        self.offset += len(data)
        return data


class FetchAhead:
    """Reads the shards of ``draws`` ((shard index, url) in order), fetching ahead (see the module docstring)."""

    def __init__(self, draws: Iterator[tuple[int, str]], config: RemoteConfig) -> None:
        self.draws, self.config = draws, config
        self.condition = threading.Condition()
        self.patience = min(_PATIENCE, config.stall_timeout / 2)
        self.window: list[_Entry] = []  # drawn, not yet read to the end, in draw order
        self.failed: dict[str, tuple[float, str]] = {}  # url -> (when, reason)
        self._draws_left = True

    def reads(self) -> Iterator[ShardRead]:
        """Samples as they are read, and each shard's end with its problems (an empty list when none)."""
        try:
            while True:
                self._fill()
                if not self.window:
                    return
                yield from self._read(self._choose())
        finally:
            self.close()

    def close(self) -> None:
        """Stops every download still running."""
        for entry in self.window:
            entry.download.cancel()
        self.window = []

    # Which shard goes on

    def _blocked(self, entry: _Entry) -> bool:
        """Done shards go on; one that failed a try waits until it is done (its next try may stall as well)."""
        download = entry.download
        if download.done:
            return False
        return download.waiting or download.tries > 1 or time.monotonic() - download.last_progress > self.patience

    def should_leave(self, entry: _Entry) -> bool:
        """Whether ``entry`` stalls while another shard of the window can go on (called under the condition)."""
        return self._blocked(entry) and any(other is not entry and not self._blocked(other) for other in self.window)

    def _choose(self) -> _Entry:
        """The first shard in draw order that brings bytes or is done; waits while none does."""
        with self.condition:
            while True:
                for entry in self.window:
                    if not self._blocked(entry):
                        return entry
                self.condition.wait(self.patience / 4)

    def _fill(self) -> None:
        """Draws shards and starts their downloads up to ``fetch_ahead`` shards and ``memory_mb`` held."""
        budget = self.config.memory_mb * 1e6
        while self._draws_left and len(self.window) < self.config.fetch_ahead:
            held = sum(len(d.data) for d in {id(e.download): e.download for e in self.window}.values())
            if self.window and held >= budget:
                return
            try:
                shard_index, url = next(self.draws)
            except StopIteration:
                self._draws_left = False
                return
            self.window.append(_Entry(shard_index, url, self._download(url)))

    def _download(self, url: str) -> Download | _Failed:
        for entry in self.window:
            if entry.url == url:
                return entry.download
        failure = self.failed.get(url)
        if failure is not None:
            when, reason = failure
            if time.monotonic() - when < self.config.retry_failed_after:
                return _Failed(url, f"{reason} (when read {seconds(round(time.monotonic() - when))} ago; read "
                                    f"again {seconds(self.config.retry_failed_after)} after)")
            del self.failed[url]
        return Download(url, self.config, self.condition).start()

    # Reading one shard

    def _read(self, entry: _Entry) -> Iterator[ShardRead]:
        """The samples of ``entry`` not given yet, then its end; nothing more if it stalls and is left for later.

        Each sample is given once the next one starts: the last one only if the download
        completed, since a connection cut between two of its files leaves a sample short.
        """
        position, failure, previous = 0, None, None
        try:
            for sample in tar_samples(_GrowingReader(self, entry), entry.url):
                position += 1
                if previous is not None:
                    yield from self._give(entry, previous, position - 1)
                previous = sample
        except _Deferred:
            return
        except (OSError, EOFError, ValueError) as error:  # TarFormatError is a ValueError; gzip raises OSError
            failure = error
        if previous is not None and failure is None and entry.download.error is None:
            yield from self._give(entry, previous, position)
        self.window.remove(entry)
        yield entry.shard_index, entry.url, None, self._problems(entry, failure)

    @staticmethod
    def _give(entry: _Entry, sample: dict, position: int) -> Iterator[ShardRead]:
        if position > entry.samples_given:  # not given before the shard was left for another
            entry.samples_given += 1
            yield entry.shard_index, entry.url, sample, None

    def _problems(self, entry: _Entry, failure: Exception | None) -> list[ShardProblem]:
        download = entry.download
        if download.error is not None:  # the fetch failed: its reason, not the tar parser's view of the bytes held
            if isinstance(download, Download):
                self.failed[entry.url] = (time.monotonic(), download.error)
            reason = "truncated_shard" if entry.samples_given else "unreadable_shard"
            return [ShardProblem(entry.url, reason, download.error, entry.samples_given)]
        problem = read_problem(entry.url, failure, entry.samples_given)
        return [] if problem is None else [problem]


__all__ = ["FetchAhead", "ShardRead"]
