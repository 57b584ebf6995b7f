"""Augmentation in the loader: training only, seeded like the rest of a sample, on messy real-world files."""
from __future__ import annotations

import copy
import io
import itertools
import json
from dataclasses import fields

import numpy as np
import soundfile
import torch
import webdataset
from PIL import Image

from multimodal.config_parser import from_dict
from multimodal.data.pipeline.source_spec import AugmentConfig
from multimodal.data.preprocess.augment_config import AudioAugmentConfig, ImageAugmentConfig
from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig, ImagePreprocessConfig
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.source_spec import SourceSpec

IMAGE = ImagePreprocessConfig(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
AUDIO = AudioPreprocessConfig(num_mel_bins=16, max_frames=30)
# Every lever of both modalities on, half the time each (tempo and pitch included).
EVERYTHING = from_dict(AugmentConfig, {
    modality: {lever: {"p": 0.5} for lever in (f.name for f in fields(config))}
    for modality, config in (("image", ImageAugmentConfig), ("audio", AudioAugmentConfig))
})


def encoded_image(index: int) -> tuple[str, bytes]:
    """Images as users' folders hold them: grey and palette PNGs, RGBA, a CMYK JPEG, odd sizes, tiny, long."""
    rng = np.random.default_rng(index)
    kind = index % 6
    if kind == 0:
        image, extension = Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L"), "png"
    elif kind == 1:
        image, extension = Image.fromarray(rng.integers(0, 255, (5, 7, 4), dtype=np.uint8), "RGBA"), "png"
    elif kind == 2:
        image, extension = Image.fromarray(rng.integers(0, 255, (12, 90, 3), dtype=np.uint8)).convert("P"), "png"
    elif kind == 3:
        image, extension = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).convert("CMYK"), "jpg"
    elif kind == 4:
        image, extension = Image.fromarray(np.full((64, 64), 255, dtype=np.uint8), "L"), "jpg"  # blank page
    else:
        image, extension = Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)), "jpg"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if extension == "png" else "JPEG")
    return extension, buffer.getvalue()


def encoded_audio(index: int) -> tuple[str, bytes]:
    """Clips as they come: 44.1 kHz stereo, 8 kHz telephone, 30 ms, silence, 12 s, 24-bit FLAC at 48 kHz."""
    rng = np.random.default_rng(index)
    kind = index % 6
    rate, channels, seconds, subtype, extension = [
        (44100, 2, 0.8, "PCM_16", "wav"),
        (8000, 1, 1.2, "PCM_16", "wav"),
        (16000, 1, 0.03, "PCM_16", "wav"),
        (22050, 1, 0.5, "PCM_16", "flac"),
        (16000, 1, 12.0, "PCM_16", "flac"),
        (48000, 1, 0.6, "PCM_24", "flac"),
    ][kind]
    samples = 0.3 * rng.standard_normal((int(rate * seconds), channels)).astype(np.float32)
    if kind == 3:
        samples[:] = 0.0
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format=extension.upper())
    return extension, buffer.getvalue()


def write_shards(directory, encode, prefix: str, count: int = 12) -> str:
    with webdataset.TarWriter(str(directory / f"{prefix}.tar")) as writer:
        for index in range(count):
            extension, data = encode(index)
            writer.write({"__key__": f"{prefix}{index:03d}", extension: data, "txt": f"caption {index}",
                          "json": json.dumps({"label": index % 3})})
    return str(directory / f"{prefix}.tar")


def batches(spec: SourceSpec, *, train: bool, seed: int = 0, count: int = 3, num_workers: int = 0) -> list[dict]:
    loader = make_loader([spec], batch_size=4, train=train, seed=seed, num_workers=num_workers,
                         preprocess={"image": IMAGE, "audio": AUDIO}, shuffle_buffer=1)
    return list(itertools.islice(iter(loader), count))


def same(first: list[dict], second: list[dict], modality: str) -> bool:
    return all(torch.equal(a[modality], b[modality]) for a, b in zip(first, second))


def test_training_augments_messy_images_deterministically_and_evaluation_never(tmp_path):
    shards = write_shards(tmp_path, encoded_image, "img")
    plain = SourceSpec(shards, ["image", "text"], name="img")
    augmented = SourceSpec(shards, ["image", "text"], name="img", augment=EVERYTHING)
    first = batches(augmented, train=True)
    assert all(b["image"].shape == (4, 3, 16, 16) and bool(b["image"].isfinite().all()) for b in first)
    assert same(first, batches(augmented, train=True), "image")  # a seed gives the same augmentations
    assert not same(first, batches(augmented, train=True, seed=1), "image")
    assert not same(first, batches(plain, train=True), "image")
    assert [b["__key__"] for b in first] == [b["__key__"] for b in batches(plain, train=True)]
    evaluation = list(make_loader([augmented], batch_size=5, train=False, preprocess={"image": IMAGE}))
    assert same(evaluation, list(make_loader([plain], batch_size=5, train=False, preprocess={"image": IMAGE})), "image")


def test_training_augments_messy_audio_deterministically_and_evaluation_never(tmp_path):
    shards = write_shards(tmp_path, encoded_audio, "aud")
    plain = SourceSpec(shards, ["audio", "text"], name="aud")
    augmented = SourceSpec(shards, ["audio", "text"], name="aud", augment=EVERYTHING)
    first = batches(augmented, train=True)
    assert all(b["audio"].shape[0] == 4 and b["audio"].shape[2] == 16 and bool(b["audio"].isfinite().all())
               for b in first)
    assert all(b["audio"].shape[1] <= AUDIO.max_frames for b in first)
    assert same(first, batches(augmented, train=True), "audio")
    assert not same(first, batches(plain, train=True), "audio")
    evaluation = list(make_loader([augmented], batch_size=5, train=False, preprocess={"audio": AUDIO}))
    reference = list(make_loader([plain], batch_size=5, train=False, preprocess={"audio": AUDIO}))
    assert same(evaluation, reference, "audio")
    assert [b["__key__"] for b in evaluation] == [b["__key__"] for b in reference]


def test_augmentation_in_worker_processes_is_seeded_too(tmp_path):
    shards = write_shards(tmp_path, encoded_image, "img", count=8)
    spec = SourceSpec(shards, ["image", "text"], name="img", augment=EVERYTHING)
    in_workers = batches(spec, train=True, num_workers=2, count=2)
    assert same(in_workers, batches(spec, train=True, num_workers=2, count=2), "image")
    assert not same(in_workers, batches(spec, train=True, num_workers=2, count=2, seed=3), "image")


def test_levers_all_off_read_a_source_exactly_as_without_augmentation(tmp_path):
    images = write_shards(tmp_path, encoded_image, "img")
    speech = write_shards(tmp_path, encoded_audio, "aud")
    for shards, modality in ((images, "image"), (speech, "audio")):
        plain = SourceSpec(shards, [modality, "text"], name="s")
        off = SourceSpec(shards, [modality, "text"], name="s", augment=copy.deepcopy(EVERYTHING))
        other = "audio" if modality == "image" else "image"
        setattr(off.augment, modality, type(getattr(off.augment, modality))())  # this modality's levers off
        assert getattr(off.augment, other).enabled  # the other modality's levers do not touch this source
        assert same(batches(plain, train=True), batches(off, train=True), modality)


def test_spec_augment_lever_masks_the_features_and_leaves_the_waveform_levers_off(tmp_path):
    shards = write_shards(tmp_path, encoded_audio, "aud")
    plain = SourceSpec(shards, ["audio", "text"], name="aud")
    masked = SourceSpec(shards, ["audio", "text"], name="aud",
                        augment=from_dict(AugmentConfig, {"audio": {"spec_augment": {"p": 1.0, "freq_mask": 6,
                                                                                      "time_mask": 8}}}))
    assert not masked.augment.audio.waveform_enabled
    reference, first = batches(plain, train=True), batches(masked, train=True)
    assert same(first, batches(masked, train=True), "audio")  # seeded
    # Only whole bands and spans change, and to 0 (the normalised mean); nothing else moves.
    changed = [(a["audio"] != b["audio"]) for a, b in zip(reference, first)]
    assert any(bool(c.any()) for c in changed)
    assert all(bool((b["audio"][c] == 0).all()) for b, c in zip(first, changed))
    for batch, mask in zip(first, changed):
        _, frames, bins = batch["audio"].shape
        # At most one band of <= 6 bins over every frame and one span of <= 8 frames over every bin.
        assert all(int(row.sum()) <= 6 * frames + 8 * bins for row in mask)
    evaluation = list(make_loader([masked], batch_size=5, train=False, preprocess={"audio": AUDIO}))
    assert same(evaluation, list(make_loader([plain], batch_size=5, train=False, preprocess={"audio": AUDIO})), "audio")


def test_equalizer_lever_colours_each_clip_with_one_curve_over_all_its_frames(tmp_path):
    shards = write_shards(tmp_path, encoded_audio, "aud")
    plain = SourceSpec(shards, ["audio", "text"], name="aud")
    coloured = SourceSpec(shards, ["audio", "text"], name="aud",
                          augment=from_dict(AugmentConfig, {"audio": {"equalizer": {"p": 1.0}}}))
    assert not coloured.augment.audio.waveform_enabled
    reference, first = batches(plain, train=True), batches(coloured, train=True)
    assert same(first, batches(coloured, train=True), "audio")  # seeded
    for a, b in zip(reference, first):
        added = b["audio"] - a["audio"]  # (B, T, F): one curve per clip, the same on each of its frames
        valid = ~a.get("audio_padding_mask", torch.zeros(added.shape[:2], dtype=torch.bool))
        for row in range(added.shape[0]):
            frames = added[row][valid[row]]
            torch.testing.assert_close(frames, frames[:1].expand_as(frames), atol=1e-5, rtol=0)
            assert float(frames[0].abs().max()) > 0
        assert bool((added[~valid] == 0).all())  # padding stays padding
    evaluation = list(make_loader([coloured], batch_size=5, train=False, preprocess={"audio": AUDIO}))
    assert same(evaluation, list(make_loader([plain], batch_size=5, train=False, preprocess={"audio": AUDIO})), "audio")
