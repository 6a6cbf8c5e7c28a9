"""Burned-in text and outlines for the Secondary Capture images (Pillow and its built-in font only)."""

from __future__ import annotations

import functools
import logging
import math
import textwrap

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

__all__ = ["draw_lines", "font", "text_panel", "wrap"]

FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.lru_cache(maxsize=8)
def font(size: int) -> FontType:
    """Pillow's built-in font at ``size`` pixels (a bitmap font where FreeType is missing)."""
    return ImageFont.load_default(size=size)


def _width(text: str, face: FontType) -> float:
    return float(face.getlength(text))


def wrap(text: str, face: FontType, max_width: float) -> list[str]:
    """Wrap ``text`` into lines that fit ``max_width`` pixels in ``face``."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        average = max(_width("abcdefghijklmnopqrstuvwxyz", face) / 26.0, 1.0)
        chars = max(8, int(max_width / average))
        while True:
            candidate = textwrap.wrap(paragraph, width=chars) or [""]
            if chars <= 8 or all(_width(line, face) <= max_width for line in candidate):
                break
            chars -= 2
        lines.extend(candidate)
    return lines


def draw_lines(
    image: Image.Image,
    lines: list[str],
    origin: tuple[int, int],
    face: FontType,
    fill: tuple[int, ...] | int,
    *,
    background: tuple[int, ...] | int | None = None,
    spacing: int = 2,
) -> int:
    """Draw text lines from ``origin`` (top-left) downwards; return the y below the last line."""
    draw = ImageDraw.Draw(image)
    x, y = origin
    for line in lines:
        left, top, right, bottom = draw.textbbox((x, y), line, font=face)
        if background is not None:
            draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=background)
        draw.text((x, y), line, font=face, fill=fill)
        y = math.ceil(bottom) + spacing
    return y


def text_panel(lines: list[tuple[str, int]], size: tuple[int, int] = (512, 512)) -> NDArray[np.uint8]:
    """A grey-level image (MONOCHROME2) with text paragraphs, each ``(text, font size)``, wrapped to fit."""
    width, height = size
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    draw.rectangle((3, 3, width - 4, height - 4), outline=255, width=3)
    y = 24
    for text, size_px in lines:
        face = font(size_px)
        y = draw_lines(image, wrap(text, face, width - 48), (24, y), face, 255, spacing=4) + math.ceil(
            size_px / 2
        )
    return np.asarray(image, dtype=np.uint8)
