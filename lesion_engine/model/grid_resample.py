"""Linear resampling between two grids that share their orientation (the model grid and the T2W grid).

The model grid has the T2W's direction cosines (:func:`lesion_engine.model.model_input.model_grid`), so the
continuous index along each axis of one grid depends only on the index along the same axis of the other:
``c = a + b * i``. Resampling then separates into three one-dimensional steps, which run as gathers on
NumPy arrays or on torch tensors (on the engine's device: no copy of a map to the CPU and back through
SimpleITK on a GPU).

The semantics are SimpleITK's ``Resample`` with an identity transform and default value 0: a point
within half a voxel outside the first or last voxel centre takes the edge value, further out it is 0.
(Continuous indices are computed in float64 and rounded to 1e-9 voxel, far above float64 noise and far
below any real difference of geometry; only a point that lies exactly half-way, as far as that precision
tells, can come out differently from SimpleITK, whose choice there follows its own rounding noise.)

* :func:`resample_linear`: linear interpolation (SimpleITK's ``sitkLinear``), separable, on torch tensors;
* :func:`resample_nearest`: nearest neighbour (``sitkNearestNeighbor``: half-way points go to the higher
  index), separable, on NumPy label maps, computed only over the part of the target that the source's
  non-zero voxels can reach;
* :func:`resample_affine_linear`: linear interpolation between grids of *any* orientations (the diffusion
  series onto the T2W grid), a gather of the eight neighbours of every target voxel, on torch tensors;
* :func:`coverage_mask`: the target voxels that fall inside the source (where SimpleITK's
  nearest-neighbour resampling of an all-ones image gives 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from lesion_engine.model.candidates import Box

logger = logging.getLogger(__name__)

__all__ = [
    "AxisMap",
    "GridMap",
    "coverage_mask",
    "grid_map",
    "resample_affine_linear",
    "resample_linear",
    "resample_nearest",
]

_TIE_DECIMALS = 9


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
    nearest : ndarray of int64
        Nearest source index (half-way points go up), clipped to the source.
    """

    lower: NDArray[np.int64]
    upper: NDArray[np.int64]
    weight: NDArray[np.float64]
    valid: NDArray[np.bool_]
    nearest: NDArray[np.int64]


@dataclass(frozen=True)
class GridMap:
    """The three axis maps, in array order (z, y, x), and the target shape."""

    axes: tuple[AxisMap, AxisMap, AxisMap]
    shape: tuple[int, int, int]


def _edges(
    position: torch.Tensor, source_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For continuous source indices along one axis (float64, any shape): ``valid``, ``lower``, ``upper``,
    ``weight`` (of ``upper``) and ``nearest``, with the edge rules of the module docstring."""
    position = torch.round(position, decimals=_TIE_DECIMALS)
    valid = (position >= -0.5) & (position < source_size - 0.5)
    clamped = position.clamp(0.0, source_size - 1.0)
    lower = clamped.floor().clamp(max=max(source_size - 2, 0))
    upper = (lower + 1).clamp(max=source_size - 1)
    weight = torch.where(upper > lower, clamped - lower, torch.zeros_like(clamped))
    nearest = torch.floor(position + 0.5).clamp(0, source_size - 1)
    return valid, lower.long(), upper.long(), weight, nearest.long()


def _axis_map(start: float, step: float, target_size: int, source_size: int) -> AxisMap:
    position = torch.from_numpy(start + step * np.arange(target_size, dtype=np.float64))
    valid, lower, upper, weight, nearest = _edges(position, source_size)
    return AxisMap(lower.numpy(), upper.numpy(), weight.numpy(), valid.numpy(), nearest.numpy())


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
    device = out.device
    for dim, axis in enumerate(mapping.axes):
        lower = torch.as_tensor(axis.lower, device=device)
        upper = torch.as_tensor(axis.upper, device=device)
        shape = [1, 1, 1]
        shape[dim] = -1
        weight = torch.as_tensor(axis.weight, dtype=torch.float32, device=device).reshape(shape)
        low = out.index_select(dim, lower)
        out = low + (out.index_select(dim, upper) - low) * weight
    return out * coverage_mask(mapping, device)


def coverage_mask(mapping: GridMap, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (Z, Y, X) tensor of the target voxels that fall inside the source, on ``device``."""
    out = torch.ones((1, 1, 1), dtype=torch.bool, device=device)
    for dim, axis in enumerate(mapping.axes):
        shape = [1, 1, 1]
        shape[dim] = -1
        out = out & torch.as_tensor(axis.valid, device=device).reshape(shape)
    return out.expand(mapping.shape).contiguous()


def resample_nearest(labels: NDArray[Any], mapping: GridMap) -> tuple[NDArray[Any], Box | None]:
    """Nearest-neighbour resampling of a (Z, Y, X) label map; 0 outside the source.

    Only the part of the target that the source's non-zero voxels can reach is computed (each axis maps
    monotonically, so that part is a box), which makes a few small lesions on a large grid cheap.

    Returns
    -------
    labels : ndarray
        (Z, Y, X) on the target grid, same dtype.
    box : tuple of slice or None
        A box of the target that holds every non-zero voxel; None when there is none.
    """
    values = np.asarray(labels)
    if values.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) array, got shape {values.shape}")
    out = np.zeros(mapping.shape, dtype=values.dtype)
    found = [np.flatnonzero(values.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    if any(len(f) == 0 for f in found):
        return out, None
    targets = []
    for axis, hits in zip(mapping.axes, found, strict=True):
        reached = np.nonzero(axis.valid & (axis.nearest >= hits[0]) & (axis.nearest <= hits[-1]))[0]
        if len(reached) == 0:
            return out, None
        targets.append(slice(int(reached[0]), int(reached[-1]) + 1))
    box: Box = (targets[0], targets[1], targets[2])
    index = [axis.nearest[part] for axis, part in zip(mapping.axes, box, strict=True)]
    out[box] = values[np.ix_(index[0], index[1], index[2])]
    return out, box


def _affine_indices(
    source: sitk.Image, target: sitk.Image
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``M`` and ``c`` with source continuous index = ``M @ target index + c`` (both in x, y, z order)."""
    d_source = np.asarray(source.GetDirection(), dtype=np.float64).reshape(3, 3)
    d_target = np.asarray(target.GetDirection(), dtype=np.float64).reshape(3, 3)
    s_source = np.asarray(source.GetSpacing(), dtype=np.float64)
    s_target = np.asarray(target.GetSpacing(), dtype=np.float64)
    # physical = origin + D @ (spacing * index); invert for the source (D orthonormal: inverse = transpose).
    to_source = np.linalg.inv(d_source @ np.diag(s_source))
    matrix = to_source @ d_target @ np.diag(s_target)
    offset = to_source @ (
        np.asarray(target.GetOrigin(), dtype=np.float64) - np.asarray(source.GetOrigin(), dtype=np.float64)
    )
    return matrix, offset


def resample_affine_linear(values: torch.Tensor, source: sitk.Image, target: sitk.Image) -> torch.Tensor:
    """Linear resampling of a (Z, Y, X) tensor on ``source``'s grid onto ``target``'s grid, any orientations.

    ``source`` and ``target`` give the geometry only (their pixels are not read). The result is float32 on
    ``values``' device; 0 outside the source (see the module docstring for the edges). Positions are
    computed in float64, as SimpleITK does.
    """
    if values.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) tensor, got shape {tuple(values.shape)}")
    source_zyx = tuple(int(v) for v in source.GetSize()[::-1])
    if tuple(values.shape) != source_zyx:
        raise ValueError(
            f"values have shape {tuple(values.shape)}, the source grid is (Z, Y, X) {source_zyx}"
        )
    matrix, offset = _affine_indices(source, target)
    device = values.device
    size_x, size_y, size_z = (int(v) for v in target.GetSize())
    x = torch.arange(size_x, dtype=torch.float64, device=device).reshape(1, 1, -1)
    y = torch.arange(size_y, dtype=torch.float64, device=device).reshape(1, -1, 1)
    z = torch.arange(size_z, dtype=torch.float64, device=device).reshape(-1, 1, 1)
    valid = torch.ones((size_z, size_y, size_x), dtype=torch.bool, device=device)
    corners: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for k, source_size in enumerate(source.GetSize()):  # source axes x, y, z
        position = offset[k] + matrix[k, 0] * x + matrix[k, 1] * y + matrix[k, 2] * z
        inside, lower, upper, weight, _ = _edges(position, source_size)
        valid &= inside
        corners.append((lower, upper, weight.float()))
    (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = corners
    flat = values.float().reshape(-1)
    row, plane = source_zyx[2], source_zyx[1] * source_zyx[2]

    def at(zi: torch.Tensor, yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return flat.take(zi * plane + yi * row + xi)

    c00 = at(z0, y0, x0) + (at(z0, y0, x1) - at(z0, y0, x0)) * wx
    c01 = at(z0, y1, x0) + (at(z0, y1, x1) - at(z0, y1, x0)) * wx
    c10 = at(z1, y0, x0) + (at(z1, y0, x1) - at(z1, y0, x0)) * wx
    c11 = at(z1, y1, x0) + (at(z1, y1, x1) - at(z1, y1, x0)) * wx
    c0 = c00 + (c01 - c00) * wy
    c1 = c10 + (c11 - c10) * wy
    return (c0 + (c1 - c0) * wz) * valid
