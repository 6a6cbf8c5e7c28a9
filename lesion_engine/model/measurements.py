"""Geometry of a lesion mask on an image grid: centre, volume and diameters, in patient space.

Every function takes a (Z, Y, X) boolean mask on the grid of a SimpleITK image (the T2W volume) and,
optionally, a bounding box of the mask (it saves a search of the whole grid).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from lesion_engine.model.candidates import Box
from lesion_engine.model.contour import index_slice, long_axis

logger = logging.getLogger(__name__)

__all__ = ["axial_diameter_mm", "center_lps_mm", "max_diameter_mm", "volume_ml"]

_DIRECT_PAIRS_MAX = 4000


def _physical_points(indices_zyx: NDArray[Any], image: sitk.Image) -> NDArray[np.float64]:
    """Physical (LPS) coordinates of voxel indices (N, 3) given as (z, y, x)."""
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    xyz = np.asarray(indices_zyx, dtype=np.float64)[:, ::-1]
    points: NDArray[np.float64] = origin + (xyz * spacing) @ direction.T
    return points


def _bounding_box(mask: NDArray[np.bool_], image: sitk.Image, box: Box | None) -> Box | None:
    if mask.shape != image.GetSize()[::-1]:
        raise ValueError(
            f"mask shape {mask.shape} differs from the image's (z, y, x) size {image.GetSize()[::-1]}"
        )
    if box is not None:
        return box
    found = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    return found[0] if found and found[0] is not None else None


def _indices(mask: NDArray[np.bool_], box: Box) -> NDArray[np.int64]:
    """(N, 3) (z, y, x) indices of the mask's voxels inside ``box``, on the whole grid."""
    indices: NDArray[np.int64] = np.argwhere(mask[box]) + [b.start for b in box]
    return indices


def center_lps_mm(
    mask: NDArray[np.bool_], image: sitk.Image, box: Box | None = None
) -> tuple[float, float, float]:
    """Centre of mass of ``mask`` in patient coordinates (DICOM LPS), mm.

    Raises
    ------
    ValueError
        The mask is empty (inside ``box`` when given) or does not fit the image's grid.
    """
    box = _bounding_box(mask, image, box)
    indices = _indices(mask, box) if box is not None else np.zeros((0, 3), dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("an empty mask has no centre")
    centre = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in indices.mean(axis=0)[::-1]])
    return (float(centre[0]), float(centre[1]), float(centre[2]))


def volume_ml(mask: NDArray[np.bool_], image: sitk.Image, box: Box | None = None) -> float:
    """Volume of ``mask`` (voxel count times voxel volume), ml; 0 for an empty mask."""
    box = _bounding_box(mask, image, box)
    if box is None:
        return 0.0
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return len(_indices(mask, box)) * voxel_ml


def max_diameter_mm(mask: NDArray[np.bool_], image: sitk.Image, box: Box | None = None) -> float:
    """Largest distance (mm) between the centres of two voxels of ``mask`` on ``image``'s grid.

    Only boundary voxels can be the ends of the longest chord, and only the vertices of their convex hull,
    so the pairwise search runs on those. ``box``, when given, is a bounding box of the mask (it saves a
    search of the whole grid).
    """
    box = _bounding_box(mask, image, box)
    if box is None:
        return 0.0
    padded = np.pad(mask[box], 1)
    boundary = padded & ~ndimage.binary_erosion(padded)
    points = _physical_points(np.argwhere(boundary[1:-1, 1:-1, 1:-1]) + [b.start for b in box], image)
    if len(points) < 2:
        return 0.0
    if len(points) > 4:
        for options in (None, "QJ"):
            try:
                points = points[ConvexHull(points, qhull_options=options).vertices]
                break
            except (QhullError, ValueError):
                continue
    if len(points) <= _DIRECT_PAIRS_MAX:
        return float(pdist(points).max())
    best = 0.0  # very large hulls: pairwise in chunks, to bound memory
    for start in range(0, len(points), 512):
        chunk = points[start : start + 512]
        best = max(best, float(np.sqrt(((chunk[:, None, :] - points[None, :, :]) ** 2).sum(-1)).max()))
    return best


def axial_diameter_mm(mask: NDArray[np.bool_], image: sitk.Image, box: Box | None = None) -> float:
    """Largest in-plane diameter of a (Z, Y, X) mask on its index slice, across the outer pixel edges, mm.

    The slice of largest area is the index slice; on it, the longest chord of the largest region's outline
    (:func:`lesion_engine.model.contour.long_axis`). 0 for an empty mask. ``box`` as for :func:`max_diameter_mm`.
    """
    box = _bounding_box(mask, image, box)
    if box is None:
        return 0.0
    part = mask[box]
    if not part.any():
        return 0.0
    column_mm, row_mm = (float(v) for v in image.GetSpacing()[:2])
    _, length = long_axis(part[index_slice(part)], (row_mm, column_mm))
    return length
