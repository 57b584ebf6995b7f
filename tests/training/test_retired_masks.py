"""SpecAugment has one setting, the source's lever: checkpoints and run configs that set the retired
``model.audio_preprocess.freq_mask``/``time_mask`` still load and mask as they did; new configs are refused."""
from __future__ import annotations

import io
import json
import logging
import random

import numpy as np
import pytest
import soundfile
import torch

from multimodal.checkpoint import load_model, save_checkpoint
from multimodal.config_parser import to_dict
from multimodal.data.modalities.audio_modality import AUDIO
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.preprocess.audio_features import (
    fbank,
    fit_clip_length,
    load_waveform,
    mask_features,
    normalize_fbank,
    samples_for_frames,
)
from multimodal.data.preprocess.augment_config import SpecAugmentLever
from multimodal.model import MultimodalModel
from multimodal.presets import tiny
from multimodal.pretrained import checkpoint_model_config
from multimodal.training.train_config import fresh_config, parse_config

REFUSAL = "is no longer a preprocessing setting: SpecAugment is set per training source as augment.audio.spec_augment"


def with_old_masks(model_tree: dict, freq_mask: int, time_mask: int) -> dict:
    """A model tree as checkpoints wrote it before the masks left audio_preprocess (same key order)."""
    preprocess = model_tree["audio_preprocess"]
    min_frames = preprocess.pop("min_frames")
    preprocess.update(freq_mask=freq_mask, time_mask=time_mask, min_frames=min_frames)
    return model_tree


def old_checkpoint(directory, freq_mask: int, time_mask: int):
    """A checkpoint of a run with one audio-text source and no levers on, masked by the retired keys."""
    config = fresh_config({})
    config.data.train = [SourceSpec(shards="shards/{0..3}.tar", modalities=["audio", "text"])]
    train = to_dict(config)
    with_old_masks(train["model"], freq_mask, time_mask)
    torch.manual_seed(0)
    save_checkpoint(MultimodalModel(config.model), directory, extra_config={"train": train})
    written = json.loads((directory / "config.json").read_text())
    with_old_masks(written["model"], freq_mask, time_mask)
    (directory / "config.json").write_text(json.dumps(written))
    (directory / "trainer.json").write_text("{}")  # what --resume looks for; the settings are config.json's
    return directory


def flac(seconds: float, seed: int = 0) -> bytes:
    """A noisy tone longer than the tiny preset's 1 s window, so training crops it."""
    rng = np.random.default_rng(seed)
    time = np.arange(int(seconds * 16000)) / 16000
    clip = 0.4 * np.sin(2 * np.pi * 300 * time) + 0.05 * rng.standard_normal(time.shape)
    buffer = io.BytesIO()
    soundfile.write(buffer, clip.astype(np.float32), 16000, format="FLAC")
    return buffer.getvalue()


def old_features(data: bytes, config, rng: random.Random, freq_mask: int, time_mask: int) -> torch.Tensor:
    """What training made of a clip before: crop, filterbank, normalise, then the retired masks (no coin)."""
    waveform = load_waveform(data, config)
    crop = samples_for_frames(config.max_frames, config)
    if waveform.shape[0] > crop:
        start = rng.randrange(waveform.shape[0] - crop + 1)
        waveform = waveform[start : start + crop]
    features = normalize_fbank(fbank(fit_clip_length(waveform, config, config.min_frames), config), config)
    return mask_features(features, freq_mask, time_mask, rng)


def test_an_old_checkpoint_with_masks_off_loads_and_resumes_silently(tmp_path, caplog):
    checkpoint = old_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000010", 0, 0)
    assert load_model(checkpoint).config.audio_preprocess.max_frames == 100
    assert checkpoint_model_config(checkpoint).audio_preprocess == tiny().audio_preprocess
    with caplog.at_level(logging.WARNING):
        config = parse_config(["--resume", str(checkpoint)])
    assert caplog.text == ""
    assert config.data.train[0].augment.audio.spec_augment == SpecAugmentLever()  # off, as it was


def test_an_old_checkpoint_with_a_band_mask_masks_every_training_clip_with_the_same_widths(tmp_path, caplog):
    checkpoint = old_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000010", 8, 0)
    assert load_model(checkpoint).config.audio_preprocess == tiny().audio_preprocess  # using the model: no masks
    with caplog.at_level(logging.WARNING):
        config = parse_config(["--resume", str(checkpoint)])
    assert caplog.messages == [
        f"{checkpoint}: model.audio_preprocess.freq_mask 8 (SpecAugment, no longer a preprocessing setting) now "
        "masks every clip as augment.audio.spec_augment with p 1.0 on data.train[0] (freq_mask 8, time_mask 0): "
        "the same widths, not the same random masks"
    ]
    source = config.data.train[0]
    assert source.augment.audio.spec_augment == SpecAugmentLever(p=1.0, freq_mask=8, time_mask=0)
    # The source's training samples, as its stream reads them (the lever is its only one on).
    levers = source.augment.levers_for("audio") if source.augment.enabled_for("audio") else None
    preprocess = config.model.audio_preprocess
    data = flac(1.7)
    widths = set()
    for seed in range(12):
        [features] = AUDIO.load_member(data, preprocess, train=True, rng=random.Random(seed), levers=levers)["audio"]
        before = old_features(data, preprocess, random.Random(seed), freq_mask=8, time_mask=0)
        unmasked = old_features(data, preprocess, random.Random(seed), freq_mask=0, time_mask=0)
        # The crop and the features are what they were; the band is drawn as the retired mask drew it, one
        # draw later in the sample's stream (the lever's coin, which at p 1 always applies).
        assert features.shape == before.shape == (100, preprocess.num_mel_bins)
        crop_then_coin = random.Random(seed)
        old_features(data, preprocess, crop_then_coin, 0, 0)
        crop_then_coin.random()
        assert torch.equal(features, mask_features(unmasked.clone(), 8, 0, crop_then_coin))
        for masked in (features, before):  # one band under 8 mel bins, no span of frames, the rest kept
            band = (masked == 0).all(dim=0).nonzero().flatten().tolist()
            assert len(band) < 8 and (masked == 0).sum().item() == len(band) * masked.shape[0]
            assert torch.equal(masked[masked != 0], unmasked[masked != 0])
        widths.add(len((features == 0).all(dim=0).nonzero()))
    assert len(widths) >= 4  # widths drawn, as before


def test_a_runs_own_config_with_masks_trains_on_the_demo_with_them(tmp_path, caplog):
    record = to_dict(fresh_config({}))
    record["machine"] = {"cores": 2}  # written by the trainer beside the settings: a run's own record
    with_old_masks(record["model"], 0, 6)
    (tmp_path / "config.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        config = parse_config(["--config", str(tmp_path / "config.json")])
    # The demo's lever drew spans of up to 10 frames on half the clips: every clip now, the wider widths kept.
    assert config.data.demo_augment.audio.spec_augment == SpecAugmentLever(p=1.0, freq_mask=0, time_mask=10)
    assert len(caplog.messages) == 1 and "data.demo_augment (freq_mask 0, time_mask 10)" in caplog.messages[0]


def test_fine_tuning_an_old_checkpoint_keeps_its_masks(tmp_path, caplog):
    checkpoint = old_checkpoint(tmp_path / "pretrained", 8, 10)
    with caplog.at_level(logging.WARNING):
        config = parse_config(["--init_from", str(checkpoint)])
    assert config.data.demo_augment.audio.spec_augment == SpecAugmentLever(p=1.0, freq_mask=8, time_mask=10)
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith(f"{checkpoint}: model.audio_preprocess")


def test_a_new_config_that_sets_the_retired_keys_is_refused_naming_the_lever(tmp_path):
    (tmp_path / "run.yaml").write_text("model:\n  audio_preprocess:\n    freq_mask: 8\n")
    with pytest.raises(ValueError) as refused:
        parse_config(["--config", str(tmp_path / "run.yaml")])
    assert str(refused.value).startswith(f"{tmp_path / 'run.yaml'}: audio_preprocess.freq_mask 8 {REFUSAL}")
    assert "data.train[i].augment.audio.spec_augment" in str(refused.value)
    with pytest.raises(ValueError, match=f"--model.audio_preprocess.time_mask: audio_preprocess.time_mask 10 {REFUSAL}"):
        parse_config(["--model.audio_preprocess.time_mask", "10"])
    # Set to 0 they asked for nothing: accepted, as an old run's settings say it.
    (tmp_path / "off.yaml").write_text("model:\n  audio_preprocess:\n    freq_mask: 0\n    time_mask: 0\n")
    assert parse_config(["--config", str(tmp_path / "off.yaml"), "--model.audio_preprocess.freq_mask", "0"]
                        ).model.audio_preprocess == tiny().audio_preprocess
