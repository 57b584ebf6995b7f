"""The modalities, registered once: every command asks here what a modality is, or which one a file holds.

Each definition (:class:`multimodal.data.modalities.base.Modality`) lives in a module of its own:
:mod:`~multimodal.data.modalities.text_modality`, :mod:`~multimodal.data.modalities.image_modality`,
:mod:`~multimodal.data.modalities.audio_modality`. Writing shards, training, evaluating, embedding,
indexing, searching and serving read extensions, shard keys, decoding and batching from
them, so a file one command takes is taken by all. A new modality is a new definition
module, added to :data:`DEFINITIONS` (plus its encoder and its entry in
``multimodal.modality_parts``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from multimodal.data.modalities.audio_modality import AUDIO, AUDIO_EXTENSIONS
from multimodal.data.modalities.image_modality import IMAGE, IMAGE_EXTENSIONS
from multimodal.data.modalities.base import Modality
from multimodal.data.modalities.text_modality import TEXT

# In the order every part of the project lists them (batch keys, pair names, collation).
DEFINITIONS: dict[str, Modality] = {definition.name: definition for definition in (TEXT, IMAGE, AUDIO)}
MODALITIES = tuple(DEFINITIONS)
# The modalities read from files and shard members of their own, and every extension they read.
MEDIA_MODALITIES = tuple(name for name, definition in DEFINITIONS.items() if definition.reads_files)
# The media modalities, then the rest: the order batches are built in and options list them.
MEDIA_FIRST = MEDIA_MODALITIES + tuple(name for name in MODALITIES if name not in MEDIA_MODALITIES)
MEDIA_EXTENSIONS = tuple(extension for name in MEDIA_MODALITIES for extension in DEFINITIONS[name].extensions)
# The one modality read from captions (text): what prompts, zero-shot class names and search
# queries are written in, and the side of every pair a default run trains.
CAPTION_MODALITY = next(name for name, definition in DEFINITIONS.items() if not definition.reads_files)
# The media (MIME) type each extension is served as.
MEDIA_TYPES = {extension: kind for name in MEDIA_MODALITIES for extension, kind in DEFINITIONS[name].media_types.items()}
# Spellings of the same format mapped to the one shards are written with.
_EXTENSION_ALIASES = {"jpeg": "jpg"}


def get_modality(name: str) -> Modality:
    """The definition of ``name``; ValueError naming the known ones for any other."""
    try:
        return DEFINITIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown modality {name!r}; expected one of {MODALITIES}") from None


def normalize_extension(extension: str) -> str:
    """``".JPEG"`` -> ``"jpg"``: lower case, no dot, aliases folded."""
    extension = extension.lower().lstrip(".")
    return _EXTENSION_ALIASES.get(extension, extension)


def modality_of_extension(extension: str) -> str | None:
    """``"image"``, ``"audio"`` or None for an extension (``"png"``, ``".JPEG"``, a path's ``suffix``)."""
    extension = extension.lower().lstrip(".")
    for name in MEDIA_MODALITIES:
        if extension in DEFINITIONS[name].extensions:
            return name
    return None


def fields_per_modality(
    field_name: str, field_of: Callable[[Modality], tuple[Any, Any] | None], *, after: str | None = None
) -> Callable[[type], type]:
    """A class decorator, applied under ``@dataclass``: one field per registered modality that has one.

    ``field_name`` names it (``"{name}_keys"``, ``"{name}"``); ``field_of(definition)`` gives its
    (type, default) or None where the modality has no such setting. A default that is a
    class (a config dataclass) is made fresh per instance. The fields go after the field
    ``after`` (first when None), in the registry's order. This is how a model's towers, a
    source's shard keys and its augmentation are keyed by modality while a config file still
    says ``model.image`` or ``image_keys``: a new definition gets its settings with no edit here.
    """

    def add_fields(cls: type) -> type:
        added: dict[str, Any] = {}
        for name, definition in DEFINITIONS.items():
            made = field_of(definition)
            if made is None:
                continue
            kind, default = made
            added[field_name.format(name=name)] = kind
            is_config = isinstance(default, type)
            setattr(cls, field_name.format(name=name),
                    dataclasses.field(default_factory=default) if is_config else dataclasses.field(default=default))
        own = dict(cls.__dict__.get("__annotations__", {}))
        clash = sorted(set(own) & set(added))
        if clash:
            raise TypeError(f"{cls.__name__}: {clash} are made per modality; do not declare them")
        cut = 0 if after is None else list(own).index(after) + 1
        items = list(own.items())
        cls.__annotations__ = dict(items[:cut] + list(added.items()) + items[cut:])
        return cls

    return add_fields


assert len(MODALITIES) - len(MEDIA_MODALITIES) == 1, "one modality is read from captions, the others from files"
assert len(set(MEDIA_EXTENSIONS)) == len(MEDIA_EXTENSIONS), "an extension belongs to one modality"
assert set(MEDIA_TYPES) == set(MEDIA_EXTENSIONS), "every extension has its media type"

__all__ = [
    "AUDIO_EXTENSIONS",
    "CAPTION_MODALITY",
    "DEFINITIONS",
    "IMAGE_EXTENSIONS",
    "MEDIA_EXTENSIONS",
    "MEDIA_FIRST",
    "MEDIA_MODALITIES",
    "MEDIA_TYPES",
    "MODALITIES",
    "fields_per_modality",
    "get_modality",
    "modality_of_extension",
    "normalize_extension",
]
