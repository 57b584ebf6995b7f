"""One data source as the loader is given it: shards, mixing weight, modalities, where its fields are.

The same type is a training source of a run's configuration (``data.train`` entries, each
key one of its fields), so what a run records in its config.json is exactly what its
loader reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from multimodal.data.modalities.base import Modality
from multimodal.data.modalities.registry import CAPTION_MODALITY, DEFINITIONS, MEDIA_MODALITIES, MODALITIES, fields_per_modality
from multimodal.data.pipeline.sample_fields import CAPTION_KEYS, SampleFields, member_keys, member_keys_field


def _levers_field(definition: Modality) -> tuple[type, type] | None:
    """``augment.<name>``: the modality's levers, all off unless set; none for a modality without levers."""
    kind = definition.augment_config
    return None if kind is None else (kind, kind)


@dataclass
@fields_per_modality("{name}", _levers_field)
class AugmentConfig:
    """Augmentation of one training source: one set of levers per modality that has them (all off by default).

    The fields are made by the registry (``image``: ImageAugmentConfig, ``audio``:
    AudioAugmentConfig; see :mod:`multimodal.data.preprocess.augment_config`). Levers of a
    modality the source does not read are ignored (training warns).
    """

    def __post_init__(self) -> None:
        for name in self.modalities:
            kind = DEFINITIONS[name].augment_config
            if not isinstance(self.levers_for(name), kind):
                raise TypeError(f"AugmentConfig.{name} must be a {kind.__name__}, got {type(self.levers_for(name)).__name__}")

    @property
    def modalities(self) -> list[str]:
        """The modalities with levers, in the registry's order."""
        return [name for name, definition in DEFINITIONS.items() if definition.augment_config is not None]

    def levers_for(self, modality: str) -> object | None:
        """The levers of ``modality`` (the field of its name: "image", "audio"); None for one without (text)."""
        return getattr(self, modality, None)

    def enabled_for(self, modality: str) -> bool:
        """Whether any lever of ``modality`` is on."""
        levers = self.levers_for(modality)
        return levers is not None and levers.enabled


@dataclass
@fields_per_modality("{name}_keys", member_keys_field, after="name")
class SourceSpec:
    """One data source: its shards, mixing weight, modalities and where each field is in a sample.

    Keys are ``;``-separated alternatives tried in order; an entry is a file
    extension in the sample (``"txt"``, ``"jpg"``) or ``"json:FIELD"`` for a field of
    its ``.json`` file (see :mod:`multimodal.data.pipeline.sample_fields`). A caption field may
    hold a string or a list of strings (training picks a non-empty one at random,
    evaluation the first non-empty one). The defaults read img2dataset shards
    (``jpg`` + ``txt`` + ``json``) and CLAP/WavCaps shards (``flac`` + ``json`` with
    ``text``) as they are. A sample lacking one of the source's modalities is skipped
    and counted (``missing_audio`` ...), so shards where only some samples carry a
    modality can serve a source of it.

    With a ``label_key``, training treats the samples of a batch that share a label as
    positives of each other in the loss instead of negatives (UniCL): data of few classes,
    where a batch holds many pairs showing the same class, needs it most. Without one,
    every other pair of the batch is a negative (CLIP). Evaluation reads the label to
    match zero-shot classes, galleries and linear probes.

    Args:
        shards: a shard spec (see :func:`multimodal.data.pipeline.shard_reader.expand_shards`). An
            evaluation set's may be a folder of class folders instead, read by the
            evaluation's class-folder loader, never by :func:`~multimodal.data.pipeline.loader.make_loader`.
        modalities: registered modalities (:data:`~multimodal.data.modalities.registry.MODALITIES`);
            training needs at least two (a contrastive pair), evaluation and embedding may read one.
        weight: relative share of batches drawn from this source.
        name: used in counts, logs and errors; default ``train{index}`` (see :func:`source_name`).
        <name>_keys / caption_keys: where each modality is found: one ``<name>_keys`` per
            modality read from members of its own (``image_keys``, ``audio_keys``), made by
            the registry (see :class:`~multimodal.data.pipeline.sample_fields.SampleFields`).
        label_key: optional class label (``"json:label"``, ``"cls"``), read as int into "label".
        all_captions: evaluation only (a training loader refuses it): every caption of a
            sample, not one, each a row of "text" with "text_item" saying whose it is
            (see :mod:`multimodal.data.pipeline.batches`): retrieval against all of an item's captions.
        augment: training augmentation of this source's images and audio (see
            :mod:`multimodal.data.preprocess.augment_config`); off by default, never applied when the
            loader evaluates.
    """

    shards: str | list[str]
    # By default the first media modality (image) with captions: what configs that leave it out have always meant.
    modalities: list[str] = field(default_factory=lambda: [MEDIA_MODALITIES[0], CAPTION_MODALITY])
    weight: float = 1.0
    name: str | None = None
    caption_keys: str = CAPTION_KEYS
    label_key: str | None = None
    all_captions: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        where = f"source {self.name or self.shards!r}"
        if not isinstance(self.augment, AugmentConfig):
            raise TypeError(f"{where}: augment must be an AugmentConfig, got {type(self.augment).__name__}")
        self.modalities = list(self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"{where}: unknown modalities {unknown}; use {MODALITIES}")
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ValueError(f"{where}: modalities must be distinct and not empty, got {self.modalities}")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"{where}: weight must be a positive number, got {self.weight}")
        try:
            self.sample_fields()
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None

    def sample_fields(self) -> SampleFields:
        """How this source's fields are read out of a raw sample."""
        return SampleFields(**member_keys(self), caption_keys=self.caption_keys, label_key=self.label_key)

    def describe_keys(self) -> str:
        """The modalities and keys, as an error message names them."""
        members = "".join(f"{key}={value!r}, " for key, value in member_keys(self).items())
        return f"modalities={self.modalities}, {members}caption_keys={self.caption_keys!r}, label_key={self.label_key!r}"


def source_name(spec: SourceSpec, index: int) -> str:
    """What source ``index`` of a loader goes by in counts, logs and errors: its name, else ``train{index}``.

    The one default for an unnamed source, in the loader and in a run alike. It is the name a run's
    unnamed training sources have always gone by (its logs and skip counts say ``source 'train0'``),
    so a run resumed from an old config names its sources as it did before the restart.
    """
    return spec.name or f"train{index}"


__all__ = ["AugmentConfig", "SourceSpec", "source_name"]
