"""Why data is skipped, and the counts of it: per worker, then added up for the whole loader.

Bad shards and samples are skipped and counted by reason, per source. Shard reasons
(counted once per shard read): ``unreadable_shard`` / ``empty_shard`` /
``truncated_shard`` (see :class:`multimodal.data.shards.ShardProblem`). Sample reasons:
``missing_image`` / ``missing_audio`` / ``missing_caption`` / ``missing_label`` (the
sample lacks a field its source reads: on shards where only some samples carry a
modality this is the normal case, not an error) and ``bad_image`` / ``bad_audio`` /
``bad_caption`` / ``bad_label`` (the field is there but does not decode).

Each worker keeps a :class:`WorkerCounts` and attaches what is new to every batch it
makes; the loader adds the reports up in a :class:`DataStats`, which logs the first
skip of each kind with its message and a summary after ``log_every`` skips, then each
time the total doubles: on shards where most samples lack a modality a source reads,
skips come every step, and a line per step would bury the training log.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from multimodal.data.modalities import MEDIA_MODALITIES

logger = logging.getLogger(__name__)

# Per media modality (its member is missing, or does not decode), then the caption's and label's.
SAMPLE_SKIP_REASONS = (
    *(f"missing_{name}" for name in MEDIA_MODALITIES),
    "missing_caption",
    "missing_label",
    *(f"bad_{name}" for name in MEDIA_MODALITIES),
    "bad_caption",
    "bad_label",
)


class DataStats:
    """Valid samples and skipped data per source, added up from the workers' reports.

    ``samples[source]`` counts valid samples; ``skipped[source][reason]`` counts
    skipped samples (sample reasons) or shards (shard reasons); ``examples`` keeps the
    first message seen for each (source, reason); ``failed_shards`` the first reason and
    message of each shard skipped (by (source, url)), each logged once as it comes.
    """

    def __init__(self, sources: Sequence[str], log_every: int = 100) -> None:
        self.samples: dict[str, int] = {name: 0 for name in sources}
        self.skipped: dict[str, dict[str, int]] = {name: {} for name in sources}
        self.examples: dict[tuple[str, str], str] = {}
        self.failed_shards: dict[tuple[str, str], str] = {}
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
                    if reason.endswith("_shard"):
                        continue  # a shard's skip is named with its URL below
                    logger.warning(
                        "source %r: skipping data (%s): %s; counted in loader.stats, summarised after %d skips and each doubling",
                        source,
                        reason,
                        message,
                        self.log_every,
                    )
        for source, shards in delta.get("shards", {}).items():
            for url, message in shards.items():
                if (source, url) not in self.failed_shards:
                    self.failed_shards[(source, url)] = message
                    logger.warning("source %r: skipping shard %s", source, message)
        total = self.total_skipped()
        if self.log_every > 0 and total >= self._next_log:
            logger.warning("skipped so far (%d): %s", total, self._compact())
            self._next_log = 2 * total

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


class WorkerCounts:
    """A worker's counts since its last report (:meth:`take`), in the form :meth:`DataStats.add` reads."""

    def __init__(self) -> None:
        self.samples: dict[str, int] = {}
        self.skipped: dict[str, dict[str, int]] = {}
        self.examples: dict[str, dict[str, str]] = {}
        self.shards: dict[str, dict[str, str]] = {}  # source -> {url: "(reason) url: message"}, a shard's first skip
        self._reported_examples: set[tuple[str, str]] = set()
        self._reported_shards: set[tuple[str, str]] = set()

    def valid(self, source: str) -> None:
        self.samples[source] = self.samples.get(source, 0) + 1

    def skip(self, source: str, reason: str, message: str, shard: str | None = None) -> None:
        """Counts one skip; ``shard``: the URL of a shard skipped, named in the report the first time."""
        reasons = self.skipped.setdefault(source, {})
        reasons[reason] = reasons.get(reason, 0) + 1
        if shard is not None and (source, shard) not in self._reported_shards:
            self._reported_shards.add((source, shard))
            self.shards.setdefault(source, {})[shard] = f"({reason}) {message}"
        if (source, reason) not in self._reported_examples:
            self._reported_examples.add((source, reason))
            self.examples.setdefault(source, {})[reason] = message

    def take(self) -> dict:
        """The report of everything counted since the last one; the counts start again from zero."""
        delta = {"samples": self.samples, "skipped": self.skipped, "examples": self.examples, "shards": self.shards}
        self.samples, self.skipped, self.examples, self.shards = {}, {}, {}, {}
        return delta


__all__ = ["DataStats", "SAMPLE_SKIP_REASONS", "WorkerCounts"]
