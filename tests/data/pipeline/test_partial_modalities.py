"""Shards where only some samples carry a modality: the source of it skips the others and goes on.

A source fails only when a whole pass over its shards yields nothing valid; a skipped
sample never marks its shard as failed.
"""
from __future__ import annotations

import pytest
import webdataset

from multimodal.data.pipeline import batches as batch_making
from multimodal.data.pipeline.source_spec import SourceSpec
from tests.data.pipeline.test_pipeline import flac, jpeg, keys_of, loader


def write_shards(directory, *, num_shards: int, per_shard: int, has_audio) -> list[str]:
    """Image-text shards; sample ``i`` (counted over all shards) also has a flac when ``has_audio(i)``."""
    keys = []
    for shard in range(num_shards):
        with webdataset.TarWriter(str(directory / f"mixed-{shard:05d}.tar")) as writer:
            for _ in range(per_shard):
                index = len(keys)
                sample = {"__key__": f"s{index:04d}", "jpg": jpeg(index), "txt": f"sample {index}"}
                if has_audio(index):
                    sample["flac"] = flac(index, 0.1)
                writer.write(sample)
                keys.append(sample["__key__"])
    return keys


def sources(directory, num_shards: int) -> tuple[SourceSpec, SourceSpec]:
    shards = str(directory / f"mixed-{{00000..{num_shards - 1:05d}}}.tar")
    return (SourceSpec(shards, ["image", "text"], name="images"), SourceSpec(shards, ["audio", "text"], name="speech"))


@pytest.mark.parametrize(
    "resampled, num_workers, shuffle_buffer",
    [(True, 0, 0), (True, 0, 1000), (True, 2, 1000), (False, 0, 0), (False, 2, 0)],
)
def test_an_audio_source_goes_on_past_samples_without_audio(tmp_path, resampled, num_workers, shuffle_buffer):
    write_shards(tmp_path, num_shards=1, per_shard=6, has_audio=lambda index: index == 5)
    _, speech = sources(tmp_path, 1)
    if resampled:
        stream = loader([speech], train=True, batch_size=2, samples_per_epoch=6, num_workers=num_workers,
                        shuffle_buffer=shuffle_buffer)
        batches = list(stream)
        assert len(batches) == 3 and set(keys_of(batches)) == {"s0005"}
    else:
        stream = loader([speech], train=False, batch_size=2, num_workers=num_workers)
        batches = list(stream)
        assert keys_of(batches) == ["s0005"]
        assert stream.stats.skipped["speech"] == {"missing_audio": 5}
    assert batches[0]["audio"].shape[0] == len(batches[0]["__key__"])
    assert set(stream.stats.skipped["speech"]) == {"missing_audio"}


@pytest.mark.parametrize("resampled, num_workers", [(True, 0), (True, 2), (False, 0), (False, 2)])
def test_the_same_shards_serve_an_image_source_and_a_sparse_audio_source_at_once(tmp_path, resampled, num_workers):
    keys = write_shards(tmp_path, num_shards=2, per_shard=12, has_audio=lambda index: index % 6 == 3)
    with_audio = {key for index, key in enumerate(keys) if index % 6 == 3}
    images, speech = sources(tmp_path, 2)
    if resampled:
        stream = loader([images, speech], train=True, batch_size=2, samples_per_epoch=40, num_workers=num_workers,
                        seed=2)
    else:
        stream = loader([images, speech], train=False, batch_size=4, num_workers=num_workers)
    batches = list(stream)
    by_source = {name: [key for b in batches if b["__source__"] == name for key in b["__key__"]]
                 for name in ("images", "speech")}
    assert by_source["images"] and by_source["speech"]
    assert set(by_source["speech"]) <= with_audio
    assert all("audio" in b and "image" not in b for b in batches if b["__source__"] == "speech")
    skipped = stream.stats.skipped
    assert set(skipped["speech"]) == {"missing_audio"} and skipped["images"] == {}
    if not resampled:  # each sample once: every image, the 4 clips; 20 skipped for want of audio
        assert sorted(by_source["images"]) == keys and sorted(by_source["speech"]) == sorted(with_audio)
        assert skipped["speech"] == {"missing_audio": 20}
        assert stream.stats.samples == {"images": 24, "speech": 4}


@pytest.mark.parametrize("resampled, num_workers", [(True, 0), (True, 2), (False, 0), (False, 2)])
def test_a_source_whose_shards_never_carry_its_modality_still_fails(tmp_path, resampled, num_workers):
    write_shards(tmp_path, num_shards=2, per_shard=6, has_audio=lambda index: False)
    (tmp_path / "mixed-00002.tar").write_bytes(b"<html>403 Forbidden</html>" * 30)  # and one shard unreadable
    images, speech = sources(tmp_path, 3)
    if resampled:
        stream = loader([images, speech], train=True, batch_size=2, num_workers=num_workers, seed=1)
        message = r"source 'speech' yields no valid sample: a whole pass over its 3 shards gave none \(skipped: "
        message += r"\{'missing_audio': \d+, 'unreadable_shard': \d+\}\)\. "
        message += r"Check its shards .* modalities=\['audio', 'text'\]"
    else:
        stream = loader([images, speech], train=False, batch_size=4, num_workers=num_workers)
        message = r"source 'speech' yielded no valid sample from its 3 shards on this rank .*'missing_audio': 12"
    with pytest.raises(ValueError, match=message):
        for _ in stream:  # endless when resampled: only the error ends it
            pass


def test_a_resampled_source_without_its_modality_fails_after_one_pass_despite_its_shuffle_buffer(tmp_path):
    write_shards(tmp_path, num_shards=1, per_shard=6, has_audio=lambda index: False)
    _, speech = sources(tmp_path, 1)
    # A sample without audio takes no place in the 1000-sample buffer: the 6 of one pass are judged at once.
    with pytest.raises(ValueError, match=r"'speech' yields no valid sample: .* \(skipped: \{'missing_audio': 6\}\)"):
        next(iter(loader([speech], train=True, shuffle_buffer=1000)))


def test_a_source_of_many_shards_fails_before_reading_them_all(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_making, "EMPTY_SOURCE_FAILURES", 30)
    monkeypatch.setattr(batch_making, "EMPTY_SOURCE_MIN_SHARDS", 3)
    write_shards(tmp_path, num_shards=40, per_shard=2, has_audio=lambda index: False)
    _, speech = sources(tmp_path, 40)
    with pytest.raises(ValueError, match=r"'speech' yields no valid sample: 30 failures over \d+ of its 40 shards"):
        next(iter(loader([speech], train=True, shuffle_buffer=0)))
