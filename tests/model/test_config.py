"""Typed configuration: strict dicts, dotted overrides, files."""
from dataclasses import dataclass, field

import pytest
import torch

from multimodal.config_parser import apply_overrides, from_dict, load_config_file, parse_override_args, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    name: str = "adamw"


@dataclass
class Outer:
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    optional: Inner | None = None
    tags: list[str] = field(default_factory=list)
    flag: bool = False


def test_round_trip_restores_tuples_and_nesting():
    config = Outer(steps=3, inner=Inner(lr=0.5, betas=(0.1, 0.2)), optional=Inner(), tags=["a"])
    assert from_dict(Outer, to_dict(config)) == config


def test_unknown_key_is_named_with_its_path_and_the_closest_key():
    with pytest.raises(ValueError) as error:
        from_dict(Outer, {"inner": {"lrr": 1.0}})
    assert str(error.value) == "unknown configuration key: inner.lrr (did you mean inner.lr?)"
    # Nothing close: the valid keys of its section.
    with pytest.raises(ValueError) as error:
        from_dict(Outer, {"inner": {"momentum": 0.9}})
    assert str(error.value) == "unknown configuration key: inner.momentum (valid keys there: betas, lr, name)"


def test_every_unknown_key_of_a_file_is_reported_at_once(tmp_path):
    """A YAML file for the trainer with typos at several depths, in an optional section and in a list entry."""
    from multimodal.training.train_config import parse_config

    (tmp_path / "run.yaml").write_text(
        "optim:\n  lrr: 0.001\n"
        "data:\n  batchsize: 64\n  eval:\n    - {name: val, shards: val.tar, class_names: [a], tempaltes: []}\n"
        "model:\n  embed_dimm: 64\n"
        "lr: 0.1\n"
    )
    with pytest.raises(ValueError) as error:
        parse_config(["--config", str(tmp_path / "run.yaml")])
    assert str(error.value) == (
        "unknown configuration keys: lr (did you mean optim.lr?), optim.lrr (did you mean optim.lr?), "
        "data.batchsize (did you mean data.batch_size?), data.eval[0].tempaltes (did you mean data.eval[0].templates?), "
        "model.embed_dimm (did you mean model.embed_dim?)"
    )


def test_every_unknown_dotted_override_is_reported_at_once():
    from multimodal.training.train_config import parse_config

    with pytest.raises(ValueError) as error:
        parse_config(["--optim.lrr", "1e-3", "--data.batchsize", "64", "--optimm.steps", "5", "--seed", "1"])
    assert str(error.value) == (
        "unknown configuration keys: optim.lrr (did you mean optim.lr?), data.batchsize (did you mean "
        "data.batch_size?), optimm.steps (did you mean optim.steps?)"
    )


@pytest.mark.parametrize(
    "data, where",
    [({"steps": "ten"}, "steps"), ({"steps": 1.5}, "steps"), ({"flag": 1}, "flag"), ({"inner": {"betas": [1.0]}}, "inner.betas")],
)
def test_wrong_types_are_errors(data, where):
    with pytest.raises((TypeError, ValueError), match=where.replace(".", r"\.")):
        from_dict(Outer, data)


def test_ints_are_accepted_for_floats():
    assert from_dict(Inner, {"lr": 1}).lr == 1.0


def test_dotted_overrides_parse_values_by_type():
    overrides = parse_override_args(["--inner.lr", "3e-4", "--steps=7", "--flag", "true", "--inner.betas", "[0.8, 0.9]"])
    config = apply_overrides(Outer(), overrides)
    assert config.inner.lr == 3e-4 and config.steps == 7 and config.flag is True and config.inner.betas == (0.8, 0.9)


def test_override_errors():
    with pytest.raises(ValueError, match=r"^unknown configuration key: inner\.nope \(valid keys there: betas, lr, name\)$"):
        apply_overrides(Outer(), {"inner.nope": "1"})
    with pytest.raises(ValueError, match=r"^unknown configuration key: steps\.lr \(did you mean inner\.lr\?\)$"):
        apply_overrides(Outer(), {"steps.lr": "1"})  # steps is a value, not a section
    with pytest.raises(ValueError, match="is not configured"):
        apply_overrides(Outer(), {"optional.lr": "1"})
    with pytest.raises(TypeError, match="steps"):
        apply_overrides(Outer(), {"steps": "many"})
    with pytest.raises(ValueError, match="has no value"):
        parse_override_args(["--steps"])
    with pytest.raises(ValueError, match="expected a --dotted.key"):
        parse_override_args(["steps", "3"])


def test_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("steps: 4\ninner:\n  lr: 0.1\n")
    (tmp_path / "b.json").write_text('{"steps": 5}')
    assert from_dict(Outer, load_config_file(tmp_path / "a.yaml")).inner.lr == 0.1
    assert from_dict(Outer, load_config_file(tmp_path / "b.json")).steps == 5
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        load_config_file(tmp_path / "c.json")


# The model's audio preprocessing follows its encoder ------------------------------------------


def test_audio_min_frames_follows_the_encoders_patch_length_and_a_mismatch_is_refused():
    from multimodal.encoders import AudioConfig, TransformerConfig
    from multimodal.model import ModelConfig
    from multimodal.training.train_config import parse_config

    small = TransformerConfig(width=32, depth=1, num_heads=2)
    audio = AudioConfig(num_mel_bins=32, max_frames=100, patch_size=8, stride=8, transformer=small)
    assert ModelConfig(audio=audio).audio_preprocess.min_frames == 8  # built from the encoder when not given
    with pytest.raises(ValueError) as error:
        from_dict(ModelConfig, {**to_dict(ModelConfig(audio=audio)), "audio": to_dict(AudioConfig(
            num_mel_bins=32, max_frames=100, transformer=small))}, "model")
    assert str(error.value) == (
        "model.audio_preprocess.min_frames 8 differs from the audio encoder's patch length 16 "
        "(model.audio.patch_size); set them equal"
    )
    # A command line that changes the patch must change the minimum with it.
    with pytest.raises(ValueError, match=r"min_frames 16 differs from the audio encoder's patch length 8"):
        parse_config(["--model.audio.patch_size", "8"])
    config = parse_config(["--model.audio.patch_size", "8", "--model.audio_preprocess.min_frames", "8"])
    assert config.model.audio_preprocess.min_frames == 8


def test_a_checkpoint_written_before_min_frames_loads_with_its_patch_length(tmp_path):
    import json

    from multimodal.checkpoint import load_model, save_checkpoint
    from multimodal.model import ModelConfig, MultimodalModel
    from multimodal.presets import tiny

    model = MultimodalModel(tiny(["text", "audio"]))
    directory = save_checkpoint(model, tmp_path / "old")
    written = json.loads((directory / "config.json").read_text())
    del written["model"]["audio_preprocess"]["min_frames"]
    (directory / "config.json").write_text(json.dumps(written))
    assert from_dict(ModelConfig, written["model"], "model").audio_preprocess.min_frames == 16
    loaded = load_model(directory)
    assert loaded.config.audio_preprocess.min_frames == loaded.config.audio.patch_size == 16
    frames = torch.randn(1, 16, loaded.config.audio.num_mel_bins)
    torch.testing.assert_close(loaded.encode("audio", frames), model.eval().encode("audio", frames))
