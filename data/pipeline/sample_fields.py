"""Reading fields out of a raw shard sample: image and audio members, captions, class labels.

A raw sample is what :func:`multimodal.data.pipeline.shard_reader.read_shard` yields:
``{"__key__": key, "__url__": url, ext: bytes, ...}`` with lower-case extensions. Where
each field is found is written as ``;``-separated alternatives tried in order; an entry
is a member's extension (``"txt"``, ``"jpg"``) or ``"json:FIELD"`` for a field of the
sample's ``.json`` member, or (captions only) ``"lines:EXT"`` for a text member holding
one caption per line, as CLIP_benchmark writes its retrieval shards (COCO, Flickr30k).
The defaults read img2dataset shards (``jpg`` + ``txt`` + ``json``) and CLAP/WavCaps
shards (``flac`` + ``json`` with ``text``) as they are.

One rule for captions, everywhere (training, evaluation, embedding, tokenizer
training): the captions are taken from the first key that holds a non-empty one; a key
may hold a string or a list of strings (COCO/Flickr-style json ``caption`` lists,
Clotho/AudioCaps-style ``text`` lists). From a list training picks one non-empty entry
at random, evaluation and embedding take the first non-empty entry, and retrieval
evaluation reads every one (:meth:`SampleFields.captions`). Entries are stripped of
surrounding white space. img2dataset writes ``str(caption)`` to ``.txt``, so a caption
column that held a list arrives as its Python repr (``['a dog', 'a brown dog']``): a
text that is exactly such a list literal of strings is read as that list.

A sample that lacks a field or holds a malformed one raises :class:`UnusableSample`,
whose ``reason`` is one of ``SAMPLE_SKIP_REASONS`` (see :mod:`multimodal.data.pipeline.skip_counts`).
"""
from __future__ import annotations

import ast
import json
import random
from dataclasses import dataclass, field

from multimodal.data.modalities.base import Modality
from multimodal.data.modalities.registry import MEDIA_MODALITIES, fields_per_modality, get_modality
from multimodal.data.pipeline.skip_counts import SAMPLE_SKIP_REASONS

CAPTION_KEYS = "txt;json:text;json:caption"


class UnusableSample(ValueError):
    """A sample that cannot be used: a field it lacks or one that does not read; ``reason`` says which."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in SAMPLE_SKIP_REASONS, reason
        super().__init__(message)
        self.reason = reason


def parse_keys(keys: str) -> list[tuple[str, str]]:
    """``"txt;json:text;lines:txt"`` -> [("ext", "txt"), ("json", "text"), ("lines", "txt")].

    Extensions are lower-cased, as shards are read.
    """
    parsed = []
    for entry in keys.split(";"):
        entry = entry.strip()
        if entry.startswith("json:"):
            parsed.append(("json", entry[len("json:") :]))
        elif entry.startswith("lines:"):
            parsed.append(("lines", entry[len("lines:") :].lower()))
        elif entry:
            parsed.append(("ext", entry.lower()))
    return parsed


def _python_list_of_strings(text: str) -> list[str] | None:
    """The list a text spells as a Python literal of strings (img2dataset's ``str(list)``), else None."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = ast.literal_eval(text)  # literals only: nothing is executed
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def member_keys_field(definition: Modality) -> tuple[type, str] | None:
    """``<name>_keys`` of a modality read from members of its own: by default every extension its decoder reads, in order."""
    return (str, definition.default_keys) if definition.reads_files else None


def member_keys(settings: object) -> dict[str, str]:
    """The ``<name>_keys`` of every media modality that ``settings`` (a SampleFields or a source) holds, by field name."""
    return {f"{name}_keys": getattr(settings, f"{name}_keys") for name in MEDIA_MODALITIES}


@dataclass(frozen=True)
@fields_per_modality("{name}_keys", member_keys_field)
class SampleFields:
    """Where each field of a raw shard sample is, and how it is read (see the module docstring).

    Args:
        <name>_keys: one per media modality (``image_keys``, ``audio_keys``), made by the
            registry: extensions of the member holding the modality, in order.
        caption_keys: extensions, ``json:FIELD`` and ``lines:EXT`` entries that may hold the captions.
        label_key: where the class label is (``"json:label;cls"``); None when not read.

    Raises ValueError when a key list is empty.
    """

    caption_keys: str = CAPTION_KEYS
    label_key: str | None = None
    _parsed: dict[str, list[tuple[str, str]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The field each part is configured by: a media modality's members are where its ``<name>_keys`` says.
        fields = {name: f"{name}_keys" for name in MEDIA_MODALITIES}
        parsed = {name: parse_keys(getattr(self, key)) for name, key in fields.items()}
        parsed["caption"] = parse_keys(self.caption_keys)
        parsed["label"] = parse_keys(self.label_key) if self.label_key is not None else []
        for what, key in {**fields, "caption": "caption_keys"}.items():
            if not parsed[what]:
                raise ValueError(f"{key} is empty")
        for what, key in {**fields, "label": "label_key"}.items():
            if any(kind == "lines" for kind, _ in parsed[what]):
                raise ValueError(f"{key}: 'lines:' entries are for caption_keys (one caption per line)")
        if self.label_key is not None and not parsed["label"]:
            raise ValueError("label_key is empty (give None to read no label)")
        object.__setattr__(self, "_parsed", parsed)

    def member(self, raw: dict, modality: str) -> bytes:
        """The bytes of the sample's member of a media modality (the first of its keys present)."""
        keys = [key for _, key in self._parsed[modality]]
        for key in keys:
            if key in raw:
                return raw[key]
        present = sorted(k for k in raw if not k.startswith("__"))
        raise UnusableSample(f"missing_{modality}", f"none of {keys} in the sample (it has {present})")

    def captions(self, raw: dict) -> list[str]:
        """Every non-empty caption of the first key holding one, stripped, in order (retrieval evaluation)."""
        present_but_empty = None
        parsed_json: dict = {}
        for kind, key in self._parsed["caption"]:
            value = self._value(raw, kind, key, "caption", parsed_json)
            if value is None:
                continue
            if kind == "lines":
                value = value.splitlines()
            elif isinstance(value, str):
                listed = _python_list_of_strings(value)
                value = [value] if listed is None else listed
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise UnusableSample(
                    "bad_caption", f"a caption must be a string or a list of strings, {key} holds {value!r:.80}"
                )
            candidates = [c.strip() for c in value if c.strip()]
            if candidates:
                return candidates
            present_but_empty = present_but_empty or key
        if present_but_empty is not None:
            raise UnusableSample("missing_caption", f"the caption is empty (under {present_but_empty!r})")
        raise UnusableSample("missing_caption", f"no caption under {self.caption_keys!r}")

    def caption(self, raw: dict, rng: random.Random | None = None) -> str:
        """One caption of :meth:`captions`: with ``rng`` a random one (training), else the first."""
        candidates = self.captions(raw)
        return rng.choice(candidates) if rng is not None else candidates[0]

    def label(self, raw: dict) -> int:
        """The integer class label (the first of ``label_key`` present)."""
        parsed_json: dict = {}
        for kind, key in self._parsed["label"]:
            value = self._value(raw, kind, key, "label", parsed_json)
            if value is None:
                continue
            try:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                return int(value.strip() if isinstance(value, str) else value)
            except (TypeError, ValueError):
                raise UnusableSample("bad_label", f"label {value!r:.40} under {key!r} is not an integer") from None
        raise UnusableSample("missing_label", f"no label under {self.label_key!r}")

    def members_read(self, modalities: list[str]) -> frozenset[str]:
        """The member extensions that reading ``modalities`` (and the label, if any) may touch.

        A sample's other members can be dropped before it is held anywhere: on shards
        serving an image source and an audio source at once, each keeps only its own bytes.
        """
        groups = [self._parsed[m if get_modality(m).reads_files else "caption"] for m in modalities]
        groups.append(self._parsed["label"])
        return frozenset("json" if kind == "json" else key for group in groups for kind, key in group)

    def raw_input(self, raw: dict, modality: str, rng: random.Random | None = None) -> bytes | str:
        """What a model reads of ``modality``: the bytes of a media modality's member, or the caption ("text")."""
        return self.member(raw, modality) if get_modality(modality).reads_files else self.caption(raw, rng)

    @staticmethod
    def _value(raw: dict, kind: str, key: str, what: str, parsed_json: dict) -> object | None:
        """An extension's text (also for ``lines``), or a json field's value; None when the sample does not hold it.

        ``parsed_json`` keeps the parsed json member across the keys of one field.
        """
        if kind in ("ext", "lines"):
            if key not in raw:
                return None
            try:
                return raw[key].decode("utf-8")
            except UnicodeDecodeError as error:
                raise UnusableSample(f"bad_{what}", f"{key} is not UTF-8: {error}") from None
        if "json" not in raw:
            return None
        if "value" not in parsed_json:
            try:
                parsed_json["value"] = json.loads(raw["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise UnusableSample(f"bad_{what}", f"json does not parse: {error}") from None
        fields = parsed_json["value"]
        return fields.get(key) if isinstance(fields, dict) else None


__all__ = ["CAPTION_KEYS", "SampleFields", "UnusableSample", "member_keys", "member_keys_field", "parse_keys"]
