"""Pictures of an evaluation, so a person sees what the model confuses: a confusion matrix and a retrieval gallery.

Shapes: N evaluated inputs, C classes, E embedding width, Q sampled queries.

Written beside the JSON of ``multimodal eval --output results.json``:

* zero-shot: ``results.confusion.png`` (true class by predicted class, each row
  normalised, counts written in the cells when there are at most 20 classes) and
  ``results.gallery.html``: for a sample of classes, the class name as a text query
  and its top 5 inputs, each marked right or wrong with its true class;
* retrieval: ``results.gallery.html``: a sample of queries, each with its top 5 of the
  other modality, the true pair marked (any caption of the query's own item, when
  items have several).

The gallery is one self-contained HTML file (thumbnails and clips inlined), so it can
be mailed or attached to a report. The evaluation's loader is read once more to
collect embeddings with their keys (the metrics' loop keeps neither); the inputs
shown are read again from their files or shards.
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from multimodal.data.atomic_files import write_atomically, write_text_atomically
from multimodal.data.modalities.registry import get_modality
from multimodal.data.pipeline.sample_fields import CAPTION_KEYS, SampleFields
from multimodal.data.pipeline.shard_reader import expand_shards, read_shard
from multimodal.apps.embedding import is_shard_spec, shard_sample_input
from multimodal.apps.evaluation import EvalSetConfig, default_templates, zero_shot_weights
from multimodal.apps.search.media import media_type

TOP_K = 5
SAMPLE_QUERIES = 12
MAX_CLASSES_SHOWN = 20
THUMBNAIL_PIXELS = 112
MAX_INLINE_MEDIA_BYTES = 2 << 20  # a longer clip is named, not inlined


# What was evaluated ---------------------------------------------------------------------------------


def collect(model, loader: Iterable[dict], modalities: list[str]) -> dict:
    """Embeddings of every batch with their keys and labels: {modality: (N, E), "keys": [...], "labels": (N,) or None}.

    A modality with several rows per sample ("text_item": every caption) gives (M, E)
    and "{modality}_item" (M,), the index into "keys" of each row's sample.
    """
    embeddings: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    keys: list[str] = []
    labels: list[torch.Tensor] = []
    with torch.no_grad():
        for batch in loader:
            for modality in modalities:
                embeddings[modality].append(model.encode(modality, batch).float().cpu())
                if f"{modality}_item" in batch:
                    embeddings.setdefault(f"{modality}_item", []).append(len(keys) + batch[f"{modality}_item"].cpu())
            keys.extend(batch["__key__"])
            if "label" in batch:
                labels.append(torch.as_tensor(batch["label"]).cpu())
    if not keys:
        raise ValueError("the evaluation's loader yielded nothing to picture")
    collected = {m: torch.cat(parts) for m, parts in embeddings.items()}
    return {**collected, "keys": keys, "labels": torch.cat(labels) if labels else None}


class _Media:
    """The raw inputs behind keys: files (a class folder's keys are paths) or shard samples, read in one pass.

    Captions are read where ``caption_keys`` says (the evaluation's), the ``caption``-th of a sample's.
    """

    def __init__(self, data: str, keys: set[str], caption_keys: str = CAPTION_KEYS) -> None:
        self.fields = SampleFields(caption_keys=caption_keys)
        self.samples: dict[str, dict] = {}
        if is_shard_spec(data) or (Path(data).is_dir() and any(Path(data).glob("*.tar"))):
            for url in expand_shards(data):
                for sample in read_shard(url, []):
                    if sample["__key__"] in keys and sample["__key__"] not in self.samples:
                        self.samples[sample["__key__"]] = sample

    def raw(self, key: str, modality: str, caption: int = 0) -> tuple[bytes, str] | str | None:
        """(bytes, extension) of an image or clip, a caption (text), or None when it cannot be found."""
        if key in self.samples:
            try:
                if not get_modality(modality).reads_files:  # captions, read where the evaluation reads them
                    return self.fields.captions(self.samples[key])[caption]
                found = shard_sample_input(self.samples[key], modality)
            except (ValueError, UnicodeDecodeError, json.JSONDecodeError, IndexError):
                return None
            if isinstance(found, str):
                return found
            extension = next(ext for ext in self.samples[key] if self.samples[key][ext] is found)
            return found, extension
        path = Path(key)
        if get_modality(modality).reads_files and path.is_file():
            return path.read_bytes(), path.suffix.lstrip(".").lower()
        return None


# Rendering -------------------------------------------------------------------------------------------


def _thumbnail(modality: str, data: bytes) -> str | None:
    """A PNG data URL of the item's picture (``Modality.thumbnail``: decoded as training decodes
    it, THUMBNAIL_PIXELS on its longer side); None when it has none."""
    image = get_modality(modality).thumbnail(data, THUMBNAIL_PIXELS)
    if image is None:
        return None
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _item_html(media: _Media, key: str, modality: str, caption: int = 0) -> str:
    found = media.raw(key, modality, caption)
    if isinstance(found, str):
        return f'<div class="caption">{html.escape(found)}</div>'
    if found is not None:
        data, extension = found
        thumbnail = _thumbnail(modality, data)
        if thumbnail:
            return f'<img src="{thumbnail}" alt="{html.escape(key)}">'
        element = get_modality(modality).page_element
        if element not in (None, "img") and len(data) <= MAX_INLINE_MEDIA_BYTES:  # a player: audio (or video)
            source = f"data:{media_type(extension)};base64," + base64.b64encode(data).decode("ascii")
            return f'<{element} controls preload="none" src="{source}"></{element}>'
    return f'<div class="missing">{html.escape(modality)} not found</div>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1d2330; background: #f6f7f9; }
h1 { font-size: 20px; } h2 { font-size: 15px; margin: 18px 0 6px; }
p.summary { color: #4a5466; }
.row { display: flex; gap: 10px; align-items: flex-start; background: #fff; border: 1px solid #dde1e7;
       border-radius: 8px; padding: 10px; margin-bottom: 10px; }
.query { width: 170px; flex: none; font-weight: 600; }
.cell { width: 130px; flex: none; font-size: 12px; border-radius: 6px; padding: 4px; border: 3px solid transparent; }
.cell.right { border-color: #2e9d57; } .cell.wrong { border-color: #d0453a; }
.cell img { width: 112px; height: 112px; object-fit: contain; background: #eceff3; image-rendering: pixelated; }
.cell audio { width: 124px; }
.key { font-family: ui-monospace, monospace; font-size: 10px; color: #6b7588; word-break: break-all; }
.caption { font-size: 12px; }
"""


def _page(title: str, summary: str, rows: list[str]) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="summary">{html.escape(summary)}</p>\n' + "\n".join(rows) + "\n</body></html>\n")


def _cell(media: _Media, key: str, modality: str, score: float, right: bool, note: str, caption: int = 0) -> str:
    return (f'<div class="cell {"right" if right else "wrong"}">{_item_html(media, key, modality, caption)}'
            f"<div>{score:.3f} {html.escape(note)}</div><div class=\"key\">{html.escape(key)}</div></div>")


def _sample(count: int, size: int, seed: int) -> list[int]:
    return sorted(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False).tolist())


# The two pictures --------------------------------------------------------------------------------------


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts int64 (C, C): row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels.numpy(), predictions.numpy()), 1)
    return matrix


def draw_confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """The confusion matrix as a PNG: rows normalised to the fraction of each true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(class_names)
    size = max(4.5, 0.42 * count + 2.0)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(size + 1.2, size), dpi=110)
    shown = axes.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = range(count)
    labels = class_names if count <= 60 else [""] * count
    axes.set_xticks(ticks, labels, rotation=45 if count > 8 else 0, ha="right" if count > 8 else "center", fontsize=8)
    axes.set_yticks(ticks, labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    if count <= MAX_CLASSES_SHOWN:
        for true in range(count):
            for predicted in range(count):
                if matrix[true, predicted]:
                    axes.text(predicted, true, str(matrix[true, predicted]), ha="center", va="center", fontsize=7,
                              color="white" if rows[true, predicted] > 0.5 else "#1d2330")
    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, format="png"))
    plt.close(figure)
    return path


def _zero_shot_pictures(model, config: EvalSetConfig, collected: dict, output: Path, seed: int) -> list[Path]:
    templates = config.templates or list(default_templates(config.modality))
    weights = zero_shot_weights(model, model.tokenizer, config.class_names, templates, model.device).float().cpu()  # (C, E)
    embeddings, labels, keys = collected[config.modality], collected["labels"], collected["keys"]
    if labels is None:
        raise ValueError("the zero-shot loader yielded no labels to picture")
    similarities = embeddings @ weights.T  # (N, C)
    predictions = similarities.argmax(dim=1)
    matrix = confusion_matrix(labels, predictions, len(config.class_names))
    accuracy = float(np.trace(matrix) / max(matrix.sum(), 1))
    written = []
    try:
        written.append(draw_confusion(matrix, config.class_names, output.with_suffix(".confusion.png"),
                                      f"{config.name}: zero-shot {config.modality}, accuracy {accuracy:.1%} of {len(keys)}"))
    except ImportError:
        pass  # matplotlib is in the demo extra; the gallery needs only PIL
    classes = _sample(len(config.class_names), MAX_CLASSES_SHOWN, seed)
    best = similarities[:, classes].topk(min(TOP_K, len(keys)), dim=0)  # values, indices (K, classes)
    shown = {keys[i] for i in best.indices.flatten().tolist()}
    media = _Media(config.shards, shown)
    rows = []
    for column, label in enumerate(classes):
        cells = [_cell(media, keys[i], config.modality, float(best.values[rank, column]), int(labels[i]) == label,
                       f"true: {config.class_names[int(labels[i])]}")
                 for rank, i in enumerate(best.indices[:, column].tolist())]
        rows.append(f'<div class="row"><div class="query">“{html.escape(config.class_names[label])}”</div>{"".join(cells)}</div>')
    summary = (f"Top {TOP_K} {config.modality} inputs for each class name, out of {len(keys)}; green: of that class, "
               f"red: of the class named. Zero-shot accuracy {accuracy:.1%}.")
    path = output.with_suffix(".gallery.html")
    write_text_atomically(path, _page(f"{config.name}: what each class name retrieves", summary, rows))
    return [*written, path]


def _rows(collected: dict, modality: str) -> tuple[list[int], list[int]]:
    """For each embedding row of ``modality``: the index of its sample, and which of the sample's rows it is."""
    items = collected.get(f"{modality}_item")
    if items is None:
        count = len(collected["keys"])
        return list(range(count)), [0] * count
    samples, numbers, seen = items.tolist(), [], {}
    for sample in samples:
        numbers.append(seen.get(sample, 0))
        seen[sample] = numbers[-1] + 1
    return samples, numbers


def _retrieval_pictures(config: EvalSetConfig, collected: dict, output: Path, seed: int) -> list[Path]:
    queries, gallery, keys = collected[config.modality], collected[config.gallery_modality], collected["keys"]
    query_samples, query_numbers = _rows(collected, config.modality)
    gallery_samples, gallery_numbers = _rows(collected, config.gallery_modality)
    chosen = _sample(len(query_samples), SAMPLE_QUERIES, seed)
    best = (queries[chosen] @ gallery.T).topk(min(TOP_K, gallery.shape[0]), dim=1)  # (Q, K)
    shown = {keys[query_samples[i]] for i in chosen} | {keys[gallery_samples[i]] for i in best.indices.flatten().tolist()}
    media = _Media(config.shards, shown, config.caption_keys)
    rows, found = [], 0
    for row, query in enumerate(chosen):
        own = query_samples[query]
        cells = [_cell(media, keys[gallery_samples[i]], config.gallery_modality, float(score), gallery_samples[i] == own,
                       "the pair" if gallery_samples[i] == own else "", gallery_numbers[i])
                 for score, i in zip(best.values[row].tolist(), best.indices[row].tolist())]
        found += own in {gallery_samples[i] for i in best.indices[row].tolist()}
        rows.append(f'<div class="row"><div class="query">'
                    f'{_item_html(media, keys[own], config.modality, query_numbers[query])}'
                    f'<div class="key">{html.escape(keys[own])}</div></div>{"".join(cells)}</div>')
    summary = (f"{len(chosen)} of {len(query_samples)} {config.modality} queries drawn at random, each with its top {TOP_K} "
               f"{config.gallery_modality} items; green: its own pair ({found} of {len(chosen)} found in the top {TOP_K}).")
    path = output.with_suffix(".gallery.html")
    write_text_atomically(path, _page(f"{config.name}: {config.modality} -> {config.gallery_modality} retrieval", summary, rows))
    return [path]


def write_pictures(model, config: EvalSetConfig, loader: Iterable[dict], output: str | Path, *, seed: int = 0) -> list[Path]:
    """The pictures of one evaluation beside ``output`` (the results' JSON path); returns the files written.

    ``model`` is the :class:`~multimodal.apps.api.EmbeddingModel` evaluated and ``loader`` the
    evaluation's loader (iterated once more).
    """
    output = Path(output)
    if config.task == "zeroshot":
        return _zero_shot_pictures(model, config, collect(model, loader, [config.modality]), output, seed)
    modalities = [config.modality, config.gallery_modality]
    return _retrieval_pictures(config, collect(model, loader, modalities), output, seed)


__all__ = ["collect", "confusion_matrix", "draw_confusion", "write_pictures"]
