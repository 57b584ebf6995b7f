"""Digits drawn from font files, framed as MNIST frames its handwriting.

MNIST's digits were size-normalised to fit a 20 x 20 box (aspect ratio kept,
anti-aliased) and placed in a 28 x 28 image with their centre of mass at the centre;
:func:`mnist_frame` does the same to any grey drawing, so printed digits and
handwritten ones differ in shape, not in framing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRAME_SIZE = 28  # pixels, square
BOX_SIZE = 20  # the longer side of the digit's bounding box after normalisation
_CANVAS = 256  # drawing canvas (pixels, square): large, so that downscaling anti-aliases
_FONT_SIZE = 110  # points: a digit about half the canvas high, room left for slant and rotation


@dataclass(frozen=True)
class Rendering:
    """How one digit is drawn: the random choices of :func:`render_digit`, kept for provenance.

    Args:
        stroke: extra stroke width around the glyph's outline, in canvas pixels (bolder).
        slant: horizontal shear (x += slant * y), as handwriting leans.
        rotation: degrees, anticlockwise.
        width: horizontal stretch (1: the font's own proportions).
    """

    stroke: int = 0
    slant: float = 0.0
    rotation: float = 0.0
    width: float = 1.0


@functools.lru_cache(maxsize=64)
def _font(path: str):
    from PIL import ImageFont

    return ImageFont.truetype(path, _FONT_SIZE)


def render_digit(font_path: str | Path, digit: int, rendering: Rendering = Rendering()) -> np.ndarray:
    """``digit`` (0-9) in the font at ``font_path``, white on black, MNIST-framed: uint8 (28, 28)."""
    from PIL import Image, ImageDraw

    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0-9, got {digit}")
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    centre = _CANVAS / 2
    ImageDraw.Draw(canvas).text((centre, centre), str(digit), fill=255, font=_font(str(font_path)), anchor="mm",
                                stroke_width=rendering.stroke, stroke_fill=255)
    # One affine map about the centre: output (x, y) samples input A @ (x - c, y - c) + c, with
    # A = (stretch . shear . rotation)^-1 as PIL's transform wants the inverse map.
    angle = np.deg2rad(rendering.rotation)
    forward = (np.array([[rendering.width, 0.0], [0.0, 1.0]]) @ np.array([[1.0, -rendering.slant], [0.0, 1.0]])
               @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]))
    inverse = np.linalg.inv(forward)
    offset = np.array([centre, centre]) - inverse @ np.array([centre, centre])
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR)
    return mnist_frame(np.asarray(canvas))


def mnist_frame(image: np.ndarray) -> np.ndarray:
    """A grey drawing (H, W) uint8, ink bright on black, framed as MNIST: uint8 (28, 28).

    The ink's bounding box is scaled so its longer side is 20 pixels (aspect kept,
    area-averaged), then placed with its centre of mass at the image's centre (as far
    as the frame allows).
    """
    from PIL import Image

    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"mnist_frame takes a grey uint8 image (H, W), got {image.dtype} {image.shape}")
    rows, columns = np.nonzero(image)
    if rows.size == 0:
        raise ValueError("mnist_frame: the image has no ink (every pixel is 0)")
    ink = image[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    height, width = ink.shape
    scale = BOX_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL's (width, height)
    small = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BOX), dtype=np.float64)  # (h, w)
    mass = small.sum()
    if mass == 0:
        raise ValueError("mnist_frame: the ink vanished when scaled to 20 pixels (too faint)")
    centre_row = (small.sum(axis=1) * np.arange(small.shape[0])).sum() / mass
    centre_column = (small.sum(axis=0) * np.arange(small.shape[1])).sum() / mass
    # MNIST puts the centre of mass within half a pixel of (14, 14), pixel centres counted from 0.
    top = int(np.clip(round(FRAME_SIZE / 2 - centre_row), 0, FRAME_SIZE - small.shape[0]))
    left = int(np.clip(round(FRAME_SIZE / 2 - centre_column), 0, FRAME_SIZE - small.shape[1]))
    frame = np.zeros((FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
    frame[top : top + small.shape[0], left : left + small.shape[1]] = np.round(small).astype(np.uint8)
    return frame
