"""An index directory: a FAISS index over a collection of embeddings, with what is needed to show each hit.

Shapes: N vectors in the index, Q queries, K hits per query, C candidates per query, E width.

::

    INDEX/
      manifest.json          checkpoint id and path, modality, width, count, index plan, chunks, inputs
      index-000001.faiss     the FAISS index (row i of the collection has id i)
      vectors-000000.npy     float32 (n, E): the collection's exact vectors, one chunk per build or add
      items-000000.arrow     Arrow IPC (uncompressed): key, source, caption of each row of the chunk

A build writes everything into a temporary sibling directory that is renamed into
place once complete. Adding inputs writes the new chunk and a new index file under
the next generation's names, then replaces ``manifest.json`` (the commit point) and
removes the previous index file: a reader always sees one complete generation, and an
add that stops half-way leaves the index as it was.

Opening is memory-mapped by default: FAISS maps the inverted lists of an ``ivfpq``
index, or the vectors of a ``flat`` one; the vector chunks and item tables are mapped
too. Opening costs the same whatever the collection's size; pages are read when a
search touches them, so an index larger than memory can be searched.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from multimodal.checkpoint import CheckpointError, checkpoint_id, read_config, write_directory_atomically
from multimodal.data.modalities.registry import MODALITIES
from multimodal.data.atomic_files import write_atomically, write_json_atomically
from multimodal.errors import ArgumentNeeded
from multimodal.apps.search.collection import Part, describe_rows, file_digest, part_files, part_shard, read_part
from multimodal.apps.search.collection import shards_by_part_name
from multimodal.apps.search.plan import KMEANS_ITERATIONS, NPROBE_CHOICES, REFINE_CHOICES, TARGET_RECALL, TUNING_QUERIES
from multimodal.apps.search.plan import IndexPlan, plan_index

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MANIFEST_KIND = "multimodal-search-index"
LOCK_FILE = ".lock"
TUNING_K = 10  # recall@10 chooses nprobe and the refine factor
ADD_BATCH = 65_536  # vectors handed to FAISS at once: bounds the memory an add or a build takes beyond the index


class IndexFileError(ValueError):
    """An index directory that cannot be used as it is: missing, corrupt, truncated or of another version."""


@dataclass(frozen=True)
class Hit:
    """One search result: the row ``id`` of the collection, its cosine ``score``, and what shows it."""

    id: int
    score: float
    key: str
    source: str | None
    caption: str | None

    def to_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "key": self.key, "source": self.source, "caption": self.caption}


# Searching -----------------------------------------------------------------------------------------

RERANK_BATCH = 256  # queries re-ranked together: (RERANK_BATCH, C, E) float32 gathered at once


def rerank(queries: np.ndarray, candidates: np.ndarray, k: int, gather: Callable[[np.ndarray], np.ndarray]):
    """Exact inner products of each query's candidates -> the best ``k``.

    ``queries`` (Q, E) unit rows; ``candidates`` int64 (Q, C), -1 for none; ``gather(ids)``
    returns the exact vectors (n, E) of ``ids``. Returns (scores float32 (Q, K), ids int64
    (Q, K)), best first, ids -1 where a query had fewer than K candidates.
    """
    scores_out, ids_out = [], []
    for start in range(0, len(queries), RERANK_BATCH):
        block, found = queries[start : start + RERANK_BATCH], candidates[start : start + RERANK_BATCH]  # (B, E), (B, C)
        valid = found >= 0
        vectors = gather(np.where(valid, found, 0).reshape(-1)).reshape(*found.shape, -1)  # (B, C, E)
        exact = np.matmul(vectors, block[:, :, None])[:, :, 0]  # (B, C)
        exact[~valid] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # (B, K)
        scores, ids = np.take_along_axis(exact, order, 1), np.take_along_axis(found, order, 1)
        ids[~np.isfinite(scores)] = -1
        scores_out.append(scores.astype(np.float32))
        ids_out.append(ids)
    return np.concatenate(scores_out), np.concatenate(ids_out)


def refined_search(index, queries: np.ndarray, k: int, nprobe: int, refine_factor: int,
                   gather: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A FAISS search for ``refine_factor * max(k, 10)`` candidates, re-ranked exactly: (scores (Q, K), ids (Q, K)).

    IVF-PQ's refine factor is tuned for k = 10 (see :func:`_tune`); a smaller k keeps as
    many candidates. ``nprobe`` applies to IVF indexes only.
    """
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    _, candidates = index.search(queries, min(index.ntotal, max(k, TUNING_K) * refine_factor))  # (Q, C)
    return rerank(queries, candidates, k, gather)


# One query searched on one thread: OpenMP's fork and join per call costs more than the
# second core saves on a single query, and far more when the machine is busy (threads
# wait for a core at every join). `python -m bench search` prints the latencies.
SINGLE_THREAD_BELOW = 8


@contextlib.contextmanager
def _threads_for(num_queries: int):
    if num_queries >= SINGLE_THREAD_BELOW:
        yield
        return
    faiss = _faiss()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


# Reading -------------------------------------------------------------------------------------------


def _faiss():
    import faiss

    return faiss


def read_manifest(directory: str | os.PathLike) -> dict:
    """``manifest.json`` of an index directory, with its kind and version checked."""
    path = Path(directory) / MANIFEST_FILE
    if not Path(directory).is_dir():
        raise IndexFileError(f"{directory} does not exist; build an index there with `multimodal index`")
    if not path.is_file():
        raise IndexFileError(f"{directory} is not an index: it has no {MANIFEST_FILE} (build one with `multimodal index`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IndexFileError(f"{path} cannot be read ({error}); build the index again with `multimodal index`") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise IndexFileError(f"{path} is not the manifest of a search index")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFileError(
            f"{path}: index format version {manifest.get('format_version')!r} is not supported (this version reads "
            f"{FORMAT_VERSION}); build the index again with `multimodal index`"
        )
    return manifest


def _check_size(path: Path, expected: int) -> None:
    if not path.is_file():
        raise IndexFileError(f"{path} is missing; build the index again with `multimodal index`")
    size = path.stat().st_size
    if size != expected:
        raise IndexFileError(
            f"{path} holds {size} bytes but the manifest records {expected}: the file is truncated or was replaced; "
            "build the index again with `multimodal index`"
        )


def _read_faiss(path: Path, *, mmap: bool, index_type: str):
    faiss = _faiss()
    flags = 0
    if mmap:
        flags = faiss.IO_FLAG_MMAP if index_type == "ivfpq" else faiss.IO_FLAG_MMAP_IFC
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise IndexFileError(
            f"{path} cannot be read by FAISS (corrupt or truncated: {reason[:200]}); build the index again with `multimodal index`"
        ) from None


def _open_items(path: Path):
    import pyarrow as pa
    import pyarrow.ipc

    try:
        return pyarrow.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowInvalid) as error:
        raise IndexFileError(f"{path} cannot be read ({error}); build the index again with `multimodal index`") from None


def _open_vectors(path: Path, rows: int, dim: int, mmap: bool) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as error:
        raise IndexFileError(f"{path} cannot be read ({error}); build the index again with `multimodal index`") from None
    if vectors.shape != (rows, dim) or vectors.dtype != np.float32:
        raise IndexFileError(f"{path} holds {vectors.dtype} {vectors.shape}, the manifest records float32 ({rows}, {dim})")
    return vectors


class SearchIndex:
    """An opened index directory (see :func:`open_index`).

    Attributes: ``path``, ``manifest``, ``plan`` (:class:`~multimodal.apps.search.plan.IndexPlan`),
    ``faiss_index``; properties ``modality``, ``dim``, ``count``, ``checkpoint_id``,
    ``checkpoint_path``.
    """

    def __init__(self, path: str | os.PathLike, *, mmap: bool = True) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.plan = IndexPlan.from_dict(self.manifest["index"])
        index_file = self.path / self.manifest["index"]["file"]
        _check_size(index_file, self.manifest["index"]["bytes"])
        chunks = self.manifest["chunks"]
        for chunk in chunks:
            _check_size(self.path / chunk["vectors"], chunk["vectors_bytes"])
            _check_size(self.path / chunk["items"], chunk["items_bytes"])
        self.faiss_index = _read_faiss(index_file, mmap=mmap, index_type=self.plan.type)
        if self.faiss_index.ntotal != self.count or self.faiss_index.d != self.dim:
            raise IndexFileError(
                f"{index_file} holds {self.faiss_index.ntotal} vectors of {self.faiss_index.d} dimensions; the manifest "
                f"records {self.count} of {self.dim}: build the index again with `multimodal index`"
            )
        self._vectors = [_open_vectors(self.path / c["vectors"], c["rows"], self.dim, mmap) for c in chunks]
        self._items = [_open_items(self.path / c["items"]) for c in chunks]
        for chunk, items in zip(chunks, self._items):
            if items.num_rows != chunk["rows"]:
                raise IndexFileError(f"{self.path / chunk['items']} holds {items.num_rows} rows, the manifest records {chunk['rows']}")
        self._starts = np.array([c["start"] for c in chunks], dtype=np.int64)  # (chunks,) first id of each chunk
        if sum(c["rows"] for c in chunks) != self.count:
            raise IndexFileError(f"{self.path / MANIFEST_FILE}: its chunks hold {sum(c['rows'] for c in chunks)} rows, not {self.count}")

    # What it is

    @property
    def modality(self) -> str:
        return self.manifest["modality"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def checkpoint_id(self) -> str:
        return self.manifest["checkpoint"]["id"]

    @property
    def checkpoint_path(self) -> Path:
        """Where the checkpoint was when the index was built (it may have moved since)."""
        return Path(self.manifest["checkpoint"]["path"])

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (f"SearchIndex({str(self.path)!r}, modality={self.modality!r}, count={self.count}, dim={self.dim}, "
                f"type={self.plan.factory!r})")

    # Rows

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chunk = np.searchsorted(self._starts, ids, side="right") - 1  # (n,)
        return chunk, ids - self._starts[chunk]

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The exact float32 vectors (n, E) of rows ``ids``, in that order."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.count):
            raise IndexError(f"row ids must be in [0, {self.count}), got {ids.min()}..{ids.max()}")
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        chunk, row = self._locate(ids)
        for c in np.unique(chunk):
            where = chunk == c
            order = np.argsort(row[where])  # increasing offsets: sequential reads of a mapped file
            out[np.flatnonzero(where)[order]] = self._vectors[c][row[where][order]]
        return out

    def item(self, id: int) -> tuple[str, str | None, str | None]:
        """(key, source, caption) of row ``id``."""
        if not 0 <= id < self.count:
            raise IndexError(f"row id must be in [0, {self.count}), got {id}")
        chunk, row = self._locate(np.array([id]))
        table, row = self._items[int(chunk[0])], int(row[0])
        return tuple(table.column(name)[row].as_py() for name in ("key", "source", "caption"))

    def batches(self, batch_size: int = ADD_BATCH):
        """(first id, float32 vectors (b, E)) over the whole collection, in order."""
        for chunk, vectors in zip(self.manifest["chunks"], self._vectors):
            for offset in range(0, chunk["rows"], batch_size):
                yield chunk["start"] + offset, np.asarray(vectors[offset : offset + batch_size])

    # Searching

    def search_vectors(self, queries: np.ndarray, k: int = 10, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Queries (Q, E) -> (scores float32 (Q, K), ids int64 (Q, K)), best first; ids -1 where fewer than K exist.

        Queries are normalised to unit length, so scores are cosine similarities
        (the collection's rows are unit vectors as ``multimodal embed`` writes them).
        ``ivfpq`` scores are exact too: candidates are re-ranked by their stored vectors.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}) to search this index, got shape {tuple(queries.shape)}")
        if not np.isfinite(queries).all():
            raise ValueError("a query vector holds NaN or infinite values")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = np.ascontiguousarray(queries / np.maximum(norms, 1e-12))
        k = min(k, self.count)
        with _threads_for(len(queries)):
            return refined_search(self.faiss_index, queries, k, nprobe or self.plan.nprobe, self.plan.refine_factor,
                                  self.vectors)

    def search(self, queries: np.ndarray, k: int = 10, *, nprobe: int | None = None) -> list[list[Hit]]:
        """Queries (Q, E) -> for each, up to ``k`` :class:`Hit` s, best first."""
        scores, ids = self.search_vectors(queries, k, nprobe=nprobe)
        return [[self.hit(int(i), float(s)) for s, i in zip(row_scores, row_ids) if i >= 0]
                for row_scores, row_ids in zip(scores, ids)]

    def hit(self, id: int, score: float) -> Hit:
        key, source, caption = self.item(id)
        return Hit(id, score, key, source, caption)


def open_index(path: str | os.PathLike, *, mmap: bool = True) -> SearchIndex:
    """Opens an index directory written by :func:`build_index`; memory-mapped unless ``mmap=False``.

    Raises :class:`IndexFileError` (a ValueError) for a directory that is not an index,
    a file that is missing, truncated or corrupt, or another format version.
    """
    return SearchIndex(path, mmap=mmap)


# Building ------------------------------------------------------------------------------------------


@dataclass
class _Checkpoint:
    path: Path
    id: str
    dim: int
    modalities: list[str]


def _read_checkpoint(path: str | os.PathLike) -> _Checkpoint:
    path = Path(path)
    try:
        model = read_config(path)["model"]
        identity = checkpoint_id(path)
    except CheckpointError as error:
        raise ValueError(str(error)) from None
    return _Checkpoint(path.resolve(), identity, int(model.get("embed_dim", 512)), [m for m in MODALITIES if model.get(m)])


@dataclass
class _Input:
    """An input file about to be indexed: its part (vectors, keys, rows described) and its digest."""

    part: Part
    digest: str
    shard: str | None = None


def _read_inputs(
    files: Sequence[Path], checkpoint: _Checkpoint, modality: str | None, shards: dict[str, list[str]],
    read_captions: bool, progress: Callable[[str], None] | None, indexed: str | None = None,
) -> tuple[list[_Input], str]:
    """Reads and checks every input against the checkpoint and each other; returns them with the modality.

    ``modality``: the one given (None: what the inputs record); ``indexed``: the modality
    of the index they are added to, which stands for inputs that record none.
    """
    inputs: list[_Input] = []
    for path in files:
        part = read_part(path)
        if part.vectors.shape[1] != checkpoint.dim:
            raise ValueError(f"{path} holds {part.vectors.shape[1]}-dimensional vectors; checkpoint {checkpoint.path} "
                             f"embeds into {checkpoint.dim} dimensions: these were embedded by another model")
        embedded_by = part.metadata.get("checkpoint_id")
        if embedded_by and embedded_by != checkpoint.id:
            raise ValueError(f"{path} was embedded by checkpoint {embedded_by}, not by {checkpoint.path} ({checkpoint.id}): "
                             "their embedding spaces differ; give the checkpoint that embedded it")
        inputs.append(_Input(part, file_digest(path)))
        if progress is not None:
            progress(f"read {path} ({len(part.keys)} rows)")
    modality = _inputs_modality([entry.part for entry in inputs], modality, indexed)
    if modality not in checkpoint.modalities:
        raise ValueError(f"checkpoint {checkpoint.path} has no {modality} encoder (it encodes {checkpoint.modalities})")
    digests = [entry.digest for entry in inputs]
    for entry in inputs:
        if digests.count(entry.digest) > 1:
            raise ValueError(f"{entry.part.path} is given twice (or holds the same bytes as another input); give each part once")
    for entry in inputs:  # every shard found before any is read
        entry.shard = part_shard(entry.part, shards)
    for entry in inputs:
        describe_rows(entry.part, modality, entry.shard, read_captions=read_captions)
    return inputs, modality


def _inputs_modality(parts: Sequence[Part], given: str | None, indexed: str | None) -> str:
    """The modality of the inputs: the one they record, checked against ``given``; else ``given``, else ``indexed``.

    Raises ValueError for inputs that record several, ArgumentNeeded for a ``given`` one
    that another input contradicts, or for inputs that record none when nothing says it.
    """
    recorded = {part.path: part.metadata["modality"] for part in parts if part.metadata.get("modality")}
    kinds = sorted(set(recorded.values()))
    if len(kinds) > 1:
        examples = ", ".join(f"{next(p for p, m in recorded.items() if m == kind)} holds {kind}" for kind in kinds)
        raise ValueError(f"the inputs hold embeddings of several modalities ({examples}); index one modality at a time")
    if given is not None and kinds and kinds[0] != given:
        path = next(iter(recorded))
        raise ArgumentNeeded(f"{{modality}}, but {path} records {kinds[0]} embeddings: leave it out (the inputs "
                             f"record their modality) or give {kinds[0]}",
                             modality=(f"modality={given!r}", f"--modality {given}"))
    modality = given or (kinds[0] if kinds else indexed)
    if modality is None:
        unrecorded = next((f"{part.path} does" for part in parts if part.path not in recorded), "the inputs do")
        raise ArgumentNeeded(f"{unrecorded} not record the modality (.npy outputs of earlier versions do not): "
                             "give it with {modality}", modality=("modality=", "--modality"))
    if indexed is not None and modality != indexed:
        said = f"{next(iter(recorded))} records it" if kinds else "as given"
        raise ValueError(f"the index holds {indexed} embeddings, the inputs are {modality} ({said}): "
                         f"add them to an index of {modality} embeddings")
    return modality


def _write_chunk(directory: Path, generation: int, inputs: Sequence[_Input], start: int, dim: int) -> dict:
    """Writes ``vectors-<gen>.npy`` and ``items-<gen>.arrow`` of the inputs' rows; returns the chunk's manifest entry."""
    import pyarrow as pa
    import pyarrow.ipc

    rows = sum(len(entry.part.keys) for entry in inputs)
    vectors_name, items_name = f"vectors-{generation:06d}.npy", f"items-{generation:06d}.arrow"

    def write_vectors(temporary: Path) -> None:
        vectors = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(rows, dim))  # (n, E)
        offset = 0
        for entry in inputs:
            vectors[offset : offset + len(entry.part.keys)] = entry.part.vectors
            offset += len(entry.part.keys)
        vectors.flush()
        del vectors

    def write_items(temporary: Path) -> None:
        table = pa.table({
            "key": pa.array([key for e in inputs for key in e.part.keys], type=pa.string()),
            "source": pa.array([source for e in inputs for source in e.part.sources], type=pa.string()),
            "caption": pa.array([caption for e in inputs for caption in e.part.captions], type=pa.string()),
        })
        with pa.OSFile(str(temporary), "wb") as sink, pyarrow.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    write_atomically(directory / vectors_name, write_vectors)
    write_atomically(directory / items_name, write_items)
    return {"start": start, "rows": rows, "vectors": vectors_name, "items": items_name,
            "vectors_bytes": (directory / vectors_name).stat().st_size, "items_bytes": (directory / items_name).stat().st_size}


def _input_records(inputs: Sequence[_Input]) -> list[dict]:
    return [{"path": str(entry.part.path.resolve()), "sha256": entry.digest, "rows": len(entry.part.keys),
             "shard": entry.shard} for entry in inputs]


def _add_vectors(index, vectors: np.ndarray) -> None:
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_BATCH]))


def _train(plan: IndexPlan, vectors: np.ndarray, seed: int):
    """An empty IVF-PQ index trained on a seeded sample of ``vectors`` (N, E); fills ``plan.training``."""
    faiss = _faiss()
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(vectors), size=plan.train_size, replace=False))  # sorted: sequential reads
    quantizer = faiss.IndexFlatIP(plan.dim)
    index = faiss.IndexIVFPQ(quantizer, plan.dim, plan.nlist, plan.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # unit vectors: centroids on the sphere too
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    index.cp.max_points_per_centroid = plan.train_size // plan.nlist + 1  # k-means on the whole sample
    index.pq.cp.niter = KMEANS_ITERATIONS
    index.train(np.ascontiguousarray(vectors[sample]))
    plan.training = {"sample": int(plan.train_size), "seed": seed, "kmeans_iterations": int(index.cp.niter),
                     "seconds": round(time.perf_counter() - started, 2)}
    return index


def _tune(index, vectors: np.ndarray, plan: IndexPlan, seed: int, fixed_nprobe: int | None) -> None:
    """Chooses ``plan.nprobe`` and ``plan.refine_factor``; records what was measured in ``plan.tuning``.

    Queries are a seeded sample of the collection's own rows; the truth is their exact
    top 10 with each query's own row left out. For each nprobe of NPROBE_CHOICES (or
    the one given), in order, one search fetches the most candidates any refine factor
    needs; since FAISS returns them by quantised score, the candidates of a smaller
    factor are a prefix. The first (nprobe, refine factor) whose recall@10 reaches
    TARGET_RECALL is kept; when none does, the one with the best recall.
    """
    faiss = _faiss()
    k = TUNING_K
    count = len(vectors)
    rng = np.random.default_rng(seed + 1)
    query_ids = np.sort(rng.choice(count, size=min(TUNING_QUERIES, count), replace=False))
    queries = np.ascontiguousarray(vectors[query_ids])  # (Q, E)
    truth = np.full((len(queries), k + 1), -1, dtype=np.int64)
    best = np.full((len(queries), k + 1), -np.inf, dtype=np.float32)
    for start in range(0, count, ADD_BATCH):  # exact top k+1 over the collection, a block at a time
        block = np.ascontiguousarray(vectors[start : start + ADD_BATCH])
        scores, ids = faiss.knn(queries, block, min(k + 1, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        merged_scores = np.concatenate([best, scores], axis=1)
        merged_ids = np.concatenate([truth, ids + start], axis=1)
        order = np.argsort(-merged_scores, axis=1, kind="stable")[:, : k + 1]
        best, truth = np.take_along_axis(merged_scores, order, 1), np.take_along_axis(merged_ids, order, 1)

    def others(row: np.ndarray, query: int) -> list[int]:
        return [int(i) for i in row if i != query and i >= 0][:k]

    true_sets = [set(others(row, q)) for row, q in zip(truth, query_ids)]
    nprobes = [fixed_nprobe] if fixed_nprobe else [n for n in NPROBE_CHOICES if n <= plan.nlist]
    measured: dict[str, dict[str, float]] = {}
    chosen = None
    for nprobe in nprobes:
        index.nprobe = nprobe
        _, candidates = index.search(queries, min(count, (k + 1) * max(REFINE_CHOICES)))  # (Q, C), by quantised score
        measured[str(nprobe)] = {}
        for refine_factor in REFINE_CHOICES:
            _, found = rerank(queries, candidates[:, : (k + 1) * refine_factor], k + 1, lambda ids: vectors[ids])
            recall = float(np.mean([len(t & set(others(row, q))) / k for t, row, q in zip(true_sets, found, query_ids)]))
            measured[str(nprobe)][str(refine_factor)] = round(recall, 4)
            if recall >= TARGET_RECALL:
                chosen = (nprobe, refine_factor)
                break
        if chosen:
            break
    if chosen is None:  # the best measured, fewest probes first
        chosen = max(((int(n), int(r)) for n, row in measured.items() for r in row),
                     key=lambda pair: (measured[str(pair[0])][str(pair[1])], -pair[0], -pair[1]))
    plan.nprobe, plan.refine_factor = chosen
    plan.tuning = {"queries": len(queries), "k": k, "target_recall@10": TARGET_RECALL,
                   "recall@10 by nprobe and refine factor": measured,
                   "recall@10": measured[str(chosen[0])][str(chosen[1])],
                   "nprobe": "given" if fixed_nprobe else "tuned"}


def _write_faiss(index, path: Path) -> None:
    write_atomically(path, lambda temporary: _faiss().write_index(index, str(temporary)))


def _index_name(generation: int) -> str:
    return f"index-{generation:06d}.faiss"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_index(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike,
    modality: str | None = None,
    shards: str | Sequence[str] | None = None,
    index_type: str = "auto",
    nlist: int | None = None,
    pq_m: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
    read_captions: bool = True,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SearchIndex:
    """Builds the index directory ``output`` from outputs of ``multimodal embed``; returns it opened.

    Args:
        inputs: output files of ``multimodal embed``, or folders of its per-shard parts.
        checkpoint: the checkpoint that embedded them: its id is recorded, so that
            queries are embedded in the same space; parts that record another id are refused.
        modality: what the rows embed; needed only when no input records it (``.npy``
            outputs of earlier versions, with no ``.meta.json``); one that an input
            contradicts is refused.
        shards: the shard spec the parts were embedded from, to find the shard of parts
            that do not record theirs (``.npy`` parts of earlier versions), by part name:
            a part whose name several of its shards have (same file name, other
            folders) is refused rather than guessed. Parts that record their shard
            need none.
        index_type: "auto" (by size, see :mod:`multimodal.apps.search.plan`), "flat" or "ivfpq";
            ``nlist``, ``pq_m`` and ``nprobe`` override the ivfpq parameters.
        read_captions: read the captions of shard samples (one pass over each shard).
        overwrite: replace an index already at ``output``.
        progress: called with a line of text at each step.

    Nothing is written unless the whole index is: a bad input, an empty collection or
    a mismatched checkpoint raises ValueError and leaves ``output`` as it was.
    """
    output = Path(output)
    _check_new_index_place(output, overwrite)
    model = _read_checkpoint(checkpoint)
    entries, modality = _read_inputs(part_files(inputs), model, modality, shards_by_part_name(shards), read_captions, progress)
    count = sum(len(entry.part.keys) for entry in entries)
    plan = plan_index(count, model.dim, index_type, nlist=nlist, pq_m=pq_m, nprobe=nprobe)

    def write(directory: Path) -> None:
        chunk = _write_chunk(directory, 0, entries, 0, model.dim)
        for entry in entries:
            entry.part.vectors = None  # the chunk holds them now (memory-mapped below)
        vectors = np.load(directory / chunk["vectors"], mmap_mode="r")  # (N, E)
        index = _filled_index(plan, vectors, seed, nprobe, progress or (lambda line: None))
        name = _index_name(1)
        _write_faiss(index, directory / name)
        manifest = {
            "kind": MANIFEST_KIND, "format_version": FORMAT_VERSION,
            "checkpoint": {"id": model.id, "path": str(model.path)},
            "modality": modality, "dim": model.dim, "count": count,
            "index": {**plan.to_dict(), "file": name, "bytes": (directory / name).stat().st_size},
            "chunks": [chunk], "inputs": _input_records(entries),
            "created": _now(), "updated": _now(),
        }
        write_json_atomically(directory / MANIFEST_FILE, manifest)

    write_directory_atomically(output, write)
    return open_index(output)


def _check_new_index_place(output: Path, overwrite: bool) -> None:
    """Refuses an ``output`` that holds an index (unless ``overwrite``) or anything else but an empty folder."""
    if not output.exists():
        return
    if (output / MANIFEST_FILE).is_file():
        if not overwrite:
            raise ValueError(f"{output} already holds an index: add inputs to it with --add, or rebuild it with --overwrite")
    elif not output.is_dir() or any(output.iterdir()):
        raise ValueError(f"{output} exists and is not an index; give a new or empty folder")


def _filled_index(plan: IndexPlan, vectors: np.ndarray, seed: int, nprobe: int | None, progress: Callable[[str], None]):
    """The FAISS index ``plan`` describes, trained where it needs training, holding ``vectors`` (N, E), its nprobe tuned."""
    faiss = _faiss()
    count, dim = vectors.shape
    if plan.type == "flat":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    else:
        progress(f"training {plan.factory} on {plan.train_size} of {count} vectors")
        index = _train(plan, vectors, seed)
    progress(f"adding {count} vectors")
    _add_vectors(index, vectors)
    if plan.type == "ivfpq":
        progress("choosing nprobe: recall@10 against exact search")
        _tune(index, vectors, plan, seed, nprobe)
    return index


# Adding ------------------------------------------------------------------------------------------


@dataclass
class AddResult:
    """What :func:`add_to_index` did: inputs added, inputs already in the index (left out), rows added."""

    added: list[Path]
    already_indexed: list[Path]
    rows_added: int


@contextlib.contextmanager
def _locked(directory: Path):
    """One writer at a time: a second ``add`` waits for the first to finish."""
    with open(directory / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_to_index(
    directory: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    checkpoint: str | os.PathLike | None = None,
    modality: str | None = None,
    shards: str | Sequence[str] | None = None,
    read_captions: bool = True,
    progress: Callable[[str], None] | None = None,
) -> AddResult:
    """Adds new outputs of ``multimodal embed`` to an index without rebuilding it.

    Inputs already indexed (the same bytes) are left out, so the folder of parts of a
    growing embedding job can be given again and again. An ``ivfpq`` index encodes the
    new vectors with its trained quantisers; a ``flat`` one stays exact. ``checkpoint``
    defaults to the one the index records (its id must match either way).
    """
    directory = Path(directory)
    read_manifest(directory)  # an index, before taking its lock
    with _locked(directory):
        manifest = read_manifest(directory)
        if checkpoint is None and not Path(manifest["checkpoint"]["path"]).is_dir():
            raise ValueError(f"the checkpoint {directory} records, {manifest['checkpoint']['path']}, is not there any more: "
                             "give the checkpoint with --checkpoint")
        model = _read_checkpoint(checkpoint or manifest["checkpoint"]["path"])
        if model.id != manifest["checkpoint"]["id"]:
            raise ValueError(f"{directory} was built from checkpoint {manifest['checkpoint']['id']}; {model.path} is "
                             f"{model.id}: their embedding spaces differ. Add embeddings of the same checkpoint, or build a new index")
        files = part_files(inputs)
        known = {record["sha256"] for record in manifest["inputs"]}
        paths = {record["path"]: record["sha256"] for record in manifest["inputs"]}
        new_files, already = [], []
        for path in files:
            digest = file_digest(path)
            if digest in known:
                already.append(path)
            elif str(path.resolve()) in paths:
                raise ValueError(f"{path} changed since it was indexed; build the index again with --overwrite")
            else:
                new_files.append(path)
        if not new_files:
            return AddResult([], already, 0)
        entries, found_modality = _read_inputs(new_files, model, modality, shards_by_part_name(shards), read_captions,
                                               progress, indexed=manifest["modality"])
        assert found_modality == manifest["modality"]  # checked by _read_inputs
        rows = sum(len(entry.part.keys) for entry in entries)
        if rows == 0:
            return AddResult(new_files, already, 0)
        generation = int(manifest["index"]["file"].split("-")[1].split(".")[0])
        plan = IndexPlan.from_dict(manifest["index"])
        old_index = directory / manifest["index"]["file"]
        _check_size(old_index, manifest["index"]["bytes"])
        index = _read_faiss(old_index, mmap=False, index_type=plan.type)
        chunk = _write_chunk(directory, generation, entries, manifest["count"], manifest["dim"])
        if progress is not None:
            progress(f"adding {rows} vectors")
        _add_vectors(index, np.load(directory / chunk["vectors"], mmap_mode="r"))
        name = _index_name(generation + 1)
        _write_faiss(index, directory / name)
        manifest = {
            **manifest, "count": manifest["count"] + rows,
            "index": {**manifest["index"], "file": name, "bytes": (directory / name).stat().st_size},
            "chunks": [*manifest["chunks"], chunk],
            "inputs": [*manifest["inputs"], *_input_records(entries)],
            "updated": _now(),
        }
        write_json_atomically(directory / MANIFEST_FILE, manifest)  # the commit point
        old_index.unlink(missing_ok=True)
    return AddResult(new_files, already, rows)


def index_size(directory: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk of an index directory: ``{"index": ..., "vectors": ..., "items": ..., "total": ...}``."""
    manifest = read_manifest(directory)
    sizes = {"index": manifest["index"]["bytes"],
             "vectors": sum(c["vectors_bytes"] for c in manifest["chunks"]),
             "items": sum(c["items_bytes"] for c in manifest["chunks"])}
    sizes["total"] = sum(sizes.values()) + (Path(directory) / MANIFEST_FILE).stat().st_size
    return sizes


__all__ = ["AddResult", "Hit", "IndexFileError", "SearchIndex", "add_to_index", "build_index", "index_size",
           "open_index", "read_manifest"]
