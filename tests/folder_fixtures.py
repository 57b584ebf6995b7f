"""Small generated media files and a folder shaped like an educational game's resources, for listing tests."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8" fill="#3060c0"/></svg>'


def write_picture(path: Path, shade: int, format: str) -> None:
    """An 8x8 picture of one shade: ``format`` ``"PNG"``, ``"WEBP"`` or ``"SVG"``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "SVG":
        path.write_text(SVG.replace("#3060c0", f"#{shade:02x}60c0"), encoding="utf-8")
        return
    Image.fromarray(np.full((8, 8, 3), shade, np.uint8)).save(path, format=format, **({"lossless": True} if format == "WEBP" else {}))


def write_sound(path: Path, pitch: float, format: str) -> None:
    """A 0.3 s tone: ``format`` ``"OGG"`` (Vorbis) or ``"WAV"``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 16_000
    wave = 0.3 * np.sin(2 * np.pi * pitch * np.arange(int(0.3 * rate)) / rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave.astype(np.float32), rate, format=format)
    path.write_bytes(buffer.getvalue())


def game_resources(root: Path) -> dict[str, list[str]]:
    """A folder like an educational game's resources: a sub-folder per activity, pictures (``.png``,
    ``.webp``, ``.svg``) and sounds (``.ogg``, ``.wav``) sharing stems, two pictures of one stem,
    and stray ``README``, ``.qml`` and ``Licence.txt`` files.

    Returns ``{"pictures": [...], "sounds": [...], "strays": [...]}``, relative POSIX paths.
    """
    pictures = {
        "instruments/resource/guitar.svg": "SVG", "instruments/resource/snare_drum.png": "PNG",
        "instruments/resource/tuba.webp": "WEBP",
        "categorization/resource/board/polar_bear.webp": "WEBP", "categorization/resource/board/cow.svg": "SVG",
        "categorization/resource/board/cow.webp": "WEBP", "categorization/resource/board/red-apple.png": "PNG",
        "memory/resource/sun.png": "PNG",
    }
    sounds = {
        "instruments/resource/guitar.ogg": "OGG", "instruments/resource/snare_drum.wav": "WAV",
        "instruments/resource/violin.ogg": "OGG", "categorization/resource/board/cow.ogg": "OGG",
        "memory/resource/sun.ogg": "OGG",
    }
    for index, (relative, format) in enumerate(pictures.items()):
        write_picture(root / relative, 20 * index, format)
    for index, (relative, format) in enumerate(sounds.items()):
        write_sound(root / relative, 300 + 50 * index, format)
    strays = {
        "README": "Resources of the activities.\n",
        "instruments/ActivityInfo.qml": "import QtQuick 2.12\n",
        "categorization/resource/board/board.qml": "import QtQuick 2.12\n",
        "Licence.txt": "GPL-3.0-or-later\n",
    }
    for relative, text in strays.items():
        (root / relative).write_text(text, encoding="utf-8")
    return {"pictures": sorted(pictures), "sounds": sorted(sounds), "strays": sorted(strays)}


def written_members(shards: list[Path]) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} over the shards."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def skipped_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
