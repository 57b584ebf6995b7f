"""Typed configuration: dataclasses from plain dicts and dotted overrides, strictly.

A typo in a key or a value of the wrong type is an error that names the key, never a
silent default. ``to_dict`` / ``from_dict`` round-trip every config in this project
through JSON (tuples come back as tuples).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_NONE_WORDS = ("none", "null")


def to_dict(config: Any) -> dict:
    """A dataclass as nested plain dicts/lists (JSON-ready)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Builds dataclass ``cls`` from ``data``; unknown keys and wrong types raise, naming the key.

    Every unknown key of the whole tree is reported in one ValueError, each with the
    closest valid keys (see :func:`unknown_keys_error`).
    """
    if not isinstance(data, dict):
        raise TypeError(f"{where or cls.__name__}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    unknown = _unknown_keys(cls, data, where)
    if unknown:
        raise unknown_keys_error(unknown, _schema_keys(cls, where))
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as error:
        if not where.endswith("]") or str(error).startswith(where):
            raise
        # An entry of a list (``data.train[1]``) cannot tell its own check which entry it is: say it here.
        raise ValueError(f"{where}: {error}") from None


def _init_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _dataclass_in(hint: Any) -> tuple[type | None, bool]:
    """(the dataclass ``hint`` holds, whether as a list of them): ``X``, ``X | None``, ``list[X]``."""
    if dataclasses.is_dataclass(hint):
        return hint, False
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        found = [a for a in args if dataclasses.is_dataclass(a)]
        return (found[0], False) if len(found) == 1 else (None, False)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    return None, False


@dataclasses.dataclass(frozen=True)
class _UnknownKey:
    """A key no config field has: ``prefix.part.rest`` where ``part`` is the first unknown part."""

    prefix: str
    part: str
    rest: str
    siblings: list[str]  # the valid keys beside ``part``

    def with_part(self, part: str) -> str:
        return ".".join(piece for piece in (self.prefix, part, self.rest) if piece)

    @property
    def dotted(self) -> str:
        return self.with_part(self.part)


def _unknown_keys(cls: type, data: dict, where: str) -> list[_UnknownKey]:
    """Every unknown key under ``data`` (dotted, with ``[i]`` for list entries)."""
    fields = _init_fields(cls)
    found = [_UnknownKey(where, key, "", fields) for key in data if key not in fields]
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in fields:
            continue
        inner, is_list = _dataclass_in(hints[key])
        if inner is None:
            continue
        if is_list and isinstance(value, list):
            for index, entry in enumerate(value):
                if isinstance(entry, dict):
                    found.extend(_unknown_keys(inner, entry, f"{_join(where, key)}[{index}]"))
        elif not is_list and isinstance(value, dict):
            found.extend(_unknown_keys(inner, value, _join(where, key)))
    return found


def _schema_keys(cls: type, where: str = "") -> list[str]:
    """Every dotted key a ``cls`` config can hold (sections and leaves; list entries not entered)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for name in _init_fields(cls):
        dotted = _join(where, name)
        keys.append(dotted)
        inner, is_list = _dataclass_in(hints[name])
        if inner is not None and not is_list:
            keys.extend(_schema_keys(inner, dotted))
    return keys


def _near(word: str, candidates: list[str], cutoff: float) -> list[str]:
    """Up to three ``candidates`` similar to ``word`` (difflib's ratio >= cutoff), as close as the closest one."""
    scored = sorted((-difflib.SequenceMatcher(None, word, c).ratio(), c) for c in set(candidates))
    scored = [(-negative, c) for negative, c in scored if -negative >= cutoff]
    # Within 0.1 of the best: `batchsize` suggests `batch_size`, not also `eval_batch_size`.
    return [c for ratio, c in scored if ratio >= scored[0][0] - 0.1][:3] if scored else []


def _closest(unknown: _UnknownKey, everywhere: list[str]) -> list[str]:
    """The valid keys a misspelt key most likely meant: a sibling of its unknown part, else any key by its last part.

    The second finds a key put in the wrong section (``lr`` for ``optim.lr``).
    """
    near = [unknown.with_part(name) for name in _near(unknown.part, unknown.siblings, 0.6)]
    valid = set(everywhere)
    near = [key for key in near if key in valid or "[" in key]  # list entries are not in `everywhere`
    if near:
        return near
    last_part = unknown.dotted.rpartition(".")[2]
    by_last_part: dict[str, list[str]] = {}
    for candidate in everywhere:
        by_last_part.setdefault(candidate.rpartition(".")[2], []).append(candidate)
    matches = _near(last_part, list(by_last_part), 0.75)
    return [candidate for name in matches for candidate in by_last_part[name]][:3]


def unknown_keys_error(unknown: list[_UnknownKey], everywhere: list[str]) -> ValueError:
    """One ValueError naming every unknown key, each with its closest valid keys from ``everywhere``.

    ``optim.lrr (did you mean optim.lr?)``; when none is close, the valid keys of its section.
    """
    parts = []
    for key in unknown:
        near = _closest(key, everywhere)
        if near:
            parts.append(f"{key.dotted} (did you mean {' or '.join(near)}?)")
        else:
            parts.append(f"{key.dotted} (valid keys there: {', '.join(sorted(key.siblings))})")
    noun = "key" if len(parts) == 1 else "keys"
    return ValueError(f"unknown configuration {noun}: {', '.join(parts)}")


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

    String values (from a command line) are parsed with ``parse_value``. Every unknown
    key is reported at once, with the closest valid keys.
    """
    data = to_dict(config)
    unknown: list[_UnknownKey] = []
    for dotted, value in overrides.items():
        if isinstance(value, str):
            value = parse_value(value)
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None and part in node:
                # An optional section that is off (None): switching it on needs its whole value.
                raise ValueError(f"cannot set {dotted}: {'.'.join(parts[: i + 1])} is not configured (it is null)")
            if not isinstance(child, dict):
                unknown.append(_UnknownKey(".".join(parts[:i]), part, ".".join(parts[i + 1 :]), sorted(node)))
                break
            node = child
        else:
            if parts[-1] in node:
                node[parts[-1]] = value
            else:
                unknown.append(_UnknownKey(".".join(parts[:-1]), parts[-1], "", sorted(node)))
    if unknown:
        raise unknown_keys_error(unknown, _dotted_keys(to_dict(config)))
    return from_dict(type(config), data)


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a config's plain dict (sections and leaves)."""
    keys = []
    for key, value in data.items():
        dotted = _join(prefix, key)
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, dotted))
    return keys


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
    return [f"  --{key} {json.dumps(value)}" for key, value in flatten(to_dict(config)).items()]


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


# --------------------------------------------------------------------------- plain trees of settings


def lookup(tree: dict, dotted: str) -> Any:
    """The value at ``dotted`` in nested dicts (a whole section for a section's key); None where absent."""
    node = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts -> ``{"a.b": leaf}``; lists and empty dicts are leaves."""
    flat = {}
    for key, value in tree.items():
        dotted = _join(prefix, key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key, nested mappings merged, other values replaced."""
    result = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result
