"""The `multimodal` command line, end to end on a tiny checkpoint and tiny data."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset

from multimodal.data.demo import dataset
import multimodal.interop
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.data.writing.writer import samples_from_folder, write_shards
from multimodal.apps import embedding_outputs
from multimodal.apps.api import ZeroShotClassifier, load_embedding_model as load
from multimodal.checkpoint import TRAINER_FILE, load_model, load_tokenizer, save_checkpoint
from multimodal.cli import build_parser, main
from multimodal.config_parser import to_dict
from multimodal.eval import IMAGE_TEMPLATES
from multimodal.training.data_sources import DataConfig
from multimodal.training.demo_sources import demo_eval_sets
from multimodal.training.train_config import TrainConfig
from tests.apps.test_api import tiny_checkpoint, write_png, write_wav

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


def demo_paths(root: Path) -> dataset.DemoPaths:
    return dataset.DemoPaths(root=root, image_train="i-{0..1}.tar", image_val="iv.tar", image_real="ir.tar", audio_train="a.tar",
                             audio_val="av.tar", audio_phone="ap.tar", audio_real="ar.tar", num_samples={"image-train": 4000},
                             captions_file=root / "captions.txt")


@pytest.fixture(scope="module")
def run_folder(checkpoint, tmp_path_factory) -> Path:
    """A training run's folder as train.py leaves it: its config.json, and checkpoints/step-N with trainer.json.

    The checkpoint records the training configuration with the demo's evaluation sets.
    """
    run = tmp_path_factory.mktemp("runs") / "x"
    config = to_dict(TrainConfig(data=DataConfig(eval=demo_eval_sets(demo_paths(run)))))
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    save_checkpoint(load_model(checkpoint), run / "checkpoints" / "step-0000010", tokenizer=load_tokenizer(checkpoint),
                    extra_config={"train": config},
                    write_extra=lambda tmp: (tmp / TRAINER_FILE).write_text(json.dumps({"step": 10})))
    return run


def run(argv, capsys) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def bad_arguments(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_help_states_the_exit_status_rule(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("exit status: 0 when every input was processed; 1 when some inputs were skipped (each named on stderr with "
            "its reason, then their count) or the job failed; 2 for bad arguments") in text
    for command in ("classify", "embed", "eval"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "exit status: 0 when every input was processed" in " ".join(capsys.readouterr().out.split())


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
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    cases = [
        (["classify", "--checkpoint", checkpoint, image], "one of the arguments --labels --labels-file is required"),
        (["classify", "--checkpoint", tmp_path / "nowhere", "--labels", "a,b", image], "argument --checkpoint"),
        (["classify", "--checkpoint", checkpoint, "--labels", "a,,b", image], "argument --labels"),
        (["classify", "--checkpoint", checkpoint, "--labels", "a,b", "--top-k", "0", image], "argument --top-k"),
        (["classify", "--checkpoint", checkpoint, "--labels", "a,b", notes], "argument FILE: cannot classify"),
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
        (["eval", "--checkpoint", checkpoint, "--task", "retrieval", "--data", tmp_path, "--templates", "a {}."],
         "argument --templates: only --task zeroshot builds prompts"),
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


NOT_MEDIA = ("not an image or audio file (neither by its extension nor by its content); images are read from .jpg, "
             ".jpeg, .png, .webp, .gif, .svg files, audio from .flac, .wav, .ogg, .mp3 files")


def test_classify_says_what_a_file_is_not_and_reads_files_without_extension(checkpoint, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("milk, eggs\n")
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 16)
    for path in (notes, data):
        error = bad_arguments(["classify", "--checkpoint", checkpoint, "--labels", "a,b", path], capsys)
        assert error.strip().splitlines()[-1] == (
            f"multimodal classify: error: argument FILE: cannot classify {path}: {NOT_MEDIA}")
    # Among images: the others are classified, the file is named with its reason, then the count; status 1.
    image = write_png(tmp_path / "cat.png", seed=1)
    photo = tmp_path / "photo"  # a PNG saved without an extension: known by its content
    photo.write_bytes(image.read_bytes())
    argv = ["classify", "--checkpoint", checkpoint, "--precision", "fp32", "--labels", "cat,dog", "--json"]
    status, out, err = run([*argv, image, notes, photo], capsys)
    records = json.loads(out)
    assert status == 1 and [record["path"] for record in records] == [str(image), str(notes), str(photo)]
    assert records[1]["error"] == NOT_MEDIA and records[0]["labels"] == records[2]["labels"]
    assert records[0]["scores"] == pytest.approx(records[2]["scores"], abs=1e-6)
    assert f"cannot classify {notes}: {NOT_MEDIA}" in err
    assert err.strip().splitlines()[-1] == "multimodal: skipped 1 of 3 file(s)"
    # A recording without an extension is audio by its content.
    recording = tmp_path / "recording"
    recording.write_bytes(write_wav(tmp_path / "clip.wav", seed=2, seconds=1.2).read_bytes())
    status, out, _ = run(["classify", "--checkpoint", checkpoint, "--labels", "seven,three", "--json", recording], capsys)
    assert status == 0 and sorted(json.loads(out)[0]["labels"]) == ["seven", "three"]


def test_python_dash_m_exits_with_the_status_of_the_command(checkpoint, tmp_path):
    image = write_png(tmp_path / "cat.png", seed=1)
    (tmp_path / "notes.txt").write_text("milk\n")
    argv = [sys.executable, "-m", "multimodal", "classify", "--checkpoint", checkpoint, "--labels", "cat,dog"]
    done = subprocess.run([*argv, image, tmp_path / "notes.txt"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout.startswith(f"{image}: ")
    assert done.stderr.strip().splitlines()[-1] == "multimodal: skipped 1 of 2 file(s)"


@pytest.mark.parametrize("command", ["classify", "embed", "eval"])
def test_a_run_folder_is_refused_naming_its_latest_checkpoint(command, run_folder, class_folder, tmp_path, capsys):
    argv = {
        "classify": ["classify", "--labels", "cats,dogs", sorted(class_folder.rglob("*.png"))[0]],
        "embed": ["embed", "--modality", "image", "--input", class_folder, "--output", tmp_path / "emb.npy"],
        "eval": ["eval", "--task", "zeroshot", "--data", class_folder],
    }[command]
    error = bad_arguments([*argv, "--checkpoint", run_folder], capsys)
    latest = run_folder / "checkpoints" / "step-0000010"
    assert error.strip().splitlines()[-1] == (
        f"multimodal {command}: error: argument --checkpoint: {run_folder} is a training run's folder, not a "
        f"checkpoint; its latest checkpoint is {latest}")
    assert "Traceback" not in error
    status, _, _ = run([*argv, "--checkpoint", latest], capsys)
    assert status == 0


def test_embed_refuses_to_overwrite_without_the_flag_and_skips_set_the_status(checkpoint, class_folder, tmp_path,
                                                                              capsys):
    output = tmp_path / "emb.npy"
    argv = ["embed", "--checkpoint", checkpoint, "--modality", "image", "--input", class_folder, "--output", output]
    assert run(argv, capsys)[0] == 0
    output.write_bytes(b"kept as it is")
    error = bad_arguments(argv, capsys)
    assert error.strip().splitlines()[-1] == (
        f"multimodal embed: error: output {output} exists; pass --overwrite to replace it")
    assert output.read_bytes() == b"kept as it is"
    status, out, err = run([*argv, "--overwrite"], capsys)
    assert status == 0 and "embedded 6 image input(s)" in out and embedding_outputs.read_embeddings(output)[0].shape[0] == 6
    # A skipped input: the others are written, each skip is named, the count closes stderr, status 1.
    broken = class_folder / "cats" / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    status, out, err = run([*argv, "--overwrite"], capsys)
    assert status == 1 and "embedded 6 image input(s)" in out and f"skipped {broken}: " in err
    assert err.strip().splitlines()[-1] == "multimodal: skipped 1 input(s)"
    # The same rule for eval.
    status, _, err = run(["eval", "--checkpoint", checkpoint, "--task", "zeroshot", "--data", class_folder], capsys)
    assert status == 1 and err.strip().splitlines()[-1] == "multimodal: skipped 1 input(s)"


def test_zero_shot_uses_the_templates_the_checkpoint_was_evaluated_with(checkpoint, run_folder, class_folder,
                                                                        tmp_path, capsys):
    trained = run_folder / "checkpoints" / "step-0000010"
    demo_templates = list(dataset.ZERO_SHOT_TEMPLATES["image"])
    argv = ["eval", "--precision", "fp32", "--task", "zeroshot", "--data", class_folder, "--output", tmp_path / "r.json"]
    status, _, err = run([*argv, "--checkpoint", trained], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert status == 0 and report["templates"] == demo_templates
    assert report["templates_from"] == "recorded in the checkpoint (eval set 'image_zeroshot')"
    assert f"templates (recorded in the checkpoint (eval set 'image_zeroshot')): {' | '.join(demo_templates)}" in err
    # The accuracy is that of the API's classifier, which picks the same templates.
    classifier = ZeroShotClassifier(load(trained, precision="fp32"), ["cats", "dogs"], modality="image")
    assert classifier.templates == demo_templates
    files = sorted((class_folder / "cats").glob("*.png")) + sorted((class_folder / "dogs").glob("*.png"))
    predicted = classifier.predict_proba(files).argmax(dim=-1)
    accuracy = float((predicted == torch.tensor([0] * 3 + [1] * 3)).float().mean())
    assert report["results"]["eval/accuracy@1"] == pytest.approx(accuracy)
    # Templates given win; a checkpoint that records none falls back on the built-in ones.
    status, _, _ = run([*argv, "--checkpoint", trained, "--templates", "a photo of {}."], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert status == 0 and (report["templates"], report["templates_from"]) == (["a photo of {}."], "given")
    status, _, err = run([*argv, "--checkpoint", checkpoint], capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["templates"], report["templates_from"]) == (list(IMAGE_TEMPLATES), "built-in image templates")
    # classify says which it used, too.
    status, _, err = run(["classify", "--checkpoint", trained, "--labels", "cats,dogs", files[0]], capsys)
    assert status == 0 and "templates (recorded in the checkpoint (eval set 'image_zeroshot')): a handwritten {}." in err


def test_embed_command_matches_the_api_and_resumes_shards(checkpoint, model, class_folder, tmp_path, capsys):
    output = tmp_path / "emb.npy"
    status, out, err = run(["embed", "--checkpoint", checkpoint, "--precision", "fp32", "--modality", "image",
                            "--input", class_folder, "--output", output, "--batch-size", "4"], capsys)
    assert status == 0 and "embedded 6 image input(s)" in out
    vectors, keys = embedding_outputs.read_embeddings(output)
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

    paths = dataset.DemoPaths(root=tmp_path, image_train="i-{0..1}.tar", image_val="iv.tar", image_real="ir.tar", audio_train="a.tar",
                              audio_val="av.tar", audio_phone="ap.tar", audio_real="ar.tar", num_samples={"image-train": 4000},
                              captions_file=tmp_path / "captions.txt")
    seen = {}

    def fake_build(cache_dir, **options):
        seen.update(options, cache_dir=cache_dir)
        options["progress"]("images", 1, 2)
        return paths

    monkeypatch.setattr(dataset, "build_demo", fake_build)
    status, out, _ = run(["demo", "--cache", tmp_path / "cache", "--scale", "0.5"], capsys)
    assert status == 0 and seen["cache_dir"] == str(tmp_path / "cache") and seen["scale"] == 0.5
    assert "image-train: 4000 samples: i-{0..1}.tar" in out and "zero, one, two" in out


def write_class_folder(root: Path, per_class: int, seed: int) -> list[tuple[Path, int]]:
    """cats (label 0) and dogs (label 1), in the order eval reads them: sorted classes, sorted files."""
    files = []
    for label, name in enumerate(("cats", "dogs")):
        for index in range(per_class):
            files.append((write_png(root / name / f"{index}.png", seed=seed * 100 + 10 * label + index), label))
    return files


def test_eval_linear_probe_on_class_folders_and_on_shards(checkpoint, model, tmp_path, capsys):
    from multimodal.eval import evaluate_linear_probe

    train = write_class_folder(tmp_path / "train", 5, seed=1)
    test = write_class_folder(tmp_path / "test", 3, seed=2)
    expected = evaluate_linear_probe(
        model.embed_images([path for path, _ in train]), torch.tensor([label for _, label in train]),
        model.embed_images([path for path, _ in test]), torch.tensor([label for _, label in test]), fewshot_k=4, seed=7)
    argv = ["eval", "--checkpoint", checkpoint, "--precision", "fp32", "--task", "linear_probe", "--data",
            tmp_path / "test", "--train-data", tmp_path / "train", "--fewshot-k", "4", "--seed", "7", "--name", "pets"]
    status, out, err = run([*argv, "--output", tmp_path / "probe.json"], capsys)
    assert status == 0 and "pets/accuracy@1" in out
    assert f"weight decay {expected.probe.weight_decay:g}: the best validation accuracy" in err
    report = json.loads((tmp_path / "probe.json").read_text())
    assert (report["task"], report["fewshot_k"], report["seed"], report["class_names"]) == (
        "linear_probe", 4, 7, ["cats", "dogs"])
    assert report["weight_decay"] == expected.probe.weight_decay and report["weight_decay_from"] == "validation"
    assert len(report["validation_accuracy"]) == len(expected.validation_accuracy)
    assert report["results"]["pets/num_train_samples"] == 8
    for key, value in expected.metrics.items():
        assert report["results"][f"pets/{key}"] == pytest.approx(value, abs=1e-6), key
    assert not (tmp_path / "probe.gallery.html").exists()  # a probe draws no pictures
    # The same folders as shards (labels from the json the shard writer puts there): the same probe, refit
    # with the weight decay the search chose (the search itself is the folder run's). Unshuffled: the
    # few-shot draw takes samples by their place in the set, so another order would draw other samples.
    for split in ("train", "test"):
        write_shards(samples_from_folder(tmp_path / split), tmp_path / f"{split}-shards", max_samples_per_shard=4,
                     shuffle=False)
    status, _, _ = run([*argv[:8], tmp_path / "test-shards", "--train-data", tmp_path / "train-shards", *argv[11:],
                        "--weight-decay", repr(expected.probe.weight_decay), "--output", tmp_path / "shards.json"],
                       capsys)
    results = json.loads((tmp_path / "shards.json").read_text())["results"]
    assert status == 0
    for key, value in expected.metrics.items():
        assert results[f"pets/{key}"] == pytest.approx(value, abs=1e-5), key
    # A fixed weight decay: no search, and one example per class is enough.
    status, _, err = run([*argv[:11], "--fewshot-k", "1", "--weight-decay", "0.001"], capsys)
    assert status == 0 and "weight decay 0.001 (given)" in err


def test_eval_linear_probe_bad_arguments(checkpoint, tmp_path, capsys):
    write_class_folder(tmp_path / "train", 2, seed=1)
    write_class_folder(tmp_path / "test", 2, seed=2)
    write_png(tmp_path / "other" / "birds" / "0.png", seed=3)
    write_png(tmp_path / "other" / "cats" / "0.png", seed=4)
    base = ["eval", "--checkpoint", checkpoint, "--data", tmp_path / "test"]
    cases = [
        (["--task", "linear_probe"], "argument --train-data: --task linear_probe needs a labelled training set"),
        (["--task", "zeroshot", "--fewshot-k", "3"], "argument --fewshot-k: only --task linear_probe trains a probe"),
        (["--task", "zeroshot", "--train-data", tmp_path / "train"],
         "argument --train-data: only --task linear_probe trains a probe"),
        (["--task", "zeroshot", "--caption-keys", "json:caption"],
         "argument --caption-keys: only --task retrieval reads captions"),
        (["--task", "linear_probe", "--train-data", tmp_path / "other"],
         "argument --train-data: its class folders must be those of --data (label i is the i-th folder of each); "
         "only in --data: ['dogs'], only in --train-data: ['birds']"),
        (["--task", "linear_probe", "--train-data", "train-{0..3}.tar"],
         "argument --train-data: give the training and test sets alike, both class folders or both shards"),
        (["--task", "linear_probe", "--train-data", tmp_path / "train", "--fewshot-k", "1"],
         "eval set 'eval': fewshot_k 1 leaves no sample per class to choose the weight decay on; give weight_decay"),
        (["--task", "linear_probe", "--train-data", tmp_path / "train", "--val-fraction", "1"],
         "argument --val-fraction: expected a number in (0, 1), got 1.0"),
        (["--task", "linear_probe", "--train-data", tmp_path / "train", "--weight-decay", "-1"],
         "argument --weight-decay: expected a number >= 0, got -1.0"),
    ]
    for extra, message in cases:
        err = bad_arguments([*base, *extra], capsys)
        assert message in err, (extra, err)
    # Too few training samples for K is the data's fault: one line, status 1.
    status, _, err = run([*base, "--task", "linear_probe", "--train-data", tmp_path / "train", "--fewshot-k", "3"],
                         capsys)
    assert status == 1 and err.strip().splitlines()[-1] == (
        "multimodal eval: error: few-shot k=3 needs 3 training samples of every class; too few in class 0: 2, "
        "class 1: 2")


def test_eval_retrieval_ranks_every_caption_of_an_item(checkpoint, model, tmp_path, capsys):
    from multimodal.eval import retrieval_metrics

    images = [write_png(tmp_path / "images" / f"{index}.png", seed=index).read_bytes() for index in range(4)]
    captions = [["a photo of a cat"], ["a photo of a dog", "someone saying dog"],
                ["the sound of a cat", "a photo of a seven", "someone saying seven"], ["the sound of a dog"]]
    with webdataset.TarWriter(str(tmp_path / "coco-000.tar")) as writer:
        for index, (image, listed) in enumerate(zip(images, captions)):
            writer.write({"__key__": f"k{index}", "png": image, "json": json.dumps({"caption": listed, "id": index})})
    status, out, err = run(["eval", "--checkpoint", checkpoint, "--precision", "fp32", "--task", "retrieval", "--data",
                            tmp_path / "coco-000.tar", "--caption-keys", "json:caption", "--output",
                            tmp_path / "r.json"], capsys)
    assert status == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    results, flat = report["results"], [caption for listed in captions for caption in listed]
    assert report["caption_keys"] == "json:caption"
    owners = torch.tensor([index for index, listed in enumerate(captions) for _ in listed])
    image_features, caption_features = model.embed_images(images), model.embed_texts(flat)
    by_caption = retrieval_metrics(caption_features, image_features, query_to_gallery=owners)
    by_image = retrieval_metrics(image_features, caption_features, query_labels=torch.arange(4), gallery_labels=owners)
    assert results["eval/text_to_image/num_queries"] == 7 and results["eval/num_samples"] == 4
    for key in ("recall@1", "recall@5", "map@10"):
        assert results[f"eval/text_to_image/{key}"] == pytest.approx(by_caption[key], abs=1e-6)
        assert results[f"eval/image_to_text/{key}"] == pytest.approx(by_image[key], abs=1e-6)
    # The gallery shows each image's top 5 captions, each caption itself (not its item's first).
    shown = re.findall(r'class="caption">([^<]*)<', (tmp_path / "r.gallery.html").read_text())
    top = (image_features @ caption_features.T).topk(5, dim=1).indices  # (4, 5): every image is a query
    assert shown == [flat[index] for row in top.tolist() for index in row]


def test_eval_linear_probe_on_audio_class_folders(checkpoint, model, tmp_path, capsys):
    from multimodal.eval import evaluate_linear_probe

    def clips(root: Path, seed: int) -> list[tuple[Path, int]]:
        # Clips of several lengths: the longer ones are embedded as averaged windows.
        return [(write_wav(root / name / f"{index}.wav", seed=seed + 10 * label + index, seconds=0.4 + 0.5 * index), label)
                for label, name in enumerate(("rain", "speech")) for index in range(3)]

    train, test = clips(tmp_path / "train", 0), clips(tmp_path / "test", 100)
    expected = evaluate_linear_probe(
        model.embed_audio([path for path, _ in train]), torch.tensor([label for _, label in train]),
        model.embed_audio([path for path, _ in test]), torch.tensor([label for _, label in test]), weight_decay=0.01)
    status, _, err = run(["eval", "--checkpoint", checkpoint, "--precision", "fp32", "--task", "linear_probe",
                          "--data", tmp_path / "test", "--train-data", tmp_path / "train", "--weight-decay", "0.01",
                          "--output", tmp_path / "audio.json"], capsys)
    report = json.loads((tmp_path / "audio.json").read_text())
    assert status == 0 and report["modality"] == "audio" and "weight decay 0.01 (given)" in err
    assert report["class_names"] == ["rain", "speech"] and report["weight_decay_from"] == "given"
    for key, value in expected.metrics.items():
        assert report["results"][f"eval/{key}"] == pytest.approx(value, abs=1e-6), key


def test_eval_reads_the_modality_of_shards_from_their_samples(checkpoint, tmp_path, capsys):
    # Audio class folders as shards: without --modality the probe embeds the clips, as the folders' run does.
    for split, seed in (("train", 0), ("test", 100)):
        for label, name in enumerate(("rain", "speech")):
            for index in range(3):
                write_wav(tmp_path / split / name / f"{index}.wav", seed=seed + 10 * label + index, seconds=0.5)
        write_shards(samples_from_folder(tmp_path / split), tmp_path / f"{split}-shards", shuffle=False)
    reports = {}
    for data in ("", "-shards"):
        status, _, err = run(["eval", "--checkpoint", checkpoint, "--precision", "fp32", "--task", "linear_probe",
                              "--data", tmp_path / f"test{data}", "--train-data", tmp_path / f"train{data}",
                              "--weight-decay", "0.01", "--output", tmp_path / f"audio{data}.json"], capsys)
        assert status == 0, err
        reports[data] = json.loads((tmp_path / f"audio{data}.json").read_text())
    assert reports["-shards"]["modality"] == "audio"
    for key, value in reports[""]["results"].items():
        assert reports["-shards"]["results"][key] == pytest.approx(value, abs=1e-5), key

    # Samples holding an image and a clip: the command cannot guess which is meant, and says so.
    with webdataset.TarWriter(str(tmp_path / "both-000000.tar")) as writer:
        writer.write({"__key__": "k0", "png": write_png(tmp_path / "x.png", seed=0).read_bytes(),
                      "wav": (tmp_path / "test" / "rain" / "0.wav").read_bytes(), "cls": b"0"})
    err = bad_arguments(["eval", "--checkpoint", checkpoint, "--task", "zeroshot", "--labels", "a,b", "--data",
                         tmp_path / "both-000000.tar"], capsys)
    assert "argument --modality: the samples of" in err and "hold images and audio (e.g. k0)" in err
    # ... unless the retrieval gallery takes one of them.
    status, _, err = run(["eval", "--checkpoint", checkpoint, "--task", "retrieval", "--gallery-modality", "audio",
                          "--data", tmp_path / "both-000000.tar", "--output", tmp_path / "r.json"], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["modality"] == "image"
    # Samples with neither.
    with webdataset.TarWriter(str(tmp_path / "text-000000.tar")) as writer:
        writer.write({"__key__": "k0", "txt": b"a caption", "cls": b"0"})
    err = bad_arguments(["eval", "--checkpoint", checkpoint, "--task", "zeroshot", "--labels", "a,b", "--data",
                         tmp_path / "text-000000.tar"], capsys)
    assert "argument --data: no sample of" in err and "holds an image (jpg;jpeg;png;webp;gif) or audio" in err


def test_eval_on_shards_mixing_images_and_sounds_passes_over_the_samples_without_the_modality(checkpoint, tmp_path,
                                                                                            capsys, caplog):
    """As `embed` does: the samples that lack the modality are counted and said, not failures (exit 0);
    a sample that has it and does not decode still is (exit 1), and is warned of."""
    png = write_png(tmp_path / "a.png", seed=0).read_bytes()
    wavs = [write_wav(tmp_path / f"{i}.wav", seed=i, seconds=0.5).read_bytes() for i in range(3)]
    shard = tmp_path / "mixed-000000.tar"
    with webdataset.TarWriter(str(shard)) as writer:
        writer.write({"__key__": "picture", "png": png, "txt": b"a cat", "cls": b"0"})
        for index, wav in enumerate(wavs):
            writer.write({"__key__": f"sound{index}", "wav": wav, "txt": b"a bell", "cls": str(index % 2).encode()})
        writer.write({"__key__": "both", "png": png, "wav": wavs[0], "txt": b"a dog", "cls": b"1"})
    base = ["eval", "--checkpoint", checkpoint, "--precision", "fp32", "--task", "zeroshot", "--labels", "a,b",
            "--data", shard, "--no-pictures"]
    for modality, evaluated, absent in (("audio", 4, 1), ("image", 2, 3)):
        status, out, err = run([*base, "--modality", modality, "--output", tmp_path / f"{modality}.json"], capsys)
        assert status == 0, err
        assert f"{absent} sample(s) of {shard} hold no {modality} (missing_{modality}): not evaluated" in err
        assert "multimodal: skipped" not in err
        report = json.loads((tmp_path / f"{modality}.json").read_text())
        assert report["results"]["eval/num_samples"] == evaluated
        assert report["skipped"]["not_evaluated"] == {f"missing_{modality}": absent}
    assert "skipping data (missing_" not in caplog.text  # said once above, in words, not as a warning

    with webdataset.TarWriter(str(tmp_path / "broken-000000.tar")) as writer:
        writer.write({"__key__": "picture", "png": png, "cls": b"0"})
        writer.write({"__key__": "sound", "wav": wavs[0], "cls": b"0"})
        writer.write({"__key__": "noise", "wav": b"RIFF but not a wav", "cls": b"1"})
    status, _, err = run([*base[:-3], "--data", tmp_path / "broken-000000.tar", "--modality", "audio"], capsys)
    assert status == 1
    assert "1 sample(s) of" in err and "hold no audio (missing_audio): not evaluated" in err
    assert "multimodal: skipped 1 input(s)" in err
    assert "source 'eval': skipping data (bad_audio): " in caplog.text
