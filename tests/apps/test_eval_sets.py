"""data.eval takes what `multimodal eval` takes: class folders, shards that mix pictures and sounds, and
the class names the data record (no class_names restated); names given that contradict the record are refused."""
import json
import logging
import re

import pytest
import torch

from multimodal.training import preflight, data_sources
from multimodal.apps.api import EmbeddingModel
from multimodal.checkpoint import load_model, load_tokenizer
from multimodal.cli import main as cli
from multimodal.data.modalities.registry import get_modality
from multimodal.data.pipeline.shard_reader import read_shard
from multimodal.apps.evaluation_sources import ClassFolderLoader, read_class_folder
from multimodal.apps.evaluation import EvalSetConfig, run_evaluations, zero_shot_weights
from tests.apps.test_api import tiny_checkpoint, write_png, write_wav

# Named so that `shards` numbers them alphabetically (one=0, three=1, two=2), not as one counts.
CLASSES = ("one", "two", "three")
RECORDED = ["one", "three", "two"]
TEMPLATES = ["a {} here."]  # one prompt per class: the text tower runs once per set


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """Class folders holding two pictures and two recordings each, and the shards `multimodal shards` writes of them."""
    root = tmp_path_factory.mktemp("eval-sets")
    for index, name in enumerate(CLASSES):
        for n in range(2):
            write_png(root / "classes" / name / f"picture{n}.png", seed=10 * index + n, size=(20, 24))
            write_wav(root / "classes" / name / f"recording{n}.wav", seed=10 * index + n, seconds=0.5 + 0.25 * n)
    (root / "pictures" / "one").mkdir(parents=True)
    (root / "pictures" / "two").mkdir(parents=True)
    for label, name in enumerate(("one", "two")):
        write_png(root / "pictures" / name / "only.png", seed=100 + label)
    assert cli(["shards", "--input", str(root / "classes"), "--output", str(root / "shards"), "--layout", "classes",
                "--seed", "3"]) == 0
    return {"root": root, "folders": str(root / "classes"), "shards": str(root / "shards")}


@pytest.fixture(scope="module")
def tiny():
    checkpoint = tiny_checkpoint()
    return load_model(checkpoint), load_tokenizer(checkpoint)


def evaluate(model, tokenizer, eval_sets):
    settled = preflight.check_eval_sets(eval_sets, model.config)
    resolved = data_sources.ResolvedSources(train=[], eval_sets=settled)
    data = data_sources.prepare(data_sources.DataConfig(eval=settled, eval_batch_size=8), model.config, tokenizer, resolved)
    return settled, data, run_evaluations(model, data.eval_sets, tokenizer)


def reference_accuracy(model, tokenizer, modality: str, files) -> float:
    """Zero-shot top-1 accuracy of the files, embedded one by one through the API: what the sets must agree with."""
    api = EmbeddingModel(model, tokenizer, precision="fp32")
    paths = [path for path, _ in files]
    features = api.embed_images(paths) if modality == "image" else api.embed_audio(paths)
    weights = zero_shot_weights(model, tokenizer, RECORDED, TEMPLATES, "cpu")
    predicted = (features @ weights.T).argmax(dim=1)
    return (predicted == torch.tensor([label for _, label in files])).float().mean().item()


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_class_folders_and_a_mixed_shard_evaluate_alike_with_the_names_they_record(material, tiny, modality):
    model, tokenizer = tiny
    eval_sets = [EvalSetConfig(name="folders", shards=material["folders"], modality=modality, templates=TEMPLATES),
                 EvalSetConfig(name="shards", shards=material["shards"], modality=modality, templates=TEMPLATES)]
    settled, data, results = evaluate(model, tokenizer, eval_sets)
    # No class_names given: the folders' names, sorted, and the names the shards' samples record.
    assert [s.class_names for s in settled] == [RECORDED, RECORDED]

    expected = reference_accuracy(model, tokenizer, modality, read_class_folder(material["folders"], modality).files)
    for name in ("folders", "shards"):
        assert results[f"{name}/num_samples"] == 6
        assert results[f"{name}/accuracy@1"] == pytest.approx(expected, abs=1e-6)
    assert results["folders/mean_per_class_recall"] == pytest.approx(results["shards/mean_per_class_recall"], abs=1e-6)
    # The shard mixes pictures and sounds: the six of the other modality are skipped and counted, not fatal.
    shard_loader = data.eval_sets[1].loader()
    assert sum(len(batch["label"]) for batch in shard_loader) == 6
    assert shard_loader.stats.summary()["skipped"] == {"shards": {f"missing_{modality}": 6}}


def test_a_class_folder_loader_labels_by_sorted_folder_reads_drawings_and_counts_what_does_not_decode(tiny, tmp_path):
    model, _ = tiny
    for name in ("b_class", "a_class"):
        write_png(tmp_path / "folders" / name / "good.png", seed=len(name))
    (tmp_path / "folders" / "b_class" / "drawing.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24"><circle cx="12" cy="12" r="8" fill="red"/></svg>')
    (tmp_path / "folders" / "b_class" / "broken.png").write_bytes(b"not a picture")
    loader = ClassFolderLoader(read_class_folder(tmp_path / "folders", "image"), "mine", batch_size=2,
                               preprocess=model.config.preprocess)
    batches = list(loader)
    assert [batch["__key__"] for batch in batches] == [["a_class/good.png", "b_class/drawing.svg"], ["b_class/good.png"]]
    assert [batch["label"].tolist() for batch in batches] == [[0, 1], [1]]
    assert loader.stats.samples == {"mine": 3} and loader.stats.skipped == {"mine": {"bad_image": 1}}
    # The pictures are those the shards of the same folder give (the drawing drawn as the writer draws it).
    assert cli(["shards", "--input", str(tmp_path / "folders"), "--output", str(tmp_path / "shards"),
                "--layout", "classes", "--max-skip-fraction", "1"]) == 0
    shard_set = EvalSetConfig(name="shards", shards=str(tmp_path / "shards"), class_names=["a", "b"])
    data = data_sources.prepare(data_sources.DataConfig(), model.config, None,
                                data_sources.ResolvedSources(train=[], eval_sets=[shard_set]))
    from_shards = sorted(torch.cat([batch["image"] for batch in data.eval_sets[0].loader()]).sum(dim=(1, 2, 3)).tolist())
    from_folders = sorted(torch.cat([batch["image"] for batch in batches]).sum(dim=(1, 2, 3)).tolist())
    assert from_folders == pytest.approx(from_shards, abs=1e-3)


def test_multimodal_eval_reads_class_folders_as_training_does_and_names_each_file_it_skips(tiny, tmp_path, capsys,
                                                                                           caplog):
    model, tokenizer = tiny
    folders = tmp_path / "folders"
    for label, name in enumerate(CLASSES):
        write_png(folders / name / "picture.png", seed=label, size=(20, 24))
    broken = folders / "two" / "broken.png"
    broken.write_bytes(b"not a picture")
    eval_set = EvalSetConfig(name="pets", shards=str(folders), templates=TEMPLATES)
    _, _, trained = evaluate(model, tokenizer, [eval_set])
    caplog.clear()
    capsys.readouterr()
    status = cli(["eval", "--checkpoint", str(tiny_checkpoint()), "--precision", "fp32", "--task", "zeroshot", "--data",
                  str(folders), "--templates", TEMPLATES[0], "--name", "pets", "--output", str(tmp_path / "r.json"),
                  "--no-pictures"])
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert status == 1 and report["class_names"] == RECORDED
    assert report["results"] == pytest.approx(trained, abs=1e-6)
    # The file skipped: named once on stderr (not warned of again), and in the report with its error.
    message = next(iter(report["skipped"]))[1]
    assert report["skipped"] == [[str(broken), message]] and message.startswith("ValueError: ")
    (line,) = [line for line in err.splitlines() if str(broken) in line]  # after the progress bar, in a log
    assert line.endswith(f"skipped {broken}: {message[len('ValueError: '):]}")
    assert "skipping data" not in caplog.text


def test_evaluations_say_the_samples_without_the_modality_once_and_warn_of_a_broken_one_each_time(tiny, tmp_path,
                                                                                                    caplog):
    import webdataset

    model, tokenizer = tiny
    shard = tmp_path / "spoken-000000.tar"
    with webdataset.TarWriter(str(shard)) as writer:
        for index in range(2):
            picture = write_png(tmp_path / f"{index}.png", seed=index).read_bytes()
            writer.write({"__key__": f"picture{index}", "png": picture, "cls": b"0"})
        for index in range(3):
            sound = write_wav(tmp_path / f"{index}.wav", seed=index, seconds=0.5).read_bytes()
            writer.write({"__key__": f"sound{index}", "wav": sound, "cls": str(index % 2).encode()})
        writer.write({"__key__": "noise", "wav": b"RIFF but not a wav", "cls": b"1"})
    eval_set = EvalSetConfig(name="spoken", shards=str(shard), modality="audio", class_names=["a", "b"],
                             templates=TEMPLATES)
    data = data_sources.prepare(data_sources.DataConfig(eval=[eval_set]), model.config, tokenizer,
                                data_sources.ResolvedSources(train=[], eval_sets=[eval_set]))
    with caplog.at_level(logging.WARNING):
        first = run_evaluations(model, data.eval_sets, tokenizer, say_not_evaluated=data.say_not_evaluated)
        second = run_evaluations(model, data.eval_sets, tokenizer, say_not_evaluated=data.say_not_evaluated)
    assert first == second and first["spoken/num_samples"] == 3
    assert [message for message in caplog.messages if "not evaluated" in message] == [
        f"eval set 'spoken': 2 sample(s) of {shard} hold no audio (missing_audio): not evaluated "
        "(said at the first evaluation only)"]
    assert "skipping data (missing_" not in caplog.text
    decode_errors = [message for message in caplog.messages if "skipping data (bad_audio)" in message]
    assert len(decode_errors) == 2 and "sample noise" in decode_errors[0]


def refused(model, eval_set: EvalSetConfig, samples_checked: int | None = None) -> str:
    with pytest.raises(ValueError) as error:
        preflight.check_eval_sets([eval_set], model.config, samples_checked)
    return str(error.value)


def test_class_names_that_contradict_the_record_are_refused_and_renames_stand(material, tiny):
    model, _ = tiny
    shards, folders = material["shards"], material["folders"]
    in_counting_order = refused(model, EvalSetConfig(name="z", shards=shards, modality="audio",
                                                     class_names=list(CLASSES)))
    assert re.fullmatch(
        r"data\.eval\[0\] \(z\)\.shards: class_names are not in label order: the shards give label 1 to 'three' "
        r"\(sample three__recording\d of .*shard-000000\.tar\), but class_names\[1\] is 'two' and class_names\[2\] is "
        r"'three'\. Leave class_names out to take these names, or list them in label order: \['one', 'three', 'two'\]",
        in_counting_order), in_counting_order
    assert refused(model, EvalSetConfig(name="z", shards=folders, class_names=["One", "Two", "Three"])) == (
        f"data.eval[0] (z).shards: class_names are not in label order: the class folders of {folders}, sorted by "
        "name, give label 1 to 'three' (folder three, number 1 by name), but class_names[1] is 'Two' and "
        "class_names[2] is 'Three'. Leave class_names out to take these names, or list them in label order: "
        "['one', 'three', 'two']")
    assert refused(model, EvalSetConfig(name="z", shards=folders, class_names=["one", "three"])) == (
        f"data.eval[0] (z).shards: class_names names 2 classes, but {folders} has 3 class folders (one, three, two); "
        "give one name per folder in their sorted order, or leave class_names out to take the folders' names")
    assert "but class_names names 2 classes (labels 0-1); give a name for every label" in refused(
        model, EvalSetConfig(name="z", shards=shards, class_names=["one", "three"]))
    # Other names for the same classes (in label order, none recorded under another label) stand.
    renamed = ["uno", "tres", "dos"]
    for data in (shards, folders):
        settled = preflight.check_eval_sets([EvalSetConfig(name="z", shards=data, class_names=renamed)], model.config)
        assert settled[0].class_names == renamed


def test_a_set_without_names_needs_data_that_record_them(tiny, tmp_path):
    from multimodal.data.writing.writer import SampleSource, write_shards
    from torchvision.io import encode_png

    model, _ = tiny
    png = encode_png(torch.zeros(3, 8, 8, dtype=torch.uint8)).numpy().tobytes()
    unnamed = write_shards([SampleSource(key=f"k{i}", media={"png": png}, caption="x", extra={"label": i % 2})
                            for i in range(4)], tmp_path / "unnamed").splits["all"].spec
    assert refused(model, EvalSetConfig(name="z", shards=unnamed)) == (
        f"data.eval[0] (z).shards: the samples of {unnamed} record no class name (a json 'label' with its "
        "'class_name', as `multimodal shards --layout classes` writes them); give class_names (label i -> name)")
    gap = write_shards([SampleSource(key=f"k{i}", media={"png": png}, caption="x",
                                     extra={"label": 2 * i, "class_name": f"c{2 * i}"}) for i in range(2)],
                       tmp_path / "gap").splits["all"].spec
    assert refused(model, EvalSetConfig(name="z", shards=gap)) == (
        f"data.eval[0] (z).shards: the samples of {gap} name no class for label(s) [1] (they record labels [0, 2]); "
        "give class_names (label i -> name)")
    clash = write_shards([SampleSource(key=f"k{i}", media={"png": png}, caption="x",
                                       extra={"label": 0, "class_name": f"c{i}"}) for i in range(2)],
                         tmp_path / "clash", shuffle=False).splits["all"].spec
    message = refused(model, EvalSetConfig(name="z", shards=clash))
    assert message.startswith(f"data.eval[0] (z).shards: the samples of {clash} record label 0 as 'c0' (sample k0 of ")
    assert message.endswith("and as 'c1' (sample k1 of " f"{clash}); a label must name one class")


def test_the_start_up_check_looks_for_a_sample_that_fits_and_says_what_it_read(material, tiny, tmp_path):
    model, _ = tiny
    pictures_only = tmp_path / "pictures-only"
    assert cli(["shards", "--input", str(material["root"] / "pictures"), "--output", str(pictures_only),
                "--layout", "classes"]) == 0
    shard = pictures_only / "shard-000000.tar"
    message = refused(model, EvalSetConfig(name="z", shards=str(pictures_only), modality="audio"))
    assert re.fullmatch(
        rf"data\.eval\[0\] \(z\)\.shards: the set reads audio with a class label, but none of the 2 samples of "
        rf"{re.escape(str(shard))} does \(missing_audio 2\); the first, (one|two)__only of {re.escape(str(shard))}: "
        r"none of \[.*'wav'.*\] in the sample \(it has \['json', 'png', 'txt'\]\)", message), message
    # Bounded: a shard whose first samples are all pictures fails an audio set only within what the check reads.
    mixed = f"{material['shards']}/shard-000000.tar"
    first = next(read_shard(mixed, []))
    eval_set = EvalSetConfig(name="z", shards=mixed, modality="image" if "wav" in first else "audio")
    assert refused(model, eval_set, samples_checked=1).startswith(
        f"data.eval[0] (z).shards: the set reads {eval_set.modality} with a class label, but none of the first 1 "
        f"samples of {mixed} (a start-up check reads at most 1 samples) does (missing_{eval_set.modality} 1)")


def test_class_folders_are_refused_where_a_set_needs_pairs_or_mixes_them_with_shards(material, tiny, tmp_path):
    model, _ = tiny
    folders = material["folders"]
    assert refused(model, EvalSetConfig(name="z", shards=folders, task="retrieval")) == (
        f"data.eval[0] (z).shards: {folders} is a folder of class folders, a classification set; retrieval of image "
        "and text pairs needs shards whose samples hold both")
    assert refused(model, EvalSetConfig(name="z", shards=folders, task="linear_probe",
                                        train_shards=material["shards"])) == (
        "data.eval[0] (z): give its parts alike, all class folders or all shards (shards class folders, train_shards "
        "shards): labels number the sorted class folders in one and what the shards say in the other")
    assert refused(model, EvalSetConfig(name="z", shards=folders, task="linear_probe",
                                        train_shards=str(material["root"] / "pictures"))) == (
        "data.eval[0] (z).train_shards: its class folders must be those of shards (label i is the i-th folder of "
        "each); only in shards: ['three'], only in train_shards: []")
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "loose.png", seed=1)
    assert refused(model, EvalSetConfig(name="z", shards=str(tmp_path / "flat"), class_names=["a"])) == (
        f"data.eval[0] (z).shards: folder {tmp_path / 'flat'} holds neither .tar shards nor class sub-folders holding "
        "files; give a shard spec, or a folder with one sub-folder per class")
    extensions = ", ".join(f".{extension}" for extension in get_modality("audio").extensions)
    assert refused(model, EvalSetConfig(name="z", shards=str(material["root"] / "pictures"), modality="audio")) == (
        f"data.eval[0] (z).shards: the class folders of {material['root'] / 'pictures'} (one, two) hold no audio file "
        f"({extensions})")


def test_a_run_evaluates_class_folders_and_a_mixed_shard_and_records_the_names_it_took(material, tmp_path, caplog):
    from multimodal.training import trainer
    from tests.training.test_train import run_args, tiny_dataset_at

    dataset = tiny_dataset_at(tmp_path / "data")
    eval_sets = json.dumps([{"name": "folders", "shards": material["folders"]},
                            {"name": "mixed", "shards": material["shards"], "templates": TEMPLATES}])
    result = trainer.main(run_args(dataset, tmp_path, 2, ["--data.eval", eval_sets, "--threads", "1",
                                                          "--eval_every", "1"])[2:])
    assert result["results"]["folders/num_samples"] == 6 and result["results"]["mixed/num_samples"] == 6
    # Evaluated at steps 1 and 2: the recordings of the mixed shard (the model reads no audio) said once, in words.
    assert [message for message in caplog.messages if "not evaluated" in message] == [
        f"eval set 'mixed': 6 sample(s) of {material['shards']} hold no image (missing_image): not evaluated "
        "(said at the first evaluation only)"]
    assert "skipping data (missing_" not in caplog.text
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["eval"]
    assert [(entry["name"], entry["class_names"]) for entry in recorded] == [("folders", RECORDED), ("mixed", RECORDED)]
