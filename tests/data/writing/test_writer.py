"""Shard writer: layouts, manifests, size limits, sizes.json, splits, skipped files, atomic writes."""
import csv
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchvision

from multimodal.data.writing.writer import (
    SampleSource,
    SkippedSample,
    make_key,
    samples_from_folder,
    samples_from_manifest,
    shard_spec,
    write_shards,
)


def png_bytes(seed: int, size: int = 8) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
    return torchvision.io.encode_png(image).numpy().tobytes()


def flac_bytes(seed: int, num_samples: int = 800) -> bytes:
    wave = np.random.default_rng(seed).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, 8000, format="FLAC")
    return buffer.getvalue()


def read_shards(shards):
    """{key: {extension: bytes}} over all shards, and the per-shard sample counts."""
    samples, counts = {}, []
    for shard in shards:
        keys = set()
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
                keys.add(key)
        counts.append(len(keys))
    return samples, counts


def memory_samples(count: int, png_size: int = 8):
    return [
        SampleSource(
            key=f"sample{index:04d}",
            media={"png": png_bytes(index, png_size)},
            caption=f"caption {index}",
            extra={"label": index % 10},
        )
        for index in range(count)
    ]


@pytest.fixture
def caption_folder(tmp_path):
    root = tmp_path / "captions"
    (root / "sub").mkdir(parents=True)
    (root / "img0.png").write_bytes(png_bytes(0))
    (root / "img0.txt").write_text("  a red square \n", encoding="utf-8")
    (root / "img0.json").write_text(json.dumps({"photographer": "me"}))
    (root / "sub" / "clip one.flac").write_bytes(flac_bytes(1))
    (root / "sub" / "clip one.txt").write_text("a beep", encoding="utf-8")
    (root / "both.png").write_bytes(png_bytes(2))
    (root / "both.flac").write_bytes(flac_bytes(2))
    (root / "both.txt").write_text("a picture and its sound", encoding="utf-8")
    (root / "broken.png").write_bytes(b"\x89PNG this is not an image")
    (root / "broken.txt").write_text("should be skipped", encoding="utf-8")
    (root / "sub" / "bad.flac").write_bytes(b"fLaC truncated")
    (root / "sub" / "bad.txt").write_text("should be skipped too", encoding="utf-8")
    (root / "nocaption.png").write_bytes(png_bytes(3))
    (root / "orphan.txt").write_text("caption without media", encoding="utf-8")
    (root / "odd.bmp").write_bytes(b"BM")
    (root / "odd.txt").write_text("unsupported type", encoding="utf-8")
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def test_folder_with_caption_files(caption_folder, tmp_path):
    sources = samples_from_folder(caption_folder)
    progress = []
    result = write_shards(sources, tmp_path / "out", prefix="data", progress=progress.append)
    assert result.num_written == 3
    assert set(result.splits) == {"all"}
    samples, _ = read_shards(result.shards)
    assert set(samples) == {"img0", "sub__clip_one", "both"}
    assert samples["img0"]["txt"] == b"a red square"
    assert json.loads(samples["img0"]["json"]) == {"photographer": "me"}
    assert samples["img0"]["png"] == (caption_folder / "img0.png").read_bytes()
    assert set(samples["both"]) == {"png", "flac", "txt"}
    assert samples["sub__clip_one"]["flac"] == (caption_folder / "sub" / "clip one.flac").read_bytes()
    skips = {Path(skip.origin.rstrip(".*")).name: skip for skip in result.skipped}
    assert {name: skip.reason for name, skip in skips.items()} == {
        "broken": "bad_image", "bad": "bad_audio", "nocaption": "no_caption", "orphan": "no_media", "odd": "no_media",
    }
    assert "png does not decode" in skips["broken"].detail
    assert "flac does not decode" in skips["bad"].detail
    assert "no caption" in skips["nocaption"].detail
    assert skips["orphan"].detail == "no image or audio file (a caption or .json without its media file)"
    assert skips["odd"].detail.endswith("(beside it only .bmp, not read)")
    assert result.ignored_files == {"bmp": 1} and result.num_listed == 8
    assert result.skip_counts == {"no_media": 2, "bad_image": 1, "bad_audio": 1, "no_caption": 1}
    # skipped.jsonl names the samples skipped, then every other file not used: the .bmp too.
    assert result.unused_files == [
        SkippedSample(str(caption_folder / "odd.bmp"), "type_not_read", "not read: '.bmp' is not a type shards reads")
    ]
    assert [json.loads(line) for line in result.skipped_file.read_text().splitlines()] == [
        skip._asdict() for skip in result.skipped + result.unused_files
    ]
    # The callback saw every sample; the final counts add up.
    assert [p.processed for p in progress] == list(range(1, 9))
    assert progress[-1].written == 3 and progress[-1].skipped == 5 and progress[-1].total == 8


def test_folder_with_class_subfolders(tmp_path):
    root = tmp_path / "classes"
    for class_index, name in enumerate(["dog_house", "cat"]):
        (root / name).mkdir(parents=True)
        for index in range(3):
            (root / name / f"{index}.png").write_bytes(png_bytes(10 * class_index + index))
    (root / "cat" / "meow.wav").write_bytes(flac_bytes(5))  # FLAC bytes under .wav: still decodes
    sources = samples_from_folder(root, caption_template={"audio": "the sound of a {}"})
    result = write_shards(sources, tmp_path / "out")
    assert result.skipped == [] and result.num_written == 7
    samples, _ = read_shards(result.shards)
    assert samples["dog_house__0"]["txt"] == b"a photo of dog house."
    assert json.loads(samples["dog_house__0"]["json"]) == {"label": 1, "class_name": "dog house"}
    assert json.loads(samples["cat__2"]["json"]) == {"label": 0, "class_name": "cat"}
    assert samples["cat__meow"]["txt"] == b"the sound of a cat"
    with pytest.raises(ValueError, match="needs a '\\{\\}'"):
        samples_from_folder(root, caption_template="no placeholder")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest(kind, tmp_path):
    (tmp_path / "media").mkdir()
    rows = []
    for index in range(4):
        (tmp_path / "media" / f"{index}.png").write_bytes(png_bytes(index))
        rows.append({"path": f"media/{index}.png", "caption": f"picture {index}", "source": "unit test", "width": "8"})
    rows.append({"path": "media/missing.png", "caption": "gone", "source": "unit test", "width": "8"})
    manifest = tmp_path / f"manifest.{kind}"
    if kind == "csv":
        with open(manifest, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = write_shards(samples_from_manifest(manifest), tmp_path / "out", shuffle=False)
    samples, _ = read_shards(result.shards)
    assert sorted(samples) == ["media__0", "media__1", "media__2", "media__3"]
    assert samples["media__2"]["txt"] == b"picture 2"
    assert json.loads(samples["media__2"]["json"]) == {"source": "unit test", "width": "8"}
    assert samples["media__2"]["png"] == (tmp_path / "media" / "2.png").read_bytes()
    assert len(result.skipped) == 1
    origin, reason, detail = result.skipped[0]
    assert "missing.png" in origin and reason == "unreadable" and "cannot read media file" in detail


def test_manifest_errors(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("file,text\na.png,hello\n")
    with pytest.raises(ValueError, match=r"lacks \['path', 'caption'\]"):
        samples_from_manifest(manifest)
    (tmp_path / "bad.jsonl").write_text('{"path": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        samples_from_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="must be a .csv or .jsonl"):
        samples_from_manifest(tmp_path / "manifest.txt")


def test_sample_count_limit_and_sizes_json(tmp_path):
    result = write_shards(memory_samples(10), tmp_path, prefix="digits", max_samples_per_shard=3)
    names = [shard.name for shard in result.shards]
    assert names == [f"digits-{index:06d}.tar" for index in range(4)]
    samples, counts = read_shards(result.shards)
    assert counts == [3, 3, 3, 1] and len(samples) == 10
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert sizes == dict(zip(names, counts))
    assert result.splits["all"].spec == str(tmp_path / "digits-{000000..000003}.tar")
    assert not list(tmp_path.glob("*.partial"))


def test_byte_limit(tmp_path):
    sources = memory_samples(12, png_size=48)  # ~7 KB of noise each
    limit = 40 * 1024
    result = write_shards(sources, tmp_path, max_bytes_per_shard=limit)
    sizes = [shard.stat().st_size for shard in result.shards]
    assert len(sizes) > 2 and all(size <= limit for size in sizes)
    samples, counts = read_shards(result.shards)
    assert len(samples) == 12 and sum(counts) == 12
    # A sample larger than the limit gets a shard of its own rather than being dropped.
    big = [SampleSource("big", {"png": png_bytes(0, 96)}, caption="big")]
    result = write_shards(big + memory_samples(2), tmp_path / "big", max_bytes_per_shard=20 * 1024, shuffle=False)
    assert read_shards(result.shards)[1][0] == 1 and result.num_written == 3


def test_validation_split_is_deterministic_and_disjoint(tmp_path):
    sources = memory_samples(200, png_size=2)
    first = write_shards(sources, tmp_path / "a", validation_fraction=0.25, seed=3, max_samples_per_shard=40)
    second = write_shards(list(reversed(sources)), tmp_path / "b", validation_fraction=0.25, seed=3)
    other_seed = write_shards(sources, tmp_path / "c", validation_fraction=0.25, seed=4)
    keys = {}
    for name, result in [("a", first), ("b", second), ("c", other_seed)]:
        assert set(result.splits) == {"train", "val"}
        keys[name] = {split: set(read_shards(r.shards)[0]) for split, r in result.splits.items()}
        assert keys[name]["train"].isdisjoint(keys[name]["val"])
        assert len(keys[name]["train"] | keys[name]["val"]) == 200
    assert keys["a"] == keys["b"]  # independent of the order samples come in
    assert keys["a"]["val"] != keys["c"]["val"]
    assert 25 <= len(keys["a"]["val"]) <= 75
    assert first.splits["val"].directory == tmp_path / "a" / "val"
    for split in ("train", "val"):
        sizes = json.loads((tmp_path / "a" / split / "sizes.json").read_text())
        assert sum(sizes.values()) == len(keys["a"][split]) == first.splits[split].num_samples


def test_identical_bytes_and_deterministic_headers(tmp_path):
    sources = memory_samples(20)
    first = write_shards(sources, tmp_path / "a", max_samples_per_shard=8, seed=1)
    second = write_shards(sources, tmp_path / "b", max_samples_per_shard=8, seed=1)
    digest = lambda paths: [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]  # noqa: E731
    assert digest(first.shards) == digest(second.shards)
    with tarfile.open(first.shards[0]) as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")


def test_readable_by_webdataset(tmp_path):
    import webdataset

    result = write_shards(memory_samples(7), tmp_path, max_samples_per_shard=3)
    dataset = webdataset.WebDataset(result.splits["all"].spec, shardshuffle=False, empty_check=False)
    samples = list(dataset)
    assert len(samples) == 7
    assert all({"__key__", "png", "txt", "json"} <= set(sample) for sample in samples)
    by_key = {sample["__key__"]: sample for sample in samples}
    assert by_key["sample0003"]["txt"] == b"caption 3"
    assert by_key["sample0003"]["png"] == png_bytes(3)


def test_existing_shards_need_overwrite_and_stale_ones_go(tmp_path):
    write_shards(memory_samples(9), tmp_path, max_samples_per_shard=3)
    with pytest.raises(ValueError, match="already holds 3 shard"):
        write_shards(memory_samples(2), tmp_path)
    result = write_shards(memory_samples(2), tmp_path, max_samples_per_shard=3, overwrite=True)
    assert sorted(path.name for path in tmp_path.glob("*.tar")) == ["shard-000000.tar"]
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"shard-000000.tar": 2}
    assert result.num_written == 2


def test_failure_leaves_no_half_written_shard(tmp_path):
    calls = []

    def failing_validator(extension, data):
        calls.append(extension)
        if len(calls) == 5:
            raise KeyboardInterrupt  # not a decoding error: aborts the whole write

    with pytest.raises(KeyboardInterrupt):
        write_shards(memory_samples(10), tmp_path, max_samples_per_shard=3, validator=failing_validator)
    # The first full shard was completed and renamed; the one in progress is gone.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shard-000000.tar"]
    assert read_shards([tmp_path / "shard-000000.tar"])[1] == [3]


def test_duplicate_and_invalid_keys_are_skipped(tmp_path):
    sources = memory_samples(2) + [
        SampleSource("sample0000", {"png": png_bytes(9)}, caption="again"),
        SampleSource("has.dot", {"png": png_bytes(9)}, caption="dot"),
    ]
    result = write_shards(sources, tmp_path, shuffle=False)
    assert result.num_written == 2
    assert [skip.reason for skip in result.skipped] == ["duplicate_key", "bad_key"]


def test_keys_and_specs():
    assert make_key("cats/tabby 01") == "cats__tabby_01"
    assert make_key("a.b/c") == "a_b__c"
    assert shard_spec([]) == ""
    assert shard_spec([Path("d/x-000004.tar")]) == "d/x-000004.tar"
    assert shard_spec([Path("d/x-000000.tar"), Path("d/x-000001.tar")]) == "d/x-{000000..000001}.tar"


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="validation_fraction"):
        write_shards([], tmp_path, validation_fraction=1.0)
    with pytest.raises(ValueError, match="max_samples_per_shard"):
        write_shards([], tmp_path, max_samples_per_shard=0)
    with pytest.raises(ValueError, match="prefix"):
        write_shards([], tmp_path, prefix="a/b")
    with pytest.raises(ValueError, match="not a directory"):
        samples_from_folder(tmp_path / "missing")


def caption_sample(caption, extra=None, key="s"):
    return SampleSource(key, {"png": png_bytes(0)}, caption=caption, extra=extra)


def test_multi_line_captions_by_policy(tmp_path):
    text = "First line.\n\n  Second line. \r\nThird.\n"
    members = {}
    for policy in ("lines", "first", "whole"):
        result = write_shards([caption_sample(text)], tmp_path / policy, caption_lines=policy)
        assert result.multi_line_captions == 1 and result.caption_lines == policy
        members[policy] = read_shards(result.shards)[0]["s"]
    assert "txt" not in members["lines"]
    assert json.loads(members["lines"]["json"]) == {"caption": ["First line.", "Second line.", "Third."]}
    assert members["first"]["txt"] == b"First line." and "json" not in members["first"]
    assert members["whole"]["txt"] == text.strip().encode()
    # One line (after blank ones are dropped) is a plain .txt, not counted.
    result = write_shards([caption_sample("\n  Only one. \n\n")], tmp_path / "one")
    assert result.multi_line_captions == 0 and read_shards(result.shards)[0]["s"]["txt"] == b"Only one."
    with pytest.raises(ValueError, match=r"caption_lines must be one of \('lines', 'first', 'whole'\)"):
        write_shards([], tmp_path / "bad", caption_lines="all")


def test_caption_list_and_a_caption_field_conflict(tmp_path):
    sources = [caption_sample("a\nb", extra={"caption": "c"}, key="both"), caption_sample("  \n", key="blank")]
    result = write_shards(sources, tmp_path, shuffle=False)
    assert [(skip.reason, skip.origin) for skip in result.skipped] == [("caption_conflict", "both"), ("empty_caption", "blank")]
    assert result.skipped[0].detail.startswith("the extra fields has a 'caption' field and the caption has 2 lines")
    assert result.skip_fraction == 1.0 and result.num_written == 0


def test_svg_without_the_rasteriser_is_counted_and_explained(tmp_path, monkeypatch):
    from multimodal.data.preprocess import svg

    monkeypatch.setattr(svg, "svg_support_available", lambda: False)
    root = tmp_path / "in"
    root.mkdir()
    (root / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    (root / "drawing.txt").write_text("a drawing")
    (root / "song.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    (root / "song.flac").write_bytes(flac_bytes(0))
    (root / "song.txt").write_text("a song with its cover drawing")
    result = write_shards(samples_from_folder(root), tmp_path / "out")
    assert [skip.reason for skip in result.skipped] == ["svg_unsupported"]
    assert "pip install 'multimodal-contrastive[svg]'" in result.skipped[0].detail
    # The drawing's SVG is reported by its skip; the song's is named (SVG is a type read: not "ignored"),
    # and the song keeps its sound.
    assert result.ignored_files == {} and result.num_written == 1
    assert [(entry.origin, entry.reason) for entry in result.unused_files] == [(str(root / "song.svg"), "svg_unsupported")]
    assert "pip install 'multimodal-contrastive[svg]'" in result.unused_files[0].detail
    assert set(read_shards(result.shards)[0]["song"]) == {"flac", "txt"}


def test_unknown_types_in_class_folders_and_manifests(tmp_path):
    root = tmp_path / "classes"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "0.png").write_bytes(png_bytes(0))
    (root / "cat" / "Thumbs.db").write_bytes(b"\0")
    (root / "cat" / "notes.txt").write_text("not a caption in this layout")
    result = write_shards(samples_from_folder(root, layout="classes"), tmp_path / "a")
    # Ignored means a type not read; the .txt is read in other layouts: named with its own reason.
    assert result.num_listed == 1 and result.skipped == [] and result.ignored_files == {"db": 1}
    assert sorted((Path(entry.origin).name, entry.reason) for entry in result.unused_files) == [
        ("Thumbs.db", "type_not_read"), ("notes.txt", "captions_from_classes")]
    # A manifest names its file: a type not read is that row's failure.
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "classes/cat/Thumbs.db", "caption": "x"}) + "\n")
    result = write_shards(samples_from_manifest(tmp_path / "m.jsonl"), tmp_path / "b")
    assert [skip.reason for skip in result.skipped] == ["unsupported_type"]
    assert "unsupported file type '.db'" in result.skipped[0].detail


def test_image_statistics_file_and_sampling(tmp_path):
    from multimodal.data.preprocess.image_stats import read_image_stats

    sources = memory_samples(12, png_size=4)
    result = write_shards(sources, tmp_path / "a", stats_max_images=5, validation_fraction=0.3, seed=1)
    for split in result.splits.values():
        stats = read_image_stats(split.directory)
        assert stats.images_written == split.num_samples and stats.images_measured == min(5, split.num_samples)
        assert stats == split.image_stats or stats.mean == pytest.approx(split.image_stats.mean, abs=1e-4)
    # Without validation the images are still measured (decoded only for the statistics); the same numbers.
    validated = write_shards(sources, tmp_path / "b").splits["all"].image_stats
    unvalidated = write_shards(sources, tmp_path / "c", validate=False).splits["all"].image_stats
    assert validated == unvalidated and validated.images_measured == 12
    pixels = torch.stack([torchvision.io.decode_png(torch.frombuffer(bytearray(s.media["png"]), dtype=torch.uint8))
                          for s in sources]).double() / 255  # (12, 3, 4, 4)
    assert validated.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist())
    assert validated.override_arguments().startswith("--model.image_preprocess.mean '[")
    # Audio only: no statistics, and a stale file goes.
    (tmp_path / "c" / "shard-000000.tar").unlink()
    write_shards([SampleSource("clip", {"flac": flac_bytes(0)}, caption="beep")], tmp_path / "c", overwrite=True)
    assert read_image_stats(tmp_path / "c") is None
    (tmp_path / "c" / "image_stats.json").write_text('{"format_version": 9}')
    with pytest.raises(ValueError, match="not an image statistics file this version reads"):
        read_image_stats(tmp_path / "c")


def tone_flac(seconds: float, rate: int = 16_000) -> bytes:
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * rate)) / rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave.astype(np.float32), rate, format="FLAC")
    return buffer.getvalue()


@pytest.mark.parametrize("policy, captions, long_captions", [("lines", 4, 1), ("first", 3, 0), ("whole", 3, 1)])
def test_lengths_of_every_sample_written_against_a_window_and_context(tmp_path, policy, captions, long_captions):
    from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig
    from multimodal.data.lengths import LengthLimits

    # A 1.015 s window (100 frames) and 3 caption words besides start and end of text.
    limits = LengthLimits(audio=AudioPreprocessConfig(num_mel_bins=64, max_frames=100), context_length=5)
    sources = [
        SampleSource("short", {"flac": tone_flac(0.5)}, caption="a short beep"),
        SampleSource("long", {"flac": tone_flac(2.0)}, caption="a beep\na beep that lasts two seconds"),
        SampleSource("longer", {"flac": tone_flac(5.0), "png": png_bytes(1)}, caption="five seconds"),
        SampleSource("broken", {"flac": b"fLaC truncated"}, caption="never written, never counted at all"),
    ]
    result = write_shards(sources, tmp_path, caption_lines=policy, lengths=limits)
    counts = result.lengths
    assert (counts.clips, counts.long_clips, counts.longest_seconds) == (3, 2, 5.0)
    assert counts.mean_seconds == pytest.approx(2.5) and counts.clip_frames == {48: 1, 198: 1, 498: 1}
    # Counted in words (no tokenizer): "lines" counts each line of the two-line caption.
    assert (counts.captions, counts.long_captions) == (captions, long_captions)
    assert write_shards(sources, tmp_path / "plain").lengths is None


def test_a_caption_read_as_empty_or_an_empty_clip_does_not_stop_a_measured_write(tmp_path):
    """A caption of "[]" (img2dataset's empty list) is written unmeasured; a clip with no samples is
    refused as bad_audio, as every reader refuses it; the other samples are written."""
    from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig
    from multimodal.data.lengths import LengthLimits

    empty_clip = io.BytesIO()
    soundfile.write(empty_clip, np.zeros(0, dtype=np.float32), 8000, format="WAV")
    samples = [SampleSource("listed", {"flac": flac_bytes(0)}, caption="[]"),
               SampleSource("fine", {"flac": flac_bytes(1)}, caption="a tone"),
               SampleSource("silent", {"wav": empty_clip.getvalue()}, caption="nothing")]
    result = write_shards(samples, tmp_path / "out", shuffle=False,
                          lengths=LengthLimits(audio=AudioPreprocessConfig(), context_length=16))
    written, _ = read_shards(result.splits["all"].shards)
    assert sorted(written) == ["fine", "listed"]
    assert [(skip.origin, skip.reason) for skip in result.skipped] == [("silent", "bad_audio")]
    assert result.lengths.clips == 2 and result.lengths.captions == 1
