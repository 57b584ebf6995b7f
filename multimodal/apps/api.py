"""The public inference API: embeddings and zero-shot classification from a checkpoint directory.

Shapes: N inputs, W audio windows, C classes, E embedding width.

::

    from multimodal.apps.api import ZeroShotClassifier, load_embedding_model

    model = load_embedding_model("runs/demo/final")                   # an EmbeddingModel
    vectors = model.embed_images(["cat.jpg", pil_image])  # float32 (N, E), unit rows
    classifier = ZeroShotClassifier("runs/demo/final", ["cat", "dog"])
    classifier.classify(["cat.jpg"], top_k=2)           # [[("cat", 0.93), ("dog", 0.07)]]

Inputs go through the same preprocessing functions as training and evaluation
(``multimodal.data.preprocess.image_transforms`` / ``multimodal.data.preprocess.audio_features``, parameters from the checkpoint's config): an image
is resized on its shortest side and centre-cropped; a clip is resampled to the
model's rate and cut into windows of the model's length (``eval_audio_windows``),
whose embeddings are averaged, so any clip length is covered deterministically. A
clip shorter than one spectrogram patch is padded with silence up to it, and a clip
with no samples is refused (``multimodal.data.preprocess.audio_features.fit_clip_length``): the rule of
every command, so a file gets the same answer from embed, classify, eval, search and serve.

An item is prepared on its own and encoded in batches whose padding is masked, so
an input gets the same embedding alone or among others (to float rounding).

Precision: ``"auto"`` runs bf16 weights on CPUs with native bf16 arithmetic
(AVX512-BF16 or AMX) and on CUDA devices that support bf16, fp32 elsewhere; ``"fp32"``
and ``"bf16"`` force one. Embeddings are always returned in float32, normalised in
float32.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from multimodal.data.preprocess.audio_features import collate_audio
from multimodal.data.tokenization.clip_tokenizer import ClipTokenizer
from multimodal.data.modalities.audio_modality import AUDIO
from multimodal.data.modalities.image_modality import IMAGE
from multimodal.data.modalities.registry import CAPTION_MODALITY, MODALITIES, get_modality
from multimodal.data.modalities.text_modality import TEXT
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.eval import build_zero_shot_weights, zero_shot_probabilities
from multimodal.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    checkpoint_id,
    check_tokenizer_fits,
    load_model,
    load_tokenizer,
    read_config,
)
from multimodal.apps.evaluation import EvalSetConfig, recorded_eval_sets, zero_shot_templates
from multimodal.losses import pair_name
from multimodal.modality_parts import CLASSIFIED_MODALITIES
from multimodal.model import ModelConfig, MultimodalModel, average_windows
from multimodal.precision import PRECISIONS, cpu_has_native_bf16, resolve_dtype

DEFAULT_BATCH_SIZE = 32


# Inputs ----------------------------------------------------------------------------------


def as_items(modality: str, inputs: Any) -> list:
    """One input or a collection of inputs of ``modality`` -> a list of single items.

    Single items: a path (str or Path), encoded bytes, a PIL image, an image tensor or
    array (3-D or 2-D), a caption (str), a ``(waveform, sample_rate)`` tuple, a
    waveform tensor or array (1-D or (channels, samples)). Collections: a list or
    tuple of items; a 4-D image tensor or array (N, 3, H, W) / (N, H, W, 3). What is
    one item is the modality's to say (``multimodal.data.modalities.base.Modality.is_single_input``).
    """
    definition = get_modality(modality)
    if definition.is_single_input(inputs):
        return [inputs]
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        batch = definition.split_batch(inputs)
        return batch if batch is not None else [inputs]
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    try:
        return list(inputs)
    except TypeError:
        return [inputs]


def audio_min_frames(config: ModelConfig) -> int:
    """The fewest log-mel frames the audio encoder takes: one patch along time.

    Shorter clips are padded with silence up to it (``multimodal.data.preprocess.audio_features.fit_clip_length``)
    rather than refused: batched with longer clips they would otherwise be padded
    and masked to nothing, so a clip's embedding would depend on its batch. Read from
    ``audio_preprocess.min_frames`` (which ``ModelConfig`` holds equal to the encoder's
    patch length), the value the shard loader pads to as well.
    """
    if config.audio is None or config.audio_preprocess is None:
        raise ValueError("this model has no audio encoder")
    return config.audio_preprocess.min_frames


def prepare_input(modality: str, item: Any, config: ModelConfig, *, sample_rate: int | None = None) -> Any:
    """One raw input -> its model-ready form, with the preprocessing ``config`` describes.

    * image (a path, bytes, PIL image, uint8 or [0, 1] float tensor/array) -> float32
      (3, S, S), resized on its shortest side, centre-cropped and normalised; an SVG
      drawing (path or bytes) is rasterised first, as the shard writer rasterises it;
    * audio (a path, bytes, a ``(waveform, sample_rate)`` tuple, or a waveform tensor or
      array with ``sample_rate``) -> its evaluation windows [(T_i, F), ...] of
      normalised log-mel frames (see ``multimodal.data.preprocess.audio_features.eval_audio_windows``),
      at least :func:`audio_min_frames` long (a shorter clip padded with silence);
    * text (a string) -> the string (tokenised in batches when encoded).

    A plain function of the config, so DataLoader workers can run it. Raises
    ValueError / TypeError / OSError for inputs that cannot be read.
    """
    definition = get_modality(modality)
    preprocess = config.preprocess.get(modality)
    if definition.reads_files and preprocess is None:
        raise ValueError(f"this model has no {modality} encoder")
    return definition.prepare(item, preprocess, sample_rate=sample_rate)


# The embedding model ---------------------------------------------------------------------


class EmbeddingModel:
    """A checkpoint's model with its tokenizer and preprocessing: inputs in, unit-norm float32 embeddings out.

    Build it with :func:`load_embedding_model`. Attributes: ``model``
    (the :class:`~multimodal.model.MultimodalModel`, in eval mode, weights in
    ``dtype``: a model passed in is cast in place), ``tokenizer``, ``device``, ``dtype``,
    ``batch_size``, ``logit_scales`` (pair -> log scale, read in float32 before the cast),
    ``eval_sets`` (the evaluation sets the checkpoint's training ran, whose templates
    zero-shot classification uses by default; empty for a model built otherwise).

    It is also an ``eval.Encoder``: ``encode(modality, batch)`` accepts a batch dict as
    the data pipeline makes it (averaging audio windows by "audio_window_clip"), so
    the evaluation loops run on it in its precision.
    """

    def __init__(
        self,
        model: MultimodalModel,
        tokenizer: Tokenizer | ClipTokenizer | None = None,
        *,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        eval_sets: Sequence[EvalSetConfig] = (),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.dtype = resolve_dtype(precision, self.device)
        # Temperatures read before any cast: in bf16 exp(4.6) would be off by up to 2%.
        self.logit_scales = {pair: float(scale.detach().float()) for pair, scale in model.logit_scales.items()}
        self.model = model.to(device=self.device, dtype=self.dtype).eval()  # cast in place
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_sets = list(eval_sets)
        self.checkpoint: Path | None = None  # the directory it was loaded from, when it was
        self._checkpoint_id: str | None = None

    # What the model is

    @property
    def config(self):
        """The model's :class:`~multimodal.model.ModelConfig`."""
        return self.model.config

    @property
    def modalities(self) -> list[str]:
        return self.model.modalities

    @property
    def checkpoint_id(self) -> str | None:
        """The id of the checkpoint it was loaded from (``multimodal.checkpoint.checkpoint_id``); None for a model built in memory."""
        if self._checkpoint_id is None and self.checkpoint is not None:
            self._checkpoint_id = checkpoint_id(self.checkpoint)  # hashed on first use: it reads the weights once
        return self._checkpoint_id

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    def _require(self, modality: str) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        if modality not in self.model.modalities:
            raise ValueError(f"this model has no {modality} encoder; it encodes {self.model.modalities}")
        if get_modality(modality).batching == "captions" and self.tokenizer is None:
            raise ValueError("this model has no tokenizer (tokenizer.json is missing from the checkpoint): it cannot embed text")

    # Preprocessing, one item at a time

    def prepare(self, modality: str, item: Any, *, sample_rate: int | None = None) -> Any:
        """One raw item -> what :meth:`encode_prepared` takes (see :func:`prepare_input`)."""
        self._require(modality)
        return prepare_input(modality, item, self.model.config, sample_rate=sample_rate)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ids int64 (N, L) and padding mask bool (N, L), L the model's context length."""
        self._require(CAPTION_MODALITY)
        return self.tokenizer(list(texts), self.model.config.tower(CAPTION_MODALITY).context_length)

    # Encoding

    @torch.no_grad()
    def encode(
        self, modality: str, inputs: torch.Tensor | dict | list, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Model-ready inputs -> unit-norm float32 (B, E), run in this model's precision on its device.

        ``inputs``: the modality's tensor (text ids (B, L), images (B, 3, S, S), log-mel
        frames (B, T, F)); a list of prepared items (see :meth:`prepare`); or a batch
        dict holding either under the modality's name, with its optional padding mask
        and, for audio windows, "audio_window_clip" (W,) (their embeddings are averaged
        per clip).
        """
        self._require(modality)
        window_clip = None
        if isinstance(inputs, dict):
            if modality not in inputs:
                raise ValueError(f"batch has no {modality!r} entry; it holds {sorted(inputs)}")
            padding_mask = inputs.get(f"{modality}_padding_mask")
            window_clip = inputs.get(f"{modality}_window_clip")  # audio windows: the clip of each row
            inputs = inputs[modality]
        if isinstance(inputs, list):
            return self.encode_prepared(modality, inputs)
        embeddings = self._encode_tensor(modality, inputs, padding_mask)
        if window_clip is not None:
            embeddings = F.normalize(average_windows(embeddings, window_clip.to(embeddings.device)), dim=-1)
        return embeddings

    def _encode_tensor(self, modality: str, inputs: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        inputs = inputs.to(self.device)
        if inputs.is_floating_point():
            inputs = inputs.to(self.dtype)
        if padding_mask is not None:
            padding_mask = padding_mask.to(self.device)
        features = self.model.encode(modality, inputs, padding_mask, normalize=False)
        return F.normalize(features.float(), dim=-1)  # normalised in float32, whatever the weights

    @torch.no_grad()
    def encode_prepared(self, modality: str, items: list) -> torch.Tensor:
        """Prepared items (from :meth:`prepare`) -> float32 (N, E), in batches of ``batch_size``."""
        self._require(modality)
        if not items:
            return torch.empty(0, self.embed_dim)
        batching = get_modality(modality).batching  # how the modality's prepared items batch
        if batching == "windows":
            return self._encode_windows(modality, items)
        chunks = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            if batching == "captions":
                ids, padding_mask = self.tokenize(chunk)  # (B, L)
                chunks.append(self._encode_tensor(modality, ids, padding_mask))
            else:
                chunks.append(self._encode_tensor(modality, torch.stack(chunk), None))  # (B, ...) e.g. (B, 3, S, S)
        return torch.cat(chunks)

    def _encode_windows(self, modality: str, clips: list[list[torch.Tensor]]) -> torch.Tensor:
        windows = [window for clip in clips for window in clip]
        owners = torch.tensor([row for row, clip in enumerate(clips) for _ in clip], dtype=torch.int64)  # (W,)
        if not windows:
            raise ValueError(f"an {modality} clip gave no window")
        # Longest first, so each batch holds windows of similar length and little padding;
        # padding is masked, so the grouping changes no embedding beyond float rounding.
        order = sorted(range(len(windows)), key=lambda i: -windows[i].shape[0])
        embeddings = torch.empty(len(windows), self.embed_dim)  # (W, E)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            audio, padding_mask = collate_audio([windows[i] for i in rows])  # (B, T, F), (B, T)
            mask = padding_mask if bool(padding_mask.any()) else None
            embeddings[rows] = self._encode_tensor(modality, audio, mask).cpu()
        return F.normalize(average_windows(embeddings, owners), dim=-1).to(self.device)  # (N, E)

    # Raw inputs -> embeddings

    def embed(self, modality: str, inputs: Any, *, sample_rate: int | None = None) -> torch.Tensor:
        """Raw inputs of one modality -> float32 (N, E) unit rows on the CPU, in input order.

        See :meth:`embed_images`, :meth:`embed_audio`, :meth:`embed_texts` for the inputs
        accepted. An input that cannot be read raises ValueError naming its position.
        """
        self._require(modality)
        items = as_items(modality, inputs)
        prepared = []
        for index, item in enumerate(items):
            try:
                prepared.append(self.prepare(modality, item, sample_rate=sample_rate))
            except (ValueError, TypeError, OSError) as error:
                raise type(error)(f"{modality} input {index} ({_describe(item)}): {error}") from error
        return self.encode_prepared(modality, prepared).cpu()

    def embed_images(self, images: Any) -> torch.Tensor:
        """Images (paths, bytes, PIL images, uint8 or [0, 1] float tensors/arrays, or an (N, 3, H, W) batch) -> (N, E)."""
        return self.embed(IMAGE.name, images)

    def embed_audio(self, clips: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Clips (paths, bytes, (waveform, sample_rate) tuples, or waveforms with ``sample_rate``) -> (N, E).

        A clip longer than the model's window is covered by windows whose embeddings are averaged.
        """
        return self.embed(AUDIO.name, clips, sample_rate=sample_rate)

    def embed_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Captions -> (N, E)."""
        return self.embed(TEXT.name, texts)

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel(modalities={self.modalities}, embed_dim={self.embed_dim}, "
            f"device={self.device}, dtype={self.dtype})"
        )


def _describe(item: Any) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return f"{type(item).__name__} {tuple(item.shape)}"
    return type(item).__name__


def load_embedding_model(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> EmbeddingModel:
    """A checkpoint directory (config.json, model.safetensors, tokenizer.json) -> :class:`EmbeddingModel`.

    ``multimodal.checkpoint.load_model`` is the low-level loader that returns the bare
    :class:`~multimodal.model.MultimodalModel` in float32.
    """
    model = load_model(path)
    tokenizer = load_tokenizer(path)
    check_tokenizer_fits(model.config, tokenizer, str(path))
    try:
        eval_sets = recorded_eval_sets(read_config(path))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: {error}") from error
    embedding_model = EmbeddingModel(model, tokenizer, device=device, precision=precision, batch_size=batch_size,
                                     eval_sets=eval_sets)
    embedding_model.checkpoint = Path(path)
    return embedding_model


# Zero-shot classification -----------------------------------------------------------------


class ZeroShotClassifier:
    """Classifies images or audio among labels described in words, with no training.

    Each label becomes prompts (``templates`` filled with the label; default: those the
    checkpoint's training evaluated this modality with, recorded in its config.json,
    else the built-in image or audio templates; ``templates_origin`` says which), whose
    text embeddings are averaged into one
    unit row per label, computed once at construction. An input's probabilities are
    the softmax of ``exp(logit_scale) * cosine similarity``, with the model's learned
    text-image or text-audio logit scale.

    Args:
        model: a checkpoint directory or an :class:`EmbeddingModel`.
        labels: the class names, in the order of the probability columns.
        templates: format strings with one ``{}`` (or ``{label}``) where the label goes.
        modality: "image" or "audio"; may be left out when the model encodes only one of them.
        device, precision, batch_size: for loading from a directory (see :class:`EmbeddingModel`).
    """

    def __init__(
        self,
        model: EmbeddingModel | str | os.PathLike,
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        *,
        modality: str | None = None,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if not isinstance(model, EmbeddingModel):
            model = load_embedding_model(model, device=device, precision=precision, batch_size=batch_size)
        self.embedding_model = model
        if isinstance(labels, str) or not labels or not all(isinstance(label, str) and label.strip() for label in labels):
            raise ValueError(f"labels must be a non-empty list of non-empty strings, got {labels!r}")
        if len(set(labels)) != len(labels):
            duplicates = sorted({label for label in labels if list(labels).count(label) > 1})
            raise ValueError(f"labels must be distinct; repeated: {duplicates}")
        self.labels = list(labels)
        self.modality = self._choose_modality(modality)
        model._require(CAPTION_MODALITY)
        self.templates, self.templates_origin = zero_shot_templates(self.modality, templates, model.eval_sets)
        pair = pair_name(CAPTION_MODALITY, self.modality)
        self.logit_scale = float(np.exp(model.logit_scales[pair]))
        self.class_weights = build_zero_shot_weights(
            lambda prompts: model.encode(CAPTION_MODALITY, *model.tokenize(prompts)),
            self.labels,
            self.templates,
            batch_size=model.batch_size,
        ).cpu()  # (C, E), cached for every call

    def _choose_modality(self, modality: str | None) -> str:
        available = [m for m in CLASSIFIED_MODALITIES if m in self.embedding_model.modalities]
        if CAPTION_MODALITY not in self.embedding_model.modalities:
            raise ValueError(f"zero-shot classification needs a {CAPTION_MODALITY} encoder; this model has none")
        if modality is None:
            if len(available) != 1:
                raise ValueError(f"this model encodes {available}: say which with modality='image' or 'audio'")
            return available[0]
        if modality not in available:
            raise ValueError(f"modality must be one this model classifies, {available}; got {modality!r}")
        return modality

    def predict_proba(self, inputs: Any, *, sample_rate: int | None = None) -> torch.Tensor:
        """Probabilities float32 (N, C), columns in ``labels`` order, rows in input order."""
        embeddings = self.embedding_model.embed(self.modality, inputs, sample_rate=sample_rate)  # (N, E)
        return zero_shot_probabilities(embeddings, self.class_weights, self.logit_scale)

    def classify(
        self, inputs: Any, top_k: int = 5, *, sample_rate: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """For each input, its ``top_k`` most probable labels as ``(label, probability)``, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        probabilities = self.predict_proba(inputs, sample_rate=sample_rate)  # (N, C)
        return self.top_labels(probabilities, top_k)

    def top_labels(self, probabilities: torch.Tensor, top_k: int) -> list[list[tuple[str, float]]]:
        """Rows of probabilities (N, C) -> the ``top_k`` ``(label, probability)`` pairs of each, best first."""
        values, indices = probabilities.topk(min(top_k, len(self.labels)), dim=-1)  # (N, k)
        return [
            [(self.labels[i], float(v)) for v, i in zip(row_values.tolist(), row_indices.tolist())]
            for row_values, row_indices in zip(values, indices)
        ]

    def __repr__(self) -> str:
        return (
            f"ZeroShotClassifier(modality={self.modality!r}, labels={len(self.labels)}, "
            f"templates={len(self.templates)}, logit_scale={self.logit_scale:.3g})"
        )


__all__ = [
    "EmbeddingModel",
    "PRECISIONS",
    "ZeroShotClassifier",
    "as_items",
    "audio_min_frames",
    "cpu_has_native_bf16",
    "load_embedding_model",
    "load_tokenizer",
    "prepare_input",
    "resolve_dtype",
]
