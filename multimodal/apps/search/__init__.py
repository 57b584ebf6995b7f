"""Search what was embedded: FAISS indexes over outputs of ``multimodal embed``, queried in any modality.

* :func:`build_index` / :func:`add_to_index` (``multimodal index``): an index directory
  from embedding outputs, its type chosen by size (:mod:`multimodal.apps.search.plan`);
* :func:`open_index` -> :class:`SearchIndex` (memory-mapped): ``search(vectors, k)``;
* :func:`search` (``multimodal search``): text, image or audio queries embedded by the
  index's checkpoint (:func:`load_index_model`), refused for another checkpoint;
* :func:`find_duplicates`: pairs of rows above a similarity threshold.
"""
from multimodal.apps.search.dedup import find_duplicates
from multimodal.apps.search.vector_index import (
    AddResult,
    Hit,
    IndexFileError,
    SearchIndex,
    add_to_index,
    build_index,
    index_size,
    open_index,
    read_manifest,
)
from multimodal.apps.search.plan import INDEX_TYPES, IndexPlan, plan_index
from multimodal.apps.search.query import check_model, describe_hits, embed_queries, load_index_model, search

__all__ = [
    "AddResult",
    "Hit",
    "INDEX_TYPES",
    "IndexFileError",
    "IndexPlan",
    "SearchIndex",
    "add_to_index",
    "build_index",
    "check_model",
    "describe_hits",
    "embed_queries",
    "find_duplicates",
    "index_size",
    "load_index_model",
    "open_index",
    "plan_index",
    "read_manifest",
    "search",
]
