"""The inference API: every input kind, batching, windows of long audio, precision, tokenizers, errors."""
import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image

from multimodal.data.preprocess.audio_features import audio_to_features, collate_audio
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.apps.api import EmbeddingModel, ZeroShotClassifier, as_items, cpu_has_native_bf16, load_embedding_model as load, load_tokenizer
from multimodal.apps.api import resolve_dtype
from multimodal.checkpoint import save_checkpoint
from multimodal.model import MultimodalModel
from multimodal.presets import tiny

SAMPLE_RATE = 16000  # the tiny preset's audio rate; its window is 100 frames (1.015 s of samples)
LABELS = ["cat", "dog", "seven"]
CAPTIONS = [f"{start} {word}" for start in ("a photo of a", "someone saying", "the sound of") for word in LABELS] * 3


def build_tiny_checkpoint(directory: Path) -> Path:
    """A tiny text-image-audio model with its own tokenizer, saved as a checkpoint directory."""
    tokenizer = Tokenizer.train(CAPTIONS, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = MultimodalModel(tiny(vocab_size=tokenizer.vocab_size))
    with torch.no_grad():  # a temperature other than the initial one, to see it is the one used
        model.logit_scales["text_image"].fill_(3.0)
        model.logit_scales["text_audio"].fill_(2.5)
    return save_checkpoint(model, directory, tokenizer=tokenizer)


@functools.lru_cache(maxsize=None)
def tiny_checkpoint() -> Path:
    """Built once per test process and shared by the API, embedding and command-line tests."""
    root = Path(tempfile.mkdtemp(prefix="multimodal-api-test-"))
    atexit.register(shutil.rmtree, root, True)
    return build_tiny_checkpoint(root / "checkpoint")


def write_png(path: Path, seed: int, size: tuple[int, int] = (40, 52)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def waveform(seed: int, seconds: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(int(seconds * SAMPLE_RATE), generator=generator)


def write_wav(path: Path, seed: int, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, waveform(seed, seconds).numpy(), SAMPLE_RATE, subtype="FLOAT")  # float: read back exactly
    return path


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def model(checkpoint) -> EmbeddingModel:
    return load(checkpoint, precision="fp32", batch_size=3)


def test_every_image_input_kind_gives_the_same_answer(model, tmp_path):
    path = write_png(tmp_path / "x.png", seed=1)
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))  # (H, W, 3) uint8
    uint8 = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)
    inputs = [str(path), path, pil, uint8, array, path.read_bytes(), uint8.float() / 255]
    classifier = ZeroShotClassifier(model, LABELS, ["a photo of a {}."], modality="image")
    probabilities = classifier.predict_proba(inputs)
    assert probabilities.shape == (len(inputs), len(LABELS))
    torch.testing.assert_close(probabilities[:-1], probabilities[:1].expand(len(inputs) - 1, -1), atol=1e-5, rtol=0)
    # A float image is resized without rounding to uint8 in between: equal to resize precision.
    torch.testing.assert_close(probabilities[-1], probabilities[0], atol=1e-3, rtol=0)
    results = classifier.classify(inputs, top_k=2)
    assert len(results) == len(inputs)
    assert all([label for label, _ in result] == [label for label, _ in results[0]] for result in results)
    # A single item and a (N, 3, H, W) batch are accepted as they are.
    torch.testing.assert_close(classifier.predict_proba(pil), probabilities[:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(classifier.predict_proba(uint8[None].expand(2, -1, -1, -1)), probabilities[:2], atol=1e-5, rtol=0)


def test_probabilities_are_the_softmax_of_the_learned_scale_times_cosine(model, tmp_path):
    paths = [write_png(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    templates = ["a photo of a {}.", "a picture of {label}."]
    classifier = ZeroShotClassifier(model, LABELS, templates, modality="image")
    prompts = [template.replace("{label}", "{}").format(label) for label in LABELS for template in templates]
    text = model.embed_texts(prompts).view(len(LABELS), len(templates), -1)  # (C, T, E)
    weights = F.normalize(text.mean(dim=1), dim=-1)  # (C, E)
    images = model.embed_images(paths)  # (N, E)
    expected = (np.exp(3.0) * images @ weights.T).softmax(dim=-1)
    torch.testing.assert_close(classifier.predict_proba(paths), expected, atol=1e-5, rtol=0)
    assert classifier.logit_scale == pytest.approx(np.exp(3.0), rel=1e-6)
    best = classifier.classify(paths, top_k=5)  # top_k past the number of labels gives them all
    for row, result in zip(expected, best):
        assert [label for label, _ in result] == [LABELS[i] for i in row.argsort(descending=True)]
        assert [p for _, p in result] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-5)


def test_every_audio_input_kind_gives_the_same_answer(model, tmp_path):
    path = write_wav(tmp_path / "x.wav", seed=3, seconds=0.7)
    wave = waveform(3, 0.7)
    classifier = ZeroShotClassifier(model, LABELS, modality="audio")  # the default audio templates
    assert len(classifier.templates) > 1
    inputs = [path, str(path), path.read_bytes(), (wave, SAMPLE_RATE), (wave.numpy(), SAMPLE_RATE),
              (wave[None].expand(2, -1).clone(), SAMPLE_RATE)]  # stereo with equal channels is the same clip
    probabilities = classifier.predict_proba(inputs)
    torch.testing.assert_close(probabilities, probabilities[:1].expand_as(probabilities), atol=1e-5, rtol=0)
    torch.testing.assert_close(classifier.predict_proba(wave, sample_rate=SAMPLE_RATE), probabilities[:1], atol=1e-5, rtol=0)
    # Another sample rate is resampled to the model's.
    resampled = classifier.predict_proba([(torch.from_numpy(np.repeat(wave.numpy(), 2)), 2 * SAMPLE_RATE)])
    assert resampled.shape == (1, len(LABELS))


def test_batched_equals_alone_with_long_audio_in_windows(model):
    clips = [waveform(10, 2.6), waveform(11, 0.4), waveform(12, 1.0), waveform(13, 3.3)]
    windows = [len(audio_to_features(clip, model.config.audio_preprocess, sample_rate=SAMPLE_RATE)) for clip in clips]
    assert windows[0] == 3 and windows[1] == 1 and windows[3] == 4  # long clips are covered by several windows
    together = model.embed_audio(clips, sample_rate=SAMPLE_RATE)  # batch_size 3: windows of clips mixed in batches
    alone = torch.cat([model.embed_audio([clip], sample_rate=SAMPLE_RATE) for clip in clips])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    # A long clip's embedding is the normalised mean of its windows' embeddings.
    features = audio_to_features(clips[0], model.config.audio_preprocess, sample_rate=SAMPLE_RATE)
    per_window = torch.cat([model.encode("audio", window[None]) for window in features])
    torch.testing.assert_close(alone[0], F.normalize(per_window.mean(dim=0), dim=-1), atol=1e-5, rtol=0)
    images = [torch.randint(0, 256, (3, 32 + i, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    torch.testing.assert_close(model.embed_images(images), torch.cat([model.embed_images(i) for i in images]), atol=1e-5, rtol=0)
    texts = ["a", "a photo of a cat", "someone saying seven seven seven seven"]
    torch.testing.assert_close(model.embed_texts(texts), torch.cat([model.embed_texts(t) for t in texts]), atol=1e-5, rtol=0)


def test_encode_takes_pipeline_batches_and_averages_audio_windows(model):
    clips = [waveform(20, 2.2), waveform(21, 0.5)]
    features = [audio_to_features(clip, model.config.audio_preprocess, sample_rate=SAMPLE_RATE) for clip in clips]
    rows = [window for clip in features for window in clip]
    audio, padding_mask = collate_audio(rows)  # (W, T, F)
    owners = torch.tensor([i for i, clip in enumerate(features) for _ in clip])
    batch = {"audio": audio, "audio_padding_mask": padding_mask, "audio_window_clip": owners}
    embeddings = model.encode("audio", batch)
    assert embeddings.dtype == torch.float32 and embeddings.shape == (2, model.embed_dim)
    torch.testing.assert_close(embeddings, model.embed_audio(clips, sample_rate=SAMPLE_RATE), atol=1e-5, rtol=0)


def test_bf16_embeddings_are_close_to_fp32(checkpoint, model, tmp_path):
    bf16 = load(checkpoint, precision="bf16")
    assert bf16.dtype == torch.bfloat16 and next(bf16.model.parameters()).dtype == torch.bfloat16
    images = [write_png(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    clips = [(waveform(i, 1.7), SAMPLE_RATE) for i in range(3)]
    for modality, inputs in (("image", images), ("audio", clips), ("text", CAPTIONS[:6])):
        low, full = bf16.embed(modality, inputs), model.embed(modality, inputs)
        assert low.dtype == torch.float32
        torch.testing.assert_close(low.norm(dim=-1), torch.ones(len(inputs)), atol=1e-5, rtol=0)
        assert (low * full).sum(dim=-1).min() > 1 - 1e-2, modality
    # The temperature is read before the cast: bf16 would round exp(3) by ~0.5%.
    assert ZeroShotClassifier(bf16, LABELS, ["{}"], modality="image").logit_scale == pytest.approx(np.exp(3.0), rel=1e-6)


def test_precision_choice():
    assert resolve_dtype("fp32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_dtype("fp16", "cpu")


def test_as_items_reads_single_inputs_and_collections():
    image = torch.zeros(3, 8, 8)
    assert len(as_items("image", image)) == 1 and len(as_items("image", torch.zeros(4, 3, 8, 8))) == 4
    assert len(as_items("image", [image, image])) == 2 and as_items("text", "a cat") == ["a cat"]
    pair = (torch.zeros(100), 16000)
    assert as_items("audio", pair) == [pair] and len(as_items("audio", [pair, pair])) == 2


def test_clear_errors(checkpoint, model, tmp_path):
    with pytest.raises(ValueError, match="modality='image' or 'audio'"):
        ZeroShotClassifier(model, LABELS)
    with pytest.raises(ValueError, match="distinct"):
        ZeroShotClassifier(model, ["cat", "cat"], modality="image")
    with pytest.raises(ValueError, match="non-empty list"):
        ZeroShotClassifier(model, "cat", modality="image")
    with pytest.raises(ValueError, match="placeholder"):
        ZeroShotClassifier(model, LABELS, ["no placeholder"], modality="image")
    with pytest.raises(ValueError, match="needs its sample rate"):
        model.embed_audio([waveform(0, 0.5)])
    with pytest.raises(ValueError, match=r"image input 1 \(.*broken.png\)"):
        (tmp_path / "broken.png").write_bytes(b"not an image")
        model.embed_images([write_png(tmp_path / "ok.png", 0), tmp_path / "broken.png"])
    with pytest.raises(ValueError, match="top_k"):
        ZeroShotClassifier(model, LABELS, ["{}"], modality="image").classify([torch.zeros(3, 8, 8)], top_k=0)
    audio_only = EmbeddingModel(MultimodalModel(tiny(["audio"])), None, precision="fp32")
    with pytest.raises(ValueError, match="needs a text encoder"):
        ZeroShotClassifier(audio_only, LABELS)
    with pytest.raises(ValueError, match="no image encoder"):
        audio_only.embed_images([torch.zeros(3, 8, 8)])


def test_checkpoint_tokenizers(checkpoint, tmp_path):
    assert isinstance(load_tokenizer(checkpoint), Tokenizer)
    from multimodal.data.tokenization.clip_tokenizer import ClipTokenizer

    clip = ClipTokenizer.from_bpe_file()
    model = MultimodalModel(tiny(["text", "image"], vocab_size=clip.vocab_size))
    model.encoders["text"].config.eot_token_id = clip.eot_id
    marked = save_checkpoint(model, tmp_path / "clip", tokenizer=clip)
    assert json.loads((marked / "config.json").read_text())["tokenizer"] == {"kind": "clip"}
    unmarked = save_checkpoint(model, tmp_path / "clip-unmarked", tokenizer=clip)
    config = json.loads((unmarked / "config.json").read_text())
    del config["tokenizer"]  # as checkpoints written before the kind was recorded
    (unmarked / "config.json").write_text(json.dumps(config))
    for directory in (marked, unmarked):
        tokenizer = load_tokenizer(directory)
        assert isinstance(tokenizer, ClipTokenizer)
        ids, _ = tokenizer(["a photo of a cat"], 8)
        assert ids[0, 0] == clip.sot_id
    config = json.loads((marked / "config.json").read_text())
    config["tokenizer"] = {"kind": "sentencepiece"}
    (marked / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tokenizer kind 'sentencepiece'"):
        load_tokenizer(marked)
    (tmp_path / "none").mkdir()
    save_checkpoint(model, tmp_path / "none")
    assert load_tokenizer(tmp_path / "none") is None
    with pytest.raises(ValueError, match="no tokenizer"):
        load(tmp_path / "none", precision="fp32").embed_texts(["a cat"])


def test_package_exports_the_api():
    import multimodal
    import multimodal.apps.api

    assert multimodal.ZeroShotClassifier is ZeroShotClassifier and multimodal.EmbeddingModel is EmbeddingModel
    assert multimodal.load_embedding_model is multimodal.apps.api.load_embedding_model
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        multimodal.nothing  # noqa: B018
