"""classes.json: the class names `multimodal shards --layout classes` records beside its shards, in label order,
and the start-up of a zero-shot set given no class_names reads them there instead of reading every shard."""
import json

import pytest

from multimodal.apps import evaluation_sources
from multimodal.training import preflight
from multimodal.cli import main as cli
from multimodal.data.writing.class_record import FILE_NAME, recorded_beside
from multimodal.data.writing.writer import SampleSource, write_shards
from multimodal.apps.evaluation_sources import recorded_class_names
from multimodal.apps.evaluation import EvalSetConfig
from multimodal.presets import preset
from tests.data.writing.test_writer import png_bytes, read_shards

# Folder names, as `shards` numbers them: sorted, so cat=0, dog house=1, zebra=2 (not the order written here).
FOLDERS = ("zebra", "cat", "dog_house")
IN_LABEL_ORDER = ["cat", "dog house", "zebra"]


def class_folders(root, per_class: int = 4):
    for index, name in enumerate(FOLDERS):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            (root / name / f"{n}.png").write_bytes(png_bytes(10 * index + n))
    return root


def shards_of(tmp_path, *arguments) -> str:
    output = tmp_path / "shards"
    assert cli(["shards", "--input", str(class_folders(tmp_path / "classes")), "--output", str(output),
                *arguments]) == 0
    return str(output)


def test_a_class_layout_records_every_split_s_names_in_label_order(tmp_path):
    output = tmp_path / "shards"
    shards_of(tmp_path, "--validation-fraction", "0.3", "--max-samples", "2", "--seed", "1")
    for split in ("train", "val"):
        assert json.loads((output / split / FILE_NAME).read_text()) == {"shard": IN_LABEL_ORDER}
        shards = sorted((output / split).glob("shard-*.tar"))
        samples, _ = read_shards(shards)
        # The record names each label as the samples' own json does.
        fields = [json.loads(sample["json"]) for sample in samples.values()]
        assert {(each["label"], each["class_name"]) for each in fields} <= set(enumerate(IN_LABEL_ORDER))
        assert recorded_beside([str(shard) for shard in shards]) == IN_LABEL_ORDER


def test_captions_get_no_record_and_rewriting_a_prefix_without_labels_drops_its_entry(tmp_path):
    captions = tmp_path / "captions"
    captions.mkdir()
    for n in range(3):
        (captions / f"{n}.png").write_bytes(png_bytes(n))
        (captions / f"{n}.txt").write_text(f"picture {n}")
    assert cli(["shards", "--input", str(captions), "--output", str(tmp_path / "captioned")]) == 0
    assert not (tmp_path / "captioned" / FILE_NAME).exists()

    output = tmp_path / "shards"
    shards_of(tmp_path)
    assert cli(["shards", "--input", str(captions), "--output", str(output), "--prefix", "other"]) == 0
    assert json.loads((output / FILE_NAME).read_text()) == {"shard": IN_LABEL_ORDER}  # another prefix: kept
    assert cli(["shards", "--input", str(captions), "--output", str(output), "--overwrite"]) == 0
    assert not (output / FILE_NAME).exists()  # shard-*.tar now hold captions: their names would be wrong


def test_no_record_where_a_sample_s_own_fields_contradict_the_names(tmp_path):
    samples = [SampleSource(f"k{i}", {"png": png_bytes(i)}, caption="x", extra={"label": i, "class_name": f"c{i}"})
               for i in range(3)]
    agreeing = write_shards(samples, tmp_path / "agreeing", class_names=["c0", "c1", "c2"])
    assert agreeing.splits["all"].class_names == ["c0", "c1", "c2"]
    contradicted = write_shards(samples, tmp_path / "contradicted", class_names=["c0", "c2", "c1"])
    assert contradicted.splits["all"].class_names is None and not (tmp_path / "contradicted" / FILE_NAME).exists()


def test_start_up_takes_the_names_from_the_record_without_opening_a_shard(tmp_path, monkeypatch):
    spec = shards_of(tmp_path, "--max-samples", "5")
    opened = []

    def read_shard(url, problems, remote=None):
        opened.append(url)
        raise AssertionError(f"{url} opened to read its class names")

    monkeypatch.setattr(evaluation_sources, "read_shard", read_shard)
    assert recorded_class_names(spec) == IN_LABEL_ORDER
    # Start-up: the names come from the record; the check of the first samples (its own reader) still holds them
    # against what the samples say.
    settled = preflight.check_eval_sets([EvalSetConfig(name="z", shards=spec)], preset("tiny"))
    assert settled[0].class_names == IN_LABEL_ORDER and opened == []
    # Even shards that could not be read at all: nothing but classes.json is opened for the names.
    for shard in (tmp_path / "shards").glob("*.tar"):
        shard.write_bytes(b"not a tar")
    assert recorded_class_names(f"{spec}/shard-{{000000..000002}}.tar") == IN_LABEL_ORDER


def test_names_given_against_the_record_are_refused_as_before(tmp_path):
    spec = shards_of(tmp_path)
    with pytest.raises(ValueError) as error:
        preflight.check_eval_sets([EvalSetConfig(name="z", shards=spec, class_names=["cat", "zebra", "dog house"])],
                                  preset("tiny"))
    assert str(error.value).startswith(
        "data.eval[0] (z).shards: class_names are not in label order: the shards give label 1 to 'dog house'")
    # A record that contradicts the samples (edited by hand) is refused by the same check of the first samples.
    (tmp_path / "shards" / FILE_NAME).write_text(json.dumps({"shard": ["zebra", "cat", "dog house"]}))
    with pytest.raises(ValueError, match=r"^data\.eval\[0\] \(z\)\.shards: class_names are not in label order: the "
                                         r"shards give label 0 to 'cat'"):
        preflight.check_eval_sets([EvalSetConfig(name="z", shards=spec)], preset("tiny"))


def test_shards_without_a_record_of_theirs_are_read_as_before(tmp_path):
    spec = shards_of(tmp_path)
    output = tmp_path / "shards"
    (output / FILE_NAME).write_text(json.dumps({"other": ["a", "b"]}))  # no entry for this prefix
    assert recorded_beside([str(output / "shard-000000.tar")]) is None
    assert recorded_class_names(spec) == IN_LABEL_ORDER  # from the samples
    (output / FILE_NAME).unlink()
    assert recorded_class_names(spec) == IN_LABEL_ORDER
    assert recorded_beside(["https://example.org/shard-000000.tar"]) is None
    (output / FILE_NAME).write_text('["cat"]')
    with pytest.raises(ValueError, match=f"^{output / FILE_NAME} is not a class record .*; delete it to read the "
                                         "class names from the samples instead$"):
        recorded_class_names(spec)
