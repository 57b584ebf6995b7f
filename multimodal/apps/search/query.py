"""Queries in any modality the checkpoint encodes, embedded by the checkpoint that built the index, searched.

::

    from multimodal.apps.search import load_index_model, open_index, search

    index = open_index("index/")                       # memory-mapped
    model = load_index_model(index)                    # the checkpoint the index records
    hits = search(index, model, "seven", modality="text", k=10)[0]
    hits[0].key, hits[0].score, hits[0].source         # best first

A model whose checkpoint id differs from the index's is refused: another checkpoint
embeds into another space, where the scores mean nothing.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.apps.api import EmbeddingModel, as_items, load_embedding_model
from multimodal.data.modalities.registry import CAPTION_MODALITY, get_modality
from multimodal.apps.search.vector_index import Hit, SearchIndex


def check_model(index: SearchIndex, model: EmbeddingModel) -> None:
    """Raises ValueError unless ``model`` was loaded from the checkpoint that built ``index``."""
    if model.checkpoint_id is None:
        raise ValueError(
            "this model was not loaded from a checkpoint directory, so which space it embeds into cannot be checked; "
            "load it with multimodal.load_embedding_model(DIR)"
        )
    if model.checkpoint_id != index.checkpoint_id:
        raise ValueError(
            f"{index.path} was built from checkpoint {index.checkpoint_id} ({index.checkpoint_path}), but the model is "
            f"checkpoint {model.checkpoint_id} ({model.checkpoint}): their embedding spaces differ. Search with the "
            "checkpoint the index was built from, or build the index again with this one"
        )


def load_index_model(index: SearchIndex, checkpoint: str | os.PathLike | None = None, **options: Any) -> EmbeddingModel:
    """The model to embed queries with: ``checkpoint`` if given, else the one the index records; checked against it.

    ``options`` go to :func:`multimodal.apps.api.load_embedding_model` (device, precision, batch_size).
    """
    path = Path(checkpoint) if checkpoint is not None else index.checkpoint_path
    if checkpoint is None and not (path / "config.json").is_file():
        raise ValueError(f"{index.path} was built from checkpoint {path}, which is not there any more; give its new "
                         "place with --checkpoint")
    model = load_embedding_model(path, **options)
    check_model(index, model)
    return model


# What a query that cannot be embedded raises: not decodable, unreadable, missing, an empty clip.
QUERY_ERRORS = (ValueError, TypeError, OSError)


def _check_query_modality(model: EmbeddingModel, modality: str) -> None:
    if modality not in model.modalities:
        raise ValueError(f"this checkpoint has no {modality} encoder, so it cannot embed a {modality} query; "
                         f"it encodes {model.modalities}")


def _check_captions(modality: str, queries: list) -> None:
    """Caption queries (a modality not read from files: text) must be non-empty strings."""
    if not get_modality(modality).reads_files and any(not isinstance(q, str) or not q.strip() for q in queries):
        raise ValueError(f"a {modality} query must be a non-empty string")


def embed_query(model: EmbeddingModel, modality: str, query: Any) -> np.ndarray:
    """One query (a caption, an image or audio file's path or bytes, anything the API embeds) -> float32 (1, E).

    Raises one of ``QUERY_ERRORS`` saying what is wrong with the query, without naming
    it: the caller knows it as a command-line option or an upload. Audio follows the
    rule of every command (``multimodal.data.preprocess.audio_features.fit_clip_length``): a clip shorter
    than one spectrogram patch is padded with silence, an empty one refused.
    """
    _check_query_modality(model, modality)
    _check_captions(modality, [query])
    prepared = model.prepare(modality, query)
    return model.encode_prepared(modality, [prepared]).cpu().numpy()


def embed_queries(model: EmbeddingModel, modality: str, queries: Any) -> np.ndarray:
    """Queries of one modality (captions, image files, audio files, or anything the API embeds) -> float32 (Q, E).

    Raises ValueError naming the query that cannot be read or decoded.
    """
    _check_query_modality(model, modality)
    items = as_items(modality, queries)
    if not items:
        raise ValueError("no query given")
    _check_captions(modality, items)
    return model.embed(modality, items).numpy()


def search(
    index: SearchIndex, model: EmbeddingModel, queries: Any, *, modality: str = CAPTION_MODALITY, k: int = 10,
    nprobe: int | None = None,
) -> list[list[Hit]]:
    """Embeds ``queries`` of ``modality`` with ``model`` and searches ``index``: per query, up to ``k`` hits, best first.

    Any modality the model encodes may query an index of any modality (text against
    images, speech against images ...). ``model`` must come from the index's checkpoint.
    """
    check_model(index, model)
    return index.search(embed_queries(model, modality, queries), k, nprobe=nprobe)


def describe_hits(hits: Sequence[Hit]) -> list[dict]:
    """Hits as JSON-ready dicts with their rank (1 = best)."""
    return [{"rank": rank, **hit.to_dict()} for rank, hit in enumerate(hits, start=1)]


__all__ = ["QUERY_ERRORS", "check_model", "describe_hits", "embed_queries", "embed_query", "load_index_model",
           "search"]
