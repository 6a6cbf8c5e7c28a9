"""Outlines of lesion masks: the index slice of a lesion, the closed outline of its pixels there and its
long axis (used by the engine for lesions.json and by the DICOM result writers)."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = ["enclosed_area", "index_slice", "long_axis", "outline", "outline_pixels"]

# Directed pixel edges (dr, dc) in corner coordinates, clockwise around the foreground (rows down).
_RIGHT, _DOWN, _LEFT, _UP = (0, 1), (1, 0), (0, -1), (-1, 0)
# Preference of the next direction at a corner: turn right, straight, turn left (keeps 8-touching
# pixels apart, so each loop outlines one 4-connected region).
_TURNS: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {
    _RIGHT: (_DOWN, _RIGHT, _UP),
    _DOWN: (_LEFT, _DOWN, _RIGHT),
    _LEFT: (_UP, _LEFT, _DOWN),
    _UP: (_RIGHT, _UP, _LEFT),
}


def index_slice(mask: NDArray[np.bool_]) -> int:
    """The slice (axis 0) where the lesion has its largest area; the lowest such slice on ties."""
    areas = np.asarray(mask, dtype=bool).reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        raise ValueError("empty mask has no index slice")
    return int(np.argmax(areas))


def outline(mask2d: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Closed outline of the largest 4-connected region of a 2D mask, along the pixel edges.

    Parameters
    ----------
    mask2d : ndarray of bool, shape (rows, columns)

    Returns
    -------
    ndarray, shape (N, 2)
        (row, column) vertices in continuous pixel indices (pixel centres at integers, so corners at
        half-integers), clockwise on screen, collinear vertices removed; the first vertex is repeated at
        the end.
    """
    mask = np.asarray(mask2d, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("outline needs a non-empty 2D mask")
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == int(np.argmax(sizes)) + 1
    padded = np.pad(mask, 1)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    rows, cols = np.nonzero(mask)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        pr, pc = r + 1, c + 1
        # Corners (r, c) .. (r + 1, c + 1) of pixel (r, c); each edge with the background is kept.
        if not padded[pr - 1, pc]:
            edges.setdefault((r, c), []).append(_RIGHT)
        if not padded[pr, pc + 1]:
            edges.setdefault((r, c + 1), []).append(_DOWN)
        if not padded[pr + 1, pc]:
            edges.setdefault((r + 1, c + 1), []).append(_LEFT)
        if not padded[pr, pc - 1]:
            edges.setdefault((r + 1, c), []).append(_UP)
    loops: list[list[tuple[int, int]]] = []
    while edges:
        start = min(edges)
        loop = [start]
        corner, direction = start, edges[start][0]
        while True:
            out = edges[corner]
            out.remove(direction)
            if not out:
                del edges[corner]
            corner = (corner[0] + direction[0], corner[1] + direction[1])
            if corner == start:
                break
            options = edges.get(corner)
            if not options:
                break
            direction = next(d for d in _TURNS[direction] if d in options)
            loop.append(corner)
        loops.append(loop)
    # The outer boundary encloses the largest area (holes are traced as separate, smaller loops).
    outer = max(loops, key=lambda loop: abs(_area(loop)))
    vertices = _drop_collinear(outer)
    points = np.asarray([*vertices, vertices[0]], dtype=np.float64) - 0.5
    return points


def long_axis(mask2d: NDArray[np.bool_], spacing: tuple[float, float]) -> tuple[NDArray[np.float64], float]:
    """The longest chord of a lesion's outline in one slice: its in-plane maximum diameter.

    PI-RADS reports a lesion's size as its largest diameter on the axial image where it is largest; this is
    that measurement, taken across the outer pixel corners of the largest region (the outline of
    :func:`outline`).

    Parameters
    ----------
    mask2d : ndarray of bool, shape (rows, columns)
    spacing : tuple of 2 float
        Pixel spacing in mm between rows and between columns (DICOM PixelSpacing order).

    Returns
    -------
    endpoints : ndarray, shape (2, 2)
        (row, column) of both ends, in the continuous pixel indices of :func:`outline`.
    length_mm : float
        The distance between them in mm.
    """
    row_mm, col_mm = (float(v) for v in spacing)
    if row_mm <= 0 or col_mm <= 0:
        raise ValueError(f"pixel spacing must be positive, got {spacing!r}")
    vertices = outline(mask2d)[:-1]
    scaled = vertices * np.asarray([row_mm, col_mm])
    distances = np.linalg.norm(scaled[:, np.newaxis, :] - scaled[np.newaxis, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    first, second = sorted((int(i), int(j)))
    return vertices[[first, second]], float(distances[first, second])


def enclosed_area(vertices: NDArray[np.float64], spacing: tuple[float, float]) -> float:
    """Area in mm² enclosed by a closed outline (of :func:`outline`): the region with its holes filled.

    Parameters
    ----------
    vertices : ndarray, shape (N, 2)
        (row, column) vertices in continuous pixel indices; the last may repeat the first.
    spacing : tuple of 2 float
        Pixel spacing in mm between rows and between columns (DICOM PixelSpacing order).

    Returns
    -------
    float
        The area in mm² (shoelace formula, orientation ignored).
    """
    row_mm, col_mm = (float(v) for v in spacing)
    if row_mm <= 0 or col_mm <= 0:
        raise ValueError(f"pixel spacing must be positive, got {spacing!r}")
    points = np.asarray(vertices, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise ValueError("enclosed_area needs at least 3 (row, column) vertices")
    r, c = points[:, 0] * row_mm, points[:, 1] * col_mm
    return 0.5 * abs(float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1))))


def _area(loop: list[tuple[int, int]]) -> float:
    pts = np.asarray(loop, dtype=np.float64)
    r, c = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1)))


def _drop_collinear(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    n = len(loop)
    for i in range(n):
        prev, cur, nxt = loop[i - 1], loop[i], loop[(i + 1) % n]
        d1 = (cur[0] - prev[0], cur[1] - prev[1])
        d2 = (nxt[0] - cur[0], nxt[1] - cur[1])
        if d1[0] * d2[1] - d1[1] * d2[0] != 0:
            out.append(cur)
    return out or loop


def outline_pixels(mask2d: NDArray[np.bool_], width: int = 1) -> NDArray[np.bool_]:
    """Pixels of the mask that touch the background (a ``width`` pixels thick inner border)."""
    mask = np.asarray(mask2d, dtype=bool)
    inner = ndimage.binary_erosion(mask, iterations=max(1, width), border_value=0)
    return np.asarray(mask & ~inner, dtype=bool)
