"""SpecAugment set the old way, in a checkpoint or a run's config, moved to the one setting: the source's lever.

Runs used to mask training clips from two settings: ``model.audio_preprocess.freq_mask`` /
``.time_mask`` (every clip, right after its filterbank) and the lever
``augment.audio.spec_augment`` of each source. The lever is now the one setting
(:func:`multimodal.data.preprocess.preprocess_config.take_retired_masks` takes the old keys
out of every model config read). Where the old widths were 0 they meant nothing and are
dropped. Where they were on, a run that continues (``--resume``), starts again from its own
config.json (``--config``) or fine-tunes such a checkpoint (``--init_from``) trains with
the lever at p 1 on every source of that modality, with those widths:
:func:`move_masks_to_levers`, which says so in one start-up line. A new configuration
that sets the old keys is refused, naming the lever (:func:`refuse_retired_masks`).

The masks keep their widths on every clip, not their random draws: the old masks drew
no coin and came before the equalizer lever, the lever draws its coin (p) first and
comes after the equalizer, and a source whose own lever was on drew two masks where the
lever draws one (it keeps the wider widths of the two). No lever setting reproduces
those draws without changing what the lever means for every run that sets it.
"""
from __future__ import annotations

import logging
from typing import Any

from multimodal.data.pipeline.source_spec import AugmentConfig
from multimodal.data.preprocess.augment_config import SpecAugmentLever
from multimodal.data.preprocess.preprocess_config import (
    PREPROCESS_SUFFIX,
    RETIRED_MASK_KEYS,
    retired_masks_error,
    take_retired_masks,
)

logger = logging.getLogger("multimodal.training.trainer")


def masks_as_lever(widths: dict[str, int], lever: SpecAugmentLever) -> SpecAugmentLever:
    """The lever that masks every clip with the retired ``widths``: p 1, and each width the larger of the
    retired one and the lever's own where the lever was on (p > 0)."""
    own = {key: getattr(lever, key) if lever.p > 0 else 0 for key in RETIRED_MASK_KEYS}
    return SpecAugmentLever(p=1.0, **{key: max(widths.get(key, 0), own[key]) for key in RETIRED_MASK_KEYS})


def move_masks_to_levers(config: Any, masks: dict[str, dict[str, int]], origin: str) -> None:
    """Sets the retired ``masks`` (by modality, from ``take_retired_masks``) as the spec_augment lever of
    every training source of their modality in ``config`` (a ``TrainConfig``), in place; one line says so.

    The sources are ``config.data.train``'s that read the modality, or the demo's levers
    (``data.demo_augment``) when the run trains on the demo. ``origin``: where the masks
    were read, for the start-up line.
    """
    for modality, widths in masks.items():
        if config.data.train:
            augments = {f"data.train[{index}]": source.augment for index, source in enumerate(config.data.train)
                        if modality in source.modalities}
        else:
            if config.data.demo_augment is None:
                config.data.demo_augment = AugmentConfig()
            augments = {"data.demo_augment": config.data.demo_augment}
        moved = []
        for name, augment in augments.items():
            levers = augment.levers_for(modality)
            levers.spec_augment = masks_as_lever(widths, levers.spec_augment)
            moved.append(f"{name} (freq_mask {levers.spec_augment.freq_mask}, time_mask {levers.spec_augment.time_mask})")
        if moved:
            given = ", ".join(f"model.{modality}{PREPROCESS_SUFFIX}.{key} {width}" for key, width in widths.items())
            logger.warning(
                f"{origin}: {given} (SpecAugment, no longer a preprocessing setting) now masks every clip as "
                f"augment.{modality}.spec_augment with p 1.0 on {', '.join(moved)}: the same widths, not the "
                f"same random masks"
            )


def refuse_retired_masks(model_tree: Any, where: str) -> None:
    """Drops retired mask keys set to 0 from a new configuration's model tree; raises ValueError for one set on."""
    for modality, widths in take_retired_masks(model_tree).items():
        raise retired_masks_error(modality, widths, where)


def refuse_retired_mask_overrides(overrides: dict[str, str]) -> dict[str, str]:
    """``overrides`` (dotted keys as typed) without ``model.<m>_preprocess.freq_mask``/``time_mask`` set to 0;
    raises ValueError for one set to anything else."""
    kept = {}
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "model" and parts[1].endswith(PREPROCESS_SUFFIX) and parts[2] in RETIRED_MASK_KEYS:
            if _is_zero(value):  # asks for no mask: nothing to move
                continue
            raise retired_masks_error(parts[1].removesuffix(PREPROCESS_SUFFIX), {parts[2]: value}, f"--{key}")
        kept[key] = value
    return kept


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False


__all__ = ["masks_as_lever", "move_masks_to_levers", "refuse_retired_mask_overrides", "refuse_retired_masks"]
