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
import torch
import torchvision

import multimodal.data.demo.dataset as demo
from multimodal.data.demo.dataset import (
    CLASS_NAMES,
    FONT_FILES,
    NUM_DERIVED_VOICES,
    SPLITS,
    build_demo,
    default_cache_dir,
    load_demo_paths,
    load_mnist_digits,
    load_sklearn_digits,
)
from multimodal.data.demo.pen_digits import STYLES as PEN_STYLES, PenDrawing, draw_digit
from multimodal.data.demo.voices import ENGLISH_ACCENTS, TRAIN_VARIANTS, VALIDATION_VOICES, derived_voices, variant_name
from multimodal.data.demo.espeak import (
    ESPEAK_SAMPLE_RATE,
    Espeak,
    SpeechRequest,
    VoiceVariant,
    synthesize_in_fresh_process,
)

# 200 MNIST + 220 printed training images, 50 + 90 evaluation ones; 1,600 training clips
# (160 voices x 10 digits), 40 held-out ones, 10 real ones.
SCALE = 0.05
NUM_TRAIN_VOICES = len(TRAIN_VARIANTS) + NUM_DERIVED_VOICES


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


def spectral_centroid(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave.astype(np.float64), n=16384))
    return float((spectrum * np.arange(spectrum.size)).sum() / spectrum.sum()) * ESPEAK_SAMPLE_RATE / 16384


def scaled_voice(scale: float, **options) -> VoiceVariant:
    return VoiceVariant(pitch=(100, 140), formants=tuple((round(100 * scale), 100, 100) for _ in range(9)), **options)


def test_custom_variants_move_the_formants_and_leave_the_wheel_untouched():
    import espeakng_loader

    wheel_variants = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    before = sorted(path.name for path in wheel_variants.iterdir())
    engine = Espeak.instance()
    # A longer vocal tract (formants x 0.8) sounds darker than a shorter one (x 1.25), pitch unchanged.
    low, plain, high = (engine.synthesize(SpeechRequest("seven", "en-us", variant=scaled_voice(scale)))
                        for scale in (0.8, 1.0, 1.25))
    assert spectral_centroid(low) + 200 < spectral_centroid(plain) < spectral_centroid(high) - 200
    # A Klatt voice source is another synthesiser: a different wave for the same formants.
    klatt = engine.synthesize(SpeechRequest("seven", "en-us", variant=scaled_voice(1.0, klatt=3)))
    assert not np.array_equal(klatt[: min(klatt.size, plain.size)], plain[: min(klatt.size, plain.size)])
    assert sorted(path.name for path in wheel_variants.iterdir()) == before
    variant = scaled_voice(1.1, breath=(20, 20, 10, 0, 0, 0, 0, 0), klatt=2, tone=((600, 200), (1200, 150)))
    text = variant.file_text()
    assert text.startswith(f"language variant\nname {variant.file_name}\n") and "formant 8 110 100 100" in text
    assert "klatt 2" in text and "breath 20 20 10 0 0 0 0 0" in text and "tone 600 200 1200 150" in text
    assert variant.file_name == scaled_voice(1.1, breath=(20, 20, 10, 0, 0, 0, 0, 0), klatt=2,
                                             tone=((600, 200), (1200, 150))).file_name != scaled_voice(1.1).file_name


def test_custom_variant_errors():
    with pytest.raises(ValueError, match="formants: give 9"):
        VoiceVariant(pitch=(100, 140), formants=((100, 100, 100),))
    with pytest.raises(ValueError, match="klatt must be one of"):
        scaled_voice(1.0, klatt=9)
    with pytest.raises(ValueError, match="0 < base < top"):
        VoiceVariant(pitch=(150, 100), formants=scaled_voice(1.0).formants)
    with pytest.raises(ValueError, match="names a variant and SpeechRequest.variant gives another"):
        Espeak.instance().synthesize(SpeechRequest("one", "en+m3", variant=scaled_voice(1.0)))


def test_derived_voices_are_reproducible_and_varied():
    voices = derived_voices(NUM_DERIVED_VOICES, seed=0)
    assert voices == derived_voices(NUM_DERIVED_VOICES, seed=0) != derived_voices(NUM_DERIVED_VOICES, seed=1)
    assert len({variant.file_name for _, variant in voices}) == NUM_DERIVED_VOICES
    kinds = [kind for kind, _ in voices]
    assert {"man", "woman", "child"} <= set(kinds)
    f2_scale = {kind: [v.formants[2][0] for k, v in voices if k == kind] for kind in set(kinds)}
    assert np.mean(f2_scale["man"]) < np.mean(f2_scale["woman"]) < np.mean(f2_scale["child"])
    assert {v.klatt for _, v in voices} == set(range(7))  # espeak's synthesiser and every Klatt source
    assert any(v.breath for _, v in voices) and all(v.klatt for _, v in voices if v.breath)


def test_derived_voices_speak_in_a_fresh_process_reproducibly():
    requests = [SpeechRequest(word, "en-gb-x-rp", 170, 50, 60, variant) for word in ("four", "nine?")
                for _, variant in derived_voices(3, seed=0)]
    first = synthesize_in_fresh_process(requests, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, synthesize_in_fresh_process(requests, seed=2)))
    assert all(wave.size > 2000 and np.abs(wave).max() > 1000 for wave in first)


# Sources ----------------------------------------------------------------------------


def test_mnist_from_the_installed_wheel():
    images, labels = load_mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.mean() > 10  # real strokes, not an empty array


def test_sklearn_digits_from_the_installed_wheel_equal_load_digits():
    from sklearn.datasets import load_digits

    images, labels = load_sklearn_digits()
    reference = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)


# Build ------------------------------------------------------------------------------


def test_layout_counts_and_demo_json(built):
    paths, stages = built
    assert paths.num_samples == {"image-train": 200 + 220 + 50, "image-val": 50, "image-real": 90,
                                 "audio-train": 10 * NUM_TRAIN_VOICES, "audio-val": 40, "audio-phone": 40,
                                 "audio-real": 10}
    for split in SPLITS:
        sizes = json.loads((paths.root / split / "sizes.json").read_text())
        assert sum(sizes.values()) == paths.num_samples[split]
        assert paths.shards(split).startswith(str(paths.root / split / f"{split}-"))
    info = json.loads((paths.root / "demo.json").read_text())
    assert info["class_names"] == list(CLASS_NAMES) and info["audio_sample_rate"] == paths.audio_sample_rate == 16000
    train_voices = info["voices"]["audio-train"]
    assert info["voices"]["audio-val"] == info["voices"]["audio-phone"] == list(VALIDATION_VOICES)
    assert train_voices["espeak_variants"] == list(TRAIN_VARIANTS) and train_voices["accents"] == list(ENGLISH_ACCENTS)
    # Each derived voice's variant file is recorded, as the engine reads it.
    assert list(train_voices["derived"]) == [f"derived-{index:03d}" for index in range(NUM_DERIVED_VOICES)]
    assert [text for text in train_voices["derived"].values()] == [
        variant.file_text() for _, variant in derived_voices(NUM_DERIVED_VOICES, seed=0)]
    assert info["fonts"] == list(FONT_FILES)
    assert (paths.root / "COMPLETE").is_file()
    assert "synthesising speech" in stages and "writing audio-train" in stages
    assert load_demo_paths(paths.root) == paths
    captions = paths.captions_file.read_text().splitlines()
    assert len(captions) == paths.num_samples["image-train"] + paths.num_samples["audio-train"]


def test_full_scale_counts_are_the_docstrings():
    """The module docstring's layout is the plan at scale 1 (planning speaks nothing)."""
    plan = demo._plan_clips(seed=0, scale=1.0)
    assert NUM_TRAIN_VOICES == 160 and len(TRAIN_VARIANTS) == 88 and NUM_DERIVED_VOICES == 72
    assert len(plan["audio-train"]) == 4800 and len(plan["audio-val"]) == 400
    assert len({clip.key for clip in plan["audio-train"] + plan["audio-val"]}) == 5200
    printed = len(FONT_FILES) * 10 * demo.FONT_IMAGES_PER_FONT_DIGIT
    assert (len(FONT_FILES), printed) == (22, 1100) and demo.PEN_IMAGES_PER_DIGIT * 10 == 1000
    for line in ("6,100 images: 4,000 MNIST + 1,100 printed (22 fonts x 10 x 5) + 1,000 pen-written", "1,000 other MNIST images",
                 "1,797 scikit-learn digits", "4,800 clips: 160 voices x 10 digits x 3 draws",
                 "400 clips: 4 held-out voices x 10 digits x 10 draws", "160 training voices: 88 of espeak-ng's",
                 "the same 400 clips over a telephone line, 8 kHz"):
        assert line in " ".join(demo.__doc__.split()), line


def test_held_out_splits_share_no_image_and_no_voice(contents):
    metadata = {split: [json.loads(sample["json"]) for sample in samples.values()] for split, samples in contents.items()}
    sources = {split: {m["source"] for m in split_metadata} for split, split_metadata in metadata.items()}
    assert sources == {"image-train": {"mnist", "font", "pen"}, "image-val": {"mnist"}, "image-real": {"sklearn-digits"},
                       "audio-train": {"espeak-ng"}, "audio-val": {"espeak-ng"}, "audio-phone": {"espeak-ng"},
                       "audio-real": {"spokennumbers"}}
    train_images = {m["index"] for m in metadata["image-train"] if m["source"] == "mnist"}
    val_images = {m["index"] for m in metadata["image-val"]}
    assert len(train_images) == 200 and len(val_images) == 50 and train_images.isdisjoint(val_images)
    assert {m["font"] for m in metadata["image-train"] if m["source"] == "font"} == set(FONT_FILES)
    # Each digit's pen styles are drawn in turn, and a drawing records what it takes to draw it again.
    pen = [m for m in metadata["image-train"] if m["source"] == "pen"]
    assert len(pen) == 50 and all(m["style"] in PEN_STYLES[m["label"]] for m in pen)
    for m in pen[:3]:
        drawing = PenDrawing(**{name: m[name] for name in ("style", "pen", "jitter", "slant", "width", "rotation", "seed")})
        key = f"pen-{CLASS_NAMES[m['label']]}-{m['draw']:03d}"
        drawn = torchvision.io.decode_image(torch.frombuffer(bytearray(contents["image-train"][key]["png"]), dtype=torch.uint8))
        assert np.array_equal(drawn[0].numpy(), draw_digit(m["label"], drawing))
    train_variants = {variant_name(m["voice"]) for m in metadata["audio-train"]}
    assert train_variants == set(TRAIN_VARIANTS) | {f"derived-{index:03d}" for index in range(NUM_DERIVED_VOICES)}
    assert {m["voice"] for m in metadata["audio-val"]} == set(VALIDATION_VOICES)
    assert train_variants.isdisjoint({variant_name(voice) for voice in VALIDATION_VOICES})
    # Training clips draw their accent: all eight are heard.
    assert {m["accent"] for m in metadata["audio-train"]} == set(ENGLISH_ACCENTS)
    assert all(m["voice"].startswith(m["accent"] + "+") for m in metadata["audio-train"])
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
    printed = [s["txt"].decode() for s in contents["image-train"].values() if json.loads(s["json"])["source"] == "font"]
    assert printed and not any("hand" in caption for caption in printed)  # a printed digit is never called handwritten
    image_captions = {sample["txt"].decode() for sample in contents["image-train"].values()}
    audio_captions = {sample["txt"].decode() for sample in contents["audio-train"].values()}
    assert len(image_captions) > 30 and len(audio_captions) > 30  # several templates, words and numerals
    assert any(re.search(r"\d", c) for c in image_captions) and any(re.search(r"[a-z]+$", c) for c in image_captions)


def test_media_decode_as_expected(contents):
    def decode(sample):
        return torchvision.io.decode_image(torch.frombuffer(bytearray(sample["png"]), dtype=torch.uint8))

    for sample in list(contents["image-val"].values())[:10] + list(contents["image-train"].values())[-10:]:
        image = decode(sample)
        assert image.shape == (1, 28, 28) and image.max() > 100
    sklearn_images, _ = load_sklearn_digits()
    for sample in list(contents["image-real"].values())[:10]:
        image = decode(sample)[0].numpy()  # (8, 8) as the collection ships, its 0-16 spread over 0-255
        index = json.loads(sample["json"])["index"]
        assert image.shape == (8, 8) and np.array_equal(image, np.round(sklearn_images[index].astype(float) * 255 / 16))
    clips = list(contents["audio-val"].values())[:10] + list(contents["audio-train"].values())[-10:]
    for sample in clips:
        wave, rate = soundfile.read(io.BytesIO(sample["wav"]))
        assert rate == 16000 and wave.ndim == 1 and wave.size >= 16000
        assert np.abs(wave).max() > 0.2  # speech at a random gain in [0.3, 0.9], plus light noise
    assert not np.array_equal(*(soundfile.read(io.BytesIO(s["wav"]))[0][:16000] for s in clips[:2]))
    # The telephone split: each validation clip at 8 kHz, its level kept in the band and nothing above it.
    phone = contents["audio-phone"]
    assert sorted(phone) == sorted(f"{key}-phone" for key in contents["audio-val"])
    for key, sample in list(contents["audio-val"].items())[:5]:
        wide, _ = soundfile.read(io.BytesIO(sample["wav"]))
        narrow, rate = soundfile.read(io.BytesIO(phone[f"{key}-phone"]["wav"]))
        assert rate == 8000 and narrow.size == -(-wide.size // 2)
        assert json.loads(phone[f"{key}-phone"]["json"])["channel"].startswith("telephone: 300-3400 Hz")
        assert phone[f"{key}-phone"]["txt"] == sample["txt"]

        def band_db(wave, rate, low, high):
            power = np.abs(np.fft.rfft(wave) / wave.size) ** 2  # per bin, whatever the rate
            frequencies = np.fft.rfftfreq(wave.size, 1 / rate)
            return 10 * np.log10(power[(frequencies >= low) & (frequencies <= high)].sum())

        assert abs(band_db(narrow, 8000, 500, 3000) - band_db(wide, 16000, 500, 3000)) < 1.5  # the band kept
        assert band_db(narrow, 8000, 3700, 4000) < band_db(wide, 16000, 3700, 4000) - 10  # above it: cut
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
    assert names == [path.relative_to(other.root) for path in shard_files(other.root)] and len(names) == 10
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
    assert default_cache_dir() == tmp_path / "demo-v7"
    assert default_cache_dir(scale=0.5, seed=3) == tmp_path / "demo-v7-scale0.5-seed3"
    monkeypatch.delenv("MULTIMODAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "multimodal" / "demo-v7"
