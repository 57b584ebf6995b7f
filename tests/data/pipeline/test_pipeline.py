"""The shard loader: modes, splitting, determinism, epochs, wild layouts, bad data, mixing, collation."""
from __future__ import annotations

import io
import itertools
import json
import logging
import random
import tarfile

import numpy as np
import pytest
import soundfile
import torch
import webdataset
from torchvision.io import encode_jpeg, encode_png

from multimodal.data.preprocess.audio_features import audio_to_features
from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig, ImagePreprocessConfig
from multimodal.data.preprocess.image_transforms import normalize_image, preprocess_image
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.pipeline.skip_counts import DataStats

IMAGE = ImagePreprocessConfig(image_size=8, train_crop_scale=(0.5, 1.0))
# Windows of 12 frames, so a 4-frame minimum (a small encoder's patch length along time).
AUDIO = AudioPreprocessConfig(num_mel_bins=16, max_frames=12, min_frames=4)
CONTEXT = 10


def tokenize(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Character codes, padded with 0: reversible, so tests can read the caption a batch chose."""
    ids = torch.zeros(len(captions), CONTEXT, dtype=torch.int64)
    for row, caption in enumerate(captions):
        codes = [ord(c) for c in caption[:CONTEXT]]
        ids[row, : len(codes)] = torch.tensor(codes)
    return ids, ids == 0


def detokenize(ids: torch.Tensor) -> list[str]:
    return ["".join(chr(c) for c in row.tolist() if c) for row in ids]


def jpeg(seed: int, height: int = 12, width: int = 16) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, height, width, generator=generator) * 255).to(torch.uint8)
    return encode_jpeg(image, quality=90).numpy().tobytes()


def flac(seed: int, seconds: float) -> bytes:
    rng = np.random.default_rng(seed)
    samples = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="FLAC")
    return buffer.getvalue()


def write_img2dataset(directory, prefix: str = "img", num_shards: int = 3, per_shard: int = 4) -> list[str]:
    """img2dataset's layout: {key}.jpg, {key}.txt, {key}.json (with a label); returns the keys."""
    keys = []
    for shard in range(num_shards):
        with webdataset.TarWriter(str(directory / f"{prefix}-{shard:05d}.tar")) as writer:
            for index in range(per_shard):
                key = f"{prefix}{shard}{index:04d}"
                meta = {"caption": key, "url": f"http://example.com/{key}.jpg", "label": index % 3}
                writer.write({"__key__": key, "jpg": jpeg(len(keys)), "txt": key, "json": json.dumps(meta)})
                keys.append(key)
    return keys


def write_clap(directory, prefix: str = "aud", num_shards: int = 2, per_shard: int = 3) -> list[str]:
    """CLAP/WavCaps layout: {key}.flac and {key}.json whose "text" is a list of captions."""
    keys = []
    for shard in range(num_shards):
        with webdataset.TarWriter(str(directory / f"{prefix}-{shard:05d}.tar")) as writer:
            for index in range(per_shard):
                key = f"{prefix}{shard}{index:04d}"
                meta = {"text": [f"{key}-a", f"{key}-b", f"{key}-c"], "duration": 0.2}
                writer.write({"__key__": key, "flac": flac(len(keys), 0.1 + 0.05 * index), "json": json.dumps(meta)})
                keys.append(key)
    return keys


def image_source(directory, prefix: str = "img", **kwargs) -> SourceSpec:
    return SourceSpec(str(directory / f"{prefix}-{{00000..00002}}.tar"), ["image", "text"], name=prefix, **kwargs)


def loader(sources, *, train: bool, batch_size: int = 4, **kwargs):
    return make_loader(
        sources, batch_size=batch_size, train=train, tokenize=tokenize, preprocess={"image": IMAGE, "audio": AUDIO}, **kwargs
    )


def keys_of(batches) -> list[str]:
    return [key for batch in batches for key in batch["__key__"]]


# Modes and splitting ------------------------------------------------------------------------


def test_finite_evaluation_reads_every_sample_once_in_order(tmp_path):
    keys = write_img2dataset(tmp_path)
    batches = list(loader([image_source(tmp_path)], train=False, batch_size=5))
    assert keys_of(batches) == keys
    assert [len(b["__key__"]) for b in batches] == [5, 5, 2]
    first = batches[0]
    assert first["image"].shape == (5, 3, 8, 8) and first["image"].dtype == torch.float32
    assert first["text"].dtype == torch.int64 and first["text_padding_mask"].dtype == torch.bool
    assert detokenize(first["text"]) == keys[:5]
    assert first["__source__"] == "img"


def test_ranks_and_workers_partition_a_finite_pass(tmp_path):
    keys = write_img2dataset(tmp_path, num_shards=3, per_shard=4) + write_img2dataset(tmp_path, "more", 2, 3)
    spec = SourceSpec(
        [str(tmp_path / "img-{00000..00002}.tar"), str(tmp_path / "more-{00000..00001}.tar")], ["image", "text"]
    )
    for train in (False, True):  # training shuffles the shard order, identically on every rank
        seen = []
        for rank in range(2):
            stream = loader([spec], train=train, resampled=False, rank=rank, world_size=2, num_workers=2,
                            drop_last=False, seed=5)
            seen.extend(keys_of(stream))
        assert sorted(seen) == sorted(keys) and len(seen) == len(set(seen))


def test_resampled_epochs_have_a_set_length_and_the_stream_is_endless(tmp_path):
    keys = write_img2dataset(tmp_path)
    source = image_source(tmp_path)
    epoch_loader = loader([source], train=True, samples_per_epoch=40, world_size=2, rank=1)
    assert len(epoch_loader) == 5  # ceil(40 / (4 * 2)) batches on each rank
    batches = list(epoch_loader)
    assert len(batches) == 5 and all(len(b["__key__"]) == 4 for b in batches)
    assert epoch_loader.epoch == 1
    endless = loader([source], train=True)
    with pytest.raises(TypeError, match="no length"):
        len(endless)
    many = keys_of(itertools.islice(iter(endless), 20))  # 80 samples from 12
    assert len(many) == 80 and set(many) <= set(keys) and len(set(many)) > 6


# Determinism and epochs ------------------------------------------------------------------------


def test_same_seed_same_stream_and_other_seeds_or_epochs_differ(tmp_path):
    write_img2dataset(tmp_path)
    source = image_source(tmp_path)

    def build(seed: int):
        return loader([source], train=True, seed=seed, samples_per_epoch=24, shuffle_buffer=5)

    first, again = list(build(1)), list(build(1))
    assert keys_of(first) == keys_of(again)
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])
    assert keys_of(build(2)) != keys_of(first)
    twice = build(1)
    assert keys_of(twice) == keys_of(first) and twice.epoch == 1
    assert keys_of(twice) != keys_of(first) and twice.epoch == 2  # a second pass is the next epoch


def test_a_finite_training_stream_shuffles_its_shards_anew_each_epoch(tmp_path):
    write_img2dataset(tmp_path, num_shards=3, per_shard=2)
    stream = loader([image_source(tmp_path)], train=True, resampled=False, shuffle_buffer=0, batch_size=2, seed=0)
    epochs = [keys_of(stream) for _ in range(4)]
    assert all(sorted(keys) == sorted(epochs[0]) for keys in epochs)  # every sample once per epoch
    assert len({tuple(keys) for keys in epochs}) > 1


# Layouts in the wild ----------------------------------------------------------------------------


def test_img2dataset_shards_load_with_labels(tmp_path):
    keys = write_img2dataset(tmp_path)
    batches = list(loader([image_source(tmp_path, label_key="json:label")], train=False))
    assert keys_of(batches) == keys
    labels = torch.cat([b["label"] for b in batches])
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 3 for _ in range(3) for i in range(4)]


def test_clap_shards_pick_a_caption_from_the_list(tmp_path):
    keys = write_clap(tmp_path)
    source = SourceSpec(str(tmp_path / "aud-{00000..00001}.tar"), ["audio", "text"])
    evaluated = list(loader([source], train=False))
    captions = [c for b in evaluated for c in detokenize(b["text"])]
    assert captions == [f"{key}-a"[:CONTEXT] for key in keys]
    trained = loader([source], train=True, samples_per_epoch=24, batch_size=6, seed=3, shuffle_buffer=4)
    chosen = [(k, c) for b in trained for k, c in zip(b["__key__"], detokenize(b["text"]))]
    assert all(c in {f"{k}-{s}"[:CONTEXT] for s in "abc"} for k, c in chosen)
    assert {c[-1] for _, c in chosen} == {"a", "b", "c"}
    again = loader([source], train=True, samples_per_epoch=24, batch_size=6, seed=3, shuffle_buffer=4)
    assert [(k, c) for b in again for k, c in zip(b["__key__"], detokenize(b["text"]))] == chosen


def test_png_webp_and_wav_ogg_mp3_members_load(tmp_path):
    from PIL import Image

    image = (torch.rand(3, 10, 10) * 255).to(torch.uint8)
    webp = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(webp, format="WEBP")
    members = {"png": encode_png(image).numpy().tobytes(), "webp": webp.getvalue()}
    clip = (0.1 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32)
    for format, extension in (("WAV", "wav"), ("OGG", "ogg"), ("MP3", "mp3")):
        buffer = io.BytesIO()
        soundfile.write(buffer, clip, 16000, format=format)
        members[extension] = buffer.getvalue()
    with webdataset.TarWriter(str(tmp_path / "mixed.tar")) as writer:
        for extension, data in members.items():
            writer.write({"__key__": f"k-{extension}", extension: data, "txt": extension})
    images = SourceSpec(str(tmp_path / "mixed.tar"), ["image", "text"], name="images")
    audio = SourceSpec(str(tmp_path / "mixed.tar"), ["audio", "text"], name="audio")
    stream = loader([images, audio], train=False, batch_size=8)
    batches = list(stream)
    by_source = {b["__source__"]: b["__key__"] for b in batches}
    assert by_source == {"images": ["k-png", "k-webp"], "audio": ["k-wav", "k-ogg", "k-mp3"]}
    assert stream.stats.skipped == {"images": {"missing_image": 3}, "audio": {"missing_audio": 2}}


# Bad data ---------------------------------------------------------------------------------------


def test_every_kind_of_bad_data_is_skipped_and_counted(tmp_path, caplog):
    good = jpeg(0)
    with webdataset.TarWriter(str(tmp_path / "img-00000.tar")) as writer:
        writer.write({"__key__": "good0", "jpg": good, "txt": "fine"})
        writer.write({"__key__": "truncated", "jpg": good[: len(good) // 2], "txt": "cut image"})
        writer.write({"__key__": "nocaption", "jpg": good})
        writer.write({"__key__": "emptycaption", "jpg": good, "txt": "   "})
        writer.write({"__key__": "badjson", "jpg": good, "json": b"{not json"})
        writer.write({"__key__": "good1", "jpg": good, "json": json.dumps({"caption": "from json"})})
    with tarfile.open(tmp_path / "img-00001.tar", "w"):
        pass  # a tar with no sample
    (tmp_path / "img-00002.tar").write_bytes(b"<html>403 Forbidden</html>" * 30)
    with webdataset.TarWriter(str(tmp_path / "aud-00000.tar")) as writer:
        writer.write({"__key__": "sound", "flac": flac(0, 0.1), "json": json.dumps({"text": "ok"})})
        writer.write({"__key__": "noise", "flac": b"fLaC but not really", "json": json.dumps({"text": "broken"})})
        writer.write({"__key__": "tooshort", "wav": _wav(100), "json": json.dumps({"text": "100 samples"})})
        writer.write({"__key__": "nosamples", "wav": _wav(0), "json": json.dumps({"text": "a header alone"})})
    sources = [
        image_source(tmp_path),
        SourceSpec(str(tmp_path / "aud-00000.tar"), ["audio", "text"], name="aud"),
    ]
    with caplog.at_level(logging.WARNING, logger="multimodal.data.pipeline.skip_counts"):
        stream = loader(sources, train=False, batch_size=8, log_skips_every=3)
        batches = list(stream)
    # 100 samples, not one 25 ms frame, are padded with silence to min_frames and kept, as the API keeps
    # them; a WAV header with no samples is refused, as everywhere.
    assert sorted(keys_of(batches)) == ["good0", "good1", "sound", "tooshort"]
    assert stream.stats.summary() == {
        "samples": {"img": 2, "aud": 2},
        "skipped": {
            "img": {"bad_image": 1, "missing_caption": 2, "bad_caption": 1, "empty_shard": 1, "unreadable_shard": 1},
            "aud": {"bad_audio": 2},
        },
        "total_skipped": 8,
    }
    (audio_batch,) = [batch for batch in batches if "audio" in batch]
    row = audio_batch["__key__"].index("tooshort")
    assert (~audio_batch["audio_padding_mask"][row]).sum() == AUDIO.min_frames
    assert "skipping data (bad_image)" in caplog.text and "truncated" in caplog.text
    assert "skipped so far" in caplog.text


def _wav(num_samples: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(num_samples, np.float32), 16000, format="WAV")
    return buffer.getvalue()


def test_a_source_without_any_valid_sample_is_an_error_naming_it(tmp_path):
    write_img2dataset(tmp_path)
    with webdataset.TarWriter(str(tmp_path / "nocaps-00000.tar")) as writer:
        for index in range(3):
            writer.write({"__key__": f"n{index}", "jpg": jpeg(index)})
    good = image_source(tmp_path)
    bad = SourceSpec(str(tmp_path / "nocaps-00000.tar"), ["image", "text"], name="uncaptioned")
    finite = loader([good, bad], train=False)
    with pytest.raises(ValueError, match="'uncaptioned' yielded no valid sample"):
        list(finite)
    resampled = loader([good, bad], train=True, samples_per_epoch=400)
    with pytest.raises(ValueError, match="'uncaptioned' yields no valid sample.*missing_caption"):
        list(resampled)


def test_a_finite_pass_may_end_quietly_on_a_source_without_any_valid_sample(tmp_path):
    """``allow_empty``: the caller (embed) names every skip itself, so an empty source is no error."""
    with webdataset.TarWriter(str(tmp_path / "nocaps-00000.tar")) as writer:
        for index in range(3):
            writer.write({"__key__": f"n{index}", "jpg": jpeg(index)})
    bad = SourceSpec(str(tmp_path / "nocaps-00000.tar"), ["image", "text"], name="uncaptioned")
    finite = loader([bad], train=False, allow_empty=True)
    assert list(finite) == []
    assert finite.stats.samples.get("uncaptioned", 0) == 0
    assert dict(finite.stats.skipped["uncaptioned"]) == {"missing_caption": 3}


def test_data_stats_add_up_worker_reports():
    stats = DataStats(["a", "b"], log_every=0)
    stats.add({"samples": {"a": 3}, "skipped": {"b": {"bad_image": 2}}, "examples": {}})
    stats.add({"samples": {"a": 1, "b": 2}, "skipped": {"b": {"bad_image": 1, "empty_shard": 1}}, "examples": {}})
    assert stats.summary() == {
        "samples": {"a": 4, "b": 2},
        "skipped": {"b": {"bad_image": 3, "empty_shard": 1}},
        "total_skipped": 4,
    }


# Mixing ----------------------------------------------------------------------------------------


def test_sources_mix_by_weight_one_source_per_batch(tmp_path):
    write_img2dataset(tmp_path, "heavy")
    write_img2dataset(tmp_path, "light")
    sources = [image_source(tmp_path, "heavy", weight=3.0), image_source(tmp_path, "light", weight=1.0)]
    batches = list(loader(sources, train=True, batch_size=2, samples_per_epoch=800, shuffle_buffer=0, seed=11))
    assert len(batches) == 400
    for batch in batches:
        assert all(key.startswith(batch["__source__"]) for key in batch["__key__"])
    heavy = sum(b["__source__"] == "heavy" for b in batches) / len(batches)
    assert 0.69 < heavy < 0.81  # 0.75 +- 2.8 standard deviations


# Preprocessing inside the loader equals the standalone functions ---------------------------------


def test_loader_images_equal_preprocess_image(tmp_path):
    write_img2dataset(tmp_path, num_shards=1)
    batch = next(iter(loader([SourceSpec(str(tmp_path / "img-00000.tar"), ["image", "text"])], train=False)))
    for row in range(4):
        torch.testing.assert_close(batch["image"][row], preprocess_image(jpeg(row), IMAGE), rtol=0, atol=1e-6)


def test_uint8_images_on_request_and_worker_normalisation_keeps_the_thread_count(tmp_path):
    write_img2dataset(tmp_path, num_shards=1)
    source = SourceSpec(str(tmp_path / "img-00000.tar"), ["image", "text"])
    threads = torch.get_num_threads()
    normalised = next(iter(loader([source], train=False, num_workers=1)))["image"]
    assert torch.get_num_threads() == threads  # the main process normalised on one thread, then restored it
    raw = next(iter(loader([source], train=False, normalize_images=False)))["image"]
    assert raw.dtype == torch.uint8 and raw.shape == (4, 3, 8, 8)
    torch.testing.assert_close(normalize_image(raw, IMAGE), normalised, rtol=0, atol=1e-6)


def test_after_the_loader_each_modality_with_a_config_is_finished_by_its_definition():
    from multimodal.data.pipeline.loader import finish_batch
    from multimodal.data.pipeline.main_process import RecycledBuffers

    crops = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ids = torch.tensor([[1, 2, 0], [3, 0, 0]])
    batch = {"image": crops, "text": ids, "__key__": ["a", "b"], "__source__": "s"}
    buffers = RecycledBuffers()
    finished = finish_batch(dict(batch), {"image": IMAGE, "text": None}, buffers=buffers, workers_busy=True)
    assert finished["image"].dtype == torch.float32 and finished["image"].shape == (2, 3, 8, 8)
    torch.testing.assert_close(finished["image"], normalize_image(crops, IMAGE), rtol=0, atol=0)
    if buffers._use_count is not None:  # written into the loader's reused memory (where torch tells its use)
        assert finished["image"].untyped_storage().data_ptr() == buffers.storages[0].data_ptr()
    assert finished["text"] is ids and finished["__key__"] == ["a", "b"]
    # No config for a modality: left as the workers made it; an image already float is not normalised twice.
    assert finish_batch(dict(batch), {})["image"] is crops
    assert finish_batch(dict(finished), {"image": IMAGE})["image"] is finished["image"]


def test_audio_eval_features_are_the_same_batched_or_alone(tmp_path):
    with webdataset.TarWriter(str(tmp_path / "aud-00000.tar")) as writer:
        # 3 frames (padded with silence to min_frames, 4), 3 windows of 12, and 8 frames
        for index, seconds in enumerate((0.05, 0.3, 0.1)):
            writer.write({"__key__": f"c{index}", "flac": flac(index, seconds), "txt": f"clip {index}"})
    source = SourceSpec(str(tmp_path / "aud-00000.tar"), ["audio", "text"])
    batch = next(iter(loader([source], train=False)))
    alone = [audio_to_features(flac(index, seconds), AUDIO) for index, seconds in enumerate((0.05, 0.3, 0.1))]
    windows = [window for clip in alone for window in clip]
    assert [len(clip) for clip in alone] == [1, 3, 1] and alone[0][0].shape == (AUDIO.min_frames, 16)
    assert batch["audio_window_clip"].tolist() == [0, 1, 1, 1, 2]
    assert batch["audio"].shape == (5, 12, 16)
    for row, window in enumerate(windows):
        length = window.shape[0]
        assert torch.equal(batch["audio"][row, :length], window)
        assert batch["audio_padding_mask"][row].tolist() == [False] * length + [True] * (12 - length)


def test_training_audio_is_one_crop_per_clip_without_padding_mask_when_full(tmp_path):
    with webdataset.TarWriter(str(tmp_path / "aud-00000.tar")) as writer:
        for index in range(4):
            writer.write({"__key__": f"c{index}", "flac": flac(index, 0.5), "txt": f"clip {index}"})
    batch = next(iter(loader([SourceSpec(str(tmp_path / "aud-00000.tar"), ["audio", "text"])], train=True)))
    assert batch["audio"].shape == (4, 12, 16)
    assert "audio_padding_mask" not in batch and "audio_window_clip" not in batch


# Arguments ----------------------------------------------------------------------------------------


def test_specs_and_arguments_are_validated(tmp_path):
    write_img2dataset(tmp_path)
    with pytest.raises(ValueError, match="distinct and not empty"):
        SourceSpec("x.tar", ["image", "image"])
    with pytest.raises(ValueError, match="at least two modalities to contrast"):
        loader([SourceSpec(str(tmp_path / "img-00000.tar"), ["image"])], train=True)
    with pytest.raises(ValueError, match="unknown modalities"):
        SourceSpec("x.tar", ["image", "video"])
    with pytest.raises(ValueError, match="weight must be a positive"):
        SourceSpec("x.tar", ["image", "text"], weight=0)
    source = image_source(tmp_path)
    with pytest.raises(ValueError, match="no image_config"):
        make_loader([source], batch_size=2, train=False)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        loader([source], train=False, samples_per_epoch=10)
    with pytest.raises(ValueError, match="rank"):
        loader([source], train=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="distinct"):
        loader([source, image_source(tmp_path)], train=True)


def test_evaluation_reads_one_modality_with_cls_labels_and_no_caption(tmp_path):
    with webdataset.TarWriter(str(tmp_path / "cls-00000.tar")) as writer:
        for index in range(5):  # an ImageNet-style shard: image and class index only
            writer.write({"__key__": f"k{index}", "jpg": jpeg(index), "cls": str(index % 2).encode()})
    source = SourceSpec(str(tmp_path / "cls-00000.tar"), ["image"], label_key="json:label;cls")
    batches = list(loader([source], train=False))
    assert keys_of(batches) == [f"k{index}" for index in range(5)]
    assert [label for batch in batches for label in batch["label"].tolist()] == [0, 1, 0, 1, 0]
    assert "text" not in batches[0] and batches[0]["image"].shape == (4, 3, 8, 8)


def test_without_a_tokenizer_text_is_the_caption_strings(tmp_path):
    keys = write_img2dataset(tmp_path, num_shards=1)
    source = SourceSpec(str(tmp_path / "img-00000.tar"), ["image", "text"])
    batch = next(iter(make_loader([source], batch_size=4, train=False, preprocess={"image": IMAGE})))
    assert batch["text"] == keys and "text_padding_mask" not in batch


def test_training_captions_and_crops_use_their_own_seeded_rng(tmp_path):
    """A sample's random choices depend on its place in its stream, not on what came before it."""
    write_img2dataset(tmp_path, num_shards=1)
    source = SourceSpec(str(tmp_path / "img-00000.tar"), ["image", "text"])
    full = list(loader([source], train=True, resampled=False, shuffle_buffer=0, batch_size=1, seed=4))
    random.seed(123)
    torch.manual_seed(123)  # the global RNGs play no part
    again = list(loader([source], train=True, resampled=False, shuffle_buffer=0, batch_size=1, seed=4))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(full, again))


def test_skip_summaries_come_after_log_every_skips_then_at_each_doubling(caplog):
    stats = DataStats(["a"], log_every=10)
    with caplog.at_level(logging.WARNING, logger="multimodal.data.pipeline.skip_counts"):
        for _ in range(100):
            stats.add({"skipped": {"a": {"missing_audio": 1}}})
    totals = [int(line.split("(")[1].split(")")[0]) for line in caplog.messages if line.startswith("skipped so far")]
    assert totals == [10, 20, 40, 80]


def tokenize_with_niceness(captions: list[str]) -> tuple[torch.Tensor, None]:
    """Runs in the worker: every id is the niceness of the process that tokenized."""
    import os

    return torch.full((len(captions), CONTEXT), os.nice(0), dtype=torch.int64), None


def test_workers_run_at_lower_priority_and_the_main_process_keeps_its_own(tmp_path):
    import os

    write_img2dataset(tmp_path, num_shards=1)
    source = SourceSpec(str(tmp_path / "img-00000.tar"), ["image", "text"])
    base = os.nice(0)
    batches = make_loader([source], batch_size=2, train=False, tokenize=tokenize_with_niceness, preprocess={"image": IMAGE},
                          num_workers=1, worker_nice=5)
    niceness = {int(value) for batch in batches for value in batch["text"].flatten()}
    assert niceness == {min(base + 5, 19)}  # once per worker process, however many batches it makes
    assert os.nice(0) == base
    in_process = make_loader([source], batch_size=2, train=False, tokenize=tokenize_with_niceness, preprocess={"image": IMAGE},
                             num_workers=0, worker_nice=5)
    assert {int(value) for batch in in_process for value in batch["text"].flatten()} == {base}
    with pytest.raises(ValueError, match="worker_nice must be in 0-19"):
        make_loader([source], batch_size=2, train=False, preprocess={"image": IMAGE}, worker_nice=20)
