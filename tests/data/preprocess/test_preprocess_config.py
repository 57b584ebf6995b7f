"""Preprocessing settings: SpecAugment's retired keys, taken out of the model trees checkpoints wrote."""
from __future__ import annotations

from multimodal.data.preprocess.preprocess_config import retired_masks_error, take_retired_masks


def test_take_retired_masks_returns_the_widths_on_and_drops_every_retired_key():
    tree = {"audio_preprocess": {"max_frames": 100, "freq_mask": 8, "time_mask": 0}, "image_preprocess": {},
            "audio": {"freq_mask": 3}}
    assert take_retired_masks(tree) == {"audio": {"freq_mask": 8}}
    # Only preprocessing sections hold them: an encoder's settings of that name are not SpecAugment's.
    assert tree == {"audio_preprocess": {"max_frames": 100}, "image_preprocess": {}, "audio": {"freq_mask": 3}}
    off = {"audio_preprocess": {"freq_mask": 0, "time_mask": 0}}
    assert take_retired_masks(off) == {} and off == {"audio_preprocess": {}}
    assert take_retired_masks(None) == {} and take_retired_masks({"audio_preprocess": None}) == {}


def test_the_refusal_names_the_setting_given_and_the_lever_to_set():
    error = retired_masks_error("audio", {"freq_mask": 8, "time_mask": 10}, "run.yaml")
    assert str(error) == (
        "run.yaml: audio_preprocess.freq_mask 8 and audio_preprocess.time_mask 10 are no longer preprocessing "
        "settings: SpecAugment is set per training source as augment.audio.spec_augment (p, freq_mask, time_mask). "
        "Set it there, as data.train[i].augment.audio.spec_augment of each audio source or "
        "data.demo_augment.audio.spec_augment for the demo (p 1.0 masks every clip, as audio_preprocess did), "
        "and remove it from the model"
    )
