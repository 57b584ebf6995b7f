"""Image preprocessing: bytes -> uint8 (3, H, W) -> crop and resize -> normalised float (3, S, S).

One implementation for training, evaluation and the inference API. The geometric
step and the normalisation are separate functions so the data pipeline can carry
uint8 crops between processes (4x fewer bytes than float) and normalise a whole batch
at once; :func:`preprocess_image` chains the same two functions for a single image.

- Training (:func:`train_crop`): RandomResizedCrop over ``train_crop_scale`` of the
  area with aspect ratios in [3/4, 4/3] (torchvision's rule, drawn from a seeded
  ``random.Random``), resized to ``image_size`` with ``config.interpolation``
  (bicubic by default) and antialiasing.
- Evaluation (:func:`eval_crop`): the shortest side resized to ``image_size``, then
  the centre square cropped.
- Normalisation (:func:`normalize_image`): ``(x / 255 - mean) / std`` for uint8,
  ``(x - mean) / std`` for float images in [0, 1]; OpenAI CLIP's statistics by default.
- Transparency (:func:`composite_alpha`): an image with an alpha channel is composited
  onto ``config.background`` (white by default) when decoded, so training, embedding
  and classification see the same pixels.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode

from multimodal.data.preprocess.preprocess_config import WHITE, ImagePreprocessConfig, check_background

_INTERPOLATIONS = {
    "bicubic": TF.InterpolationMode.BICUBIC,
    "bilinear": TF.InterpolationMode.BILINEAR,
    "nearest": TF.InterpolationMode.NEAREST,
}
# torchvision's RandomResizedCrop aspect ratios (open_clip keeps them too).
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types (byte 25 of the file; byte 24 is the bit depth).
_PNG_GREY, _PNG_RGB, _PNG_PALETTE, _PNG_GREY_ALPHA, _PNG_RGBA = 0, 2, 3, 4, 6


def _png_transparency_chunk(data: bytes) -> bytes | None:
    """The data of a PNG's tRNS chunk (it must come before the first IDAT), or None."""
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"tRNS":
            return data[position + 8 : position + 8 + length]
        if kind == b"IDAT":
            return None
        position += 12 + length  # length, type, data, CRC
    return None


def _transparency(data: bytes) -> tuple[bool, tuple[int, int, int] | None]:
    """How ``data`` marks transparency: (read it with an alpha channel?, transparent colour key or None).

    PNGs with an alpha channel (grey + alpha, RGBA), palette PNGs with a tRNS chunk and
    WebPs are read with alpha. A palette PNG without tRNS is not: torchvision's PNG
    decoder asked for alpha returns its RGB bytes laid out as if they were RGBA. A grey
    or RGB PNG with tRNS names one transparent colour, which torchvision ignores; it is
    returned here (at the decoded bit depth: 1, 2 and 4-bit grey is expanded to 8 bits)
    for :func:`decode_image` to replace. JPEG and other images are read as RGB (asking
    torchvision's JPEG decoder for alpha is an error, and opaque images need no fourth channel).
    """
    if not data.startswith(_PNG_SIGNATURE):
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP", None
    if len(data) < 26:
        return False, None
    bit_depth, colour_type = data[24], data[25]
    if colour_type in (_PNG_GREY_ALPHA, _PNG_RGBA):
        return True, None
    chunk = _png_transparency_chunk(data)
    if chunk is None:
        return False, None
    if colour_type == _PNG_PALETTE:
        return True, None
    samples = [int.from_bytes(chunk[i : i + 2], "big") for i in range(0, len(chunk) - 1, 2)]
    if colour_type == _PNG_GREY and len(samples) == 1:
        scale = 255 // (2**bit_depth - 1) if bit_depth < 8 else 1
        return False, (samples[0] * scale,) * 3
    if colour_type == _PNG_RGB and len(samples) == 3:
        return False, tuple(samples)
    return False, None


def composite_alpha(image: torch.Tensor, background: tuple[int, int, int] = WHITE) -> torch.Tensor:
    """RGBA (4, H, W) -> RGB (3, H, W) composited onto ``background`` (RGB, 0-255), same dtype.

    uint8: ``round((rgb * alpha + background * (255 - alpha)) / 255)``, in integers;
    float in [0, 1]: ``rgb * alpha + background / 255 * (1 - alpha)``. An image whose
    alpha is opaque everywhere comes back as its RGB planes, unchanged.
    """
    if image.ndim != 3 or image.shape[0] != 4:
        raise ValueError(f"expected an RGBA image (4, H, W), got shape {tuple(image.shape)}")
    check_background(tuple(background), "background")
    rgb, alpha = image[:3], image[3:]  # (3, H, W), (1, H, W)
    if image.dtype == torch.uint8:
        if bool((alpha == 255).all()):
            return rgb.contiguous()
        colour = torch.tensor(background, dtype=torch.int32).view(3, 1, 1)
        weight = alpha.to(torch.int32)
        # rgb * a + bg * (255 - a) = a * (rgb - bg) + 255 * bg >= 0; "+ 127, // 255" rounds to nearest
        # (an integer over 255 is never exactly halfway).
        blended = weight * (rgb.to(torch.int32) - colour) + (255 * colour + 127)
        return blended.div_(255, rounding_mode="floor").to(torch.uint8)
    if not image.is_floating_point():
        raise ValueError(f"an RGBA image must be uint8 or float in [0, 1], got {image.dtype}")
    colour = torch.tensor(background, dtype=image.dtype).view(3, 1, 1) / 255.0
    return rgb * alpha + colour * (1.0 - alpha)


def decode_image(data: bytes, background: tuple[int, int, int] = WHITE) -> torch.Tensor:
    """Decodes JPEG, PNG, WebP or GIF bytes into uint8 (3, H, W), RGB.

    Grayscale and palette images become RGB; PNGs and WebPs with transparency (RGBA,
    grey + alpha, palette with a tRNS chunk) are composited onto ``background`` (see
    :func:`composite_alpha`), and the pixels of a grey or RGB PNG's one transparent
    colour (tRNS) become ``background``; 16-bit PNGs are scaled to 8 bits; EXIF
    orientation is applied; an animated GIF gives its first frame. Not read as
    transparency (torchvision's GIF decoder does not report it): a GIF's transparent
    index; those pixels keep their palette colour.
    Raises ValueError when the bytes are not a decodable image.
    """
    if len(data) == 0:
        raise ValueError("cannot decode an image from empty bytes")
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with_alpha, colour_key = _transparency(data)
    mode = ImageReadMode.RGB_ALPHA if with_alpha else ImageReadMode.RGB
    try:
        image = torchvision.io.decode_image(buffer, mode=mode, apply_exif_orientation=True)
    except RuntimeError as error:
        raise ValueError(f"cannot decode image ({len(data)} bytes): {error}") from error
    if image.ndim == 4:  # animated GIF: (N, 3, H, W)
        image = image[0]
    if colour_key is not None:  # compared before 16-bit samples are scaled to 8 bits
        transparent = (image == torch.tensor(colour_key, dtype=image.dtype).view(3, 1, 1)).all(dim=0)  # (H, W)
        scale = 257 if image.dtype == torch.uint16 else 1  # 0-255 -> 0-65535
        image[:, transparent] = torch.tensor(background, dtype=image.dtype).mul(scale).view(3, 1)
    if image.dtype != torch.uint8:
        image = TF.to_dtype(image, torch.uint8, scale=True)
    if image.shape[0] == 4:
        image = composite_alpha(image, background)
    return image


def _pil_to_tensor(image, background: tuple[int, int, int]) -> torch.Tensor:
    """A PIL image of any mode -> uint8 (3, H, W); transparency composited onto ``background``."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = torch.from_numpy(np.array(image.convert("RGBA"))).permute(2, 0, 1)  # (4, H, W)
        return composite_alpha(rgba, background)
    array = np.array(image.convert("RGB"))  # (H, W, 3) uint8, writable
    return torch.from_numpy(array).permute(2, 0, 1)


def image_to_tensor(image: object, background: tuple[int, int, int] = WHITE) -> torch.Tensor:
    """Anything the inference API accepts as an image -> (3, H, W) tensor, uint8 or float in [0, 1].

    Accepted: encoded bytes; a file path (str or Path); a PIL image (any mode; converted
    to RGB); a tensor (3, H, W), (4, H, W) RGBA, (1, H, W) or (H, W), uint8 or floating
    in [0, 1]; a numpy array (H, W, 3), (H, W, 4) RGBA or (H, W) uint8, as PIL and
    OpenCV give (OpenCV's BGR is not detected: convert first). Transparency (an alpha
    channel, a PIL image with transparency) is composited onto ``background``, as
    :func:`decode_image` does for files.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), background)
    if isinstance(image, (str, Path)):
        return decode_image(Path(image).read_bytes(), background)
    if isinstance(image, np.ndarray):
        if not image.flags.writeable:  # PIL's arrays are read-only; torch needs memory it may own
            image = image.copy()
        if image.ndim == 3 and image.shape[2] in (1, 3, 4):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (C, H, W)
        else:
            image = torch.from_numpy(np.ascontiguousarray(image))
    elif not isinstance(image, torch.Tensor):
        try:
            from PIL import Image
        except ModuleNotFoundError:  # PIL is optional: without it no PIL image can exist either
            Image = None
        if Image is None or not isinstance(image, Image.Image):
            raise TypeError(
                f"cannot read an image from {type(image).__name__}: give bytes, a path, a PIL image, "
                "a numpy array or a tensor"
            )
        return _pil_to_tensor(image, background)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an image tensor (3, H, W), (1, H, W) or (H, W), got shape {tuple(image.shape)}")
    if image.is_floating_point():
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"a float image must hold values in [0, 1], got [{low:.3g}, {high:.3g}]; "
                "divide uint8 pixels by 255 or pass the uint8 tensor itself"
            )
    elif image.dtype != torch.uint8:
        raise ValueError(f"an integer image must be uint8, got {image.dtype}")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    elif image.shape[0] == 4:
        image = composite_alpha(image, background)
    return image


def _interpolation(config: ImagePreprocessConfig) -> TF.InterpolationMode:
    try:
        return _INTERPOLATIONS[config.interpolation]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {config.interpolation!r}; choose one of {sorted(_INTERPOLATIONS)}"
        ) from None


def _antialias(mode: TF.InterpolationMode) -> bool:
    return mode != TF.InterpolationMode.NEAREST


def resize(image: torch.Tensor, height: int, width: int, mode: TF.InterpolationMode) -> torch.Tensor:
    """(3, H, W) -> (3, height, width), same dtype: torchvision's resize, antialiased except "nearest".

    uint8 images are resized with their pixels interleaved (channels-last): torch's
    uint8 kernels work on interleaved pixels, and a planar image is converted there
    and back inside the call. Converting once here and returning the interleaved
    result (a (3, height, width) view with strides (1, 3 * width, 3)) saves both
    conversions; the values are identical (``python -m bench data`` times it).
    """
    if image.dtype == torch.uint8 and mode in (TF.InterpolationMode.BICUBIC, TF.InterpolationMode.BILINEAR):
        interleaved = image[None].contiguous(memory_format=torch.channels_last)  # (1, 3, H, W), stored (1, H, W, 3)
        resized = torch.nn.functional.interpolate(
            interleaved, size=(height, width), mode=mode.value, align_corners=False, antialias=True
        )
        return resized[0]
    return TF.resize(image, [height, width], interpolation=mode, antialias=_antialias(mode))


def eval_crop(image: torch.Tensor, config: ImagePreprocessConfig) -> torch.Tensor:
    """Shortest side resized to ``image_size``, then the centre square: (3, H, W) -> (3, S, S), same dtype.

    The result may be a strided view (see :func:`resize`); batching copies it.
    """
    size = config.image_size
    height, width = image.shape[-2:]
    if min(height, width) != size:
        # torchvision's rule for the long side: truncated, not rounded.
        if height <= width:
            height, width = size, int(size * width / height)
        else:
            height, width = int(size * height / width), size
        image = resize(image, height, width, _interpolation(config))
    if height != size or width != size:
        image = TF.center_crop(image, [size, size])
    return image


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, box_height, box_width), drawn from ``rng``.

    Ten tries at an area fraction in ``scale`` and a log-uniform aspect ratio in
    [3/4, 4/3]; if none fits, the centre crop of the whole image at the nearest
    allowed ratio.
    """
    area = height * width
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        box_width = int(round(math.sqrt(target_area * aspect_ratio)))
        box_height = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < box_width <= width and 0 < box_height <= height:
            top = rng.randint(0, height - box_height)
            left = rng.randint(0, width - box_width)
            return top, left, box_height, box_width
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        box_width, box_height = width, int(round(width / CROP_RATIO[0]))
    elif in_ratio > CROP_RATIO[1]:
        box_height, box_width = height, int(round(height * CROP_RATIO[1]))
    else:
        box_width, box_height = width, height
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


def train_crop(image: torch.Tensor, config: ImagePreprocessConfig, rng: random.Random) -> torch.Tensor:
    """RandomResizedCrop to (3, S, S) with ``config.train_crop_scale``, drawn from ``rng``; same dtype."""
    height, width = image.shape[-2:]
    top, left, box_height, box_width = random_resized_crop_box(height, width, tuple(config.train_crop_scale), rng)
    box = image[..., top : top + box_height, left : left + box_width]  # (3, box_height, box_width) view
    return resize(box, config.image_size, config.image_size, _interpolation(config))


def _normalization(config: ImagePreprocessConfig, dtype: torch.dtype) -> list[tuple[float, float]]:
    """(scale, shift) per channel, with normalised = pixel * scale + shift."""
    pixel_range = 255.0 if dtype == torch.uint8 else 1.0
    return [(1.0 / (pixel_range * std), -mean / std) for mean, std in zip(config.mean, config.std)]


def normalize_image(
    images: torch.Tensor, config: ImagePreprocessConfig, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 pixels or floats in [0, 1], (..., 3, H, W) -> normalised float32, contiguous.

    Computed as ``pixel * 1/(range*std) - mean/std``: one conversion pass, then one
    fused multiply-add per channel with scalar constants (30% faster than a multiply
    and an add broadcast over channels), the same for a single image and a batch.
    ``out``: a contiguous float32 tensor of the same shape to write into (the loader
    recycles batch memory this way).
    """
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected images (..., 3, H, W), got shape {tuple(images.shape)}")
    if out is None:
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    elif out.shape != images.shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be contiguous float32 {tuple(images.shape)}, got {out.dtype} {tuple(out.shape)}")
    out.copy_(images)
    for channel, (scale, shift) in enumerate(_normalization(config, images.dtype)):
        plane = out[..., channel, :, :]
        if out.device.type == "cpu":  # shift + scale * plane in one pass
            torch.add(torch.tensor(shift, dtype=torch.float32), plane, alpha=scale, out=plane)
        else:  # on accelerators memory passes are cheap; no host tensor per call
            plane.mul_(scale).add_(shift)
    return out


def preprocess_image(
    image: object,
    config: ImagePreprocessConfig,
    *,
    train: bool = False,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """One image (anything :func:`image_to_tensor` takes) -> normalised float (3, S, S).

    Transparency is composited onto ``config.background``.

    Evaluation: :func:`eval_crop`; training: :func:`train_crop` with ``rng`` (a fresh
    unseeded one if None). Then :func:`normalize_image`.
    """
    tensor = image_to_tensor(image, config.background)
    if train:
        cropped = train_crop(tensor, config, rng if rng is not None else random.Random())
    else:
        cropped = eval_crop(tensor, config)
    return normalize_image(cropped, config)


def collate_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Stacks equal-size crops (3, S, S) into (B, 3, S, S), contiguous, keeping their dtype."""
    if not images:
        raise ValueError("collate_images needs at least one image")
    first = images[0]
    batch = torch.empty((len(images), *first.shape), dtype=first.dtype)
    for row, image in enumerate(images):
        if image.shape != first.shape:
            raise ValueError(f"image {row} has shape {tuple(image.shape)}, image 0 {tuple(first.shape)}")
        batch[row].copy_(image)
    return batch


__all__ = [
    "collate_images",
    "composite_alpha",
    "decode_image",
    "eval_crop",
    "image_to_tensor",
    "normalize_image",
    "preprocess_image",
    "random_resized_crop_box",
    "resize",
    "train_crop",
]
