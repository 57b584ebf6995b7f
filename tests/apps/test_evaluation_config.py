"""Evaluation sets as configured (data.eval) and as a checkpoint records them; which zero-shot templates apply."""
import dataclasses
import re

import pytest
import yaml

from multimodal.apps.api import load_embedding_model as load
from multimodal.checkpoint import CheckpointError, load_model, load_tokenizer, save_checkpoint
from multimodal.config_parser import from_dict, to_dict
from multimodal.eval import AUDIO_TEMPLATES, IMAGE_TEMPLATES
from multimodal.apps.evaluation import EvalSetConfig, recorded_eval_sets, zero_shot_templates
from tests.apps.test_api import tiny_checkpoint


def docstring_examples() -> list[dict]:
    """The YAML block of EvalSetConfig's docstring, parsed."""
    block = EvalSetConfig.__doc__.split("Examples, in YAML under ``data:``::", 1)[1]
    return yaml.safe_load(re.sub(r"^ {8}", "", block, flags=re.MULTILINE))["eval"]


def test_every_field_is_documented_and_the_examples_are_valid_sets():
    for field in dataclasses.fields(EvalSetConfig):
        assert f"\n        {field.name}: " in EvalSetConfig.__doc__, field.name
    zero_shot, pairs, gallery, probe, folders = (from_dict(EvalSetConfig, entry, "data.eval")
                                                 for entry in docstring_examples())
    assert (zero_shot.task, zero_shot.modality, len(zero_shot.class_names)) == ("zeroshot", "image", 10)
    assert (folders.task, folders.modality, folders.shards, folders.class_names) == (
        "zeroshot", "audio", "data/sounds", [])  # the names are the folders' (tests/apps/test_eval_sets.py)
    assert zero_shot.templates == ["a handwritten {}.", "the digit {} written by hand."]
    assert (pairs.task, pairs.modalities, pairs.gallery_shards) == ("retrieval", ["image", "text"], None)
    assert pairs.caption_keys == "json:caption"
    assert (gallery.modality, gallery.gallery_modality, gallery.modalities) == ("audio", "image", ["audio"])
    assert (probe.task, probe.modalities, probe.model_modalities, probe.fewshot_k) == (
        "linear_probe", ["image"], ["image"], 10)
    assert probe.train_shards == "data/digits-train-{000000..000039}.tar"


def test_recorded_sets_choose_the_templates():
    sets = [
        EvalSetConfig(name="pairs", shards="p.tar", task="retrieval", modality="audio"),
        EvalSetConfig(name="speech", shards="s.tar", modality="audio", class_names=["one"], templates=["said {}."]),
        EvalSetConfig(name="speech_real", shards="r.tar", modality="audio", class_names=["one"], templates=["{}!"]),
    ]
    config = {"train": {"data": {"eval": [to_dict(s) for s in sets]}}}
    assert recorded_eval_sets(config) == sets
    assert zero_shot_templates("audio", None, sets) == (["said {}."], "recorded in the checkpoint (eval set 'speech')")
    assert zero_shot_templates("audio", ["a {} sound."], sets) == (["a {} sound."], "given")
    assert zero_shot_templates("image", None, sets) == (list(IMAGE_TEMPLATES), "built-in image templates")
    assert zero_shot_templates("audio") == (list(AUDIO_TEMPLATES), "built-in audio templates")
    assert recorded_eval_sets({"model": {}}) == [] and recorded_eval_sets({"train": {"data": {}}}) == []
    with pytest.raises(ValueError, match="has 0 placeholders"):
        zero_shot_templates("audio", ["no slot"], sets)


def test_a_malformed_recorded_set_is_a_checkpoint_error(tmp_path):
    source = tiny_checkpoint()
    bad = {"train": {"data": {"eval": [{"name": "x", "shards": "x.tar", "class_names": ["a"], "tempaltes": []}]}}}
    directory = save_checkpoint(load_model(source), tmp_path / "ckpt", tokenizer=load_tokenizer(source),
                                extra_config=bad)
    with pytest.raises(CheckpointError) as error:
        load(directory)
    assert str(error.value) == (f"{directory / 'config.json'}: unknown configuration key: train.data.eval[0].tempaltes "
                                "(did you mean train.data.eval[0].templates?)")
    # The sets recorded are the API model's.
    good = {"train": {"data": {"eval": [to_dict(EvalSetConfig(name="x", shards="x.tar", class_names=["a"]))]}}}
    directory = save_checkpoint(load_model(source), tmp_path / "ckpt", tokenizer=load_tokenizer(source),
                                extra_config=good)
    assert load(directory, precision="fp32").eval_sets == [EvalSetConfig(name="x", shards="x.tar", class_names=["a"])]


def test_bad_sets_are_refused_with_what_to_fix():
    def refused(message, **fields):
        with pytest.raises(ValueError) as error:
            EvalSetConfig(name="x", shards="x.tar", **fields)
        assert str(error.value) == message

    refused("eval set 'x': a linear probe needs train_shards (its labelled training set)", task="linear_probe")
    refused("eval set 'x': train_shards, fewshot_k set for a zeroshot set; they are for task linear_probe",
            class_names=["a"], train_shards="t.tar", fewshot_k=5)
    refused("eval set 'x': seed set for a retrieval set; they are for task linear_probe", task="retrieval", seed=3)
    refused("eval set 'x': fewshot_k 1 leaves no sample per class to choose the weight decay on; give weight_decay "
            "(e.g. 1e-4)", task="linear_probe", train_shards="t.tar", fewshot_k=1)
    refused("eval set 'x': fewshot_k must be at least 1, got 0", task="linear_probe", train_shards="t.tar", fewshot_k=0)
    refused("eval set 'x': val_fraction must be in (0, 1), got 1.0", task="linear_probe", train_shards="t.tar",
            val_fraction=1.0)
    refused("eval set 'x': weight_decay must be >= 0, got -1.0", task="linear_probe", train_shards="t.tar",
            weight_decay=-1.0)
    refused("eval set 'x': modality and gallery_modality are both 'text'; retrieval needs two", task="retrieval",
            modality="text")
    refused("eval set 'x': modality 'video' is not one of ('text', 'image', 'audio')", class_names=["a"],
            modality="video")
    refused("eval set 'x': caption_keys is empty", task="retrieval", caption_keys=" ; ")
    EvalSetConfig(name="x", shards="x.tar", task="linear_probe", train_shards="t.tar", fewshot_k=1, weight_decay=0.0)


def test_each_set_says_how_its_shards_are_read():
    zero_shot, pairs, gallery, probe, _ = (from_dict(EvalSetConfig, entry, "data.eval")
                                           for entry in docstring_examples())
    spec = pairs.source_specs()["shards"]
    assert (spec.modalities, spec.all_captions, spec.caption_keys, spec.label_key) == (
        ["image", "text"], True, "json:caption", None)
    assert list(pairs.source_specs()) == ["shards"]
    assert zero_shot.source_specs()["shards"].label_key == "json:label;cls"
    assert not zero_shot.source_specs()["shards"].all_captions  # reads no text
    assert {field: spec.modalities for field, spec in gallery.source_specs().items()} == {
        "shards": ["audio"], "gallery_shards": ["image"]}
    specs = probe.source_specs()
    assert {field: (spec.shards, spec.label_key, spec.name) for field, spec in specs.items()} == {
        "shards": ("data/digits-val-{000000..000003}.tar", "json:label;cls", "digits_10shot"),
        "train_shards": ("data/digits-train-{000000..000039}.tar", "json:label;cls", "digits_10shot:train"),
    }
