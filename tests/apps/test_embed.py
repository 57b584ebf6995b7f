"""Embedding extraction: keys aligned with vectors despite broken inputs, shard parts, resuming, ranks."""
import json
import os
import stat
import tarfile

from pathlib import Path

import numpy as np
import pytest
import torch

from multimodal.data.pipeline.shard_reader import read_shard
from multimodal.data.writing.writer import samples_from_folder, write_shards
from multimodal.apps import embedding, embedding_outputs
from multimodal.apps.api import load_embedding_model as load
from multimodal.errors import ArgumentNeeded
from tests.apps.test_api import tiny_checkpoint, write_png, write_wav


@pytest.fixture(scope="module")
def model():
    return load(tiny_checkpoint(), precision="fp32", batch_size=4)


@pytest.fixture()
def image_folder(tmp_path):
    root = tmp_path / "images"
    for index in range(5):
        write_png(root / ("cats" if index % 2 else "dogs") / f"{index}.png", seed=index)
    write_png(root / "dogs" / "nested" / "deep.png", seed=9)
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG but not really")
    (root / "cats" / "notes.txt").write_text("not an image: not listed")
    (root / "dogs" / ".hidden.png").write_bytes(b"hidden files are left out")
    return root


def test_files_keep_keys_and_vectors_aligned_around_broken_inputs(model, image_folder, tmp_path):
    updates = []
    result = embedding.embed_files(model, "image", [image_folder], tmp_path / "emb.npy", progress=updates.append)
    vectors, keys = embedding_outputs.read_embeddings(tmp_path / "emb.npy")
    assert json.loads((tmp_path / "emb.keys.json").read_text()) == keys
    broken = str(image_folder / "cats" / "broken.png")
    assert [key for key, _ in result.skipped] == [broken] and "cannot decode image" in result.skipped[0][1]
    expected_keys = sorted(str(p) for p in image_folder.rglob("*.png") if p.name not in ("broken.png", ".hidden.png"))
    assert keys == expected_keys and vectors.shape == (6, model.embed_dim) and vectors.dtype == np.float32
    # The same vectors as the Python API gives for the readable files.
    torch.testing.assert_close(torch.from_numpy(vectors), model.embed_images(keys), atol=1e-5, rtol=0)
    assert updates[-1].embedded == 6 and updates[-1].skipped == 1 and updates[-1].total == 7
    # .safetensors: the same rows, keys in its metadata.
    embedding.embed_files(model, "image", [image_folder], tmp_path / "emb.safetensors")
    vectors_st, keys_st = embedding_outputs.read_embeddings(tmp_path / "emb.safetensors")
    assert keys_st == keys
    np.testing.assert_allclose(vectors_st, vectors, atol=1e-6)
    # .parquet: a key column and a fixed-size vector column, read back by pyarrow itself.
    import pyarrow.parquet as pq

    embedding.embed_files(model, "image", [image_folder], tmp_path / "emb.parquet")
    table = pq.read_table(tmp_path / "emb.parquet")
    assert table.column("key").to_pylist() == keys
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist(), dtype=np.float32), vectors, atol=1e-6)
    vectors_pq, keys_pq = embedding_outputs.read_embeddings(tmp_path / "emb.parquet")
    assert keys_pq == keys
    np.testing.assert_allclose(vectors_pq, vectors, atol=1e-6)


def test_captions_and_audio_files(model, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a cat\n\nsomeone saying seven\n")
    embedding.embed_files(model, "text", [captions], tmp_path / "text.npy")
    vectors, keys = embedding_outputs.read_embeddings(tmp_path / "text.npy")
    assert keys == [f"{captions}:1", f"{captions}:3"]
    torch.testing.assert_close(torch.from_numpy(vectors), model.embed_texts(["a photo of a cat", "someone saying seven"]),
                               atol=1e-5, rtol=0)
    clips = [write_wav(tmp_path / "audio" / f"{i}.wav", seed=i, seconds=seconds) for i, seconds in enumerate((0.5, 2.4))]
    (tmp_path / "audio" / "short.wav").write_bytes(b"RIFF")  # not a wav file
    result = embedding.embed_files(model, "audio", [tmp_path / "audio"], tmp_path / "audio.npy")
    vectors, keys = embedding_outputs.read_embeddings(tmp_path / "audio.npy")
    assert keys == [str(path) for path in clips] and [k for k, _ in result.skipped] == [str(tmp_path / "audio" / "short.wav")]
    torch.testing.assert_close(torch.from_numpy(vectors), model.embed_audio(clips), atol=1e-5, rtol=0)


def _shards(image_folder, output, validate=False):
    """Shards of 2 samples; without validation the broken image is written into a shard too."""
    samples = [s for s in samples_from_folder(image_folder, layout="classes") if "png" in s.media]
    result = write_shards(samples, output, max_samples_per_shard=2, validate=validate, shuffle=False)
    return [str(path) for path in result.shards]


def _all_parts(directory) -> tuple[np.ndarray, list[str]]:
    parts = sorted(directory.glob("part-*.npy"))
    loaded = [embedding_outputs.read_embeddings(path) for path in parts]
    return np.concatenate([vectors for vectors, _ in loaded]), [key for _, keys in loaded for key in keys]


def test_shards_give_one_part_each_and_resume_after_an_interruption(model, image_folder, tmp_path, monkeypatch):
    urls = _shards(image_folder, tmp_path / "shards")
    assert len(urls) == 4
    spec = str(tmp_path / "shards" / "shard-{000000..000003}.tar")
    reference = embedding.embed_shards(model, "image", spec, tmp_path / "reference")
    assert [p.name for p in reference.written] == [f"part-shard-00000{i}.npy" for i in range(4)]
    assert len(reference.skipped) == 1 and reference.skipped[0][0] == "cats__broken"
    assert "cannot decode image" in reference.skipped[0][1]
    vectors, keys = _all_parts(tmp_path / "reference")
    sample_keys = [s["__key__"] for url in urls for s in read_shard(url, [])]
    assert keys == [k for k in sample_keys if k != reference.skipped[0][0]] and len(set(keys)) == len(keys) == 6
    # Vectors equal the Python API on the same image bytes.
    images = {s["__key__"]: s["png"] for url in urls for s in read_shard(url, [])}
    torch.testing.assert_close(torch.from_numpy(vectors), model.embed_images([images[k] for k in keys]), atol=1e-5, rtol=0)

    # Interrupted while writing the third part: two parts stay, nothing half-written.
    calls = {"count": 0}
    real_write = embedding_outputs.write_embeddings

    def failing_write(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(embedding, "write_embeddings", failing_write)
    with pytest.raises(KeyboardInterrupt):
        embedding.embed_shards(model, "image", urls, tmp_path / "run")
    monkeypatch.setattr(embedding, "write_embeddings", real_write)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        f"part-shard-00000{i}.{end}" for i in range(2) for end in ("keys.json", "meta.json", "npy")]
    resumed = embedding.embed_shards(model, "image", urls, tmp_path / "run")
    assert len(resumed.resumed) == 2 and len(resumed.written) == 2
    vectors_run, keys_run = _all_parts(tmp_path / "run")
    assert keys_run == keys
    np.testing.assert_allclose(vectors_run, vectors, atol=1e-6)
    # A deleted part is the only one written again.
    (tmp_path / "run" / "part-shard-000002.npy").unlink()
    again = embedding.embed_shards(model, "image", urls, tmp_path / "run")
    assert [p.name for p in again.written] == ["part-shard-000002.npy"] and len(again.resumed) == 3
    assert _all_parts(tmp_path / "run")[1] == keys


def test_every_format_records_the_same_metadata_and_npy_keeps_it_beside_its_keys(model, image_folder, tmp_path):
    """An .npy part records in its .meta.json what .safetensors and .parquet parts record: its shard and modality."""
    from multimodal.checkpoint import checkpoint_id

    url = _shards(image_folder, tmp_path / "shards", validate=True)[0]
    recorded = {}
    for format in embedding.OUTPUT_FORMATS:
        (path,) = embedding.embed_shards(model, "image", url, tmp_path / format, format=format).written
        recorded[format] = embedding_outputs.read_metadata(path)
    assert recorded["npy"] == recorded["safetensors"] == recorded["parquet"] == {
        "modality": "image", "embed_dim": "128", "dtype": "float32", "checkpoint_id": checkpoint_id(tiny_checkpoint()),
        "shard": url}
    npy = embedding.part_path(tmp_path / "npy", url)
    assert json.loads(embedding_outputs.metadata_path(npy).read_text()) == recorded["npy"]
    assert embedding_outputs.metadata_path(tmp_path / "emb.npy") == tmp_path / "emb.meta.json"
    # Files outputs record all but the shard.
    embedding.embed_files(model, "image", [image_folder / "dogs"], tmp_path / "emb.npy")
    assert embedding_outputs.read_metadata(tmp_path / "emb.npy") == {k: v for k, v in recorded["npy"].items() if k != "shard"}
    # An .npy of an earlier version (no .meta.json) reads with empty metadata; a damaged one is refused,
    # and a part whose .meta.json is damaged is not complete: a rerun writes it again.
    embedding_outputs.metadata_path(npy).unlink()
    assert embedding_outputs.read_metadata(npy) == {}
    embedding_outputs.metadata_path(npy).write_text('["not", "an", "object"]')
    with pytest.raises(ValueError, match=r"part-shard-000000\.meta\.json must hold a JSON object of strings"):
        embedding_outputs.read_metadata(npy)
    again = embedding.embed_shards(model, "image", url, tmp_path / "npy")
    assert again.written == [npy] and embedding_outputs.read_metadata(npy) == recorded["npy"]
    # Writing an .npy again replaces its metadata: none of the earlier output's is left.
    embedding_outputs.write_embeddings(npy, np.zeros((1, 4), np.float32), ["k"])
    assert embedding_outputs.read_metadata(npy) == {}


def test_ranks_take_disjoint_shards_and_workers_keep_the_order(model, image_folder, tmp_path):
    urls = _shards(image_folder, tmp_path / "shards", validate=True)
    first = embedding.embed_shards(model, "image", urls, tmp_path / "out", rank=0, world_size=2, format="safetensors")
    second = embedding.embed_shards(model, "image", urls, tmp_path / "out", rank=1, world_size=2, format="safetensors",
                                    num_workers=2)
    assert {p.name for p in first.written}.isdisjoint({p.name for p in second.written})
    keys = []
    for url in urls:
        _, part_keys = embedding_outputs.read_embeddings(embedding.part_path(tmp_path / "out", url, "safetensors"))
        assert part_keys == [s["__key__"] for s in read_shard(url, [])]  # shard order, even with 2 workers
        keys.extend(part_keys)
    assert len(keys) == len(set(keys)) == 6


def test_inputs_and_outputs_are_checked(model, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.npy, \.safetensors or \.parquet"):
        embedding_outputs.output_format(tmp_path / "emb.csv")
    with pytest.raises(ValueError, match="does not exist"):
        embedding.list_inputs("image", [tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="holds no image file"):
        embedding.list_inputs("image", [tmp_path])
    with pytest.raises(ValueError, match="folder of parts"):
        embedding.embed_shards(model, "image", str(tmp_path / "a.tar"), tmp_path / "emb.npy")
    assert embedding.shard_part_name("pipe:curl -s https://host/data/train-000012.tar -") == "train-000012"
    assert embedding.shard_part_name("/data/x/val-01.tar.gz") == "val-01"
    assert embedding.is_shard_spec("data-{000..009}.tar") and embedding.is_shard_spec("pipe:cat x") and not embedding.is_shard_spec("a/b.png")


def test_an_existing_output_is_refused_unless_overwrite(model, image_folder, tmp_path):
    output = tmp_path / "emb.safetensors"
    embedding.embed_files(model, "image", [image_folder], output)
    written = output.read_bytes()
    with pytest.raises(ArgumentNeeded) as error:
        embedding.embed_files(model, "image", [image_folder / "dogs"], output)
    assert str(error.value) == f"output {output} exists; pass overwrite=True to replace it"
    assert error.value.for_command_line() == f"output {output} exists; pass --overwrite to replace it"
    assert output.read_bytes() == written
    embedding.embed_files(model, "image", [image_folder / "dogs"], output, overwrite=True)
    assert len(embedding_outputs.read_embeddings(output)[1]) == 4  # dogs: 0, 2, 4 and nested/deep
    # Shard parts: complete ones are kept on a rerun, written again with overwrite.
    urls = _shards(image_folder, tmp_path / "shards", validate=True)
    embedding.embed_shards(model, "image", urls, tmp_path / "parts")
    assert len(embedding.embed_shards(model, "image", urls, tmp_path / "parts").resumed) == len(urls)
    again = embedding.embed_shards(model, "image", urls, tmp_path / "parts", overwrite=True)
    assert again.resumed == [] and len(again.written) == len(urls)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_the_permissions_of_the_umask(model, image_folder, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        for name in ("emb.npy", "emb.parquet", "emb.safetensors"):
            embedding.embed_files(model, "image", [image_folder / "dogs"], tmp_path / name)
        embedding.embed_shards(model, "image", _shards(image_folder, tmp_path / "shards", validate=True)[:1],
                               tmp_path / "parts")
    finally:
        os.umask(previous)
    outputs = ["emb.npy", "emb.keys.json", "emb.meta.json", "emb.parquet", "emb.safetensors",
               "parts/part-shard-000000.npy", "parts/part-shard-000000.keys.json", "parts/part-shard-000000.meta.json"]
    assert {name: oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) for name in outputs} == {
        name: oct(mode) for name in outputs}


def test_shard_samples_without_the_modality_are_passed_over_not_skipped(model, tmp_path, capsys):
    """Shards where only some samples carry a sound: embedding images passes over the
    sound-only samples (counted, exit 0); an image that does not decode is still a skip."""
    import webdataset

    from multimodal.cli import main as cli_main
    from tests.apps.test_api import tiny_checkpoint, write_wav

    png = write_png(tmp_path / "a.png", seed=1).read_bytes()
    wav = write_wav(tmp_path / "a.wav", seed=1, seconds=0.5).read_bytes()
    shard = tmp_path / "mixed-000000.tar"
    with webdataset.TarWriter(str(shard)) as writer:
        writer.write({"__key__": "cat", "png": png, "txt": b"a cat"})
        writer.write({"__key__": "bell", "wav": wav, "txt": b"a bell"})
        writer.write({"__key__": "dog", "png": png, "wav": wav, "txt": b"a dog"})
    result = embedding.embed_shards(model, "image", str(shard), tmp_path / "out")
    assert (result.num_embedded, result.num_absent, result.skipped) == (2, 1, [])
    assert _all_parts(tmp_path / "out")[1] == ["cat", "dog"]

    status = cli_main(["embed", "--checkpoint", str(tiny_checkpoint()), "--modality", "image",
                       "--input", str(shard), "--output", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert status == 0
    assert "embedded 2 image input(s)" in out and "skipped 0; 1 shard sample(s) have no image (not embedded)" in out

    with webdataset.TarWriter(str(tmp_path / "broken-000000.tar")) as writer:
        writer.write({"__key__": "bad", "png": b"\x89PNG but not really", "txt": b"broken"})
        writer.write({"__key__": "bell", "wav": wav, "txt": b"a bell"})
    status = cli_main(["embed", "--checkpoint", str(tiny_checkpoint()), "--modality", "image",
                       "--input", str(tmp_path / "broken-000000.tar"), "--output", str(tmp_path / "cli2")])
    assert status == 1


def test_shards_of_several_folders_get_parts_named_by_their_folder(model, tmp_path, capsys):
    """`train/shard-000000.tar` and `val/shard-000000.tar` into one folder: two parts, named by the
    folder below the one they share; shards of one folder keep their names (``part-shard-000000``)."""
    import webdataset

    from multimodal.cli import main as cli_main

    png = write_png(tmp_path / "a.png", seed=1).read_bytes()
    urls = []
    for split in ("train", "val"):
        (tmp_path / "data" / split).mkdir(parents=True)
        urls.append(str(tmp_path / "data" / split / "shard-000000.tar"))
        with webdataset.TarWriter(urls[-1]) as writer:
            writer.write({"__key__": f"{split}-cat", "png": png, "txt": b"a cat"})
    assert embedding.part_names(urls) == {urls[0]: "train__shard-000000", urls[1]: "val__shard-000000"}
    assert embedding.part_names(urls[:1]) == {urls[0]: "shard-000000"}
    assert embedding.part_names(["a/x-0.tar", "a/b/c/x-0.tar"]) == {"a/x-0.tar": "x-0", "a/b/c/x-0.tar": "b__c__x-0"}
    remote = ["https://h/d/train/x-1.tar", "pipe:curl -s https://h/d/val/x-1.tar -"]
    assert embedding.part_names(remote) == {remote[0]: "train__x-1", remote[1]: "val__x-1"}
    assert embedding.part_path(tmp_path, urls[1], urls=urls) == tmp_path / "part-val__shard-000000.npy"

    argv = ["embed", "--checkpoint", str(tiny_checkpoint()), "--modality", "image", "--input", *urls,
            "--output", str(tmp_path / "emb")]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"into {tmp_path / 'emb' / 'part-train__shard-000000.npy'}, {tmp_path / 'emb' / 'part-val__shard-000000.npy'}" in out
    for split, url in zip(("train", "val"), urls):
        part = tmp_path / "emb" / f"part-{split}__shard-000000.npy"
        assert embedding_outputs.read_embeddings(part)[1] == [f"{split}-cat"] and embedding_outputs.read_metadata(part)["shard"] == url
    # The same command again finds both parts complete.
    assert cli_main(argv) == 0
    assert "2 part(s) already complete" in capsys.readouterr().out
    # A folder where train was embedded alone first: its part keeps its name, and no second part of it is written.
    alone = embedding.embed_shards(model, "image", urls[:1], tmp_path / "grown")
    assert [path.name for path in alone.written] == ["part-shard-000000.npy"]
    grown = embedding.embed_shards(model, "image", urls, tmp_path / "grown")
    assert [path.name for path in grown.resumed] == ["part-shard-000000.npy"]
    assert [path.name for path in grown.written] == ["part-val__shard-000000.npy"]
    assert sorted(path.name for path in (tmp_path / "grown").glob("*.npy")) == [
        "part-shard-000000.npy", "part-val__shard-000000.npy"]


def test_empty_captions_are_skipped_by_name(model, tmp_path, capsys):
    from multimodal.cli import main as cli_main

    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a cat\n\nsomeone saying seven\n   \n")
    result = embedding.embed_files(model, "text", [captions], tmp_path / "lines.npy")
    empty = "ValueError: the caption is empty (nothing but white space): nothing to embed"
    assert result.skipped == [(f"{captions}:2", empty), (f"{captions}:4", empty)]
    assert embedding_outputs.read_embeddings(tmp_path / "lines.npy")[1] == [f"{captions}:1", f"{captions}:3"]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "cat.txt").write_text("a photo of a cat\n")
    (folder / "empty.txt").write_text("")
    (folder / "blank.txt").write_text(" \n\t\n")
    status = cli_main(["embed", "--checkpoint", str(tiny_checkpoint()), "--modality", "text", "--input", str(folder),
                       "--output", str(tmp_path / "folder.npy")])
    captured = capsys.readouterr()
    assert status == 1
    assert f"skipped {folder / 'blank.txt'}: {empty}\nskipped {folder / 'empty.txt'}: {empty}\n" in captured.err
    assert "embedded 1 text input(s)" in captured.out and "skipped 2" in captured.out
    assert "multimodal: skipped 2 input(s)" in captured.err
    assert embedding_outputs.read_embeddings(tmp_path / "folder.npy")[1] == [str(folder / "cat.txt")]


def _tar_of(path, samples):
    import webdataset

    path.parent.mkdir(parents=True, exist_ok=True)
    with webdataset.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def test_shard_samples_give_the_bytes_of_the_same_inputs_as_files(model, tmp_path):
    """Shards are read by the training and evaluation loader, files by the API's preprocessing: a clip of
    several windows, a short one and an image give the same bytes either way, with workers or without."""
    clips = [write_wav(tmp_path / "clips" / f"{index}.wav", seed=index, seconds=seconds)
             for index, seconds in enumerate((2.6, 0.1, 0.7, 1.3, 0.4))]  # 2.6 s: three windows of 100 frames
    images = [write_png(tmp_path / "images" / f"{index}.png", seed=index, size=(30 + index, 41)) for index in range(5)]
    urls = [_tar_of(tmp_path / "shards" / f"shard-00000{number}.tar",
                    [{"__key__": f"{number}-{index}", "wav": clips[index].read_bytes(), "png": images[index].read_bytes(),
                      "txt": f"sample {index} of shard {number}".encode()} for index in indices])
            for number, indices in enumerate(([0, 1, 2, 3, 4], [4, 2]))]
    for modality, files in (("audio", clips), ("image", images)):
        embedding.embed_files(model, modality, files, tmp_path / f"{modality}.npy")
        expected = np.load(tmp_path / f"{modality}.npy")
        for num_workers in (0, 2):
            embedding.embed_shards(model, modality, urls, tmp_path / f"{modality}-{num_workers}", num_workers=num_workers)
            first, second = (np.load(embedding.part_path(tmp_path / f"{modality}-{num_workers}", url)) for url in urls)
            assert first.tobytes() == expected.tobytes()  # the first shard holds the files, in order, batched alike
            assert second.shape == (2, model.embed_dim)


def test_shard_skips_are_named_with_their_reason_and_absent_samples_counted_to_the_last(model, tmp_path):
    png = write_png(tmp_path / "a.png", seed=1).read_bytes()
    wav = write_wav(tmp_path / "a.wav", seed=1, seconds=0.5).read_bytes()
    mixed = _tar_of(tmp_path / "mixed-000000.tar", [
        {"__key__": "cat", "png": png, "txt": b"a cat"},
        {"__key__": "bad", "png": b"\x89PNG nope", "txt": b"broken"},
        {"__key__": "dog", "png": png, "txt": b"a dog"},
        {"__key__": "bell", "wav": wav, "txt": b"a bell"},  # after the last batch: still counted
    ])
    whole = _tar_of(tmp_path / "whole.tar", [{"__key__": f"cat{index}", "png": png} for index in range(3)])
    with tarfile.open(whole) as archive:
        last = archive.getmembers()[-1]
    (tmp_path / "cut-000000.tar").write_bytes(Path(whole).read_bytes()[: last.offset_data + 10])  # inside cat2.png
    nothing = _tar_of(tmp_path / "sounds-000000.tar", [{"__key__": "bell", "wav": wav}])
    updates = []
    result = embedding.embed_shards(model, "image", [mixed, str(tmp_path / "cut-000000.tar"), nothing],
                                    tmp_path / "out", progress=updates.append)
    kept = [sample["__key__"] for sample in read_shard(str(tmp_path / "cut-000000.tar"), [])]  # what the cut left
    assert kept and result.num_embedded == 2 + len(kept) and result.num_absent == 2
    assert [(key, reason.split(":")[0]) for key, reason in result.skipped] == [
        ("bad", "bad_image"), (str(tmp_path / "cut-000000.tar"), "truncated_shard")]
    assert result.skipped[0][1].startswith("bad_image: cannot decode image")
    assert embedding_outputs.read_embeddings(embedding.part_path(tmp_path / "out", mixed))[1] == ["cat", "dog"]
    assert embedding_outputs.read_embeddings(embedding.part_path(tmp_path / "out", str(tmp_path / "cut-000000.tar")))[1] == kept
    assert (updates[-1].embedded, updates[-1].skipped, updates[-1].absent, updates[-1].parts_done) == (
        2 + len(kept), 1, 2, 3)
    # The shard with no image at all gives an empty part, not an error.
    vectors, keys = embedding_outputs.read_embeddings(embedding.part_path(tmp_path / "out", nothing))
    assert vectors.shape == (0, model.embed_dim) and keys == []
