"""What makes a file (or a shard member) an image or an audio clip: its extension, defined once.

The extensions are what the decoders read: :func:`multimodal.data.image.decode_image`
(torchvision's decoders: JPEG, PNG, WebP, GIF; no BMP or TIFF) and
:func:`multimodal.data.audio.decode_audio` (soundfile, with torchaudio for MP3). Writing
shards, training, evaluating, embedding, searching and serving all ask this module, so a
file one of them takes is taken by all.
"""
from __future__ import annotations

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif")
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")
# The media (MIME) type each is served as.
MEDIA_TYPES = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
    "flac": "audio/flac", "wav": "audio/wav", "ogg": "audio/ogg", "mp3": "audio/mpeg",
}
# Spellings of the same format mapped to the one shards are written with.
_EXTENSION_ALIASES = {"jpeg": "jpg"}


def normalize_extension(extension: str) -> str:
    """``".JPEG"`` -> ``"jpg"``: lower case, no dot, aliases folded."""
    extension = extension.lower().lstrip(".")
    return _EXTENSION_ALIASES.get(extension, extension)


def modality_of_extension(extension: str) -> str | None:
    """``"image"``, ``"audio"`` or None for an extension (``"png"``, ``".JPEG"``, a path's ``suffix``)."""
    extension = extension.lower().lstrip(".")
    if extension in IMAGE_EXTENSIONS:
        return "image"
    if extension in AUDIO_EXTENSIONS:
        return "audio"
    return None


assert set(MEDIA_TYPES) == set(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)

__all__ = ["AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS", "MEDIA_TYPES", "modality_of_extension", "normalize_extension"]
