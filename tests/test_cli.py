"""The `multimodal` command line, end to end on a tiny checkpoint and tiny data."""
import json
from pathlib import Path

import pytest
import torch
import webdataset

from multimodal.data import demo as demo_data
import multimodal.interop
from multimodal.data.tokenizer import Tokenizer
from multimodal.data.writer import samples_from_folder, write_shards
from multimodal import embed
from multimodal.api import ZeroShotClassifier, load
from multimodal.cli import build_parser, main
from tests.test_api import tiny_checkpoint, write_png, write_wav

COMMANDS = ("embed", "classify", "eval", "shards", "tokenizer", "convert", "demo")


@pytest.fixture(scope="module")
def checkpoint() -> str:
    return str(tiny_checkpoint())


@pytest.fixture(scope="module")
def model(checkpoint):
    return load(checkpoint, precision="fp32")


@pytest.fixture()
def class_folder(tmp_path) -> Path:
    root = tmp_path / "classes"
    for index in range(6):
        write_png(root / ("cats" if index % 2 else "dogs") / f"{index}.png", seed=index)
    return root


def run(argv, capsys) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def bad_arguments(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: multimodal {command}")
    # Every option the parser knows is described in the help.
    subparser = build_parser()._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        for option in action.option_strings:
            assert option in text


def test_bad_arguments_name_the_argument(checkpoint, tmp_path, capsys):
    image = write_png(tmp_path / "x.png", 0)
    cases = [
        (["classify", "--checkpoint", checkpoint, image], "one of the arguments --labels --labels-file is required"),
        (["classify", "--checkpoint", tmp_path / "nowhere", "--labels", "a,b", image], "argument --checkpoint"),
        (["classify", "--checkpoint", checkpoint, "--labels", "a,,b", image], "argument --labels"),
        (["classify", "--checkpoint", checkpoint, "--labels", "a,b", "--top-k", "0", image], "argument --top-k"),
        (["classify", "--checkpoint", checkpoint, "--labels", "a,b", tmp_path / "x.xyz"], "argument --modality"),
        (["classify", "--checkpoint", checkpoint, "--labels", "a,b", "--templates", "no slot", image], "argument --templates"),
        (["embed", "--checkpoint", checkpoint, "--modality", "image", "--input", image, "--output", tmp_path / "e.csv"],
         "argument --output"),
        (["embed", "--checkpoint", checkpoint, "--modality", "video", "--input", image, "--output", tmp_path / "e.npy"],
         "argument --modality: invalid choice"),
        (["embed", "--checkpoint", checkpoint, "--modality", "image", "--input", tmp_path / "none.png", "--output",
          tmp_path / "e.npy"], "argument --input"),
        (["embed", "--checkpoint", checkpoint, "--modality", "image", "--input", "s-{0..1}.tar", "--output",
          tmp_path / "e.npy"], "argument --output"),
        (["embed", "--checkpoint", checkpoint, "--modality", "image", "--input", image, "--output", tmp_path / "e.npy",
          "--batch-size", "many"], "argument --batch-size"),
        (["shards", "--input", tmp_path, "--output", tmp_path / "s", "--max-bytes", "lots"], "argument --max-bytes"),
        (["shards", "--input", tmp_path, "--output", tmp_path / "s", "--validation-fraction", "1.5"],
         "argument --validation-fraction"),
        (["shards", "--input", tmp_path / "none", "--output", tmp_path / "s"], "argument --input"),
        (["tokenizer", "--captions", image, "--vocab-size", "10", "--output", tmp_path / "t.json"], "argument --vocab-size"),
        (["eval", "--checkpoint", checkpoint, "--task", "retrieval", "--data", tmp_path], "argument --data"),
        (["convert", "--from", "hf-ast", tmp_path, "--output", tmp_path / "c", "--activation", "gelu"],
         "argument --activation"),
        (["convert", "--from", "tensorflow", tmp_path, "--output", tmp_path / "c"], "argument --from"),
        (["demo", "--scale", "2"], "argument --scale"),
    ]
    for argv, message in cases:
        error = bad_arguments(argv, capsys)
        assert message in error, (argv, error)


def test_classify_prints_top_labels_and_json_in_input_order(checkpoint, model, class_folder, tmp_path, capsys):
    files = sorted(class_folder.rglob("*.png"))[:3]
    classifier = ZeroShotClassifier(model, ["cat", "dog", "bird"], ["a photo of a {}."], modality="image")
    expected = classifier.classify(files, top_k=2)
    status, out, _ = run(["classify", "--checkpoint", checkpoint, "--precision", "fp32", "--labels", "cat,dog,bird",
                          "--templates", "a photo of a {}.", "--top-k", "2", "--json", *files], capsys)
    assert status == 0
    records = json.loads(out)
    assert [r["path"] for r in records] == [str(f) for f in files]
    for record, best in zip(records, expected):
        assert record["labels"] == [label for label, _ in best]
        assert record["scores"] == pytest.approx([score for _, score in best], abs=1e-5)
    # Plain output; a broken file is reported, the others still classified, the status says so.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("cat\ndog\nbird\n")
    status, out, err = run(["classify", "--checkpoint", checkpoint, "--precision", "fp32", "--labels-file", labels_file,
                            "--templates", "a photo of a {}.", "--top-k", "1", files[0], broken, files[1]], capsys)
    assert status == 1 and f"cannot classify {broken}" in err
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(files[0]), str(files[1])]
    assert lines[0].split(": ")[1].startswith(expected[0][0][0] + " ")
    # Audio from the extension.
    clip = write_wav(tmp_path / "clip.wav", seed=1, seconds=1.5)
    status, out, _ = run(["classify", "--checkpoint", checkpoint, "--labels", "seven,three", "--json", clip], capsys)
    assert status == 0 and sorted(json.loads(out)[0]["labels"]) == ["seven", "three"]


def test_embed_command_matches_the_api_and_resumes_shards(checkpoint, model, class_folder, tmp_path, capsys):
    output = tmp_path / "emb.npy"
    status, out, err = run(["embed", "--checkpoint", checkpoint, "--precision", "fp32", "--modality", "image",
                            "--input", class_folder, "--output", output, "--batch-size", "4"], capsys)
    assert status == 0 and "embedded 6 image input(s)" in out
    vectors, keys = embed.read_embeddings(output)
    assert json.loads((tmp_path / "emb.keys.json").read_text()) == keys
    torch.testing.assert_close(torch.from_numpy(vectors), model.embed_images(keys), atol=1e-5, rtol=0)
    write_shards(samples_from_folder(class_folder), tmp_path / "shards", max_samples_per_shard=4)
    spec = str(tmp_path / "shards" / "shard-{000000..000001}.tar")
    argv = ["embed", "--checkpoint", checkpoint, "--precision", "fp32", "--modality", "text", "--input", spec,
            "--output", tmp_path / "parts"]
    status, out, _ = run(argv, capsys)
    assert status == 0 and sorted(p.name for p in (tmp_path / "parts").glob("*.npy")) == [
        "part-shard-000000.npy", "part-shard-000001.npy"]
    status, out, _ = run(argv, capsys)
    assert status == 0 and "2 part(s) already complete" in out and "embedded 0" in out


def test_eval_zero_shot_on_a_class_folder_and_on_shards(checkpoint, model, class_folder, tmp_path, capsys):
    classifier = ZeroShotClassifier(model, ["cats", "dogs"], modality="image")
    files = sorted((class_folder / "cats").glob("*.png")) + sorted((class_folder / "dogs").glob("*.png"))
    labels = torch.tensor([0] * 3 + [1] * 3)
    accuracy = float((classifier.predict_proba(files).argmax(dim=-1) == labels).float().mean())
    status, out, _ = run(["eval", "--checkpoint", checkpoint, "--precision", "fp32", "--task", "zeroshot", "--data",
                          class_folder, "--output", tmp_path / "folder.json"], capsys)
    assert status == 0 and "eval/accuracy@1" in out and "metric" in out
    report = json.loads((tmp_path / "folder.json").read_text())
    assert report["class_names"] == ["cats", "dogs"] and report["modality"] == "image"
    assert report["results"]["eval/accuracy@1"] == pytest.approx(accuracy)
    assert report["results"]["eval/num_samples"] == 6
    # The same images as shards written by the shard writer: class names from the json, the same accuracy.
    result = write_shards(samples_from_folder(class_folder), tmp_path / "shards", max_samples_per_shard=4)
    status, out, _ = run(["eval", "--checkpoint", checkpoint, "--precision", "fp32", "--task", "zeroshot", "--data",
                          result.splits["all"].spec, "--output", tmp_path / "shards.json", "--name", "digits"], capsys)
    assert status == 0
    report = json.loads((tmp_path / "shards.json").read_text())
    assert report["class_names"] == ["cats", "dogs"]
    assert report["results"]["digits/accuracy@1"] == pytest.approx(accuracy)
    # ImageNet-style shards: image and a cls member, no caption, class names given.
    with webdataset.TarWriter(str(tmp_path / "bare-000000.tar")) as writer:
        for index, path in enumerate(files):
            writer.write({"__key__": f"k{index}", "png": path.read_bytes(), "cls": str(int(labels[index])).encode()})
    status, out, _ = run(["eval", "--checkpoint", checkpoint, "--precision", "fp32", "--task", "zeroshot", "--data",
                          tmp_path / "bare-000000.tar", "--labels", "cats,dogs", "--output", tmp_path / "cls.json"],
                         capsys)
    assert status == 0
    results = json.loads((tmp_path / "cls.json").read_text())["results"]
    assert results["eval/accuracy@1"] == pytest.approx(accuracy) and results["eval/num_samples"] == 6
    # Retrieval between the images and their captions.
    status, out, _ = run(["eval", "--checkpoint", checkpoint, "--task", "retrieval", "--data", tmp_path / "shards",
                          "--output", tmp_path / "retrieval.json"], capsys)
    results = json.loads((tmp_path / "retrieval.json").read_text())["results"]
    assert status == 0 and 0 <= results["eval/image_to_text/recall@1"] <= 1 and results["eval/num_samples"] == 6


def test_shards_and_tokenizer_commands(class_folder, tmp_path, capsys):
    (class_folder / "cats" / "broken.png").write_bytes(b"not a png")
    status, out, err = run(["shards", "--input", class_folder, "--output", tmp_path / "shards", "--max-samples", "4",
                            "--prefix", "pets", "--max-skip-fraction", "0.2"], capsys)
    assert status == 0 and "written 6 of 7 samples, skipped 1" in out
    assert "1 bad_image: the image does not decode" in err and "broken.png" in err
    assert "cannot decode" in (tmp_path / "shards" / "skipped.jsonl").read_text()
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == ["pets-000000.tar", "pets-000001.tar"]
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a red fox\nsomeone saying nine\n" * 5)
    status, out, _ = run(["tokenizer", "--captions", captions, str(tmp_path / "shards" / "pets-{000000..000001}.tar"),
                          "--vocab-size", "280", "--min-frequency", "1", "--output", tmp_path / "tok.json"], capsys)
    assert status == 0
    tokenizer = Tokenizer.load(tmp_path / "tok.json")
    assert tokenizer.vocab_size <= 280 and f"{tokenizer.vocab_size} ids" in out
    assert tokenizer.decode(tokenizer(["a photo of cats"], 12)[0][0].tolist()) == "a photo of cats"
    # A folder of shards, as `multimodal shards` writes it, reads the same captions as the spec.
    status, _, _ = run(["tokenizer", "--captions", captions, str(tmp_path / "shards"), "--vocab-size", "280",
                        "--min-frequency", "1", "--output", tmp_path / "tok2.json"], capsys)
    assert status == 0
    assert Tokenizer.load(tmp_path / "tok2.json").to_json_str() == tokenizer.to_json_str()


def test_convert_and_demo_call_the_library(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_convert(kind, source, output, **options):
        calls.append((kind, source, output, options))
        return Path(output)

    monkeypatch.setattr(multimodal.interop, "convert_checkpoint", fake_convert)
    status, out, _ = run(["convert", "--from", "open_clip", tmp_path, "--output", tmp_path / "ckpt", "--activation",
                          "quick_gelu"], capsys)
    assert status == 0 and calls == [("open_clip", str(tmp_path), str(tmp_path / "ckpt"), {"activation": "quick_gelu"})]

    paths = demo_data.DemoPaths(root=tmp_path, image_train="i-{0..1}.tar", image_val="iv.tar", audio_train="a.tar",
                                audio_val="av.tar", audio_real="ar.tar", num_samples={"image-train": 4000},
                                captions_file=tmp_path / "captions.txt")
    seen = {}

    def fake_build(cache_dir, **options):
        seen.update(options, cache_dir=cache_dir)
        options["progress"]("images", 1, 2)
        return paths

    monkeypatch.setattr(demo_data, "build_demo", fake_build)
    status, out, _ = run(["demo", "--cache", tmp_path / "cache", "--scale", "0.5"], capsys)
    assert status == 0 and seen["cache_dir"] == str(tmp_path / "cache") and seen["scale"] == 0.5
    assert "image-train: 4000 samples: i-{0..1}.tar" in out and "zero, one, two" in out
