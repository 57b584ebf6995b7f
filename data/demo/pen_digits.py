"""Digits drawn by a simulated pen, in the letterforms MNIST's writers seldom use.

MNIST's writers (American census staff and students) write a "1" as a bare bar, a "7"
without a crossbar and a "9" with a straight tail; many writers elsewhere give the
"1" a flag and a foot, cross the "7" and curl the "9" (the UCI digits that scikit-learn
ships, from other writers, have many of them). A model trained on MNIST alone reads such a
"9" as a "3". This module draws every digit in several such styles.

Each style is a few strokes; each stroke a path of points in a box one unit high (x to
the right, y down), smooth between the points (a Catmull-Rom curve through them) except
at corners, written ``|`` in :data:`STYLES`. A drawing moves every point a little, leans,
stretches and turns the whole digit, draws it with a round pen of random width on a large
canvas, and frames it as MNIST frames its digits (:func:`~multimodal.data.demo.font_digits.mnist_frame`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from multimodal.data.demo.font_digits import mnist_frame

_CANVAS = 256  # drawing canvas (pixels, square): large, so that framing down to 20 pixels anti-aliases
_HEIGHT = 150  # canvas pixels of the digit's unit height; room left around it for lean and rotation
_POINTS_PER_SEGMENT = 12  # curve samples between two consecutive points of a stroke

# The styles of each digit: strokes separated by ";", a stroke's points by spaces as
# "x,y", a corner by "|" (the stroke turns there instead of curving through). The box is
# one unit high and about 0.6 wide; a drawing jitters, leans and stretches it.
STYLES: dict[int, dict[str, str]] = {
    0: {
        "oval": "0.3,0 0.08,0.18 0.03,0.5 0.1,0.85 0.3,1 0.5,0.85 0.57,0.5 0.52,0.18 0.3,0 0.12,0.1",
        "round": "0.35,0.02 0.1,0.12 0,0.45 0.08,0.85 0.3,0.98 0.55,0.85 0.62,0.5 0.55,0.15 0.35,0.02",
    },
    1: {
        "bar": "0.3,0 0.3,1",
        "flag": "0.08,0.28 | 0.34,0 | 0.32,1",
        "flag and foot": "0.08,0.28 | 0.34,0 | 0.32,1; 0.08,1 0.56,1",
    },
    2: {
        "curved": "0.04,0.25 0.25,0.02 0.5,0.12 0.48,0.42 0.05,1 | 0.58,0.98",
        "looped": "0.04,0.25 0.25,0.02 0.5,0.12 0.48,0.42 0.14,0.88 0.05,0.97 0.14,0.82 0.3,0.95 0.58,0.98",
        "z-like": "0.05,0.08 | 0.52,0.04 | 0.05,1 | 0.58,1",
    },
    3: {
        "round": "0.04,0.12 0.3,0 0.52,0.14 0.46,0.36 0.22,0.47 0.48,0.6 0.52,0.84 0.3,1 0.02,0.9",
        "flat top": "0.04,0.02 | 0.52,0.02 | 0.2,0.42 0.46,0.55 0.52,0.8 0.3,1 0.02,0.9",
    },
    4: {
        "closed": "0.46,1 | 0.46,0 | 0.02,0.66 | 0.6,0.66",
        "open": "0.08,0 | 0.04,0.62 | 0.58,0.62; 0.46,0.05 | 0.46,1",
        "crossed": "0.34,0 | 0.02,0.68 | 0.6,0.68; 0.45,0.38 | 0.45,1",
    },
    5: {
        "two strokes": "0.1,0.03 | 0.06,0.44 0.3,0.37 0.52,0.52 0.52,0.8 0.3,1 0.02,0.9; 0.1,0.03 0.54,0.02",
        "one stroke": "0.54,0 | 0.1,0.02 | 0.06,0.44 0.3,0.37 0.52,0.52 0.52,0.8 0.3,1 0.02,0.9",
    },
    6: {
        "curved": "0.46,0.02 0.2,0.25 0.04,0.62 0.15,0.96 0.42,0.92 0.52,0.68 0.3,0.52 0.06,0.66",
        "straight": "0.42,0 0.12,0.58 0.18,0.95 0.42,0.94 0.52,0.7 0.32,0.52 0.1,0.62",
    },
    7: {
        "plain": "0.02,0.03 | 0.56,0 | 0.2,1",
        "crossed": "0.02,0.03 | 0.56,0 | 0.2,1; 0.14,0.5 0.5,0.5",
        "hooked": "0.02,0.16 | 0.04,0 | 0.56,0.02 | 0.26,1",
        "curved stem": "0.02,0.03 | 0.56,0 0.36,0.45 0.28,1",
    },
    8: {
        "one stroke": ("0.5,0.1 0.3,0 0.07,0.12 0.12,0.35 0.45,0.6 0.52,0.85 0.28,1 0.04,0.85 0.1,0.6 0.45,0.36"
                       " 0.52,0.14 0.44,0.05"),
        "two loops": ("0.3,0 0.1,0.12 0.12,0.34 0.3,0.45 0.48,0.34 0.5,0.12 0.3,0;"
                      " 0.3,0.45 0.06,0.6 0.06,0.88 0.3,1 0.54,0.88 0.54,0.6 0.3,0.45"),
    },
    9: {
        "straight tail": "0.5,0.15 0.3,0 0.06,0.15 0.12,0.42 0.42,0.42 0.52,0.12 | 0.5,0.6 0.46,1",
        "curled tail": "0.5,0.15 0.3,0 0.06,0.15 0.12,0.42 0.42,0.42 0.52,0.12 | 0.52,0.62 0.4,0.94 0.18,1 0.04,0.9",
        "leaning tail": "0.5,0.15 0.3,0 0.06,0.15 0.12,0.42 0.42,0.42 0.52,0.12 | 0.3,1",
    },
}


@dataclass(frozen=True)
class PenDrawing:
    """How one digit is drawn: the random choices of :func:`draw_digit`, kept for provenance.

    Args:
        style: a key of ``STYLES[digit]``.
        pen: the pen's width as a fraction of the digit's height (MNIST's strokes: about 0.1-0.2).
        jitter: standard deviation of each point's displacement, in heights.
        slant: horizontal shear (x += slant * (0.5 - y)): positive leans to the right.
        width: horizontal stretch (1: the style's own proportions).
        rotation: degrees, anticlockwise.
        seed: draws the jitter.
    """

    style: str
    pen: float = 0.14
    jitter: float = 0.02
    slant: float = 0.0
    width: float = 1.0
    rotation: float = 0.0
    seed: int = 0


@functools.lru_cache(maxsize=None)
def parse_style(text: str) -> tuple[tuple[np.ndarray, ...], ...]:
    """A style's text -> its strokes, each a tuple of smooth pieces, each float (K, 2) points (x, y).

    Consecutive pieces of a stroke share their corner point.
    """
    strokes = []
    for stroke_text in text.split(";"):
        pieces: list[np.ndarray] = []
        corner: list[tuple[float, ...]] = []  # where the next piece starts: the last point so far
        for piece_text in stroke_text.split("|"):
            points = corner + [tuple(float(v) for v in point.split(",")) for point in piece_text.split()]
            if len(points) >= 2:
                piece = np.array(points, dtype=np.float64)
                piece.setflags(write=False)  # cached and shared by every drawing of the style
                pieces.append(piece)
            corner = points[-1:]
        if not pieces:
            raise ValueError(f"a stroke needs two points or more: {stroke_text!r} in {text!r}")
        strokes.append(tuple(pieces))
    return tuple(strokes)


def catmull_rom(points: np.ndarray, samples_per_segment: int = _POINTS_PER_SEGMENT) -> np.ndarray:
    """The uniform Catmull-Rom curve through ``points`` (K, 2), K >= 2: float (samples, 2).

    Passes through every point; the ends take their tangent from a mirrored neighbour, so
    two points give their straight segment.
    """
    if len(points) < 2:
        raise ValueError(f"a curve needs two points or more, got {len(points)}")
    padded = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])  # (K + 2, 2)
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[:, None]  # (S, 1)
    basis = (  # (S, 4): weights of P[i-1], P[i], P[i+1], P[i+2] for the segment from P[i] to P[i+1]
        np.concatenate([-t**3 + 2 * t**2 - t, 3 * t**3 - 5 * t**2 + 2, -3 * t**3 + 4 * t**2 + t, t**3 - t**2], axis=1) / 2
    )
    segments = [basis @ padded[i : i + 4] for i in range(len(points) - 1)]  # each (S, 2)
    return np.concatenate(segments + [points[-1:]])


def stroke_paths(digit: int, drawing: PenDrawing) -> list[np.ndarray]:
    """The pen's paths for ``digit`` in ``drawing.style``, jittered, stretched, leant and turned.

    One float (P, 2) array of (x, y) points per stroke, in heights about the box's centre
    (y down), drawn in order.
    """
    if digit not in STYLES:
        raise ValueError(f"digit must be 0-9, got {digit}")
    if drawing.style not in STYLES[digit]:
        raise ValueError(f"no style {drawing.style!r} for {digit}; choose one of {sorted(STYLES[digit])}")
    rng = np.random.default_rng(drawing.seed)
    angle = np.deg2rad(drawing.rotation)
    # Stretch, then lean, then turn (y down, so an anticlockwise turn on screen is [[cos, sin], [-sin, cos]]).
    transform = (np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
                 @ np.array([[1.0, -drawing.slant], [0.0, 1.0]]) @ np.array([[drawing.width, 0.0], [0.0, 1.0]]))
    # Each distinct point moves once: a corner of two pieces, a closed loop's ends and a point
    # two strokes share (where a "5"'s flag meets its stem) stay joined.
    moved: dict[tuple[float, ...], np.ndarray] = {}

    def jitter(point: np.ndarray) -> np.ndarray:
        key = tuple(point)
        if key not in moved:
            moved[key] = point + rng.normal(0.0, drawing.jitter, 2)
        return moved[key]

    paths = []
    for pieces in parse_style(STYLES[digit][drawing.style]):
        path = []
        for piece in pieces:
            curve = catmull_rom(np.array([jitter(point) for point in piece]))  # (samples, 2)
            path.append(curve if not path else curve[1:])  # a piece starts where the last one ended
        paths.append((np.concatenate(path) - (0.3, 0.5)) @ transform.T)  # about the box's centre
    return paths


def draw_digit(digit: int, drawing: PenDrawing) -> np.ndarray:
    """``digit`` (0-9) written in ``drawing.style``, white on black, MNIST-framed: uint8 (28, 28)."""
    from PIL import Image, ImageDraw

    paths = stroke_paths(digit, drawing)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    pen = ImageDraw.Draw(canvas)
    radius = drawing.pen * _HEIGHT / 2
    for path in paths:
        xy = path * _HEIGHT + _CANVAS / 2  # (P, 2) canvas pixels
        pen.line([tuple(point) for point in xy], fill=255, width=max(1, round(2 * radius)), joint="curve")
        for x, y in (xy[0], xy[-1]):  # round pen tips
            pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return mnist_frame(np.asarray(canvas))
