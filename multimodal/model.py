"""The multimodal model: encoders keyed by modality, projections into one space, temperatures.

Shapes: B batch, D encoder width, E shared embedding dimension.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.data.modalities.base import Modality
from multimodal.data.modalities.registry import MODALITIES, fields_per_modality, get_modality
from multimodal.losses import contrastive_loss, pair_name
from multimodal.modality_parts import PARTS

LOSSES = ("infonce", "sigmoid")


def _tower_field(definition: Modality) -> tuple[Any, None]:
    """``model.<name>``: the modality's encoder config; None leaves the tower out."""
    return PARTS[definition.name].encoder_config | None, None


def _preprocess_field(definition: Modality) -> tuple[Any, None] | None:
    """``model.<name>_preprocess``: how its inputs are prepared; None: made to fit the encoder."""
    kind = definition.preprocess_config
    return None if kind is None else (kind | None, None)


@dataclass
@fields_per_modality("{name}", _tower_field, after="embed_dim")
@fields_per_modality("{name}_preprocess", _preprocess_field, after="embed_dim")
class ModelConfig:
    """A model: any subset of the registered modalities' encoders, their shared space, and how inputs are prepared.

    Each registered modality has two settings, made by the registry
    (:func:`~multimodal.data.modalities.registry.fields_per_modality`) after ``embed_dim``:
    ``<name>``, its encoder's config (``text``: TextConfig, ``image``: VisionConfig,
    ``audio``: AudioConfig; None: no such tower), and, for a modality with a preprocessing
    config, ``<name>_preprocess`` (``image_preprocess``, ``audio_preprocess``; None: the one
    that fits the encoder, see :meth:`~multimodal.data.modalities.base.Modality.preprocess_for`).

    ``init_logit_scale`` defaults by loss: ln(1/0.07) for InfoNCE (CLIP), ln(10) for the
    sigmoid loss (SigLIP, which also learns a bias initialised at ``init_logit_bias``).
    """

    embed_dim: int = 512
    share_trunk: bool = False
    projection_bias: bool = False
    loss: str = "infonce"
    init_logit_scale: float | None = None
    init_logit_bias: float = -10.0
    max_logit_scale: float = math.log(100.0)
    # Modality pairs trained by the loss, e.g. ["text_image", "text_audio"]; empty: every pair present.
    loss_pairs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {LOSSES}")
        if not self.modalities:
            raise ValueError(f"a model needs at least one encoder: set {', '.join(MODALITIES[:-1])} or {MODALITIES[-1]}")
        for name in self.modalities:
            definition = get_modality(name)
            if definition.preprocess_config is None:
                continue
            preprocess = getattr(self, f"{name}_preprocess")
            if preprocess is None:
                setattr(self, f"{name}_preprocess", definition.preprocess_for(self.tower(name)))
            else:
                definition.check_preprocess(preprocess, self.tower(name))
        valid_pairs = set(self.pairs)
        bad = [p for p in self.loss_pairs if p not in valid_pairs]
        if bad:
            raise ValueError(f"loss_pairs {bad} are not pairs of this model's modalities; valid: {sorted(valid_pairs)}")

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if self.tower(m) is not None]

    def tower(self, modality: str) -> Any:
        """The encoder config of ``modality`` (its ``model.<name>``), None when the model has no such tower."""
        return getattr(self, modality)

    @property
    def preprocess(self) -> dict[str, Any]:
        """Each encoded modality's preprocessing config (its ``<name>_preprocess``), by name: what loaders take."""
        configs = {m: getattr(self, f"{m}_preprocess", None) for m in self.modalities}
        return {m: config for m, config in configs.items() if config is not None}

    @property
    def pairs(self) -> list[str]:
        return [pair_name(a, b) for a, b in combinations(self.modalities, 2)]

    def logit_scale_init(self) -> float:
        if self.init_logit_scale is not None:
            return self.init_logit_scale
        return math.log(1 / 0.07) if self.loss == "infonce" else math.log(10.0)


def average_windows(window_embeddings: torch.Tensor, window_clip: torch.Tensor) -> torch.Tensor:
    """Mean embedding per sample (B, E) of windows (W, E), where ``window_clip`` (W,) gives each window's sample.

    The mean of unit rows is shorter than 1: callers normalise it again. Used by
    training and evaluation batches and by the inference API alike.
    """
    num_clips = int(window_clip.max()) + 1
    sums = window_embeddings.new_zeros(num_clips, window_embeddings.shape[1]).index_add_(0, window_clip, window_embeddings)
    counts = torch.bincount(window_clip, minlength=num_clips).clamp_min(1).to(sums.dtype)
    return sums / counts[:, None]


class MultimodalModel(nn.Module):
    """Encoders for any subset of {text, image, audio}, projected to one unit-norm space.

    ``encode(modality, inputs)`` gives (B, E) unit vectors; ``forward(batch)`` encodes
    every modality present in a batch dict; ``loss(model(batch))`` is the contrastive
    loss summed over the trained modality pairs present.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({m: PARTS[m].encoder(config.tower(m)) for m in config.modalities})
        if config.share_trunk:
            self._share_trunk()
        self.projections = nn.ModuleDict()
        for m, encoder in self.encoders.items():
            projection = nn.Linear(encoder.width, config.embed_dim, bias=config.projection_bias)
            nn.init.normal_(projection.weight, std=encoder.width**-0.5)
            if projection.bias is not None:
                nn.init.zeros_(projection.bias)
            self.projections[m] = projection
        scale = config.logit_scale_init()
        self.logit_scales = nn.ParameterDict({p: nn.Parameter(torch.tensor(scale)) for p in config.pairs})
        self.logit_biases = (
            nn.ParameterDict({p: nn.Parameter(torch.tensor(config.init_logit_bias)) for p in config.pairs})
            if config.loss == "sigmoid"
            else None
        )

    def _share_trunk(self) -> None:
        """One block stack's weights for every modality; stems, positions, norms and pooling stay per modality."""
        modalities = list(self.encoders)
        first = self.encoders[modalities[0]].trunk.transformer
        for m in modalities[1:]:
            other = self.config.tower(m).transformer
            if other != first.config:
                raise ValueError(
                    f"share_trunk needs identical transformer configs, but {modalities[0]} has {first.config} "
                    f"and {m} has {other}; set the same model.<modality>.transformer settings for every tower"
                )
            self.encoders[m].trunk.transformer = first

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encode(
        self,
        modality: str,
        inputs: torch.Tensor | dict,
        padding_mask: torch.Tensor | None = None,
        *,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Embeds one modality's inputs -> (B, E), unit-norm unless ``normalize=False``.

        ``inputs`` is the modality's tensor (text ids (B, L), images (B, 3, H, W), log-mel
        frames (B, T, F)) or a batch dict holding it under the modality's name (and its
        optional ``{modality}_padding_mask``), which is the protocol evaluation uses.
        A batch dict may cover long clips by several windows: then ``{modality}`` has one
        row per window, ``{modality}_window_clip`` (W,) names each window's sample, and
        the result is the normalised mean of each sample's window embeddings.
        """
        if modality not in self.encoders:
            raise ValueError(f"unknown modality {modality!r}; this model encodes {self.modalities}")
        window_clip = None
        if isinstance(inputs, dict):
            if modality not in inputs:
                raise ValueError(f"batch has no {modality!r} entry; it holds {sorted(inputs)}")
            padding_mask = inputs.get(f"{modality}_padding_mask")
            window_clip = inputs.get(f"{modality}_window_clip")
            inputs = inputs[modality]
        features = self.projections[modality](self.encoders[modality](inputs, padding_mask))
        if window_clip is not None:
            features = average_windows(F.normalize(features, dim=-1), window_clip)
        return F.normalize(features, dim=-1) if normalize else features

    def trained_pairs(self, modalities) -> list[str]:
        """The configured loss pairs whose two modalities are both in ``modalities``."""
        pairs = self.config.loss_pairs or self.config.pairs
        return [p for p in pairs if all(m in modalities for m in p.split("_"))]

    def forward(self, batch: dict) -> dict:
        """Everything the loss needs for a batch dict.

        Returns ``{"features": {modality: (B, E) unit vectors}, "log_scales": {pair: ()},
        "biases": {pair: ()}}`` for the modalities of this model present in ``batch`` and
        the trained pairs among them, and ``"groups"``: the batch's ``"label"`` (B,) when it
        has one (a training source with a ``label_key``): rows of one label are positives
        of each other in the loss. The temperatures pass through ``forward`` (as copies in
        the graph) so that distributed wrappers see them as used parameters.
        """
        features = {m: self.encode(m, batch) for m in self.modalities if m in batch}
        pairs = self.trained_pairs(features)
        log_scales = {p: self.logit_scales[p].clone() for p in pairs}
        biases = {p: self.logit_biases[p].clone() for p in pairs} if self.logit_biases is not None else {}
        outputs = {"features": features, "log_scales": log_scales, "biases": biases}
        if "label" in batch:
            outputs["groups"] = batch["label"]
        return outputs

    def loss(self, outputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Contrastive loss summed over the trained pairs in ``outputs`` (from ``forward``); also each pair's loss."""
        features = outputs["features"]
        pairs = self.trained_pairs(features)
        if not pairs:
            raise ValueError(
                f"no trained modality pair is present: features hold {sorted(features)}, "
                f"pairs are {self.config.loss_pairs or self.config.pairs}"
            )
        return contrastive_loss(
            features,
            log_scales=outputs["log_scales"],
            biases=outputs["biases"] or None,
            kind=self.config.loss,
            pairs=[tuple(p.split("_")) for p in pairs],
            groups=outputs.get("groups"),
        )

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        """Keeps every temperature at or below ``max_logit_scale`` (CLIP clamps at ln 100); call after each step."""
        for scale in self.logit_scales.values():
            scale.clamp_(0.0, self.config.max_logit_scale)

    def num_parameters(self) -> int:
        """Trainable parameters, shared ones counted once."""
        return sum(p.numel() for p in self.parameters())
