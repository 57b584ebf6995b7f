"""The image modality, defined once: its files, how a member becomes a training or evaluation
crop, how crops are collated and augmented, what the API takes as an image, its thumbnail.

The pixel work lives in :mod:`multimodal.data.preprocess.image_transforms` (decoding, crops, normalisation) and
:mod:`multimodal.data.preprocess.augment_image` (the levers); this module says when each is used.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from multimodal.data.modalities.base import Modality
from multimodal.data.preprocess.augment_config import ImageAugmentConfig
from multimodal.data.preprocess.preprocess_config import ImagePreprocessConfig

# Farther than this from the data's own statistics (on a [0, 1] scale, any channel), a
# normalisation was meant for other images: MNIST's grey digits (the tiny preset) on photos.
NORMALISATION_TOLERANCE = 0.1
# What torchvision's decoders read (JPEG, PNG, WebP, GIF; no BMP or TIFF), in the order shards are searched.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif")
# The first bytes of each format the decoders read: (offset, bytes) that must all match.
IMAGE_SIGNATURES = (
    ((0, b"\xff\xd8\xff"),),  # JPEG
    ((0, b"\x89PNG\r\n\x1a\n"),),
    ((0, b"GIF87a"),),
    ((0, b"GIF89a"),),
    ((0, b"RIFF"), (8, b"WEBP")),
)
# Drawings an input may be besides those formats: rasterised as the shard writer rasterises them
# (multimodal.data.preprocess.svg), so a drawing given as a query is the picture a shard of it trains on.
DRAWING_EXTENSIONS = ("svg",)


def _maybe_svg(head: bytes) -> bool:
    """Whether a file starting with ``head`` may be an SVG (and is worth reading further)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def rasterised(item: Any) -> Any:
    """An SVG drawing (a path or bytes; by content, whatever the name) -> its PNG bytes, drawn as
    the shard writer draws it; the bytes of any other file; any other item as it is.

    Raises ValueError for an SVG that does not draw or when the rasteriser is not installed.
    """
    from multimodal.data.preprocess import svg

    if isinstance(item, (str, Path)):
        item = Path(item).read_bytes()
    if not isinstance(item, (bytes, bytearray, memoryview)) or not svg.is_svg(bytes(item[: svg.SNIFF_BYTES])):
        return item
    if not svg.svg_support_available():
        raise ValueError(f"an SVG drawing cannot be read here: {svg.INSTALL_HINT}")
    return svg.rasterise_svg(bytes(item))


class ImageModality(Modality):
    """Images: a member decodes to uint8 (3, H, W) (transparency composited onto the config's
    background), is cropped (random in training, centre in evaluation) to (3, S, S) and stays
    uint8 until the batch is normalised on its device; augmentation levers are drawn per
    sample and applied to the batch at once."""

    name = "image"
    extensions = IMAGE_EXTENSIONS
    media_types = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
                   "gif": "image/gif"}
    batching = "stack"
    page_element = "img"
    one, many = "an image", "images"
    class_caption = "a photo of {}."
    files_called = "pictures"
    writer_measures = True

    preprocess_config = ImagePreprocessConfig
    augment_config = ImageAugmentConfig

    def preprocess_for(self, tower: Any) -> ImagePreprocessConfig:
        """Crops of the encoder's ``image_size``."""
        return ImagePreprocessConfig(image_size=tower.image_size)

    def statistics_warnings(self, folder: Path, preprocess: ImagePreprocessConfig) -> list[str]:
        """The normalisation against the pixels' measured mean and std, and the background their
        transparent pixels were composited onto against the model's."""
        from multimodal.data.preprocess.image_stats import FILE_NAME, read_image_stats

        stats = read_image_stats(folder)
        if stats is None:
            return []
        warnings = []
        off = max(abs(a - b) for pair in ((preprocess.mean, stats.mean), (preprocess.std, stats.std))
                  for a, b in zip(*pair))
        if off > NORMALISATION_TOLERANCE:
            warnings.append(
                f"the model normalises images with mean {list(preprocess.mean)}, std "
                f"{list(preprocess.std)}, but its shards measure mean {[round(v, 4) for v in stats.mean]}, std "
                f"{[round(v, 4) for v in stats.std]} ({folder / FILE_NAME}); "
                f"train with {stats.override_arguments()}"
            )
        if tuple(stats.background) != tuple(preprocess.background):
            warnings.append(
                f"its statistics were measured on transparent pixels composited onto "
                f"{list(stats.background)}, the model composites onto {list(preprocess.background)}"
            )
        return warnings

    def check_preprocess(self, preprocess: ImagePreprocessConfig, tower: Any) -> None:
        if preprocess.image_size != tower.image_size:
            raise ValueError(
                f"image_preprocess.image_size {preprocess.image_size} differs from the encoder's "
                f"image_size {tower.image_size}"
            )

    def recognises(self, path, head: bytes) -> bool:
        """A raster format by its first bytes; an SVG drawing by its ``<svg`` element (a ``.svg`` name is
        known by its extension, :attr:`folder_extensions`, before this is asked)."""
        from multimodal.data.preprocess import svg

        if any(all(head[offset : offset + len(magic)] == magic for offset, magic in signature)
               for signature in IMAGE_SIGNATURES):
            return True
        if not _maybe_svg(head):
            return False
        with open(path, "rb") as handle:
            return svg.is_svg(handle.read(svg.SNIFF_BYTES))

    @property
    def folder_extensions(self) -> tuple[str, ...]:
        """The raster formats and SVG drawings (rasterised when prepared)."""
        return self.extensions + DRAWING_EXTENSIONS

    def check_decodes(self, data: bytes, **options: Any) -> object:
        """``options["background"]``: what transparent pixels are composited onto (default white)."""
        from multimodal.data.preprocess.image_transforms import WHITE, decode_image

        return decode_image(data, options.get("background", WHITE))  # uint8 (3, H, W): the writer measures its statistics

    def load_member(self, data: bytes, config: Any, *, train: bool, rng: random.Random | None, levers: Any) -> dict:
        from multimodal.data.preprocess.augment_image import draw_image_levers
        from multimodal.data.preprocess.image_transforms import decode_image, eval_crop, train_crop

        image = decode_image(data, config.background)
        crop = train_crop(image, config, rng) if train else eval_crop(image, config)
        entries = {"image": crop}  # uint8 (3, S, S)
        if levers is not None:
            # Drawn here, from the sample's RNG; applied to the whole batch at collation.
            entries["image_draws"] = draw_image_levers(levers, rng, max(crop.shape[1:]))
        return entries

    def collate_into(self, batch: dict, samples: list[dict], *, tokenize=None, train: bool = True) -> None:
        from multimodal.data.preprocess.augment_image import augment_images
        from multimodal.data.preprocess.image_transforms import collate_images

        batch["image"] = collate_images([sample["image"] for sample in samples])  # (B, 3, S, S)
        if "image_draws" in samples[0]:  # training augmentation, drawn per sample, applied to the batch at once
            batch["image"] = augment_images(batch["image"], [sample["image_draws"] for sample in samples])

    def after_loader(self, batch: dict, config: Any, *, buffers: Any = None, workers_busy: bool = False) -> None:
        """Normalises the batch's uint8 crops to float (B, 3, S, S) where they arrived: they crossed
        processes and the bus as uint8, 4x fewer bytes than float. On the CPU, into ``buffers``' reused
        memory, and on one thread while the workers are busy."""
        import contextlib

        import torch

        from multimodal.data.pipeline.main_process import one_cpu_thread
        from multimodal.data.preprocess.image_transforms import normalize_image

        image = batch["image"]
        if image.dtype != torch.uint8:
            return
        on_cpu = image.device.type == "cpu"
        out = buffers.empty(image.shape) if buffers is not None and on_cpu else None
        with one_cpu_thread() if on_cpu and workers_busy else contextlib.nullcontext():
            batch["image"] = normalize_image(image, config, out=out)  # float (B, 3, S, S)

    def is_single_input(self, inputs: Any) -> bool:
        return super().is_single_input(inputs) or type(inputs).__module__.startswith("PIL.")

    def split_batch(self, inputs: Any) -> list | None:
        """An (N, 3, H, W) / (N, H, W, 3) tensor or array is N images."""
        return list(inputs) if getattr(inputs, "ndim", None) == 4 else None

    def prepare(self, item: Any, config: Any, **options: Any) -> Any:
        """A path, bytes, PIL image, uint8 or [0, 1] float tensor/array -> normalised float32 (3, S, S).

        An SVG drawing (path or bytes) is rasterised first, as the shard writer does (:func:`rasterised`).
        """
        from multimodal.data.preprocess.image_transforms import preprocess_image

        return preprocess_image(rasterised(item), config)

    def thumbnail(self, data: bytes, max_pixels: int) -> Any:
        """Decoded as training decodes (transparency onto white, EXIF orientation applied), scaled so
        its longer side is ``max_pixels``: nearest up (small digits stay crisp), smooth down (photos)."""
        from PIL import Image
        from torchvision.transforms.functional import to_pil_image

        from multimodal.data.preprocess.image_transforms import decode_image

        try:
            image = to_pil_image(decode_image(rasterised(data)))
        except (RuntimeError, ValueError, OSError):
            return None
        scale = max_pixels / max(image.size)
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        return image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)


IMAGE = ImageModality()

__all__ = ["DRAWING_EXTENSIONS", "IMAGE", "IMAGE_EXTENSIONS", "IMAGE_SIGNATURES", "ImageModality", "rasterised"]
