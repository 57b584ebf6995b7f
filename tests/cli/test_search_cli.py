"""`multimodal index` and `multimodal search` on messy inputs: shards with and without captions, broken files, errors."""
import io
import json
import tarfile

import numpy as np
import pytest

from multimodal.cli import main
from multimodal.apps.search import open_index, read_manifest
from bench.bench_search import bench_checkpoint
from tests.apps.test_api import build_tiny_checkpoint, tiny_checkpoint, write_png, write_wav


@pytest.fixture(scope="module")
def checkpoint():
    return tiny_checkpoint()


def png_bytes(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def write_tar(path, members: list[tuple[str, bytes]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture()
def shards(tmp_path):
    """Two shards as crawled data looks: json and txt captions, one without, one broken image, keys with folders."""
    first = write_tar(tmp_path / "shards" / "web-000.tar", [
        ("a/0001.png", png_bytes(1)), ("a/0001.json", json.dumps({"text": "ein Hund im Schnee ❄"}).encode()),
        ("a/0002.png", png_bytes(2)), ("a/0002.txt", b"  a red bicycle \n"),
        ("a/0003.png", b"\x89PNG this is not an image"), ("a/0003.txt", b"never embedded"),
    ])
    second = write_tar(tmp_path / "shards" / "web-001.tar", [
        ("b/0004.png", png_bytes(4)),  # no caption at all
        ("b/0005.png", png_bytes(5)), ("b/0005.json", json.dumps({"caption": ["first caption", "second"]}).encode()),
    ])
    return [first, second]


def run(capsys, *argv):
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_shard_parts_index_with_their_shards_and_captions(checkpoint, shards, tmp_path, capsys):
    spec = str(tmp_path / "shards" / "web-{000..001}.tar")
    status, _, err = run(capsys, "embed", "--checkpoint", checkpoint, "--modality", "image", "--input", spec,
                         "--output", tmp_path / "parts", "--precision", "fp32")
    assert status == 1 and "skipped a/0003" in err  # one input skipped: status 1, as for every command
    status, out, _ = run(capsys, "index", "--checkpoint", checkpoint, "--input", tmp_path / "parts",
                         "--output", tmp_path / "index", "--modality", "image", "--shards", spec)
    assert status == 0 and "indexed 4 image vector(s) of 128 dimensions" in out and "SQfp16 (every vector scored, the best re-scored in float32)" in out
    index = open_index(tmp_path / "index")
    rows = {index.item(i)[0]: index.item(i)[1:] for i in range(index.count)}
    assert rows == {
        "a/0001": (shards[0], "ein Hund im Schnee ❄"), "a/0002": (shards[0], "a red bicycle"),
        "b/0004": (shards[1], None), "b/0005": (shards[1], "first caption"),
    }
    # An image file query finds its own sample first, with score 1.
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes(5))
    status, out, _ = run(capsys, "search", "--index", tmp_path / "index", "--image", query, "-k", "2",
                         "--json", "--precision", "fp32")
    assert status == 0
    (result,) = json.loads(out)
    assert result["query"] == {"modality": "image", "input": str(query)}
    best = result["hits"][0]
    assert (best["rank"], best["key"], best["source"], best["caption"]) == (1, "b/0005", shards[1], "first caption")
    assert best["score"] == pytest.approx(1.0, abs=1e-4) and len(result["hits"]) == 2


def test_caption_files_are_searched_by_text_and_by_other_modalities(checkpoint, tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a cat\n\n   \nsomeone saying seven\nthe sound of a dog ünd more\n", encoding="utf-8")
    run(capsys, "embed", "--checkpoint", checkpoint, "--modality", "text", "--input", captions,
        "--output", tmp_path / "text.parquet", "--precision", "fp32")
    status, out, _ = run(capsys, "index", "--checkpoint", checkpoint, "--input", tmp_path / "text.parquet",
                         "--output", tmp_path / "index")  # the parquet output records its modality
    assert status == 0 and "indexed 3 text vector(s)" in out
    status, out, _ = run(capsys, "search", "--index", tmp_path / "index", "--text", "someone saying seven", "-k", "1",
                         "--precision", "fp32")
    assert status == 0
    assert out.splitlines() == [
        "text 'someone saying seven': 1 hit(s) among 3 text row(s)",
        f"    1  1.0000  {captions}:4  {captions}  \"someone saying seven\"",
    ]
    # Any modality the checkpoint encodes may query: an audio clip against the captions.
    clip = write_wav(tmp_path / "clip.wav", seed=3, seconds=1.5)
    status, out, _ = run(capsys, "search", "--index", tmp_path / "index", "--audio", clip, "--json")
    assert status == 0 and len(json.loads(out)[0]["hits"]) == 3


def test_add_through_the_command_line(checkpoint, tmp_path, capsys):
    for index_number in range(3):
        write_png(tmp_path / "images" / f"{index_number}.png", seed=index_number)
    write_png(tmp_path / "later" / "x.png", seed=10)
    run(capsys, "embed", "--checkpoint", checkpoint, "--modality", "image", "--input", tmp_path / "images",
        "--output", tmp_path / "first.safetensors")
    run(capsys, "embed", "--checkpoint", checkpoint, "--modality", "image", "--input", tmp_path / "later",
        "--output", tmp_path / "later.safetensors")
    run(capsys, "index", "--checkpoint", checkpoint, "--input", tmp_path / "first.safetensors", "--output", tmp_path / "index")
    status, out, _ = run(capsys, "index", "--add", "--input", tmp_path / "first.safetensors", tmp_path / "later.safetensors",
                         "--output", tmp_path / "index")
    assert status == 0
    assert out.strip() == (f"added 1 image vector(s) from 1 input(s) to {tmp_path / 'index'}: 4 in all (SQfp16); "
                           "1 input(s) already in the index, left out")
    assert open_index(tmp_path / "index").item(3)[1] == str((tmp_path / "later" / "x.png").resolve())
    with pytest.raises(SystemExit) as exited:
        run(capsys, "index", "--add", "--index-type", "ivfpq", "--input", tmp_path / "later.safetensors",
            "--output", tmp_path / "index")
    assert exited.value.code == 2
    assert "--index-type: not allowed with --add (the index keeps its type)" in capsys.readouterr().err


def test_errors_are_one_line_and_write_nothing(checkpoint, tmp_path, capsys):
    write_png(tmp_path / "images" / "0.png", seed=0)
    run(capsys, "embed", "--checkpoint", checkpoint, "--modality", "image", "--input", tmp_path / "images",
        "--output", tmp_path / "emb.npy")
    run(capsys, "index", "--checkpoint", checkpoint, "--modality", "image", "--input", tmp_path / "emb.npy",
        "--output", tmp_path / "index")

    def error_of(*argv):
        status, out, err = run(capsys, *argv)
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert status == 1 and out == "" and len(errors) == 1 and "Traceback" not in err, (status, out, err)
        assert err.rstrip().endswith(errors[0])  # the last thing said
        return errors[0]

    # A query file that cannot be decoded: named with its reason, the other queries still answered (exit 1).
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    status, out, err = run(capsys, "search", "--index", tmp_path / "index", "--image", broken, "--text", "seven")
    assert status == 1 and out.startswith("text 'seven': 1 hit(s)") and "Traceback" not in err
    assert err.splitlines()[0].startswith(f"cannot search --image {broken}: ValueError: cannot decode image")
    assert err.splitlines()[1:] == ["multimodal: skipped 1 of 2 query(ies)"]
    # Another checkpoint: another embedding space.
    other = build_tiny_checkpoint(tmp_path / "other")
    import torch
    from multimodal.checkpoint import load_model, save_checkpoint, load_tokenizer

    model = load_model(other)
    with torch.no_grad():
        model.logit_scales["text_image"].add_(0.5)  # any change to the weights changes the id
    save_checkpoint(model, other, tokenizer=load_tokenizer(tiny_checkpoint()))
    line = error_of("search", "--index", tmp_path / "index", "--checkpoint", other, "--text", "seven")
    assert "their embedding spaces differ" in line and read_manifest(tmp_path / "index")["checkpoint"]["id"] in line
    # A truncated index.
    manifest = read_manifest(tmp_path / "index")
    faiss_file = tmp_path / "index" / manifest["index"]["file"]
    faiss_file.write_bytes(faiss_file.read_bytes()[:64])
    assert "truncated" in error_of("search", "--index", tmp_path / "index", "--text", "seven")
    # An empty collection: nothing written.
    write_png(tmp_path / "junk" / "bad.png", seed=0)
    (tmp_path / "junk" / "bad.png").write_bytes(b"not a png")
    run(capsys, "embed", "--checkpoint", checkpoint, "--modality", "image", "--input", tmp_path / "junk",
        "--output", tmp_path / "empty.npy")
    assert error_of("index", "--checkpoint", checkpoint, "--modality", "image", "--input", tmp_path / "empty.npy",
                    "--output", tmp_path / "empty-index") == (
        "multimodal index: error: the collection is empty: there is nothing to index")
    assert not (tmp_path / "empty-index").exists()
    # Inputs embedded by another model of another width.
    narrow = bench_checkpoint(tmp_path / "narrow", 32)
    assert "embeds into 32 dimensions" in error_of("index", "--checkpoint", narrow, "--modality", "image",
                                                   "--input", tmp_path / "emb.npy", "--output", tmp_path / "x")


def test_search_needs_a_query(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["search", "--index", str(tmp_path)])
    assert exited.value.code == 2
    assert "give a query: --text, --image or --audio" in capsys.readouterr().err


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(checkpoint, shards, tmp_path, capsys):
    """`multimodal search ... | head -1`: no 'Broken pipe' error on stderr when head exits."""
    import os
    import subprocess
    import sys

    spec = str(tmp_path / "shards" / "web-{000..001}.tar")
    run(capsys, "embed", "--checkpoint", checkpoint, "--modality", "image", "--input", spec,
        "--output", tmp_path / "parts", "--precision", "fp32")
    run(capsys, "index", "--checkpoint", checkpoint, "--input", tmp_path / "parts", "--output", tmp_path / "index",
        "--modality", "image", "--shards", spec)
    queries = [arg for seed in range(200) for arg in ("--text", f"query number {seed}")]
    pipeline = subprocess.run(
        f"{sys.executable} -m multimodal search --index {tmp_path / 'index'} --precision fp32 {' '.join(repr(q) for q in queries)} | head -1",
        shell=True, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert pipeline.stdout.count("\n") == 1
    assert "Broken pipe" not in pipeline.stderr and "Traceback" not in pipeline.stderr, pipeline.stderr
