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


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ValueError, match=r"inner\.lrr"):
        from_dict(Outer, {"inner": {"lrr": 1.0}})


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
    with pytest.raises(ValueError, match="unknown configuration key 'inner.nope'"):
        apply_overrides(Outer(), {"inner.nope": "1"})
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
