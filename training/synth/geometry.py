"""Image grids in patient space (DICOM LPS, millimetres).

A :class:`Grid` is a stack of parallel slices as DICOM describes them: Image Orientation (Patient) gives
``row_dir`` (direction of increasing column index) and ``col_dir`` (direction of increasing row index);
slices follow the normal ``row_dir x col_dir``, slice 0 lowest along it. Positions and directions are rounded
once when the grid is made, so that the values written to DICOM headers and to label images are identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Grid", "Lattice", "Vec3", "oblique_axes", "rotation_x"]

Vec3 = tuple[float, float, float]
FloatArray = NDArray[np.float64]

_POS_DECIMALS = 4
_DIR_DECIMALS = 10


def _vec(values: FloatArray | list[float] | tuple[float, ...], decimals: int) -> Vec3:
    a = np.round(np.asarray(values, dtype=np.float64), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return (float(a[0]), float(a[1]), float(a[2]))


def rotation_x(angle_deg: float) -> FloatArray:
    """Rotation matrix about the patient left-right (x) axis by ``angle_deg`` degrees."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def oblique_axes(plane: str, tilt_deg: float) -> tuple[Vec3, Vec3]:
    """Row and column directions of a ``tra``, ``sag`` or ``cor`` plane tilted about the left-right axis.

    With ``tilt_deg`` about 6.3 the axial plane has the orientation of the real fixture,
    ``[1, 0, 0, 0, 0.994, -0.11]``.
    """
    t = math.radians(tilt_deg)
    c, s = math.cos(t), math.sin(t)
    if plane == "tra":
        return (1.0, 0.0, 0.0), (0.0, c, -s)
    if plane == "cor":
        return (1.0, 0.0, 0.0), (0.0, -s, -c)
    if plane == "sag":
        return (0.0, c, -s), (0.0, -s, -c)
    raise ValueError(f"unknown plane {plane!r}: expected tra, sag or cor")


@dataclass(frozen=True)
class Grid:
    """A slice stack in LPS space.

    Attributes
    ----------
    size
        ``(columns, rows, slices)``, i.e. voxel counts along ``row_dir``, ``col_dir`` and the normal.
    spacing
        ``(column spacing, row spacing, slice spacing)`` in mm (DICOM Pixel Spacing is ``[row, column]``).
    origin
        Centre of voxel ``(0, 0, 0)``: Image Position (Patient) of slice 0.
    row_dir, col_dir
        Image Orientation (Patient), unit vectors.
    thickness
        Slice thickness in mm (may be smaller than the slice spacing: a gap).
    """

    size: tuple[int, int, int]
    spacing: Vec3
    origin: Vec3
    row_dir: Vec3
    col_dir: Vec3
    thickness: float

    @classmethod
    def centred(
        cls,
        centre: FloatArray | Vec3,
        size: tuple[int, int, int],
        spacing: Vec3,
        axes: tuple[Vec3, Vec3],
        thickness: float | None = None,
    ) -> Grid:
        """Make the grid whose middle is at ``centre`` (LPS mm)."""
        row = np.asarray(axes[0], dtype=np.float64)
        col = np.asarray(axes[1], dtype=np.float64)
        row_r = _vec(row / np.linalg.norm(row), _DIR_DECIMALS)
        col_r = _vec(col / np.linalg.norm(col), _DIR_DECIMALS)
        normal = np.cross(row_r, col_r)
        half = [(n - 1) / 2.0 * d for n, d in zip(size, spacing, strict=True)]
        origin = (
            np.asarray(centre, dtype=np.float64)
            - half[0] * np.asarray(row_r)
            - half[1] * np.asarray(col_r)
            - half[2] * normal
        )
        return cls(
            size=size,
            spacing=spacing,
            origin=_vec(origin, _POS_DECIMALS),
            row_dir=row_r,
            col_dir=col_r,
            thickness=float(thickness if thickness is not None else spacing[2]),
        )

    @property
    def normal(self) -> FloatArray:
        """Unit normal ``row_dir x col_dir``, the direction in which the slice index grows."""
        n = np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))
        return np.asarray(n / np.linalg.norm(n), dtype=np.float64)

    @property
    def matrix(self) -> FloatArray:
        """3x3 matrix whose columns are ``row_dir``, ``col_dir`` and the normal."""
        return np.asarray(
            np.stack([np.asarray(self.row_dir), np.asarray(self.col_dir), self.normal], axis=1),
            dtype=np.float64,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(slices, rows, columns)`` of a volume on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def image_orientation(self) -> list[float]:
        """Image Orientation (Patient): ``row_dir`` then ``col_dir``."""
        return [*self.row_dir, *self.col_dir]

    @property
    def pixel_spacing(self) -> list[float]:
        """DICOM Pixel Spacing ``[row spacing, column spacing]``."""
        return [self.spacing[1], self.spacing[0]]

    def slice_position(self, k: int) -> Vec3:
        """Image Position (Patient) of slice ``k`` (rounded like the origin)."""
        return _vec(np.asarray(self.origin) + k * self.spacing[2] * self.normal, _POS_DECIMALS)

    def centre(self) -> FloatArray:
        """Physical centre of the grid."""
        idx = np.array([(n - 1) / 2.0 for n in self.size])
        return np.asarray(
            np.asarray(self.origin) + self.matrix @ (idx * np.asarray(self.spacing)), dtype=np.float64
        )

    def slice_points(self, k: int, oversample: tuple[int, int, int] = (1, 1, 1)) -> FloatArray:
        """Sample points of slice ``k``: shape ``(n_sub, rows, columns, 3)``.

        With ``oversample == (1, 1, 1)`` the single sub-sample is the voxel centre. Otherwise each voxel is
        split into ``ox * oy * oz`` equal cells (through-plane over the slice thickness) whose centres are
        returned, for partial-volume averaging.
        """
        ox, oy, oz = oversample
        offs = [(np.arange(o) + 0.5) / o - 0.5 if o > 1 else np.zeros(1) for o in (ox, oy, oz)]
        extent = (self.spacing[0], self.spacing[1], self.thickness)
        subs = np.array(
            [[a * extent[0], b * extent[1], c * extent[2]] for a in offs[0] for b in offs[1] for c in offs[2]]
        )
        i = np.arange(self.size[0]) * self.spacing[0]
        j = np.arange(self.size[1]) * self.spacing[1]
        base = np.asarray(self.slice_position(k))
        row = np.asarray(self.row_dir)
        col = np.asarray(self.col_dir)
        plane = base + j[:, None, None] * col + i[None, :, None] * row  # (rows, cols, 3)
        shift = subs @ self.matrix.T  # (n_sub, 3)
        return np.asarray(plane[None, :, :, :] + shift[:, None, None, :], dtype=np.float64)

    def lattice(self, k: int, oversample: tuple[int, int, int] = (1, 1, 1)) -> Lattice:
        """Sample points of slice ``k`` (see :meth:`slice_points`) with what is needed to window them."""
        return Lattice(
            points=self.slice_points(k, oversample),
            base=np.asarray(self.slice_position(k)),
            row=np.asarray(self.row_dir),
            col=np.asarray(self.col_dir),
            normal=self.normal,
            step=(self.spacing[0], self.spacing[1]),
            margin=max(self.spacing[0], self.spacing[1]) + self.thickness / 2.0,
        )

    def sitk_direction(self) -> tuple[float, ...]:
        """Direction matrix as SimpleITK wants it (row-major, columns = axis directions)."""
        return tuple(float(v) for v in self.matrix.reshape(-1))

    def extent_along(self, direction: FloatArray) -> tuple[float, float]:
        """Interval of voxel-centre projections onto ``direction`` (for coverage checks)."""
        corners = []
        for a in (0, self.size[0] - 1):
            for b in (0, self.size[1] - 1):
                for c in (0, self.size[2] - 1):
                    idx = np.array([a, b, c]) * np.asarray(self.spacing)
                    corners.append(float((np.asarray(self.origin) + self.matrix @ idx) @ direction))
        return min(corners), max(corners)


@dataclass(frozen=True)
class Lattice:
    """The sample points of one slice, ``(n_sub, rows, columns, 3)``, and the slice's frame.

    :meth:`window` tells which part of the slice a bounded object can touch, so that objects are only
    evaluated where they may be.
    """

    points: FloatArray
    base: FloatArray
    row: FloatArray
    col: FloatArray
    normal: FloatArray
    step: tuple[float, float]
    margin: float

    def window(self, lo: FloatArray, hi: FloatArray) -> tuple[slice, slice] | None:
        """``(row slice, column slice)`` of the points that may lie in the box ``[lo, hi]``; ``None``: none."""
        mid = (np.asarray(lo) + np.asarray(hi)) / 2.0
        half = (np.asarray(hi) - np.asarray(lo)) / 2.0
        rel = mid - self.base
        if abs(float(rel @ self.normal)) > float(np.abs(self.normal) @ half) + self.margin:
            return None
        rows, cols = self.points.shape[1], self.points.shape[2]
        ci = float(rel @ self.row)
        ei = float(np.abs(self.row) @ half) + self.margin
        cj = float(rel @ self.col)
        ej = float(np.abs(self.col) @ half) + self.margin
        i0 = max(0, int(np.floor((ci - ei) / self.step[0])))
        i1 = min(cols, int(np.ceil((ci + ei) / self.step[0])) + 1)
        j0 = max(0, int(np.floor((cj - ej) / self.step[1])))
        j1 = min(rows, int(np.ceil((cj + ej) / self.step[1])) + 1)
        if i0 >= i1 or j0 >= j1:
            return None
        return slice(j0, j1), slice(i0, i1)
