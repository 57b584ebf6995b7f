"""Image augmentation of a training crop: uint8 (3, H, W) -> uint8 (3, H, W), drawn from a seeded RNG.

:func:`augment_image` draws which levers of an
:class:`multimodal.data.augment.ImageAugmentConfig` apply to a sample and their
parameters from the sample's ``random.Random`` (nothing depends on torch's global
RNG), converts the crop to float once, applies them in the config's order and
rounds back to uint8. The transforms are plain functions of float images
(C, H, W) holding values in [0, 255], so each can be checked by hand:

- :func:`affine`: rotation, scale, shear and translation about the centre (bilinear),
  uncovered pixels filled with a given colour (the image's :func:`border_colour`);
- :func:`change_stroke`: grey-level dilation or erosion of the ink, by fractions of a pixel;
- :func:`lower_resolution`: area-averaged down to a smaller side, bicubic back up,
  as evaluation upscales a small image;
- :func:`gaussian_blur`: separable, the kernel cut at 3 sigma, edges replicated;
- :func:`adjust_contrast`: ``mean + factor * (x - mean) + brightness * 255``;
- :func:`invert`: ``255 - x``.

Grey images (all three channels equal, as MNIST is) are augmented on one channel
and repeated: the same result at a third of the arithmetic.
"""
from __future__ import annotations

import functools
import math
import random

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from multimodal.data.augment import ImageAugmentConfig
from multimodal.data.image import resize

FULL_SCALE = 255.0


def border_colour(image: torch.Tensor) -> torch.Tensor:
    """The median of each channel over the outermost rows and columns: (C, H, W) -> (C,).

    The background of a scanned digit or a drawing; what an affine map fills in.
    """
    edges = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)  # (C, 2W + 2H)
    return edges.median(dim=1).values


@functools.lru_cache(maxsize=8)
def _pixel_centres(height: int, width: int) -> torch.Tensor:
    """(H * W, 3): each pixel's normalised (x, y, 1), row by row; times theta^T it is F.affine_grid's grid.

    The same numbers as ``F.affine_grid(theta, align_corners=False)``, one matrix product
    per image instead of building the base grid every call.
    """
    xs = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
    grid = torch.ones(height, width, 3)
    grid[..., 0] = xs[None, :]
    grid[..., 1] = ys[:, None]
    return grid.view(height * width, 3)


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
    channels, height, width = image.shape
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
    theta = torch.tensor([[
        [inverse[0][0], inverse[0][1] * half[1] / half[0], offset[0] / half[0]],
        [inverse[1][0] * half[0] / half[1], inverse[1][1], offset[1] / half[1]],
    ]], dtype=torch.float32)  # (1, 2, 3), as F.affine_grid takes it
    grid = (_pixel_centres(height, width) @ theta[0].T).view(1, height, width, 2)  # (1, H, W, 2)
    fill = fill.view(1, channels, 1, 1)
    # Zeros outside the image, after the fill colour is subtracted: the fill colour there.
    moved = F.grid_sample(image[None] - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (moved + fill)[0]


def _extreme_filter(image: torch.Tensor, radius: int, take_max: bool) -> torch.Tensor:
    """Maximum (or minimum) over the (2r + 1) x (2r + 1) square around each pixel: (C, H, W) -> (C, H, W)."""
    sign = 1.0 if take_max else -1.0
    return sign * F.max_pool2d(sign * image[None], 2 * radius + 1, stride=1, padding=radius)[0]


def change_stroke(image: torch.Tensor, thickness: float, ink_is_dark: bool) -> torch.Tensor:
    """Strokes thickened by ``thickness`` pixels of radius (negative: thinned): float (C, H, W) -> (C, H, W).

    Whole pixels are a maximum (light ink) or minimum (dark ink) filter of that radius;
    a fraction blends the filters of the two nearest whole radii (0.5: halfway to one
    pixel more), so the change is continuous in ``thickness`` and 0 changes nothing.
    """
    amount = abs(thickness)
    radius = math.ceil(amount)
    if radius == 0:
        return image
    take_max = (thickness > 0) != ink_is_dark  # thickening light ink, or thinning dark ink
    outer = _extreme_filter(image, radius, take_max)
    inner = image if radius == 1 else _extreme_filter(image, radius - 1, take_max)
    return inner + (amount - (radius - 1)) * (outer - inner)


def lower_resolution(image: torch.Tensor, size: int) -> torch.Tensor:
    """The longer side area-averaged down to ``size`` pixels, then upscaled back, bicubic: (C, H, W) -> (C, H, W).

    Upscaling is :func:`multimodal.data.image.resize`'s (bicubic, as evaluation scales a
    small image up), so a crop lowered to 8 pixels looks like an 8 x 8 image prepared
    for evaluation. Unchanged when the image is not larger than ``size``.
    """
    _, height, width = image.shape
    if max(height, width) <= size:
        return image
    ratio = size / max(height, width)
    small = F.interpolate(image[None], size=(max(1, round(height * ratio)), max(1, round(width * ratio))),
                          mode="area")[0]  # (C, h, w)
    return resize(small, height, width, TF.InterpolationMode.BICUBIC)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian, cut at ``ceil(3 sigma)`` on each side: (2r + 1,)."""
    radius = max(1, math.ceil(3.0 * sigma))
    positions = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (positions / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels, edges replicated: float (C, H, W) -> (C, H, W)."""
    if sigma <= 0:
        return image
    kernel = gaussian_kernel(sigma)
    radius = kernel.shape[0] // 2
    channels, height, width = image.shape
    planes = F.pad(image[:, None], (radius, radius, radius, radius), mode="replicate")  # (C, 1, H + 2r, W + 2r)
    planes = F.conv2d(planes, kernel.view(1, 1, -1, 1))  # (C, 1, H, W + 2r)
    planes = F.conv2d(planes, kernel.view(1, 1, 1, -1))  # (C, 1, H, W)
    return planes.view(channels, height, width)


def adjust_contrast(image: torch.Tensor, factor: float, brightness: float) -> torch.Tensor:
    """``mean + factor * (x - mean) + brightness * 255``, ``mean`` over the whole image: float (C, H, W), unclamped."""
    mean = image.mean()
    return (image - mean).mul_(factor).add_(mean + brightness * FULL_SCALE)


def invert(image: torch.Tensor) -> torch.Tensor:
    """``255 - x``: float (C, H, W) -> (C, H, W)."""
    return FULL_SCALE - image


def _applies(p: float, rng: random.Random) -> bool:
    """Whether a lever with probability ``p`` applies; no draw for a lever that is off."""
    return p > 0 and rng.random() < p


def augment_image(image: torch.Tensor, config: ImageAugmentConfig, rng: random.Random) -> torch.Tensor:
    """The levers of ``config`` that ``rng`` draws, in order: uint8 (3, H, W) -> uint8 (3, H, W), contiguous.

    Returns ``image`` itself when no lever applies (every ``p`` at 0 makes no draw).
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"augment_image expects a uint8 image (3, H, W), got {image.dtype} {tuple(image.shape)}")
    steps = []
    if _applies(config.affine.p, rng):
        lever = config.affine
        steps.append(("affine", {
            "angle_degrees": rng.uniform(-lever.rotation_degrees, lever.rotation_degrees),
            "scale": rng.uniform(*lever.scale),
            "shear_degrees": (rng.uniform(-lever.shear_degrees, lever.shear_degrees),
                              rng.uniform(-lever.shear_degrees, lever.shear_degrees)),
            "translate": (rng.uniform(-lever.translate, lever.translate),
                          rng.uniform(-lever.translate, lever.translate)),
        }))
    if _applies(config.stroke.p, rng):
        steps.append(("stroke", rng.uniform(*config.stroke.thickness)))
    if _applies(config.resolution.p, rng):
        side = max(image.shape[1:])
        steps.append(("resolution", rng.randint(min(config.resolution.min_size, side), side)))
    if _applies(config.blur.p, rng):
        steps.append(("blur", rng.uniform(*config.blur.sigma)))
    if _applies(config.contrast.p, rng):
        steps.append(("contrast", (rng.uniform(*config.contrast.factor), rng.uniform(*config.contrast.brightness))))
    if _applies(config.invert.p, rng):
        steps.append(("invert", None))
    if not steps:
        return image

    grey = torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    work = (image[:1] if grey else image).to(torch.float32)  # (C, H, W), C = 1 or 3
    background = border_colour(work)  # (C,)
    height, width = work.shape[1:]
    for name, value in steps:
        if name == "affine":
            work = affine(work, angle_degrees=value["angle_degrees"], scale=value["scale"],
                          shear_degrees=value["shear_degrees"],
                          translate_pixels=(value["translate"][0] * width, value["translate"][1] * height),
                          fill=background)
        elif name == "stroke":
            work = change_stroke(work, value, ink_is_dark=float(background.mean()) > FULL_SCALE / 2)
        elif name == "resolution":
            work = lower_resolution(work, value)
        elif name == "blur":
            work = gaussian_blur(work, value)
        elif name == "contrast":
            work = adjust_contrast(work, *value)
        else:
            work = invert(work)
    out = work.round_().clamp_(0, FULL_SCALE).to(torch.uint8)  # (C, H, W)
    return out.expand(3, height, width).contiguous() if grey else out.contiguous()


__all__ = [
    "adjust_contrast",
    "affine",
    "augment_image",
    "border_colour",
    "change_stroke",
    "gaussian_blur",
    "gaussian_kernel",
    "invert",
    "lower_resolution",
]
