"""Which FAISS index a collection gets, and its parameters, from its size (as autofaiss chooses).

* ``flat``: every vector scored. FAISS scores them from float16 copies (half the
  bytes a query reads, the cost of exhaustive search), then the best
  ``FLAT_REFINE_FACTOR * k`` are scored again exactly from the float32 vectors, so the
  scores are exact and the ranking is exact unless float16 rounding (about 1e-3 of a
  score) pushes a true hit below that depth. Chosen up to ``EXACT_MAX_VECTORS``.
* ``ivfpq``: an inverted file of ``nlist`` lists (spherical k-means centroids on a
  sample of the collection) whose vectors are product-quantised to ``pq_m`` bytes. A
  query scans the ``nprobe`` nearest lists, keeps ``refine_factor * k`` candidates by
  their quantised scores, and re-ranks them by their exact inner products, read from
  the collection's float32 vectors: the scores returned are exact, only the candidate
  set is approximate. ``nprobe`` and ``refine_factor`` are tuned when the index is
  built: the fewest probes (powers of two), then the smallest factor of
  ``REFINE_CHOICES``, whose recall@10 against exact search reaches ``TARGET_RECALL`` on
  a sample of the collection's own vectors (each query's own row left out).

``nlist`` follows autofaiss's rule of thumb, about 4 sqrt(N) rounded to a power of
two; the training sample holds ``TRAIN_POINTS_PER_LIST`` vectors per list (FAISS
warns below 39), at most ``MAX_TRAIN_SIZE``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

INDEX_TYPES = ("auto", "flat", "ivfpq")
EXACT_MAX_VECTORS = 100_000
# IVF-PQ trains 256 centroids per sub-quantizer, which FAISS wants 39 points each for.
IVFPQ_MIN_VECTORS = 10_000
TRAIN_POINTS_PER_LIST = 64
MAX_TRAIN_SIZE = 262_144
KMEANS_ITERATIONS = 10
DEFAULT_REFINE_FACTOR = 10
FLAT_REFINE_FACTOR = 2
REFINE_CHOICES = (5, 10, 20, 50)
TARGET_RECALL = 0.97  # above the 0.95 promised, for queries other than the tuning sample
TUNING_QUERIES = 200
NPROBE_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class IndexPlan:
    """How an index is (or was) built: its type and parameters, recorded in the manifest.

    ``training``: sample size, seed, k-means iterations and seconds spent; ``tuning``:
    the queries and recall that chose ``nprobe``. Both stay empty for ``flat``.
    """

    type: str
    dim: int
    nlist: int = 0
    pq_m: int = 0
    nprobe: int = 0
    refine_factor: int = DEFAULT_REFINE_FACTOR
    train_size: int = 0
    training: dict = field(default_factory=dict)
    tuning: dict = field(default_factory=dict)

    @property
    def factory(self) -> str:
        """The FAISS index factory string of this plan (``IVF4096,PQ64x8``, ``SQfp16``)."""
        return "SQfp16" if self.type == "flat" else f"IVF{self.nlist},PQ{self.pq_m}x8"

    def to_dict(self) -> dict:
        return {**asdict(self), "factory": self.factory, "metric": "inner_product"}

    @classmethod
    def from_dict(cls, values: dict) -> IndexPlan:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)


def default_nlist(count: int) -> int:
    """About 4 sqrt(count), as a power of two; never more lists than the sample can train."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(count), 1)))
    while nlist > 1 and nlist * 39 > min(count, MAX_TRAIN_SIZE):
        nlist //= 2
    return nlist


def default_pq_m(dim: int) -> int:
    """Sub-quantizers: one byte per 8 dimensions (64 for 512), a divisor of ``dim``."""
    target = max(1, dim // 8)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def plan_index(
    count: int,
    dim: int,
    index_type: str = "auto",
    *,
    nlist: int | None = None,
    pq_m: int | None = None,
    nprobe: int | None = None,
) -> IndexPlan:
    """The plan for ``count`` vectors of ``dim`` dimensions; ``index_type`` other than "auto" overrides the choice.

    Raises ValueError for an empty collection, an unknown type, IVF-PQ on fewer than
    ``IVFPQ_MIN_VECTORS`` vectors, or parameters that do not fit (``pq_m`` must divide ``dim``).
    """
    if count < 1:
        raise ValueError("the collection is empty: there is nothing to index")
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; expected one of {INDEX_TYPES}")
    if index_type == "auto":
        index_type = "flat" if count <= EXACT_MAX_VECTORS else "ivfpq"
    if index_type == "flat":
        return IndexPlan("flat", dim, refine_factor=FLAT_REFINE_FACTOR)
    if count < IVFPQ_MIN_VECTORS:
        raise ValueError(
            f"an ivfpq index needs at least {IVFPQ_MIN_VECTORS} vectors to train its quantisers, the collection has "
            f"{count}; use --index-type flat (exact search, fast at this size)"
        )
    nlist = nlist or default_nlist(count)
    pq_m = pq_m or default_pq_m(dim)
    if dim % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the embedding width {dim}")
    if nlist * 39 > count:
        raise ValueError(f"nlist={nlist} lists need at least {nlist * 39} vectors to train (39 per list); the collection has {count}")
    if nprobe is not None and not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe={nprobe} must be between 1 and nlist={nlist}")
    train_size = min(count, MAX_TRAIN_SIZE, max(nlist * TRAIN_POINTS_PER_LIST, IVFPQ_MIN_VECTORS))
    return IndexPlan("ivfpq", dim, nlist=nlist, pq_m=pq_m, nprobe=nprobe or 0, refine_factor=DEFAULT_REFINE_FACTOR,
                     train_size=train_size)


__all__ = ["EXACT_MAX_VECTORS", "INDEX_TYPES", "IndexPlan", "default_nlist", "default_pq_m", "plan_index"]
