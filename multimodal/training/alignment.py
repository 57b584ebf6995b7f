"""Which towers of a checkpoint were trained against which, and the warning when a run undoes it.

A tower is aligned to the towers it was trained against: in the demo's checkpoint, audio
to text (audio-text pairs) and image to text, never audio to image directly. A run that
starts from the checkpoint and moves the text tower without training audio (an
image-text fine-tune) leaves audio aligned to a text tower that no longer exists: its
zero-shot and retrieval drift with no loss to show it. :func:`drift_warnings` names
such towers at start-up, with the three ways to keep them: lock the tower they are
aligned to, add a source that trains them, or bind them again afterwards.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

from multimodal.checkpoint import CONFIG_FILE, read_config
from multimodal.data.modalities.registry import CAPTION_MODALITY, MODALITIES
from multimodal.losses import pair_name
from multimodal.model import ModelConfig

_MAX_ANCESTORS = 16  # init_from chains followed back; a longer one (or a loop) counts every pair as trained


def source_pairs(modalities: Iterable[str], loss_pairs: Iterable[str] = ()) -> set[str]:
    """The pairs a source of ``modalities`` trains: every pair of them, or those of ``loss_pairs`` where given."""
    pairs = {pair_name(a, b) for a, b in combinations(list(modalities), 2)}
    allowed = set(loss_pairs)
    return pairs & allowed if allowed else pairs


def trained_pairs(checkpoint_dir: str | Path) -> set[str]:
    """The modality pairs ``checkpoint_dir`` was trained on, its ``init_from`` ancestors' included.

    Read from the training configuration it records: each source's pairs (the model's
    ``loss_pairs`` where set), or the demo's (each media tower with text) where it
    trained on the demo. A checkpoint that records no training (a converted one), or
    whose ancestor is gone, counts every pair of its towers: nothing says otherwise.
    """
    pairs: set[str] = set()
    directory = Path(checkpoint_dir)
    for _ in range(_MAX_ANCESTORS):
        config = read_config(directory)
        towers = [m for m in MODALITIES if isinstance(config["model"].get(m), dict)]
        train = config.get("train")
        if not isinstance(train, dict):
            return pairs | source_pairs(towers)
        # The demo (no sources configured) trains each media tower with text.
        sources = [source["modalities"] for source in train.get("data", {}).get("train") or []] or [
            [media, CAPTION_MODALITY] for media in towers if media != CAPTION_MODALITY and CAPTION_MODALITY in towers]
        for modalities in sources:
            pairs |= source_pairs([m for m in modalities if m in towers], config["model"].get("loss_pairs") or [])
        if train.get("init_from") is None:
            return pairs
        directory = Path(train["init_from"])
        if not (directory / CONFIG_FILE).is_file():
            return pairs | source_pairs(towers)
    return pairs | source_pairs(towers)


def drift_warnings(checkpoint_dir: str | Path, run_model: ModelConfig, drawn: Iterable[Iterable[str]],
                   locked: Iterable[str]) -> list[str]:
    """One warning per checkpoint tower this run does not train while it moves a tower it is aligned to.

    ``drawn``: the modalities of each training source the run draws from; ``locked``: the
    towers that do not train at all. A tower moves when a drawn source trains one of its
    pairs and it is not locked. Each warning names the fixes: lock the tower it is aligned
    to, add a source that trains it, or bind it again afterwards (ImageBind's recipe).
    """
    checkpoint = read_config(checkpoint_dir)["model"]
    loaded = [m for m in run_model.modalities if isinstance(checkpoint.get(m), dict)]
    trained: set[str] = set()
    for modalities in drawn:
        for pair in source_pairs(modalities, run_model.loss_pairs):
            trained.update(pair.split("_"))
    moving = trained - set(locked)
    aligned = trained_pairs(checkpoint_dir)
    warnings = []
    for tower in loaded:
        if tower in trained:
            continue
        partners = [m for m in loaded if m in moving and pair_name(tower, m) in aligned]
        if partners:
            warnings.append(_drift_warning(tower, partners, run_model.modalities, checkpoint_dir))
    return warnings


def _drift_warning(tower: str, partners: list[str], towers: list[str], checkpoint_dir) -> str:
    """The warning for ``tower``, aligned to the moving ``partners``, with the fixes spelled as options."""
    moved = " and ".join(partners)
    others = [m for m in towers if m != tower]
    return (
        f"warning: this run moves the {moved} tower{'s' if len(partners) > 1 else ''} of init_from {checkpoint_dir}, "
        f"to which its {tower} tower is aligned, and trains no {tower}: {tower}'s zero-shot and retrieval will "
        f"drift (docs/pretrained.md). To keep them, lock {moved} (--freeze '{json.dumps(partners)}'), add a source "
        f"of {tower}-{partners[0]} pairs to data.train, or bind {tower} again afterwards (--init_from this run's "
        f"checkpoint --freeze '{json.dumps(others)}' on {tower}-{partners[0]} pairs)"
    )
