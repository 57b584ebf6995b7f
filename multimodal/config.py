"""Typed configuration: dataclasses from plain dicts and dotted overrides, strictly.

A typo in a key or a value of the wrong type is an error that names the key, never a
silent default. ``to_dict`` / ``from_dict`` round-trip every config in this project
through JSON (tuples come back as tuples).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_NONE_WORDS = ("none", "null")
_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def to_dict(config: Any) -> dict:
    """A dataclass as nested plain dicts/lists (JSON-ready)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Builds dataclass ``cls`` from ``data``; unknown keys and wrong types raise, naming the key."""
    if not isinstance(data, dict):
        raise TypeError(f"{where or cls.__name__}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(_join(where, k) for k in unknown)
        raise ValueError(f"unknown configuration key(s) {names}; valid keys of {where or cls.__name__}: {sorted(fields)}")
    kwargs = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise TypeError(f"{where}: None is not allowed; expected {hint}")
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # an optional value: its own error names the key, without the whole value
            return _convert(options[0], value, where)
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise TypeError(f"{where}: {value!r} does not fit {hint} ({'; '.join(errors)})")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") if args else v for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"{where}: unsupported configuration type {hint}")


def parse_value(text: str) -> Any:
    """A command-line value as JSON when it parses (numbers, lists, true/false, null), else a string."""
    lowered = text.strip().lower()
    if lowered in _NONE_WORDS:
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: T, overrides: dict[str, Any]) -> T:
    """A new config with dotted keys replaced (``{"optim.lr": 3e-4}``), validated like ``from_dict``.

    String values (from a command line) are parsed with ``parse_value``.
    """
    data = to_dict(config)
    for dotted, value in overrides.items():
        if isinstance(value, str):
            value = parse_value(value)
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None and isinstance(node, dict) and part in node:
                # An optional section that is off (None): switching it on needs its whole value.
                raise ValueError(f"cannot set {dotted}: {'.'.join(parts[: i + 1])} is not configured (it is null)")
            if not isinstance(child, dict):
                raise ValueError(f"unknown configuration key {dotted!r}")
            node = child
        if parts[-1] not in node:
            raise ValueError(f"unknown configuration key {dotted!r}")
        node[parts[-1]] = value
    return from_dict(type(config), data)


def parse_override_args(argv: list[str]) -> dict[str, str]:
    """``["--optim.lr", "3e-4", "--model.embed_dim=256"]`` -> ``{"optim.lr": "3e-4", "model.embed_dim": "256"}``."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"expected a --dotted.key override, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ValueError(f"override {arg} has no value")
            i += 1
            value = argv[i]
        overrides[key.replace("-", "_")] = value
        i += 1
    return overrides


def describe_keys(config: Any) -> list[str]:
    """Every dotted key of a dataclass config with its current value, one ``--key value`` line each."""
    lines = []

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            dotted = _join(prefix, key)
            if isinstance(value, dict) and value:
                walk(value, dotted)
            else:
                lines.append(f"  --{dotted} {json.dumps(value)}")

    walk(to_dict(config), "")
    return lines


def load_config_file(path: str | Path) -> dict:
    """A JSON or YAML configuration file as a dict."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a configuration file must hold a mapping at the top level")
    return data
