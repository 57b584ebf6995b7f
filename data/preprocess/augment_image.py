"""Image augmentation of training crops: uint8 (B, 3, H, W) -> uint8 (B, 3, H, W), drawn per image from seeded RNGs.

Two halves, so a worker can augment a whole batch at once:

- :func:`draw_image_levers` draws, from one sample's ``random.Random``, which levers of an
  :class:`multimodal.data.preprocess.augment_config.ImageAugmentConfig` apply to it and their parameters
  (an :class:`ImageLeverDraws`; nothing depends on torch's global RNG);
- :func:`augment_images` applies the draws of every image of a batch: each lever once
  for all the rows that drew it, in the config's order, on float images holding values
  in [0, 255], rounded back to uint8 at the end.

:func:`augment_image` does both for one image. A batch gives the same pixels as its
images one by one (a test holds them equal): per-sample work was a hundred small torch
calls an image, most of their cost fixed overhead (``python -m bench.bench_augment``).

The transforms are plain functions of float images (N, C, H, W) with a parameter per
row, so each can be checked by hand; the single-image forms take (C, H, W):

- :func:`affine`: rotation, scale, shear and translation about the centre (bilinear),
  uncovered pixels filled with a given colour (the image's :func:`border_colour`);
- :func:`change_stroke`: grey-level dilation or erosion of the ink, by fractions of a pixel;
- :func:`lower_resolution`: area-averaged down to a smaller side, bicubic back up,
  as evaluation upscales a small image;
- :func:`gaussian_blur`: separable, the kernel cut at 3 sigma, edges replicated;
- :func:`adjust_contrast`: ``mean + factor * (x - mean) + brightness * 255``;
- :func:`invert`: ``255 - x``.

Grey images (all three channels equal, as MNIST is) are augmented on one channel
and repeated, when every image of the batch is grey: the same result at a third of the
arithmetic.
"""
from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from multimodal.data.preprocess.augment_config import ImageAugmentConfig
from multimodal.data.preprocess.image_transforms import resize

FULL_SCALE = 255.0


@dataclass(frozen=True)
class ImageLeverDraws:
    """What one image drew: each lever's parameters, or None (False) where the lever does not apply."""

    affine: tuple[float, float, tuple[float, float], tuple[float, float]] | None = None
    # (angle degrees, scale, shear degrees (x, y), translation (right, down) as fractions of the side)
    stroke: float | None = None  # thickness, pixels of radius (negative: thinner)
    resolution: int | None = None  # the side the image is lowered to
    blur: float | None = None  # sigma, pixels
    contrast: tuple[float, float] | None = None  # (factor, brightness)
    invert: bool = False


def _applies(p: float, rng: random.Random) -> bool:
    """Whether a lever with probability ``p`` applies; no draw for a lever that is off."""
    return p > 0 and rng.random() < p


def draw_image_levers(config: ImageAugmentConfig, rng: random.Random, side: int) -> ImageLeverDraws | None:
    """The levers ``rng`` draws for one image whose longer side is ``side``; None when none applies.

    The draws come in the config's order; a lever that is off (p = 0) draws nothing.
    """
    found = {}
    if _applies(config.affine.p, rng):
        lever = config.affine
        found["affine"] = (
            rng.uniform(-lever.rotation_degrees, lever.rotation_degrees),
            rng.uniform(*lever.scale),
            (rng.uniform(-lever.shear_degrees, lever.shear_degrees),
             rng.uniform(-lever.shear_degrees, lever.shear_degrees)),
            (rng.uniform(-lever.translate, lever.translate), rng.uniform(-lever.translate, lever.translate)),
        )
    if _applies(config.stroke.p, rng):
        found["stroke"] = rng.uniform(*config.stroke.thickness)
    if _applies(config.resolution.p, rng):
        found["resolution"] = rng.randint(min(config.resolution.min_size, side), side)
    if _applies(config.blur.p, rng):
        found["blur"] = rng.uniform(*config.blur.sigma)
    if _applies(config.contrast.p, rng):
        found["contrast"] = (rng.uniform(*config.contrast.factor), rng.uniform(*config.contrast.brightness))
    if _applies(config.invert.p, rng):
        found["invert"] = True
    return ImageLeverDraws(**found) if found else None


# The transforms ---------------------------------------------------------------------------


def border_colour(image: torch.Tensor) -> torch.Tensor:
    """The median of each channel over the outermost rows and columns: (..., C, H, W) -> (..., C).

    The background of a scanned digit or a drawing; what an affine map fills in.
    """
    edges = torch.cat([image[..., 0, :], image[..., -1, :], image[..., :, 0], image[..., :, -1]], dim=-1)
    return edges.median(dim=-1).values  # over (..., C, 2W + 2H)


@functools.lru_cache(maxsize=8)
def _pixel_centres(height: int, width: int) -> torch.Tensor:
    """(H * W, 3): each pixel's normalised (x, y, 1), row by row; times theta^T it is F.affine_grid's grid.

    The same numbers as ``F.affine_grid(theta, align_corners=False)``, one matrix product
    per batch instead of building the base grid every call.
    """
    xs = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
    grid = torch.ones(height, width, 3)
    grid[..., 0] = xs[None, :]
    grid[..., 1] = ys[:, None]
    return grid.view(height * width, 3)


def affine_theta(
    height: int,
    width: int,
    *,
    angle_degrees: float,
    scale: float,
    shear_degrees: tuple[float, float],
    translate_pixels: tuple[float, float],
) -> list[list[float]]:
    """The 2 x 3 matrix ``F.affine_grid`` takes (output -> input, normalised coordinates) for :func:`affine`."""
    angle = math.radians(angle_degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    shear_x, shear_y = math.tan(math.radians(shear_degrees[0])), math.tan(math.radians(shear_degrees[1]))
    # Forward map in pixel coordinates about the centre, y pointing down (a counter-clockwise
    # turn on screen is [[cos, sin], [-sin, cos]] there): scale * rotation @ [[1, shear_x], [shear_y, 1]].
    a = scale * (cos + sin * shear_y)
    b = scale * (cos * shear_x + sin)
    c = scale * (-sin + cos * shear_y)
    d = scale * (-sin * shear_x + cos)
    determinant = a * d - b * c
    inverse = ((d / determinant, -b / determinant), (-c / determinant, a / determinant))  # output -> input
    shift_x, shift_y = translate_pixels
    offset = (-(inverse[0][0] * shift_x + inverse[0][1] * shift_y), -(inverse[1][0] * shift_x + inverse[1][1] * shift_y))
    # affine_grid maps output to input in normalised coordinates (x = u / (W / 2), y = v / (H / 2)).
    half = (width / 2.0, height / 2.0)
    return [
        [inverse[0][0], inverse[0][1] * half[1] / half[0], offset[0] / half[0]],
        [inverse[1][0] * half[0] / half[1], inverse[1][1], offset[1] / half[1]],
    ]


def affine_rows(images: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Each row resampled through its own ``theta`` (N, 2, 3), bilinear: float (N, C, H, W) -> (N, C, H, W).

    Pixels the map uncovers take the row's ``fill`` (N, C).
    """
    rows, channels, height, width = images.shape
    grid = (_pixel_centres(height, width) @ theta.transpose(1, 2)).view(rows, height, width, 2)  # (N, H, W, 2)
    fill = fill.view(rows, channels, 1, 1)
    # Zeros outside the image, after the fill colour is subtracted: the fill colour there.
    moved = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + fill


def affine(
    image: torch.Tensor,
    *,
    angle_degrees: float,
    scale: float,
    shear_degrees: tuple[float, float],
    translate_pixels: tuple[float, float],
    fill: torch.Tensor,
) -> torch.Tensor:
    """An affine map about the image centre, bilinear: float (C, H, W) -> (C, H, W).

    The content is scaled, sheared (``(x, y)`` degrees), rotated by ``angle_degrees``
    (positive: counter-clockwise as displayed) and moved by ``translate_pixels``
    (``(right, down)``). Pixels it uncovers take ``fill`` (C,).
    """
    _, height, width = image.shape
    theta = affine_theta(height, width, angle_degrees=angle_degrees, scale=scale, shear_degrees=shear_degrees,
                         translate_pixels=translate_pixels)
    return affine_rows(image[None], torch.tensor([theta], dtype=torch.float32), fill[None])[0]


def _extreme_filter(images: torch.Tensor, radius: int, sign: torch.Tensor) -> torch.Tensor:
    """Per row, the maximum (sign +1) or minimum (sign -1) over the (2r + 1)^2 square around each pixel.

    ``images`` (N, C, H, W), ``sign`` (N, 1, 1, 1) -> (N, C, H, W).
    """
    return sign * F.max_pool2d(sign * images, 2 * radius + 1, stride=1, padding=radius)


def change_stroke_rows(images: torch.Tensor, thickness: torch.Tensor, ink_is_dark: torch.Tensor) -> torch.Tensor:
    """Strokes thickened by ``thickness`` (N,) pixels of radius (negative: thinned): float (N, C, H, W) -> same.

    Whole pixels are a maximum (light ink) or minimum (dark ink, ``ink_is_dark`` (N,)
    bool) filter of that radius; a fraction blends the filters of the two nearest whole
    radii (0.5: halfway to one pixel more), so the change is continuous in ``thickness``
    and 0 changes nothing. Rows are filtered together, a group per whole radius.
    """
    amount = thickness.abs()
    radius = torch.ceil(amount).to(torch.int64)  # (N,)
    take_max = (thickness > 0) != ink_is_dark  # thickening light ink, or thinning dark ink
    sign = torch.where(take_max, 1.0, -1.0).view(-1, 1, 1, 1)
    out = images.clone()
    for whole in sorted(set(radius.tolist()) - {0}):
        rows = (radius == whole).nonzero()[:, 0]
        group, group_sign = images[rows], sign[rows]
        outer = _extreme_filter(group, whole, group_sign)
        inner = group if whole == 1 else _extreme_filter(group, whole - 1, group_sign)
        fraction = (amount[rows] - (whole - 1)).view(-1, 1, 1, 1)
        out[rows] = inner + fraction * (outer - inner)
    return out


def change_stroke(image: torch.Tensor, thickness: float, ink_is_dark: bool) -> torch.Tensor:
    """:func:`change_stroke_rows` for one float image (C, H, W); ``image`` itself when ``thickness`` is 0."""
    if thickness == 0:
        return image
    return change_stroke_rows(image[None], torch.tensor([thickness]), torch.tensor([ink_is_dark]))[0]


def lower_resolution(image: torch.Tensor, size: int) -> torch.Tensor:
    """The longer side area-averaged down to ``size`` pixels, then upscaled back, bicubic: (..., C, H, W) -> same.

    Upscaling is :func:`multimodal.data.preprocess.image_transforms.resize`'s (bicubic, as evaluation scales a
    small image up), so a crop lowered to 8 pixels looks like an
    8 x 8 image prepared for evaluation. Unchanged when the image is not larger than ``size``.
    """
    height, width = image.shape[-2:]
    if max(height, width) <= size:
        return image
    ratio = size / max(height, width)
    batch = image.reshape(-1, *image.shape[-3:])  # (N, C, H, W)
    small = F.interpolate(batch, size=(max(1, round(height * ratio)), max(1, round(width * ratio))), mode="area")
    return resize(small, height, width, TF.InterpolationMode.BICUBIC).reshape(image.shape)


@functools.lru_cache(maxsize=1024)
def resolution_map(height: int, width: int, size: int, axis: int) -> torch.Tensor:
    """The linear map :func:`lower_resolution` applies along one axis of an (H, W) image: float32 (L, L).

    Area averaging and bicubic interpolation both act on rows and columns separately, so
    lowering an image X to ``size`` is ``resolution_map(.., 0) @ X @ resolution_map(.., 1).T``.
    Measured on lower_resolution itself: image j has line j (a row for ``axis`` 0, a column
    for 1) all ones, which the other axis's map leaves all ones, so its response is column
    j of this axis's map. L is ``height`` for axis 0, ``width`` for 1. Cached and shared:
    callers must not modify it.
    """
    length = (height, width)[axis]
    impulses = torch.eye(length)  # (L, L)
    lines = impulses[:, :, None] if axis == 0 else impulses[:, None, :]  # (L, L, 1) or (L, 1, L)
    lowered = lower_resolution(lines.expand(length, height, width)[:, None].contiguous(), size)  # (L, 1, H, W)
    responses = lowered[:, 0, :, 0] if axis == 0 else lowered[:, 0, 0, :]  # (L, L): row j, image j's line
    return responses.T.contiguous()


def lower_resolution_rows(images: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Each image lowered to its own size: float (N, C, H, W), N sizes -> same; :func:`lower_resolution`'s pixels.

    Two batched matrix products with :func:`resolution_map`'s maps: calling
    lower_resolution once per distinct size (up to 25 of them in a batch of 32-pixel
    digits) spent its time on each call's overhead, not on the arithmetic.
    """
    height, width = images.shape[-2:]
    along_height = torch.stack([resolution_map(height, width, size, 0) for size in sizes])  # (N, H, H)
    along_width = torch.stack([resolution_map(height, width, size, 1) for size in sizes])  # (N, W, W)
    return along_height[:, None] @ images @ along_width[:, None].transpose(-1, -2)  # (N, C, H, W)


def gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    """The normalised 1-D Gaussian, cut at ``ceil(3 sigma)`` on each side: (2r + 1,).

    ``radius``: the length to return it in (zeros beyond the cut), at least the cut.
    """
    cut = max(1, math.ceil(3.0 * sigma))
    positions = torch.arange(-cut, cut + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (positions / sigma) ** 2)
    kernel = kernel / kernel.sum()
    if radius is not None and radius > cut:
        kernel = F.pad(kernel, (radius - cut, radius - cut))
    return kernel


def gaussian_blur_rows(images: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Each row blurred by its own ``sigma`` (> 0) pixels, edges replicated: float (N, C, H, W) -> same.

    One grouped convolution per direction: the kernels are padded with zeros to the
    widest one, which multiplies the extra replicated pixels by zero.
    """
    rows, channels, height, width = images.shape
    radius = max(max(1, math.ceil(3.0 * sigma)) for sigma in sigmas)
    kernels = torch.stack([gaussian_kernel(sigma, radius) for sigma in sigmas])  # (N, 2r + 1)
    kernels = kernels.repeat_interleave(channels, dim=0)  # (N * C, 2r + 1): one per plane
    planes = F.pad(images.reshape(1, rows * channels, height, width), (radius,) * 4, mode="replicate")
    planes = F.conv2d(planes, kernels.view(rows * channels, 1, -1, 1), groups=rows * channels)  # (1, NC, H, W + 2r)
    planes = F.conv2d(planes, kernels.view(rows * channels, 1, 1, -1), groups=rows * channels)  # (1, NC, H, W)
    return planes.view(rows, channels, height, width)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels, edges replicated: float (C, H, W) -> (C, H, W)."""
    if sigma <= 0:
        return image
    return gaussian_blur_rows(image[None], [sigma])[0]


def adjust_contrast_rows(images: torch.Tensor, factor: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """``mean + factor * (x - mean) + brightness * 255`` per row, ``mean`` over its image: (N, C, H, W), unclamped.

    ``factor`` and ``brightness``: (N,).
    """
    mean = images.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return (images - mean).mul_(factor.view(-1, 1, 1, 1)).add_(mean + brightness.view(-1, 1, 1, 1) * FULL_SCALE)


def adjust_contrast(image: torch.Tensor, factor: float, brightness: float) -> torch.Tensor:
    """:func:`adjust_contrast_rows` for one float image (C, H, W)."""
    return adjust_contrast_rows(image[None], torch.tensor([factor]), torch.tensor([brightness]))[0]


def invert(image: torch.Tensor) -> torch.Tensor:
    """``255 - x``: float (..., C, H, W) -> same."""
    return FULL_SCALE - image


# Whole batches ----------------------------------------------------------------------------


def _is_grey(images: torch.Tensor) -> bool:
    """Whether every image of uint8 (N, 3, H, W) has three equal channels."""
    return bool(torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2]))


def _rows_with(draws: list[ImageLeverDraws], lever: str) -> tuple[torch.Tensor, list]:
    """(indices (M,) of the rows that drew ``lever``, their values)."""
    chosen = [(row, getattr(d, lever)) for row, d in enumerate(draws)
              if getattr(d, lever) is not None and getattr(d, lever) is not False]
    return torch.tensor([row for row, _ in chosen], dtype=torch.int64), [value for _, value in chosen]


def augment_images(images: torch.Tensor, draws: Sequence[ImageLeverDraws | None]) -> torch.Tensor:
    """Applies each row's draws (:func:`draw_image_levers`): uint8 (B, 3, H, W) -> uint8 (B, 3, H, W), contiguous.

    Rows whose draw is None are copied unchanged; ``images`` itself is returned when no row drew anything.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"augment_images expects uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(draws) != images.shape[0]:
        raise ValueError(f"{len(draws)} draws for {images.shape[0]} images")
    drawn = [row for row, d in enumerate(draws) if d is not None]
    if not drawn:
        return images
    chosen = [draws[row] for row in drawn]
    selected = images[drawn]  # (N, 3, H, W), a copy
    grey = _is_grey(selected)
    work = (selected[:, :1] if grey else selected).to(torch.float32)  # (N, C, H, W), C = 1 or 3
    background = border_colour(work)  # (N, C)
    height, width = work.shape[-2:]

    rows, values = _rows_with(chosen, "affine")
    if values:
        theta = torch.tensor([
            affine_theta(height, width, angle_degrees=angle, scale=scale, shear_degrees=shear,
                         translate_pixels=(shift[0] * width, shift[1] * height))
            for angle, scale, shear, shift in values
        ], dtype=torch.float32)  # (M, 2, 3)
        work[rows] = affine_rows(work[rows], theta, background[rows])
    rows, values = _rows_with(chosen, "stroke")
    if values:
        dark_ink = background[rows].mean(dim=1) > FULL_SCALE / 2  # (M,): a light background
        work[rows] = change_stroke_rows(work[rows], torch.tensor(values, dtype=torch.float32), dark_ink)
    rows, values = _rows_with(chosen, "resolution")
    if values:
        work[rows] = lower_resolution_rows(work[rows], values)
    rows, values = _rows_with(chosen, "blur")
    blurred = [(row, sigma) for row, sigma in zip(rows.tolist(), values) if sigma > 0]
    if blurred:
        group = torch.tensor([row for row, _ in blurred])
        work[group] = gaussian_blur_rows(work[group], [sigma for _, sigma in blurred])
    rows, values = _rows_with(chosen, "contrast")
    if values:
        factor, brightness = torch.tensor(values, dtype=torch.float32).unbind(dim=1)
        work[rows] = adjust_contrast_rows(work[rows], factor, brightness)
    rows, _ = _rows_with(chosen, "invert")
    if len(rows):
        work[rows] = invert(work[rows])

    augmented = work.round_().clamp_(0, FULL_SCALE).to(torch.uint8)  # (N, C, H, W)
    out = images.contiguous().clone()
    out[drawn] = augmented.expand(-1, 3, -1, -1) if grey else augmented
    return out


def augment_image(image: torch.Tensor, config: ImageAugmentConfig, rng: random.Random) -> torch.Tensor:
    """The levers of ``config`` that ``rng`` draws, in order: uint8 (3, H, W) -> uint8 (3, H, W), contiguous.

    Returns ``image`` itself when no lever applies (every ``p`` at 0 makes no draw).
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"augment_image expects a uint8 image (3, H, W), got {image.dtype} {tuple(image.shape)}")
    draws = draw_image_levers(config, rng, max(image.shape[1:]))
    if draws is None:
        return image
    return augment_images(image[None], [draws])[0]


__all__ = [
    "ImageLeverDraws",
    "adjust_contrast",
    "adjust_contrast_rows",
    "affine",
    "affine_rows",
    "affine_theta",
    "augment_image",
    "augment_images",
    "border_colour",
    "change_stroke",
    "change_stroke_rows",
    "draw_image_levers",
    "gaussian_blur",
    "gaussian_blur_rows",
    "gaussian_kernel",
    "invert",
    "lower_resolution",
    "lower_resolution_rows",
    "resolution_map",
]
