"""The learning benchmark beside open_clip's trainer: the same towers on both sides, its logs read right, its shards read."""
import io
import tarfile

import pytest

from bench import bench_learning

OPEN_CLIP_LINES = """\
2026-12-03,19:30:08 | INFO | Train Epoch: 0 [18944/19200 (99%)] Data (t): 0.002 Batch (t): 0.107, 1191.16/s, 1191.16/s/gpu LR: 0.000004 Logit Scale: 13.890 Contrastive_loss: 3.1484 (3.8413) Loss: 3.1484 (3.8413)
2026-12-03,19:30:08 | INFO | Train Epoch: 0 [19072/19200 (99%)] Data (t): 0.002 Batch (t): 0.109, 1176.46/s, 1176.46/s/gpu LR: 0.000002 Logit Scale: 13.890 Contrastive_loss: 2.8867 (3.8349) Loss: 2.8867 (3.8349)
2026-12-03,19:30:09 | INFO | Start epoch 1
"""

OUR_LINES = """\
{"step": 1, "loss": 4.9, "loss/text_image": 4.9, "lr": 4e-05, "samples_per_s": 900.5, "data_wait": 0.9, "skipped": 0}
{"step": 2, "loss": 4.7, "loss/text_image": 4.7, "lr": 8e-05, "samples_per_s": 1800.0, "data_wait": 0.1, "skipped": 0}
{"step": 2, "image_zeroshot/accuracy@1": 0.5}
"""


def test_both_trainers_logs_give_one_loss_and_one_speed_a_step():
    assert bench_learning.open_clip_log(OPEN_CLIP_LINES) == ([3.1484, 2.8867], [1191.16, 1176.46])
    assert bench_learning.our_log(OUR_LINES) == ([4.9, 4.7], [900.5, 1800.0])


def test_the_loss_figure_is_the_mean_of_the_last_third_of_the_steps():
    assert bench_learning.tail_mean([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]) == pytest.approx(2.0)
    assert bench_learning.tail_mean([5.0, 4.0]) == pytest.approx(4.0)  # rounded up: never an empty window
    assert bench_learning.tail_mean([3.0]) == 3.0


@pytest.fixture
def clip_tokenizer(tmp_path):
    from multimodal.data.tokenization.clip_tokenizer import ClipTokenizer

    return ClipTokenizer.from_bpe_file().save(tmp_path / "clip-tokenizer.json")


def test_both_sides_build_the_same_towers(tmp_path, clip_tokenizer):
    pytest.importorskip("open_clip")
    config_dir = bench_learning.write_open_clip_config(tmp_path / "config")
    assert bench_learning.check_same_architecture(config_dir, clip_tokenizer) == 6_916_609


def test_towers_that_differ_are_refused_before_anything_trains(tmp_path, clip_tokenizer, monkeypatch):
    pytest.importorskip("open_clip")
    vision = dict(bench_learning.OPEN_CLIP_CONFIG["vision_cfg"], layers=3)
    monkeypatch.setitem(bench_learning.OPEN_CLIP_CONFIG, "vision_cfg", vision)
    config_dir = bench_learning.write_open_clip_config(tmp_path / "config")
    with pytest.raises(RuntimeError, match="not the same towers"):
        bench_learning.check_same_architecture(config_dir, clip_tokenizer)


def test_open_clip_train_reads_webdataset_shards_once_patched(tmp_path, monkeypatch):
    pytest.importorskip("open_clip_train")
    import open_clip_train.data as open_clip_data

    monkeypatch.setattr(open_clip_data, "tar_file_expander", open_clip_data.tar_file_expander)  # undone after
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [("a.png", b"png a"), ("a.txt", b"a one"), ("b.png", b"png b"), ("b.txt", b"a two")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bench_learning.patch_open_clip_shard_reader()
    samples = list(open_clip_data.tarfile_to_samples_nothrow([{"url": str(shard)}]))
    assert [(s["__key__"], s["png"], s["txt"]) for s in samples] == [("a", b"png a", b"a one"), ("b", b"png b", b"a two")]
