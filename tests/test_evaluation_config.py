"""Evaluation sets as configured (data.eval) and as a checkpoint records them; which zero-shot templates apply."""
import dataclasses
import re

import pytest
import yaml

from multimodal.api import load
from multimodal.checkpoint import CheckpointError, load_model, load_tokenizer, save_checkpoint
from multimodal.config import from_dict, to_dict
from multimodal.eval import AUDIO_TEMPLATES, IMAGE_TEMPLATES
from multimodal.evaluation import EvalSetConfig, recorded_eval_sets, zero_shot_templates
from tests.test_api import tiny_checkpoint


def docstring_examples() -> list[dict]:
    """The YAML block of EvalSetConfig's docstring, parsed."""
    block = EvalSetConfig.__doc__.split("Examples, in YAML under ``data:``::", 1)[1]
    return yaml.safe_load(re.sub(r"^ {8}", "", block, flags=re.MULTILINE))["eval"]


def test_every_field_is_documented_and_the_examples_are_valid_sets():
    for field in dataclasses.fields(EvalSetConfig):
        assert f"\n        {field.name}: " in EvalSetConfig.__doc__, field.name
    zero_shot, pairs, gallery = (from_dict(EvalSetConfig, entry, "data.eval") for entry in docstring_examples())
    assert (zero_shot.task, zero_shot.modality, len(zero_shot.class_names)) == ("zeroshot", "image", 10)
    assert zero_shot.templates == ["a handwritten {}.", "the digit {} written by hand."]
    assert (pairs.task, pairs.modalities, pairs.gallery_shards) == ("retrieval", ["image", "text"], None)
    assert (gallery.modality, gallery.gallery_modality, gallery.modalities) == ("audio", "image", ["audio"])


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
