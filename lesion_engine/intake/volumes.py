"""From frames to 3D volumes with physical geometry, and resampling onto the T2W grid.

Slices are ordered by their position along the slice normal (never by InstanceNumber or file name).
Whatever breaks a regular 3D grid is detected and reported with a specific :class:`GeometryError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from lesion_engine.errors import (
    DuplicateSlicesError,
    GeometryError,
    InconsistentSeriesError,
    MissingSlicesError,
    NonUniformSpacingError,
    TooFewSlicesError,
)
from lesion_engine.intake.series import Frame, Series

logger = logging.getLogger(__name__)

__all__ = [
    "Geometry",
    "build_volume",
    "compute_high_b",
    "geometry_of",
    "resample_to",
    "same_grid",
    "tilt_from_axial_deg",
]

_ORIENTATION_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 1e-3
_DUPLICATE_TOLERANCE_MM = 1e-2


@dataclass(frozen=True)
class Geometry:
    """The grid of a volume: size (x, y, z), spacing (mm), origin (LPS mm), direction (row-major 3x3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def close_to(self, other: Geometry, tolerance: float = 1e-3) -> bool:
        """True when both grids agree within ``tolerance`` (sizes exactly)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )


def geometry_of(image: sitk.Image) -> Geometry:
    """The :class:`Geometry` of a SimpleITK image."""
    size = image.GetSize()
    spacing = image.GetSpacing()
    origin = image.GetOrigin()
    return Geometry(
        (int(size[0]), int(size[1]), int(size[2])),
        (float(spacing[0]), float(spacing[1]), float(spacing[2])),
        (float(origin[0]), float(origin[1]), float(origin[2])),
        tuple(float(v) for v in image.GetDirection()),
    )


def tilt_from_axial_deg(frame: Frame) -> float | None:
    """Angle in degrees between a frame's slice normal and the patient's foot-head axis."""
    normal = frame.normal
    if normal is None:
        return None
    return float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))


@dataclass(frozen=True)
class _Stack:
    """Validated geometry shared by all frames of a stack."""

    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    positions: NDArray[np.float64]  # (n, 3), in frame order


def _check_consistent(frames: list[Frame], label: str) -> _Stack:
    positions, orientations, spacings = [], [], []
    for f in frames:
        if f.position is None or f.orientation is None or f.pixel_spacing is None:
            raise GeometryError(
                f"{label}: some images lack ImagePositionPatient, ImageOrientationPatient or PixelSpacing, "
                "so no 3D volume can be built"
            )
        positions.append(f.position)
        orientations.append(f.orientation)
        spacings.append(f.pixel_spacing)
    sizes = {(f.rows, f.columns) for f in frames}
    if len(sizes) > 1:
        raise InconsistentSeriesError(f"{label}: mixed Rows x Columns within one series: {sorted(sizes)}")
    for orientation, spacing in zip(orientations, spacings, strict=True):
        if not np.allclose(orientation, orientations[0], atol=_ORIENTATION_TOLERANCE):
            raise InconsistentSeriesError(
                f"{label}: mixed ImageOrientationPatient within one series "
                f"({list(orientations[0])} vs {list(orientation)}); a multi-plane localizer is not a volume"
            )
        if not np.allclose(spacing, spacings[0], atol=_SPACING_TOLERANCE):
            raise InconsistentSeriesError(
                f"{label}: mixed PixelSpacing within one series ({list(spacings[0])} vs {list(spacing)})"
            )
    return _Stack(orientations[0], spacings[0], np.asarray(positions, dtype=np.float64))


def _sorted_unique(
    series: Series,
    frames: list[Frame],
    positions: NDArray[np.float64],
    normal: NDArray[np.float64],
    label: str,
) -> tuple[list[Frame], NDArray[np.float64], NDArray[np.float64]]:
    """Sort frames along the normal and drop exact duplicates (same position, same pixels)."""
    heights = positions @ normal
    order = np.argsort(heights, kind="stable")
    frames = [frames[i] for i in order]
    heights = heights[order]
    positions = positions[order]
    keep = [0]
    for i in range(1, len(frames)):
        if heights[i] - heights[keep[-1]] < _DUPLICATE_TOLERANCE_MM:
            a, b = series.frame_pixels([frames[keep[-1]], frames[i]])
            if not np.array_equal(a, b):
                raise DuplicateSlicesError(
                    f"{label}: two different images at the same slice position {heights[i]:.2f} mm along the "
                    "normal (repeated or mixed acquisitions in one series)"
                )
            logger.warning("%s: dropped a duplicate image at %.2f mm", label, heights[i])
            continue
        keep.append(i)
    return [frames[i] for i in keep], heights[keep], positions[keep]


def _check_spacing(heights: NDArray[np.float64], tolerance: float, label: str) -> float:
    gaps = np.diff(heights)
    gap = float(np.median(gaps))
    for i, g in enumerate(gaps):
        if abs(g - gap) <= tolerance * gap:
            continue
        ratio = g / gap
        if ratio > 1.5 and abs(ratio - round(ratio)) <= tolerance * round(ratio):
            raise MissingSlicesError(
                f"{label}: {round(ratio) - 1} slice(s) missing between {heights[i]:.2f} mm and "
                f"{heights[i + 1]:.2f} mm along the normal (regular spacing {gap:.2f} mm); "
                "resend the complete series"
            )
        raise NonUniformSpacingError(
            f"{label}: slice gap {g:.2f} mm between {heights[i]:.2f} and {heights[i + 1]:.2f} mm differs from the "
            f"series' regular spacing {gap:.2f} mm by more than {tolerance:.0%}"
        )
    return gap


def build_volume(
    series: Series, frames: list[Frame], *, min_slices: int, spacing_tolerance: float
) -> sitk.Image:
    """Build a float32 SimpleITK volume from frames of one series (one b-value, one time point).

    Parameters
    ----------
    series : Series
        The series holding the frames (for pixel access and messages).
    frames : list of Frame
        The frames, in any order.
    min_slices : int
        Fewest slices accepted.
    spacing_tolerance : float
        Allowed relative deviation of a slice gap from the median gap.

    Returns
    -------
    SimpleITK.Image
        Rescaled values, origin at the first slice along the normal, direction (row, column, normal).

    Raises
    ------
    GeometryError
        Any of its subclasses, naming the series and what is wrong.
    """
    label = f"series {series.series_number} '{series.description}'"
    if not frames:
        raise TooFewSlicesError(f"{label}: no images")
    stack = _check_consistent(frames, label)
    normal = frames[0].normal
    if normal is None:
        raise GeometryError(f"{label}: degenerate ImageOrientationPatient {list(stack.orientation)}")
    frames, heights, positions = _sorted_unique(series, frames, stack.positions, normal, label)
    if len(frames) < min_slices:
        raise TooFewSlicesError(f"{label}: {len(frames)} slice(s), a volume needs at least {min_slices}")
    gap = _check_spacing(heights, spacing_tolerance, label)
    origin = positions[0]
    # Slices must be stacked along the normal; an in-plane shift (gantry tilt, shear) breaks the grid.
    for position, h in zip(positions, heights, strict=True):
        drift = position - origin - (h - heights[0]) * normal
        if float(np.linalg.norm(drift)) > 0.5 * min(stack.pixel_spacing):
            raise GeometryError(
                f"{label}: slices are not stacked along their normal (in-plane shift of "
                f"{float(np.linalg.norm(drift)):.2f} mm; gantry tilt or sheared acquisition)"
            )
    array = series.frame_pixels(frames)
    image = sitk.GetImageFromArray(array)
    row = np.asarray(stack.orientation[:3])
    col = np.asarray(stack.orientation[3:])
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing((float(stack.pixel_spacing[1]), float(stack.pixel_spacing[0]), gap))
    direction = np.stack([row, col, normal], axis=1)
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def same_grid(image: sitk.Image, reference: sitk.Image) -> bool:
    """Whether ``image`` lies on ``reference``'s grid (within 1e-4), so that resampling is a no-op."""
    return geometry_of(image).close_to(geometry_of(reference), 1e-4)


def resample_to(
    image: sitk.Image, reference: sitk.Image, *, interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Resample ``image`` onto the grid of ``reference`` in physical space (outside: 0), as float32."""
    out: sitk.Image
    if same_grid(image, reference):
        out = sitk.Cast(image, sitk.sitkFloat32)
    else:
        out = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
    return out


def index_box(
    image: sitk.Image, grid: sitk.Image, margin: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The voxels of ``image`` around the corners of ``grid`` (the part an interpolation onto ``grid`` reads),
    ``margin`` more on each side, within ``image``: (x, y, z) indices, ``low`` inclusive, ``high`` exclusive
    (empty where ``high <= low`` on an axis: ``grid`` lies outside ``image``)."""
    size = np.asarray(grid.GetSize())
    corners = np.stack(np.meshgrid(*[(0.0, n - 1.0) for n in size], indexing="ij"), -1).reshape(-1, 3)
    indices = np.asarray(
        [
            image.TransformPhysicalPointToContinuousIndex(
                grid.TransformContinuousIndexToPhysicalPoint(list(c))
            )
            for c in corners
        ]
    )
    extent = np.asarray(image.GetSize())
    low = np.clip(np.floor(indices.min(axis=0)).astype(np.int64) - margin, 0, extent)
    high = np.clip(np.ceil(indices.max(axis=0)).astype(np.int64) + margin + 1, 0, extent)
    return low, high


def box_grid(image: sitk.Image, low: NDArray[np.int64], high: NDArray[np.int64]) -> sitk.Image:
    """An empty image of the voxels ``low`` (inclusive) to ``high`` (exclusive) of ``image``'s grid."""
    box = sitk.Image([int(v) for v in high - low], sitk.sitkUInt8)
    box.SetSpacing(image.GetSpacing())
    box.SetDirection(image.GetDirection())
    box.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in low]))
    return box


def compute_high_b(low_b: sitk.Image, b_low: float, adc: sitk.Image, b_target: float) -> sitk.Image:
    """Compute a high b-value image from a low b-value image and an ADC map, mono-exponentially.

    ``S(b_target) = S(b_low) * exp(-(b_target - b_low) * ADC)``, as scanners compute their calculated
    b-value series. The result lies on the low b-value image's grid.

    Parameters
    ----------
    low_b : SimpleITK.Image
        The measured low b-value image.
    b_low : float
        Its b-value (s/mm^2).
    adc : SimpleITK.Image
        ADC map in 10^-6 mm^2/s (resampled onto ``low_b``'s grid when needed; negative values count as 0).
    b_target : float
        The b-value to compute (s/mm^2).
    """
    if b_target <= b_low:
        raise ValueError(f"b_target ({b_target}) must exceed b_low ({b_low})")
    adc_on_grid = resample_to(adc, low_b)
    s_low = sitk.GetArrayViewFromImage(low_b).astype(np.float32)
    adc_mm2 = np.clip(sitk.GetArrayViewFromImage(adc_on_grid), 0.0, None).astype(np.float32) * np.float32(
        1e-6
    )
    high = s_low * np.exp(-np.float32(b_target - b_low) * adc_mm2)
    out = sitk.GetImageFromArray(high.astype(np.float32))
    out.CopyInformation(low_b)
    return out
