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


assert len(set(MEDIA_EXTENSIONS)) == len(MEDIA_EXTENSIONS), "an extension belongs to one modality"
assert set(MEDIA_TYPES) == set(MEDIA_EXTENSIONS), "every extension has its media type"

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFINITIONS",
    "IMAGE_EXTENSIONS",
    "MEDIA_EXTENSIONS",
    "MEDIA_FIRST",
    "MEDIA_MODALITIES",
    "MEDIA_TYPES",
    "MODALITIES",
    "get_modality",
    "modality_of_extension",
    "normalize_extension",
]
