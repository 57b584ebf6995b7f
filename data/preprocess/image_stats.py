"""The per-channel mean and standard deviation of a set of images, and the file that records them.

The shard writer measures the images it writes and leaves ``image_stats.json`` beside
each split's ``sizes.json``, so that training can normalise with its data's statistics
(``--model.image_preprocess.mean`` / ``.std``) rather than a preset's, and can warn when
a run's normalisation is far from them. The file::

    {
      "format_version": 1,
      "mean": [0.8212, 0.7931, 0.7564],     # per RGB channel, pixels scaled to [0, 1]
      "std": [0.3004, 0.3121, 0.3347],
      "background": [255, 255, 255],        # what transparent pixels were composited onto
      "images_measured": 785,               # a sample of the images written (the first ones,
      "images_written": 785                 #   in the shuffled order the writer uses)
    }

Each image counts once whatever its size, as it does in training after its crop is
resized: the statistics are means over images of per-image pixel moments. Large
images are measured on a regular subgrid of at most ``MAX_PIXELS`` pixels.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from multimodal.data.atomic_files import write_json_atomically

FILE_NAME = "image_stats.json"
FORMAT_VERSION = 1
MAX_PIXELS = 1 << 16  # per image: the moments of a 256 x 256 subgrid are as good as the whole


@dataclass(frozen=True)
class ImageStats:
    """Per-channel mean and standard deviation of pixels in [0, 1], with how they were measured."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    background: tuple[int, int, int]
    images_measured: int
    images_written: int

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "mean": [round(value, 4) for value in self.mean],
            "std": [round(value, 4) for value in self.std],
            "background": list(self.background),
            "images_measured": self.images_measured,
            "images_written": self.images_written,
        }

    def override_arguments(self) -> str:
        """The training options that normalise with these statistics."""
        mean = ", ".join(f"{value:.4f}" for value in self.mean)
        std = ", ".join(f"{value:.4f}" for value in self.std)
        return f"--model.image_preprocess.mean '[{mean}]' --model.image_preprocess.std '[{std}]'"


class ImageStatsAccumulator:
    """Adds up per-image channel moments of the first ``max_images`` images it is given."""

    def __init__(self, background: tuple[int, int, int], max_images: int) -> None:
        self.background = tuple(background)
        self.max_images = max_images
        self.images_measured = 0
        self.images_written = 0
        self._sum = torch.zeros(3, dtype=torch.float64)  # sum over images of per-image channel means
        self._sum_squares = torch.zeros(3, dtype=torch.float64)  # ... of per-image means of squares

    def wants_more(self) -> bool:
        return self.images_measured < self.max_images

    def add(self, image: torch.Tensor) -> None:
        """One decoded image, uint8 (3, H, W), already composited onto ``background``."""
        height, width = image.shape[-2:]
        step = max(1, math.ceil(math.sqrt(height * width / MAX_PIXELS)))
        pixels = image[:, ::step, ::step].reshape(3, -1).to(torch.float64).div_(255.0)  # (3, P)
        self._sum += pixels.mean(dim=1)
        self._sum_squares += pixels.square().mean(dim=1)
        self.images_measured += 1

    def result(self) -> ImageStats | None:
        """The statistics so far, or None when no image was measured."""
        if self.images_measured == 0:
            return None
        mean = self._sum / self.images_measured
        variance = (self._sum_squares / self.images_measured - mean.square()).clamp_min(0.0)
        return ImageStats(
            mean=tuple(float(value) for value in mean),
            std=tuple(float(value) for value in variance.sqrt()),
            background=self.background,
            images_measured=self.images_measured,
            images_written=self.images_written,
        )


def write_image_stats(directory: Path, stats: ImageStats | None) -> Path:
    """Writes ``directory/image_stats.json`` atomically (removes a stale one when ``stats`` is None)."""
    path = Path(directory) / FILE_NAME
    if stats is None:
        path.unlink(missing_ok=True)
    else:
        write_json_atomically(path, stats.to_json())
    return path


def read_image_stats(directory: str | Path) -> ImageStats | None:
    """The statistics recorded in ``directory/image_stats.json``, None when there is no such file.

    Raises ValueError for a file this version does not read.
    """
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}, this version reads {FORMAT_VERSION}")
        return ImageStats(
            mean=tuple(float(value) for value in data["mean"]),
            std=tuple(float(value) for value in data["std"]),
            background=tuple(int(value) for value in data["background"]),
            images_measured=int(data["images_measured"]),
            images_written=int(data["images_written"]),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path} is not an image statistics file this version reads: {error}") from None


__all__ = ["FILE_NAME", "ImageStats", "ImageStatsAccumulator", "read_image_stats", "write_image_stats"]
