"""Linear resampling between two grids that share their orientation (the model grid and the T2W grid).

The model grid has the T2W's direction cosines (:func:`lesion_engine.model_input.model_grid`), so the
continuous index along each axis of one grid depends only on the index along the same axis of the other:
``c = a + b * i``. Resampling then separates into three one-dimensional steps, which run as gathers on
NumPy arrays or on torch tensors (on the engine's device: no copy of a map to the CPU and back through
SimpleITK on a GPU).

The semantics are SimpleITK's linear ``Resample`` with an identity transform and default value 0: a point
within half a voxel outside the first or last voxel centre takes the edge value, further out it is 0.
(Continuous indices are rounded to 1e-6 voxel, so a point exactly half a voxel outside counts as inside
whatever the floating-point noise of the geometry; SimpleITK can go either way there.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

__all__ = ["AxisMap", "GridMap", "grid_map", "resample_linear"]

_TIE_DECIMALS = 6


@dataclass(frozen=True)
class AxisMap:
    """Where each target index of one axis falls on the source axis.

    Attributes
    ----------
    lower, upper : ndarray of int64
        Source indices to blend (equal at the edges).
    weight : ndarray of float64
        Weight of ``upper`` (``1 - weight`` of ``lower``).
    valid : ndarray of bool
        Target indices that fall inside the source.
    """

    lower: NDArray[np.int64]
    upper: NDArray[np.int64]
    weight: NDArray[np.float64]
    valid: NDArray[np.bool_]


@dataclass(frozen=True)
class GridMap:
    """The three axis maps, in array order (z, y, x), and the target shape."""

    axes: tuple[AxisMap, AxisMap, AxisMap]
    shape: tuple[int, int, int]


def _axis_map(start: float, step: float, target_size: int, source_size: int) -> AxisMap:
    position = np.round(start + step * np.arange(target_size, dtype=np.float64), _TIE_DECIMALS)
    valid = (position >= -0.5) & (position < source_size - 0.5)
    clamped = np.clip(position, 0.0, source_size - 1.0)
    lower = np.floor(clamped).astype(np.int64)
    lower = np.minimum(lower, max(source_size - 2, 0))
    upper = np.minimum(lower + 1, source_size - 1)
    weight = np.where(upper > lower, clamped - lower, 0.0)
    return AxisMap(lower, upper, weight, valid)


def grid_map(source: sitk.Image, target: sitk.Image) -> GridMap:
    """Map ``target``'s voxels onto ``source``'s grid; the two must share their direction cosines.

    Raises
    ------
    ValueError
        When the directions differ (then the mapping does not separate by axis; use SimpleITK).
    """
    d_source = np.asarray(source.GetDirection(), dtype=np.float64).reshape(3, 3)
    d_target = np.asarray(target.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.allclose(d_source, d_target, atol=1e-6):
        raise ValueError("grid_map needs grids with the same direction cosines; these differ")
    s_source = np.asarray(source.GetSpacing(), dtype=np.float64)
    s_target = np.asarray(target.GetSpacing(), dtype=np.float64)
    offset = d_source.T @ (
        np.asarray(target.GetOrigin(), dtype=np.float64) - np.asarray(source.GetOrigin(), dtype=np.float64)
    )
    starts = offset / s_source  # continuous source index of target index 0, per axis (x, y, z)
    steps = s_target / s_source
    sizes_source, sizes_target = source.GetSize(), target.GetSize()
    per_axis = [
        _axis_map(float(starts[k]), float(steps[k]), int(sizes_target[k]), int(sizes_source[k]))
        for k in range(3)
    ]
    return GridMap(
        axes=(per_axis[2], per_axis[1], per_axis[0]),
        shape=(int(sizes_target[2]), int(sizes_target[1]), int(sizes_target[0])),
    )


def resample_linear(values: torch.Tensor, mapping: GridMap) -> torch.Tensor:
    """Linear resampling of a (Z, Y, X) float tensor, on its device; 0 outside the source (see the module
    docstring for the edges)."""
    if values.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) tensor, got shape {tuple(values.shape)}")
    out = values.float()
    valid = torch.ones((1, 1, 1), dtype=torch.bool, device=values.device)
    for dim, axis in enumerate(mapping.axes):
        device = out.device
        lower = torch.as_tensor(axis.lower, device=device)
        upper = torch.as_tensor(axis.upper, device=device)
        shape = [1, 1, 1]
        shape[dim] = -1
        weight = torch.as_tensor(axis.weight, dtype=torch.float32, device=device).reshape(shape)
        low = out.index_select(dim, lower)
        out = low + (out.index_select(dim, upper) - low) * weight
        valid = valid & torch.as_tensor(axis.valid, device=device).reshape(shape)
    return out * valid
