"""Each modality's parts joined: its data definition, its encoder and its built-in prompt templates.

The leaves cannot see each other, so the data side of a modality
(:mod:`multimodal.data.modalities.registry`: files, decoding, batching), its encoder
(:mod:`multimodal.encoders`) and its zero-shot templates (:mod:`multimodal.eval`) meet here.
The model builds its towers from :data:`PARTS`, zero-shot classification takes its default
templates from it, and commands ask it which modalities can be classified or are files.

A new modality: its definition in ``data/`` (registered in ``multimodal.data.modalities.registry``),
its encoder and config in ``encoders/``, and one entry here. The model config then has its
``model.<name>`` (the encoder config named here) and ``model.<name>_preprocess`` (the
definition's preprocessing config) with no edit elsewhere.

What the model and the trainer ask of an encoder: built as ``encoder(config)``, it maps the
modality's batch entry (and an optional padding mask) to (B, D) features, says D as
``.width``, and keeps its blocks as ``.trunk`` (an :class:`multimodal.encoders.encoder.EncoderTrunk`)
whose settings are its config's ``transformer``: what shared trunks, gradient
checkpointing, layer-wise decay and partial locking reach for.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from multimodal.data.modalities.registry import MODALITIES, get_modality
from multimodal.data.modalities.base import Modality
from multimodal.encoders import AudioConfig, AudioEncoder, TextConfig, TextEncoder, VisionConfig, VisionEncoder
from multimodal.eval import AUDIO_TEMPLATES, IMAGE_TEMPLATES


@dataclass(frozen=True)
class ModalityParts:
    """What the model and the commands need of one modality.

    ``encoder_config``: the dataclass that configures its encoder (a model's ``model.<name>``).
    ``templates``: the built-in prompts its zero-shot classifiers are made with; None for
    the modality prompts are written in (text), which is not classified.
    """

    data: Modality
    encoder: type[nn.Module]
    encoder_config: type
    templates: tuple[str, ...] | None = None


PARTS: dict[str, ModalityParts] = {
    "text": ModalityParts(get_modality("text"), TextEncoder, TextConfig),
    "image": ModalityParts(get_modality("image"), VisionEncoder, VisionConfig, IMAGE_TEMPLATES),
    "audio": ModalityParts(get_modality("audio"), AudioEncoder, AudioConfig, AUDIO_TEMPLATES),
}
assert tuple(PARTS) == MODALITIES, "every registered modality has its parts, in the registry's order"

# What zero-shot classification and ``--modality`` options take: modalities with templates.
CLASSIFIED_MODALITIES = tuple(name for name, parts in PARTS.items() if parts.templates is not None)


def parts_of(name: str) -> ModalityParts:
    """The parts of ``name``; ValueError naming the known modalities for any other."""
    get_modality(name)  # the registry's error for an unknown name
    return PARTS[name]


__all__ = ["CLASSIFIED_MODALITIES", "ModalityParts", "PARTS", "parts_of"]
