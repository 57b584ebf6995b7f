"""Evaluation loops: embed what a loader yields with a model, then score it.

The model is anything with ``encode(modality, batch) -> (B, E)`` unit-norm embeddings
(``Encoder``); the loops never move it between devices. Each batch is a dict as the
data pipeline makes it ("image", "audio", "text", their padding masks, "__key__"),
plus "label" int64 (B,) where labels are needed. A modality may have more rows than
the batch has samples: with "{modality}_item" int64 (M,) the batch says which sample
each row belongs to (every caption of a COCO-style item: "text" (M, L) and
"text_item" (M,)); its embeddings are then (M, E), and retrieval counts an item found
when any of its rows is. Batches are moved to ``device``:
the one given, else the device of the model's first parameter when it is a
``torch.nn.Module``, else they are passed as they come.

A ``torch.nn.Module`` model is put in eval mode for the loop (dropout and the like
off) and every submodule's previous mode is restored afterwards.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from multimodal.eval.metrics import (
    DEFAULT_RECALL_KS,
    bidirectional_retrieval_metrics,
    classification_metrics_from_ranks,
    true_class_rank,
)

Batch = Mapping[str, Any]
RELEVANCE_MODES = ("pair", "label")


@runtime_checkable
class Encoder(Protocol):
    """What the loops need of a model."""

    def encode(self, modality: str, batch: dict) -> torch.Tensor:
        """Unit-norm embeddings (B, E) of ``batch[modality]`` (with its padding mask, if the batch has one)."""
        ...


def move_batch(batch: Batch, device: torch.device | str | None) -> dict:
    """A new dict with every tensor of ``batch`` on ``device`` (others, like "__key__", as they are)."""
    if device is None:
        return dict(batch)
    return {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in batch.items()}


def _default_device(model: Encoder, device: torch.device | str | None) -> torch.device | str | None:
    if device is not None or not isinstance(model, nn.Module):
        return device
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


@contextlib.contextmanager
def _eval_mode(model: Encoder) -> Iterator[None]:
    """Eval mode for the duration, then each submodule's own previous mode back."""
    if not isinstance(model, nn.Module):
        yield
        return
    previous = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in previous:
            module.training = training


def _encode(model: Encoder, modality: str, batch: dict, batch_index: int) -> torch.Tensor:
    if modality not in batch:
        raise ValueError(f"batch {batch_index} has no {modality!r} entry; it holds {sorted(batch)}")
    embeddings = model.encode(modality, batch)
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(
            f"model.encode({modality!r}, batch {batch_index}) returned {shape}; it must return a (B, E) tensor"
        )
    return embeddings


def _labels(batch: dict, batch_index: int, batch_size: int, device: torch.device) -> torch.Tensor:
    if "label" not in batch:
        raise ValueError(
            f"batch {batch_index} has no 'label' entry (int64 (B,) class indices); it holds {sorted(batch)}"
        )
    labels = batch["label"]
    if not isinstance(labels, torch.Tensor) or labels.shape != (batch_size,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"batch {batch_index} 'label' is {shape}; it must be an int64 tensor ({batch_size},)")
    return labels.to(device)


def _rows_to_samples(batch: dict, modality: str, num_rows: int, batch_index: int) -> torch.Tensor | None:
    """The batch's "{modality}_item" (M,) (the sample of each embedding row), checked; None when it has none."""
    items = batch.get(f"{modality}_item")
    if items is None:
        return None
    if not isinstance(items, torch.Tensor) or items.shape != (num_rows,) or items.dtype.is_floating_point:
        shape = tuple(items.shape) if isinstance(items, torch.Tensor) else type(items).__name__
        raise ValueError(f"batch {batch_index} '{modality}_item' is {shape}; it must be an integer tensor "
                         f"({num_rows},): the sample of each of the {num_rows} {modality} rows")
    return items


def _samples_in_batch(batch: dict, sizes: dict[str, int], items: dict[str, torch.Tensor], batch_index: int) -> int:
    """B: the rows of the modalities with one row per sample (all equal), else the number of keys."""
    per_sample = {modality: size for modality, size in sizes.items() if modality not in items}
    if len(set(per_sample.values())) > 1:
        raise ValueError(f"batch {batch_index} gave different numbers of embeddings per modality: {per_sample}")
    if per_sample:
        num_samples = next(iter(per_sample.values()))
    elif "__key__" in batch:
        num_samples = len(batch["__key__"])
    else:
        raise ValueError(f"batch {batch_index} has only modalities with '_item' rows and no '__key__' to count "
                         "its samples by")
    for modality, rows in items.items():
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_samples):
            raise ValueError(f"batch {batch_index} '{modality}_item' ranges over [{int(rows.min())}, "
                             f"{int(rows.max())}] but the batch has {num_samples} samples")
    return num_samples


@torch.no_grad()
def collect_embeddings(
    model: Encoder,
    loader: Iterable[Batch],
    modalities: Sequence[str],
    *,
    with_labels: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Embeddings of every batch for each modality, concatenated: ``{modality: (N, E)}``.

    With ``with_labels`` the batches' "label" entries are gathered too, under "label" (N,).
    A modality whose batches carry "{modality}_item" (several rows per sample, e.g.
    every caption) has (M, E) embeddings and "{modality}_item" (M,) in the result: the
    index in [0, N) of the sample each row belongs to, counted over the whole loader.
    The results stay on the device the model returns them on.
    """
    if isinstance(modalities, str) or not modalities:
        raise ValueError(f"modalities must be a non-empty list of modality names, got {modalities!r}")
    device = _default_device(model, device)
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in modalities}
    if with_labels:
        collected["label"] = []
    num_samples = 0  # samples of the batches before this one: the offset of this batch's "_item" rows
    with _eval_mode(model):
        for batch_index, batch in enumerate(loader):
            batch = move_batch(batch, device)
            sizes, items = {}, {}
            for modality in modalities:
                embeddings = _encode(model, modality, batch, batch_index)
                collected[modality].append(embeddings)
                sizes[modality] = embeddings.shape[0]
                rows = _rows_to_samples(batch, modality, embeddings.shape[0], batch_index)
                if rows is not None:
                    items[modality] = rows
            batch_size = _samples_in_batch(batch, sizes, items, batch_index)
            for modality, rows in items.items():
                collected.setdefault(f"{modality}_item", []).append(num_samples + rows.to(torch.int64))
            if with_labels:
                first = collected[modalities[0]][-1]
                collected["label"].append(_labels(batch, batch_index, batch_size, first.device))
            num_samples += batch_size
    if not collected[modalities[0]]:
        raise ValueError("the loader yielded no batches; nothing to evaluate")
    for modality in modalities:
        parts = collected.get(f"{modality}_item")
        if parts is not None and len(parts) != len(collected[modality]):
            raise ValueError(f"some batches have '{modality}_item' and some do not; a loader's batches must agree")
    return {name: torch.cat(parts) for name, parts in collected.items()}


def sample_of_each_row(collected: Mapping[str, torch.Tensor], modality: str) -> torch.Tensor:
    """(N_m,) the sample each embedding row of ``modality`` belongs to: its "_item" rows, else ``arange(N)``."""
    items = collected.get(f"{modality}_item")
    if items is not None:
        return items
    return torch.arange(collected[modality].shape[0], device=collected[modality].device)


@torch.no_grad()
def evaluate_zero_shot(
    model: Encoder,
    loader: Iterable[Batch],
    modality: str,
    class_weights: torch.Tensor,
    *,
    top_k: Sequence[int] = (1, 5),
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Zero-shot classification of ``modality`` inputs against ``class_weights`` (C, E).

    Every batch needs ``modality`` and "label" (B,) in [0, C). Only the true class's
    rank is kept per sample, so memory grows with N, not N x C. NaN or infinite
    embeddings raise ValueError rather than rank anywhere.

    Returns ``{"accuracy@1", "accuracy@5" (one per k in top_k), "mean_per_class_recall",
    "num_samples"}`` (see ``multimodal.eval.metrics.classification_metrics_from_ranks``; ties pessimistic).
    """
    if class_weights.ndim != 2:
        raise ValueError(f"class_weights must be (C, E), got shape {tuple(class_weights.shape)}")
    num_classes = class_weights.shape[0]
    device = _default_device(model, device)
    ranks, labels = [], []
    weights = None
    with _eval_mode(model):
        for batch_index, batch in enumerate(loader):
            batch = move_batch(batch, device)
            embeddings = _encode(model, modality, batch, batch_index)  # (B, E)
            if embeddings.shape[1] != class_weights.shape[1]:
                raise ValueError(f"model embeddings are {embeddings.shape[1]}-wide but class_weights are "
                                 f"{tuple(class_weights.shape)}; build the weights with the same model")
            if weights is None:  # moved once, to wherever the model's outputs live
                weights = class_weights.to(embeddings.device, torch.promote_types(class_weights.dtype, torch.float32))
            batch_labels = _labels(batch, batch_index, embeddings.shape[0], embeddings.device)
            logits = embeddings.to(weights.dtype) @ weights.T  # (B, C); the logit scale cannot change a rank
            try:
                ranks.append(true_class_rank(logits, batch_labels))  # (B,)
            except ValueError as error:
                raise ValueError(f"batch {batch_index}: {error}") from None
            labels.append(batch_labels)
    if not ranks:
        raise ValueError("the loader yielded no batches; nothing to evaluate")
    return classification_metrics_from_ranks(torch.cat(ranks), torch.cat(labels), num_classes, top_k)


def evaluate_retrieval(
    model: Encoder,
    loader: Iterable[Batch],
    query_modality: str,
    gallery_modality: str,
    *,
    relevance: str = "pair",
    recall_ks: Sequence[int] = DEFAULT_RECALL_KS,
    map_k: int | None = 10,
    chunk_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Retrieval between two modalities of the loader's batches, in both directions.

    ``relevance``:

    * ``"pair"``: the two modalities of a sample belong together (caption i <-> image i).
      A sample may have several rows of one modality ("text_item": every caption of a
      COCO-style image, see the module docstring); CLIP_benchmark's rule then holds:
      text -> image finds a caption's own image, image -> text any of its captions.
    * ``"label"``: items with equal "label" entries are relevant to each other, e.g.
      spoken "seven" <-> every image of a seven (the emergent audio-image alignment).
      A row of a sample with several rows carries its sample's label.

    Returns a flat dict, e.g. for ("text", "image"): ``"text_to_image/recall@1"`` ...
    ``"text_to_image/map@10"``, ``"text_to_image/num_queries"`` (captions, for text),
    the same for ``"image_to_text/..."``, and ``"num_samples"`` (items).
    """
    if relevance not in RELEVANCE_MODES:
        raise ValueError(f"relevance must be one of {RELEVANCE_MODES}, got {relevance!r}")
    if query_modality == gallery_modality:
        raise ValueError(f"query and gallery modality are both {query_modality!r}; give two different modalities")
    with_labels = relevance == "label"
    modalities = (query_modality, gallery_modality)
    collected = collect_embeddings(model, loader, modalities, with_labels=with_labels, device=device)
    several_rows = any(f"{m}_item" in collected for m in modalities)
    labels = {}
    if with_labels:
        labels = {m: collected["label"][sample_of_each_row(collected, m)] for m in modalities}
    elif several_rows:  # an item's rows are relevant to the other modality's rows of the same item
        labels = {m: sample_of_each_row(collected, m) for m in modalities}
    metrics = bidirectional_retrieval_metrics(
        collected[query_modality],
        collected[gallery_modality],
        first_name=query_modality,
        second_name=gallery_modality,
        first_labels=labels.get(query_modality),
        second_labels=labels.get(gallery_modality),
        recall_ks=recall_ks,
        map_k=map_k,
        chunk_size=chunk_size,
    )
    metrics["num_samples"] = _num_samples(collected, modalities)
    return metrics


def _num_samples(collected: Mapping[str, torch.Tensor], modalities: Sequence[str]) -> int:
    """N, the samples collected: the rows of a modality with one row per sample, else the items the rows name."""
    for modality in modalities:
        if f"{modality}_item" not in collected:
            return collected[modality].shape[0]
    return 1 + max(int(collected[f"{m}_item"].max()) for m in modalities)
