"""Typed configuration: strict dicts, dotted overrides, files."""
from dataclasses import dataclass, field

import pytest

from multimodal.config import apply_overrides, from_dict, load_config_file, parse_override_args, to_dict


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
    from multimodal.train import parse_config

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
    from multimodal.train import parse_config

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
