"""Near-duplicates within one index: pairs of rows above a cosine similarity."""
from __future__ import annotations

import numpy as np

from multimodal.apps.search.vector_index import SearchIndex


def find_duplicates(
    index: SearchIndex, threshold: float, *, max_neighbors: int = 32, batch_size: int = 4096,
) -> list[tuple[int, int, float]]:
    """Pairs of rows whose cosine similarity is at least ``threshold``: ``(i, j, score)`` with i < j, by score.

    Each row's ``max_neighbors`` nearest rows are examined (the index's own search, so
    with ``ivfpq`` a pair is found when the index finds it); a row with more
    near-copies than that reports its nearest ``max_neighbors``.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    pairs: dict[tuple[int, int], float] = {}
    for start, vectors in index.batches(batch_size):
        scores, ids = index.search_vectors(vectors, max_neighbors + 1)  # (B, K): each row finds itself too
        rows = np.arange(start, start + len(vectors))[:, None]  # (B, 1)
        keep = (scores >= threshold) & (ids >= 0) & (ids != rows)
        for i, j, score in zip(np.broadcast_to(rows, ids.shape)[keep], ids[keep], scores[keep]):
            pair = (int(min(i, j)), int(max(i, j)))
            pairs[pair] = max(pairs.get(pair, -2.0), float(score))
    return sorted(((i, j, s) for (i, j), s in pairs.items()), key=lambda p: (-p[2], p[0], p[1]))


__all__ = ["find_duplicates"]
