"""SVG drawings rasterised to PNG for the shard writer, with resvg (the optional ``svg`` extra).

Training reads pixels, so an SVG is drawn once, when shards are written, and stored as
a PNG that keeps its transparency (the image decoder composites it onto the configured
background, like any transparent PNG). resvg is a self-contained renderer (the
``resvg-py`` wheel needs no system library); text is drawn with the fonts installed on
the machine, so an SVG holding text rasterises the same only where the same fonts are.

Size: the SVG's own size at 96 dpi (the CSS pixel, which also gives sizes in pt or mm
a meaning), scaled so that its longer side is within [``MIN_SIDE``, ``MAX_SIDE``]:
large enough for any crop training takes, small enough to keep shards compact.
"""
from __future__ import annotations

import importlib.util
import re

MIN_SIDE = 256
MAX_SIDE = 1024
_DPI = 96.0
INSTALL_HINT = "pip install 'multimodal-contrastive[svg]' to rasterise them, or convert them to PNG first"


def svg_support_available() -> bool:
    """Whether the rasteriser (``resvg-py``) is installed."""
    return importlib.util.find_spec("resvg_py") is not None


# How far into a file its <svg> element is looked for: past an XML declaration, comments, a DOCTYPE.
SNIFF_BYTES = 4096
_SVG_START = re.compile(
    r"\A\s*(?:<\?xml[^>]*\?>\s*)?(?:(?:<!--.*?-->|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)\s*)*<svg[\s>/]",
    re.DOTALL | re.IGNORECASE,
)


def is_svg(data: bytes) -> bool:
    """Whether bytes (the whole file or its first :data:`SNIFF_BYTES`) are an SVG drawing: after an
    optional byte-order mark, XML declaration, comments and DOCTYPE, an ``<svg`` element."""
    head = data[:SNIFF_BYTES]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return bool(_SVG_START.match(head.decode("utf-8", errors="replace")))


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def rasterise_svg(data: bytes) -> bytes:
    """SVG bytes -> PNG bytes (RGBA), the longer side scaled into [MIN_SIDE, MAX_SIDE].

    Raises ValueError when the bytes are not an SVG resvg can draw (not UTF-8, not
    XML, no size), and ModuleNotFoundError when ``resvg-py`` is not installed.
    """
    import resvg_py

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"an SVG must be UTF-8 text: {error}") from None
    try:
        png = bytes(resvg_py.svg_to_bytes(svg_string=text, dpi=_DPI))
        longer = max(_png_size(png))
        if longer > MAX_SIDE or longer < MIN_SIDE:
            zoom = (MAX_SIDE if longer > MAX_SIDE else MIN_SIDE) / longer
            png = bytes(resvg_py.svg_to_bytes(svg_string=text, dpi=_DPI, zoom=zoom))
    except (ValueError, RuntimeError) as error:  # resvg's parse and render errors
        raise ValueError(f"cannot rasterise SVG ({len(data)} bytes): {error}") from None
    return png


__all__ = ["INSTALL_HINT", "MAX_SIDE", "MIN_SIDE", "SNIFF_BYTES", "is_svg", "rasterise_svg", "svg_support_available"]
