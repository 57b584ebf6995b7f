"""Why data is skipped, and the counts of it: per worker, then added up for the whole loader.

Bad shards and samples are skipped and counted by reason, per source. Shard reasons
(counted once per shard read): ``unreadable_shard`` / ``empty_shard`` /
``truncated_shard`` (see :class:`multimodal.data.pipeline.shard_reader.ShardProblem`). Sample reasons:
``missing_image`` / ``missing_audio`` / ``missing_caption`` / ``missing_label`` (the
sample lacks a field its source reads: on shards where only some samples carry a
modality this is the normal case, not an error) and ``bad_image`` / ``bad_audio`` /
``bad_caption`` / ``bad_label`` (the field is there but does not decode).

Each worker keeps a :class:`WorkerCounts` and attaches what is new to every batch it
makes; the loader adds the reports up in a :class:`DataStats`, which logs the first
skip of each kind with its message and a summary after ``log_every`` skips, then each
time the total doubles: on shards where most samples lack a modality a source reads,
skips come every step, and a line per step would bury the training log. Reasons made
quiet (:meth:`DataStats.quiet`) are counted alike but neither logged nor summoning a
summary: an evaluation set's samples without its modality, which its reader says once
itself, while a sample that has the modality and does not decode stays loud.

Draws and samples: a resampled source reads its shards again and again, so one sample
is skipped (or taken) once per draw, by every worker that draws it. The counts are of
draws; beside them, the samples are counted once each (by shard and key, up to
:data:`DISTINCT_LIMIT` per source and reason), and the summary says both:
``missing_audio 264 samples (7,426 draws); valid 7 samples (160 draws)``.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence

from multimodal.data.modalities.registry import MEDIA_MODALITIES

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
# Distinct samples counted per source and reason (a set of 8-byte hashes each, about 6 MB when
# full); past it the summary says "over" that many.
DISTINCT_LIMIT = 100_000
VALID = "valid"  # the reason valid samples are counted under among the distinct ones


def sample_identity(sample: str) -> int:
    """A sample's name (its shard and key) -> 64 bits, the same in every process (``hash`` is not)."""
    return int.from_bytes(hashlib.blake2b(sample.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class DataStats:
    """Valid samples and skipped data per source, added up from the workers' reports.

    ``samples[source]`` counts valid samples; ``skipped[source][reason]`` counts
    skipped samples (sample reasons) or shards (shard reasons); ``examples`` keeps the
    first message seen for each (source, reason); ``failed_shards`` the first reason and
    message of each shard skipped (by (source, url)), each logged once as it comes;
    ``quiet_reasons`` the reasons counted without being logged (see :meth:`quiet`).
    """

    def __init__(self, sources: Sequence[str], log_every: int = 100, quiet: Iterable[str] = ()) -> None:
        self.samples: dict[str, int] = {name: 0 for name in sources}
        self.skipped: dict[str, dict[str, int]] = {name: {} for name in sources}
        self.examples: dict[tuple[str, str], str] = {}
        self.failed_shards: dict[tuple[str, str], str] = {}
        # source -> reason (or VALID) -> the samples' identities (see sample_identity), up to DISTINCT_LIMIT.
        self.distinct: dict[str, dict[str, set[int]]] = {}
        self.log_every = log_every
        self._next_log = log_every
        self.quiet_reasons: set[str] = set(quiet)
        # source -> [(reason, sample name, message)] of each sample skipped, once kept (see keep_skipped_samples).
        self.skipped_samples: dict[str, list[tuple[str, str, str]]] | None = None

    def keep_skipped_samples(self) -> None:
        """Keeps every skipped sample's reason, name (its shard and key, ``url\\0key``) and message in
        :attr:`skipped_samples`, by source, in the order they were read (up to :data:`DISTINCT_LIMIT`
        per source and reason; a sample drawn again is kept once).

        For a caller that names each sample it could not use, as ``multimodal embed`` does in a
        finite pass; off by default, since a training run would hold a message per sample it skips.
        """
        if self.skipped_samples is None:
            self.skipped_samples = {}

    def quiet(self, reasons: Iterable[str]) -> None:
        """Counts ``reasons`` without logging them: no line for their first example, and they do not
        bring on the summary (which, when other skips do, still lists them).

        For skips that are the normal case of a reader and that its caller reports itself:
        the samples of an evaluation set's shards that lack the set's modality (a shard
        mixing pictures and sounds), said once per run rather than at every evaluation.
        """
        self.quiet_reasons.update(reasons)

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
                    if reason.endswith("_shard") or reason in self.quiet_reasons:
                        continue  # a shard's skip is named with its URL below; a quiet one by the caller
                    logger.warning(
                        "source %r: skipping data (%s): %s; counted in loader.stats, summarised after %d skips and each doubling",
                        source,
                        reason,
                        message,
                        self.log_every,
                    )
        for source, reasons in delta.get("seen", {}).items():
            for reason, identities in reasons.items():
                known = self.distinct.setdefault(source, {}).setdefault(reason, set())
                known.update(identities[: max(0, DISTINCT_LIMIT - len(known))])
        if self.skipped_samples is not None:
            for source, entries in delta.get("named", {}).items():
                self.skipped_samples.setdefault(source, []).extend(entries)
        for source, shards in delta.get("shards", {}).items():
            for url, message in shards.items():
                if (source, url) not in self.failed_shards:
                    self.failed_shards[(source, url)] = message
                    logger.warning("source %r: skipping shard %s", source, message)
        loud = self.total_skipped() - self._quiet_total()
        if self.log_every > 0 and loud >= self._next_log:
            logger.warning("skipped so far (%d): %s", self.total_skipped(), self._compact())
            self._next_log = 2 * loud

    def total_skipped(self) -> int:
        """Everything skipped, all sources and reasons (shards and samples alike)."""
        return sum(sum(reasons.values()) for reasons in self.skipped.values())

    def _quiet_total(self) -> int:
        return sum(count for reasons in self.skipped.values() for reason, count in reasons.items()
                   if reason in self.quiet_reasons)

    def distinct_samples(self) -> dict[str, dict[str, int]]:
        """``{source: {reason or "valid": distinct samples}}``, for the samples whose names were reported
        (shard reasons count reads, not samples, and have none); a count of DISTINCT_LIMIT means at least."""
        return {source: {reason: len(known) for reason, known in sorted(reasons.items())}
                for source, reasons in self.distinct.items() if reasons}

    def summary(self) -> dict:
        """A plain dict of draws: ``{"samples": {...}, "skipped": {source: {reason: n}}, "total_skipped": n}``
        (the samples counted once each: :meth:`distinct_samples`)."""
        return {
            "samples": dict(self.samples),
            "skipped": {source: dict(reasons) for source, reasons in self.skipped.items() if reasons},
            "total_skipped": self.total_skipped(),
        }

    def _counted(self, source: str, reason: str, draws: int) -> str:
        """``missing_audio 264 samples (7,426 draws)``; ``... 12 samples`` when each was drawn once; the
        bare count for reasons with no samples named (a shard's)."""
        known = self.distinct.get(source, {}).get(reason)
        if not known:
            return f"{reason} {draws:,}"
        if len(known) >= DISTINCT_LIMIT:
            samples = f"over {DISTINCT_LIMIT:,} samples"
        else:
            samples = f"{len(known):,} sample" + ("" if len(known) == 1 else "s")
        return f"{reason} {samples}" + ("" if draws == len(known) else f" ({draws:,} draws)")

    def _compact(self) -> str:
        parts = []
        for source, reasons in self.skipped.items():
            if reasons:
                inner = ", ".join(self._counted(source, reason, count) for reason, count in sorted(reasons.items()))
                parts.append(f"{source}: {inner}; {self._counted(source, VALID, self.samples.get(source, 0))}")
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
        self.seen: dict[str, dict[str, list[int]]] = {}  # samples named for the first time since the last report
        self._seen: dict[tuple[str, str], set[int]] = {}  # every sample named so far, up to DISTINCT_LIMIT each
        self.named: dict[str, list[tuple[str, str, str]]] = {}  # skipped samples seen first since the last report

    def valid(self, source: str, sample: str | None = None) -> None:
        """Counts one valid draw; ``sample``: its name (shard and key), to count the sample once."""
        self.samples[source] = self.samples.get(source, 0) + 1
        if sample is not None:
            self._see(source, VALID, sample)

    def skip(self, source: str, reason: str, message: str, shard: str | None = None, sample: str | None = None) -> None:
        """Counts one skip; ``shard``: the URL of a shard skipped, named in the report the first time;
        ``sample``: the name (shard and key) of a sample skipped, to count it once however often it is drawn."""
        reasons = self.skipped.setdefault(source, {})
        reasons[reason] = reasons.get(reason, 0) + 1
        if sample is not None and self._see(source, reason, sample):
            self.named.setdefault(source, []).append((reason, sample, message))
        if shard is not None and (source, shard) not in self._reported_shards:
            self._reported_shards.add((source, shard))
            self.shards.setdefault(source, {})[shard] = f"({reason}) {message}"
        if (source, reason) not in self._reported_examples:
            self._reported_examples.add((source, reason))
            self.examples.setdefault(source, {})[reason] = message

    def _see(self, source: str, reason: str, sample: str) -> bool:
        """Counts ``sample`` once under ``reason``; True the first time (while under DISTINCT_LIMIT)."""
        known = self._seen.setdefault((source, reason), set())
        identity = sample_identity(sample)
        if len(known) < DISTINCT_LIMIT and identity not in known:
            known.add(identity)
            self.seen.setdefault(source, {}).setdefault(reason, []).append(identity)
            return True
        return False

    def take(self) -> dict:
        """The report of everything counted since the last one; the counts start again from zero."""
        delta = {"samples": self.samples, "skipped": self.skipped, "examples": self.examples, "shards": self.shards,
                 "seen": self.seen, "named": self.named}
        self.samples, self.skipped, self.examples, self.shards, self.seen, self.named = {}, {}, {}, {}, {}, {}
        return delta


__all__ = ["DISTINCT_LIMIT", "DataStats", "SAMPLE_SKIP_REASONS", "VALID", "WorkerCounts", "sample_identity"]
