"""Classification and retrieval metrics on scores and embeddings.

Shapes: N samples, C classes, Q queries, G gallery items, E embedding width,
K the largest cut-off asked for (recall@K, mAP@K).

Ties are ranked pessimistically, everywhere: an item the metric wants (the true
class, a relevant gallery item) is placed after every unwanted item whose score
is greater than OR EQUAL to its own. A model that gives every class the same
score therefore scores zero, not 1/C or 1 depending on the sort's whims, and a
collapsed embedding (all vectors equal) cannot look good. Among tied wanted
items the order does not matter: every metric here gives them the same value
whichever comes first.

Retrieval on a large gallery never holds the full (Q, G) similarity matrix: the
queries are scored ``chunk_size`` at a time, and per query only its K best
relevant and K best irrelevant scores are kept, which is enough to rank every
relevant item that can land in the top K.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_RECALL_KS: tuple[int, ...] = (1, 5, 10)


# ----------------------------------------------------------------------------- classification


def _check_classification_inputs(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(
            f"labels must be ({logits.shape[0]},) to match logits {tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    _check_labels_in_range(labels, logits.shape[1])
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or infinity; ranks would be meaningless (check the model's outputs)")


def _check_labels_in_range(labels: torch.Tensor, num_classes: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels range over [{int(labels.min())}, {int(labels.max())}] but there are {num_classes} classes; "
            f"labels must be in [0, {num_classes - 1}]"
        )


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1-based rank (N,) of each sample's true class among the C logits, ties pessimistic.

    rank = 1 + number of other classes with a logit >= the true class's logit.
    """
    _check_classification_inputs(logits, labels)
    true_logit = logits.gather(1, labels.long()[:, None])  # (N, 1)
    # Counting the true class itself (it is >= itself) supplies the "1 +".
    return (logits >= true_logit).sum(dim=1)  # (N,)


def classification_metrics_from_ranks(
    ranks: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    top_k: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Accuracy@k for each k in ``top_k``, mean per-class recall and the sample count, from true-class ranks.

    ``ranks`` (N,) are 1-based true-class ranks (``true_class_rank``); ``labels`` (N,)
    the true classes. A k larger than ``num_classes`` is clipped to it (so accuracy@5
    on 3 classes is 1.0); the key keeps the k asked for.

    Mean per-class recall (balanced accuracy) is the top-1 recall of each class that
    has at least one sample, averaged with equal weight per class: a classifier that
    always answers the majority class scores 1/(number of classes present).

    Returns ``{"accuracy@1": ..., "accuracy@5": ..., "mean_per_class_recall": ..., "num_samples": N}``.
    """
    if ranks.shape != labels.shape or ranks.ndim != 1:
        raise ValueError(f"ranks {tuple(ranks.shape)} and labels {tuple(labels.shape)} must both be (N,)")
    if ranks.numel() == 0:
        raise ValueError("no samples to score: ranks and labels are empty")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    _check_labels_in_range(labels, num_classes)
    for k in top_k:
        if k < 1:
            raise ValueError(f"top_k values must be at least 1, got {k} in {tuple(top_k)}")

    metrics: dict[str, float] = {}
    for k in top_k:
        metrics[f"accuracy@{k}"] = float((ranks <= min(k, num_classes)).float().mean())

    labels = labels.long()
    correct = (ranks == 1).long()
    samples_per_class = torch.bincount(labels, minlength=num_classes)  # (C,)
    correct_per_class = torch.bincount(labels, weights=correct.double(), minlength=num_classes)  # (C,)
    present = samples_per_class > 0
    metrics["mean_per_class_recall"] = float((correct_per_class[present] / samples_per_class[present]).mean())
    metrics["num_samples"] = int(ranks.numel())
    return metrics


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, top_k: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """``classification_metrics_from_ranks`` on logits (N, C) and labels (N,)."""
    return classification_metrics_from_ranks(true_class_rank(logits, labels), labels, logits.shape[1], top_k)


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, top_k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"accuracy@k": fraction of samples whose true class ranks <= k}`` for each k; k clipped to C."""
    metrics = classification_metrics(logits, labels, top_k)
    return {f"accuracy@{k}": metrics[f"accuracy@{k}"] for k in top_k}


def mean_per_class_recall(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 recall averaged over the classes present in ``labels`` (balanced accuracy)."""
    return classification_metrics(logits, labels, top_k=(1,))["mean_per_class_recall"]


# ----------------------------------------------------------------------------- retrieval


def _best_relevant_and_irrelevant(
    scores: torch.Tensor,
    start: int,
    depth: int,
    query_to_gallery: torch.Tensor | None,
    query_labels: torch.Tensor | None,
    gallery_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query of a chunk: its ``depth`` best relevant scores (q, K) and best irrelevant scores (q, K),
    both descending and padded with -inf, and its number of relevant items (q,).

    Overwrites ``scores`` (q, G) in place: it is a scratch chunk, and copying a (q, G)
    matrix costs as much as computing it.
    """
    num_chunk, device = scores.shape[0], scores.device
    if query_to_gallery is not None:
        # One relevant item each: no (q, G) relevance mask is needed.
        targets = query_to_gallery[start : start + num_chunk, None].to(device)  # (q, 1)
        best_relevant = torch.full((num_chunk, depth), -torch.inf, device=device, dtype=scores.dtype)  # (q, K)
        best_relevant[:, :1] = scores.gather(1, targets)
        num_relevant = torch.ones(num_chunk, dtype=torch.long, device=device)  # (q,)
        best_irrelevant = scores.scatter_(1, targets, -torch.inf).topk(depth, dim=1).values  # (q, K)
        return best_relevant, best_irrelevant, num_relevant
    chunk_labels = query_labels[start : start + num_chunk, None].to(device)  # (q, 1)
    relevant = chunk_labels == gallery_labels[None, :].to(device)  # (q, G)
    num_relevant = relevant.sum(dim=1)  # (q,)
    best_relevant = torch.where(relevant, scores, -torch.inf).topk(depth, dim=1).values  # (q, K)
    best_irrelevant = scores.masked_fill_(relevant, -torch.inf).topk(depth, dim=1).values  # (q, K)
    return best_relevant, best_irrelevant, num_relevant


def _check_retrieval_inputs(
    query_embeddings: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    query_to_gallery: torch.Tensor | None,
    query_labels: torch.Tensor | None,
    gallery_labels: torch.Tensor | None,
    recall_ks: Sequence[int],
    map_k: int | None,
    chunk_size: int,
) -> None:
    """Raises ValueError, saying what to fix, for any argument :func:`retrieval_metrics` cannot rank with."""
    query_shape, gallery_shape = tuple(query_embeddings.shape), tuple(gallery_embeddings.shape)
    if len(query_shape) != 2 or len(gallery_shape) != 2 or query_shape[1] != gallery_shape[1]:
        raise ValueError(
            f"query_embeddings {query_shape} and gallery_embeddings {gallery_shape} "
            "must be (Q, E) and (G, E) with the same E"
        )
    num_queries, num_gallery = query_embeddings.shape[0], gallery_embeddings.shape[0]
    if num_queries == 0 or num_gallery == 0:
        raise ValueError(f"nothing to retrieve: {num_queries} queries and {num_gallery} gallery items")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    cutoffs = list(recall_ks) + ([map_k] if map_k is not None else [])
    if not cutoffs or min(cutoffs) < 1:
        raise ValueError(
            f"recall_ks {tuple(recall_ks)} and map_k {map_k} must be at least 1, and at least one must be given"
        )

    by_index = query_to_gallery is not None
    by_label = query_labels is not None or gallery_labels is not None
    if by_index == by_label or (by_label and (query_labels is None or gallery_labels is None)):
        raise ValueError("give relevance either as query_to_gallery, or as both query_labels and gallery_labels")
    if by_index:
        if query_to_gallery.shape != (num_queries,) or query_to_gallery.dtype.is_floating_point:
            raise ValueError(f"query_to_gallery must be an integer tensor ({num_queries},), got "
                             f"{query_to_gallery.dtype} {tuple(query_to_gallery.shape)}")
        if int(query_to_gallery.min()) < 0 or int(query_to_gallery.max()) >= num_gallery:
            raise ValueError(
                f"query_to_gallery indices must be in [0, {num_gallery - 1}] (the gallery has {num_gallery} items)"
            )
    elif query_labels.shape != (num_queries,) or gallery_labels.shape != (num_gallery,):
        raise ValueError(f"query_labels {tuple(query_labels.shape)} and gallery_labels {tuple(gallery_labels.shape)} "
                         f"must be ({num_queries},) and ({num_gallery},)")

    for name, embeddings in (("query_embeddings", query_embeddings), ("gallery_embeddings", gallery_embeddings)):
        if not bool(torch.isfinite(embeddings).all()):
            raise ValueError(f"{name} contain NaN or infinity; ranks would be meaningless (check the model's outputs)")


def _score_dtype(query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor) -> torch.dtype:
    """The dtype similarities are computed in: that of the embeddings, float32 at least."""
    # float32 at least: half-precision similarities tie far more often than the model means them to.
    score_dtype = torch.promote_types(query_embeddings.dtype, gallery_embeddings.dtype)
    return torch.promote_types(score_dtype, torch.float32)


def _chunk_ranks(
    scores: torch.Tensor,
    start: int,
    position: torch.Tensor,
    max_cutoff: int,
    query_to_gallery: torch.Tensor | None,
    query_labels: torch.Tensor | None,
    gallery_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query of a chunk (rows ``start`` on): the rank (q, K) of its m-th best relevant item, ``max_cutoff + 1``
    past its last one, and its number of relevant items (q,). ``position`` (K,) is 1, 2, ... K.

    Overwrites ``scores`` (q, G), as :func:`_best_relevant_and_irrelevant` does; raises ValueError for a query
    without a relevant item.
    """
    num_gallery, depth = scores.shape[1], position.shape[0]
    best_relevant, best_irrelevant, num_relevant = _best_relevant_and_irrelevant(  # (q, K), (q, K), (q,)
        scores, start, depth, query_to_gallery, query_labels, gallery_labels
    )
    if not bool((num_relevant > 0).all()):
        query = start + int((num_relevant == 0).nonzero()[0])
        raise ValueError(f"query {query} has no relevant gallery item; every query needs at least one "
                         "(check the labels, or that the gallery covers every query's class)")
    num_irrelevant = num_gallery - num_relevant  # (q,)

    relevant_valid = position[None, :] <= num_relevant[:, None]  # (q, K) slot m holds a real relevant item
    irrelevant_valid = position[None, :] <= num_irrelevant[:, None]  # (q, K) slot holds a real irrelevant item
    # Irrelevant items scoring >= the m-th best relevant one, each sitting before it (pessimistic ties).
    outscoring = best_irrelevant[:, None, :] >= best_relevant[:, :, None]  # (q, K, K)
    outscoring &= irrelevant_valid[:, None, :]
    # Exact while below K; once it reaches K the item ranks past K anyway.
    ranks = position[None, :] + outscoring.sum(dim=2)  # (q, K) rank of the m-th best relevant item

    # Slots past the last relevant item must never count as hits: rank them past every cut-off.
    return ranks.masked_fill(~relevant_valid, max_cutoff + 1), num_relevant


def _recall_and_map(
    ranks: torch.Tensor, num_relevant: torch.Tensor, recall_ks: Sequence[int], map_k: int | None
) -> dict[str, float]:
    """recall@k for each k and mAP@``map_k`` from the ranks (Q, K) and the numbers of relevant items (Q,)."""
    metrics = {f"recall@{k}": float((ranks[:, 0] <= k).double().mean()) for k in recall_ks}
    if map_k is not None:
        position = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64)  # (K,)
        precision_at_hits = torch.where(ranks <= map_k, position[None, :] / ranks, 0.0)  # (Q, K)
        average_precision = precision_at_hits.sum(dim=1) / num_relevant.clamp(max=map_k)  # (Q,)
        metrics[f"map@{map_k}"] = float(average_precision.mean())
    return metrics


def retrieval_metrics(
    query_embeddings: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    *,
    query_to_gallery: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    map_k: int | None = 10,
    chunk_size: int = 256,
) -> dict[str, float]:
    """Recall@k and mAP@K of retrieving gallery items with queries, by dot product (cosine on unit vectors).

    Relevance is given one of two ways:

    * ``query_to_gallery`` (Q,) int: query i has exactly one relevant item, gallery
      row ``query_to_gallery[i]`` (paired data: caption i describes image i);
    * ``query_labels`` (Q,) and ``gallery_labels`` (G,): every gallery item with the
      query's label is relevant. This covers several captions per image (label =
      image id) and class-level relevance (audio of "seven" -> images of sevens).

    Definitions (ties pessimistic, see the module docstring):

    * recall@k: fraction of queries with at least one relevant item in their top k
      (the success rate CLIP-style retrieval benchmarks report).
    * mAP@K: mean over queries of AP@K = (1 / min(R, K)) * sum over relevant items
      ranked r <= K of precision@r, with R the query's number of relevant items. A
      perfect ranking scores 1 whether R is below or above K.

    Every query must have at least one relevant item (ValueError otherwise: recall is
    undefined for it, and skipping it silently would flatter the model).

    Args:
        query_embeddings: (Q, E); gallery_embeddings: (G, E). Scored in float32 at least.
        recall_ks: the k of each recall@k.
        map_k: K of mAP@K; None leaves mAP out.
        chunk_size: queries scored at once; peak memory is a few times chunk_size x G floats.

    Returns ``{"recall@1": ..., "recall@5": ..., "recall@10": ..., "map@10": ..., "num_queries": Q}``.
    """
    _check_retrieval_inputs(query_embeddings, gallery_embeddings, query_to_gallery, query_labels, gallery_labels,
                            recall_ks, map_k, chunk_size)
    num_queries, num_gallery = query_embeddings.shape[0], gallery_embeddings.shape[0]
    cutoffs = list(recall_ks) + ([map_k] if map_k is not None else [])

    device = query_embeddings.device
    score_dtype = _score_dtype(query_embeddings, gallery_embeddings)
    gallery = gallery_embeddings.to(device, score_dtype)  # (G, E)
    # Only the K best relevant and K best irrelevant scores of a query can decide
    # whether a relevant item lands in the top K; more is never needed.
    depth = min(max(cutoffs), num_gallery)
    position = torch.arange(1, depth + 1, device=device)  # (K,) 1-based place among the relevant items

    all_ranks, all_num_relevant = [], []
    for start in range(0, num_queries, chunk_size):
        end = min(start + chunk_size, num_queries)
        scores = query_embeddings[start:end].to(score_dtype) @ gallery.T  # (q, G)
        ranks, num_relevant = _chunk_ranks(  # (q, K), (q,)
            scores, start, position, max(cutoffs), query_to_gallery, query_labels, gallery_labels
        )
        all_ranks.append(ranks)
        all_num_relevant.append(num_relevant)

    # (Q, K) integers: small enough to finish on the CPU in float64 on any device.
    ranks = torch.cat(all_ranks).cpu()  # (Q, K) rank of each query's m-th best relevant item
    num_relevant = torch.cat(all_num_relevant).cpu()  # (Q,)
    metrics = _recall_and_map(ranks, num_relevant, recall_ks, map_k)
    metrics["num_queries"] = num_queries
    return metrics


def bidirectional_retrieval_metrics(
    first_embeddings: torch.Tensor,
    second_embeddings: torch.Tensor,
    *,
    first_name: str,
    second_name: str,
    first_labels: torch.Tensor | None = None,
    second_labels: torch.Tensor | None = None,
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    map_k: int | None = 10,
    chunk_size: int = 256,
) -> dict[str, float]:
    """``retrieval_metrics`` in both directions between two modalities, in one flat dict.

    Without labels the data are paired: row i of ``first_embeddings`` (N, E) and row i
    of ``second_embeddings`` (N, E) belong together. With ``first_labels`` (N1,) and
    ``second_labels`` (N2,) items with equal labels are relevant to each other (several
    captions per image: label = image id; class-level: label = class).

    Keys are ``"{first}_to_{second}/{metric}"`` and ``"{second}_to_{first}/{metric}"``,
    e.g. ``"image_to_text/recall@1"``, ``"text_to_image/map@10"``.
    """
    if (first_labels is None) != (second_labels is None):
        raise ValueError("give both first_labels and second_labels for label relevance, or neither for paired data")
    options = dict(recall_ks=recall_ks, map_k=map_k, chunk_size=chunk_size)
    if first_labels is None:
        if first_embeddings.shape[0] != second_embeddings.shape[0]:
            raise ValueError(
                f"paired retrieval needs as many {first_name} as {second_name} embeddings, got "
                f"{first_embeddings.shape[0]} and {second_embeddings.shape[0]}; pass labels when they are not 1:1 pairs"
            )
        pairs = torch.arange(first_embeddings.shape[0], device=first_embeddings.device)
        forward = retrieval_metrics(first_embeddings, second_embeddings, query_to_gallery=pairs, **options)
        backward = retrieval_metrics(second_embeddings, first_embeddings, query_to_gallery=pairs, **options)
    else:
        forward = retrieval_metrics(first_embeddings, second_embeddings, query_labels=first_labels,
                                    gallery_labels=second_labels, **options)
        backward = retrieval_metrics(second_embeddings, first_embeddings, query_labels=second_labels,
                                     gallery_labels=first_labels, **options)
    metrics = {f"{first_name}_to_{second_name}/{name}": value for name, value in forward.items()}
    metrics.update({f"{second_name}_to_{first_name}/{name}": value for name, value in backward.items()})
    return metrics
