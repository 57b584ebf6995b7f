"""The skip summary counts samples once each beside the draws of them: a resampled source reads its
shards again and again, so "missing_audio 7426 (valid 160)" on a 271-sample shard counted draws."""
import io
import logging

import numpy as np
import soundfile
import webdataset

from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.skip_counts import DISTINCT_LIMIT, DataStats, WorkerCounts
from multimodal.data.pipeline.source_spec import SourceSpec
from tests.apps.test_api import write_png


def test_workers_drawing_the_same_samples_count_each_once():
    stats = DataStats(["gc_aud"], log_every=0)
    for _ in range(2):  # two workers, each drawing every sample of the shard twice
        counts = WorkerCounts()
        for _ in range(2):
            for key in ("a", "b", "c"):
                counts.skip("gc_aud", "missing_audio", f"s.tar sample {key}: no audio", sample=f"s.tar\0{key}")
            counts.valid("gc_aud", sample="s.tar\0d")
            stats.add(counts.take())
    counts = WorkerCounts()
    counts.skip("gc_aud", "unreadable_shard", "t.tar: HTTP 404", shard="t.tar")  # a shard's read: no sample named
    counts.skip("gc_aud", "bad_audio", "s.tar sample e: cannot decode", sample="s.tar\0e")
    stats.add(counts.take())
    assert stats.summary()["skipped"] == {"gc_aud": {"missing_audio": 12, "unreadable_shard": 1, "bad_audio": 1}}
    assert stats.summary()["samples"] == {"gc_aud": 4}
    assert stats.distinct_samples() == {"gc_aud": {"bad_audio": 1, "missing_audio": 3, "valid": 1}}
    assert repr(stats) == ("DataStats(gc_aud: bad_audio 1 sample, missing_audio 3 samples (12 draws), "
                           "unreadable_shard 1; valid 1 sample (4 draws))")


def test_the_distinct_count_stops_at_its_limit_and_says_so():
    stats = DataStats(["s"], log_every=0)
    stats.add({"skipped": {"s": {"missing_audio": DISTINCT_LIMIT + 5}},
               "seen": {"s": {"missing_audio": list(range(DISTINCT_LIMIT + 5))}}})
    assert stats.distinct_samples() == {"s": {"missing_audio": DISTINCT_LIMIT}}
    assert f"missing_audio over {DISTINCT_LIMIT:,} samples ({DISTINCT_LIMIT + 5:,} draws)" in repr(stats)


def test_quiet_reasons_are_counted_without_a_warning_and_bring_on_no_summary(caplog):
    """An evaluation set's samples without its modality: counted, said by the caller; a decode error stays loud."""
    stats = DataStats(["spoken"], log_every=2, quiet=["missing_audio"])
    counts = WorkerCounts()
    with caplog.at_level(logging.WARNING, logger="multimodal.data.pipeline.skip_counts"):
        for key in ("a", "b", "c"):
            counts.skip("spoken", "missing_audio", f"s.tar sample {key}: no audio", sample=f"s.tar\0{key}")
        stats.add(counts.take())
        assert caplog.messages == []  # three skips past log_every, all quiet
        for key in ("d", "e"):
            counts.skip("spoken", "bad_audio", f"s.tar sample {key}: cannot decode", sample=f"s.tar\0{key}")
        stats.add(counts.take())
    assert caplog.messages == [
        "source 'spoken': skipping data (bad_audio): s.tar sample d: cannot decode; counted in loader.stats, "
        "summarised after 2 skips and each doubling",
        "skipped so far (5): spoken: bad_audio 2 samples, missing_audio 3 samples; valid 0"]
    assert stats.summary()["skipped"] == {"spoken": {"missing_audio": 3, "bad_audio": 2}}
    assert stats.total_skipped() == 5


def _wav(seed: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.1 * np.random.default_rng(seed).standard_normal(4000).astype(np.float32), 16000,
                    format="WAV")
    return buffer.getvalue()


def test_a_resampled_source_reports_samples_and_draws(tmp_path, caplog):
    """A shard of 10 samples, 3 with a sound, read by an audio source for many passes."""
    png = write_png(tmp_path / "a.png", seed=0).read_bytes()
    with webdataset.TarWriter(str(tmp_path / "mixed-000000.tar")) as writer:
        for index in range(10):
            sample = {"__key__": f"k{index}", "txt": f"caption {index}"}
            sample.update({"wav": _wav(index)} if index % 4 == 0 else {"png": png})  # k0, k4, k8 have a sound
            writer.write(sample)
    source = SourceSpec(str(tmp_path / "mixed-000000.tar"), ["audio", "text"], name="gc_aud")
    loader = make_loader([source], batch_size=3, train=True, preprocess={"audio": AudioPreprocessConfig()},
                         samples_per_epoch=30, shuffle_buffer=1, log_skips_every=20)
    with caplog.at_level(logging.WARNING, logger="multimodal.data.pipeline.skip_counts"):
        batches = list(loader)
    assert sum(len(batch["__key__"]) for batch in batches) == 30
    draws = loader.stats.summary()["skipped"]["gc_aud"]["missing_audio"]
    assert draws >= 60  # 30 sounds drawn: 10 passes over the shard, 7 picture-only samples skipped in each
    assert loader.stats.distinct_samples() == {"gc_aud": {"missing_audio": 7, "valid": 3}}
    summaries = [message for message in caplog.messages if message.startswith("skipped so far")]
    assert summaries and all("gc_aud: missing_audio 7 samples (" in message and "draws); valid 3 samples (" in message
                             for message in summaries)


def test_skipped_samples_are_named_once_each_in_order_only_when_asked():
    """What `multimodal embed` names on stderr: each skipped sample with its reason and message, a sample
    drawn again named once; a shard's own skip names no sample. Off by default (a training run would
    hold a message per skipped sample)."""
    kept, default = DataStats(["s"], log_every=0), DataStats(["s"], log_every=0)
    kept.keep_skipped_samples()
    counts = WorkerCounts()
    for _ in range(2):  # the same samples drawn twice
        counts.skip("s", "bad_image", "a.tar sample x: cannot decode", sample="a.tar\0x")
        counts.skip("s", "missing_image", "a.tar sample y: no image", sample="a.tar\0y")
    counts.skip("s", "truncated_shard", "a.tar: cut", shard="a.tar")
    report = counts.take()
    kept.add(report)
    default.add(report)
    assert kept.skipped_samples == {"s": [("bad_image", "a.tar\0x", "a.tar sample x: cannot decode"),
                                          ("missing_image", "a.tar\0y", "a.tar sample y: no image")]}
    assert default.skipped_samples is None and default.summary() == kept.summary()
