"""Radiologists' verdicts drawn on a case's T2W grid: rejected findings as negative regions, missed ones as hints.

A radiologist who reviews the AI's findings in the viewer deletes those they disagree with and draws those
that were missed; the node reads the report they save as verdicts (``GET /lesion-ai/verdicts``,
:class:`training.datasets.node_source.NodeVerdicts`). ``lesion-ai dataset build --from-node`` draws them on the grid of
the case's lesion label (the T2W as selected), as two uint8 masks beside the labels:

* ``negative``: the **rejected** findings, regions the radiologist said are no lesion (hard negatives);
* ``hints``: the **missed** findings, where the radiologist saw a lesion the AI did not report.

Each measurement is drawn in the slice of the image it was drawn on: a closed outline (a ``POLYLINE`` whose
last point is its first, a ``CIRCLE``, an ``ELLIPSE``) filled with its border, an open polyline (a ``Length``
and the like) as its line, a ``POINT`` or ``MULTIPOINT`` as one voxel per point. The image must be one of the
fetched files of the study's T2W series that the case is built on: each (column, row) point is put into the
patient's space with that file's ImagePositionPatient, ImageOrientationPatient and PixelSpacing, then onto
the T2W grid (``TransformPhysicalPointToContinuousIndex``, rounded). A measurement that cannot be placed
(its image is not in the study's T2W series or not fetched, a multi-frame image, a graphic type that is not
drawn, points outside the T2W volume) is listed with the reason; the others are drawn.

``lesion-ai train`` does not read these masks: they are written for training code that uses hard negatives
and hints.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray

from lesion_engine.labels.sr_measurements import PlanarMeasurement
from training.datasets.node_source import NodeVerdicts

logger = logging.getLogger(__name__)

__all__ = ["DRAWING", "HINTS_DIR", "NEGATIVE_DIR", "VerdictMasks", "draw_verdicts"]

#: Version of the drawing rules (part of the case fingerprint: a change rebuilds the cases with verdicts).
DRAWING = 1
NEGATIVE_DIR = Path("picai_labels/verdicts/negative")
HINTS_DIR = Path("picai_labels/verdicts/hints")
#: Points whose first and last lie closer than this (pixels) form a closed outline.
_CLOSED_PX = 1e-3
#: Points on the outline of a drawn circle or ellipse.
_CURVE_POINTS = 72
#: Most a point may lie outside the T2W image's pixel centres (pixels; the node allows 1 on its own image).
_EDGE_PX = 2.0
#: Most a measurement's points may stray (in slices) from one T2W slice.
_SLICE_TOLERANCE = 0.5
_TAGS = [
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "NumberOfFrames",
]


@dataclass(frozen=True)
class _Plane:
    """Where an image lies: ImagePositionPatient, its row and column directions, PixelSpacing (``problem``:
    why its header does not say, the geometry then unset)."""

    series_instance_uid: str
    series_number: str
    frames: int
    origin: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    row_direction: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    column_direction: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    row_spacing: float = 0.0
    column_spacing: float = 0.0
    problem: str | None = None


@dataclass
class VerdictMasks:
    """A case's verdicts on its T2W grid.

    Attributes
    ----------
    negative : ndarray of uint8, (Z, Y, X)
        1 where a rejected finding lies.
    hints : ndarray of uint8, (Z, Y, X)
        1 where a missed finding lies.
    record : dict
        The case's ``verdicts`` entry of dataset.json: ``counts`` (summed over the records), ``negative_voxels``,
        ``hint_voxels``, ``sources`` (the node's records: ``id``, ``sop_instance_uid`` of the saved report,
        ``model``) and ``not_placed`` (the measurements that could not be drawn, each with the reason).
    """

    negative: NDArray[np.uint8]
    hints: NDArray[np.uint8]
    record: dict[str, Any]


class _NotPlacedError(Exception):
    """A measurement cannot be drawn on the T2W grid; the message says why."""


def _vector(value: Any, size: int, what: str) -> NDArray[np.float64]:
    """A header value of ``size`` finite numbers (else why not, as :class:`_NotPlacedError`)."""
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise _NotPlacedError(f"its image's {what} is not numbers") from None
    if array.shape != (size,) or not np.all(np.isfinite(array)):
        raise _NotPlacedError(f"its image's {what} is not {size} finite numbers")
    return array


def _plane(ds: pydicom.Dataset) -> _Plane:
    """Where the image of header ``ds`` lies (its ``problem`` when the header does not say)."""
    series = str(ds.get("SeriesInstanceUID", ""))
    number = str(ds.get("SeriesNumber", "") or "?")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    try:
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if ds.get(keyword) is None:
                raise _NotPlacedError(f"its image has no {keyword}")
        orientation = _vector(ds.ImageOrientationPatient, 6, "ImageOrientationPatient")
        spacing = _vector(ds.PixelSpacing, 2, "PixelSpacing")
        if not np.all(spacing > 0):
            raise _NotPlacedError(f"its image's PixelSpacing {spacing.tolist()} is not positive")
        origin = _vector(ds.ImagePositionPatient, 3, "ImagePositionPatient")
    except _NotPlacedError as exc:
        return _Plane(series, number, frames, problem=str(exc))
    return _Plane(
        series_instance_uid=series,
        series_number=number,
        frames=frames,
        origin=origin,
        row_direction=orientation[:3],
        column_direction=orientation[3:],
        row_spacing=float(spacing[0]),
        column_spacing=float(spacing[1]),
    )


def _planes(images: Sequence[Path], wanted: set[str]) -> dict[str, _Plane]:
    """SOPInstanceUID -> the plane of each wanted image among the study's files."""
    out: dict[str, _Plane] = {}
    for path in images:
        if len(out) == len(wanted):
            break
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except Exception as exc:  # an unreadable file: the images it holds are not found
            logger.debug("%s: not read for the verdicts (%s)", path.name, exc)
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in wanted and uid not in out:
            out[uid] = _plane(ds)
    return out


def _outline(measurement: PlanarMeasurement) -> tuple[list[tuple[float, float]], bool]:
    """The points to draw in the image's (column, row) pixels, and whether they enclose a region."""
    points = list(measurement.points)
    kind = measurement.graphic_type
    if kind in ("POINT", "MULTIPOINT"):
        return points, False
    if kind == "POLYLINE":
        first, last = np.asarray(points[0]), np.asarray(points[-1])
        closed = len(points) >= 4 and float(np.abs(first - last).max()) <= _CLOSED_PX
        return points, closed
    angles = np.linspace(0.0, 2.0 * math.pi, _CURVE_POINTS, endpoint=False)
    if kind == "CIRCLE" and len(points) == 2:
        center = np.asarray(points[0])
        radius = float(np.hypot(*(np.asarray(points[1]) - center)))
        major, minor = np.array([radius, 0.0]), np.array([0.0, radius])
    elif kind == "ELLIPSE" and len(points) == 4:
        p = np.asarray(points)
        center = (p[0] + p[1]) / 2.0
        major, minor = (p[1] - p[0]) / 2.0, (p[3] - p[2]) / 2.0
    else:
        raise _NotPlacedError(f"a {kind or 'graphic'} of {len(points)} point(s) is not drawn")
    curve = center + np.cos(angles)[:, None] * major + np.sin(angles)[:, None] * minor
    return [(float(c), float(r)) for c, r in curve], True


def _on_grid(points: list[tuple[float, float]], plane: _Plane, t2w: sitk.Image) -> tuple[NDArray[Any], int]:
    """The points' continuous (x, y) indices on the T2W grid, and the slice they lie in."""
    pairs = np.asarray(points, dtype=np.float64)
    world = (
        plane.origin
        + pairs[:, :1] * plane.column_spacing * plane.row_direction
        + pairs[:, 1:] * plane.row_spacing * plane.column_direction
    )
    index = np.asarray([t2w.TransformPhysicalPointToContinuousIndex(tuple(map(float, w))) for w in world])
    z = index[:, 2]
    slice_index = math.floor(float(z.mean()) + 0.5)
    if float(np.abs(z - slice_index).max()) > _SLICE_TOLERANCE:
        raise _NotPlacedError(
            f"its points lie across T2W slices {z.min():.1f} to {z.max():.1f}, not in one slice of the grid"
        )
    size = t2w.GetSize()
    if not 0 <= slice_index < size[2]:
        raise _NotPlacedError(f"it lies outside the T2W volume (slice {slice_index} of {size[2]})")
    xy = index[:, :2]
    if np.any(xy < -_EDGE_PX) or np.any(xy > np.array([size[0], size[1]]) - 1 + _EDGE_PX):
        raise _NotPlacedError(f"its points lie outside the T2W image ({size[0]} x {size[1]} pixels)")
    return xy, slice_index


def _line(xy: NDArray[Any]) -> NDArray[np.int64]:
    """The pixels (x, y) of a polyline through continuous points: each segment sampled at least once per
    pixel, rounded."""
    if len(xy) == 1:
        return np.floor(xy + 0.5).astype(np.int64)
    parts = []
    for a, b in itertools.pairwise(xy):
        steps = max(1, math.ceil(float(np.abs(b - a).max())))
        t = np.linspace(0.0, 1.0, steps + 1)[:, None]
        parts.append(a + t * (b - a))
    return np.floor(np.concatenate(parts) + 0.5).astype(np.int64)


def _fill(xy: NDArray[Any], shape: tuple[int, int]) -> NDArray[np.int64]:
    """The pixels (x, y) whose centres lie inside a closed outline (even-odd rule, one scanline per row)."""
    x0, y0 = xy[:-1, 0], xy[:-1, 1]
    x1, y1 = xy[1:, 0], xy[1:, 1]
    out = []
    rows = range(
        max(0, math.ceil(float(xy[:, 1].min()))), min(shape[0] - 1, math.floor(float(xy[:, 1].max()))) + 1
    )
    for row in rows:
        crossing = ((y0 <= row) & (y1 > row)) | ((y1 <= row) & (y0 > row))
        if not np.any(crossing):
            continue
        xa, ya, xb, yb = x0[crossing], y0[crossing], x1[crossing], y1[crossing]
        xs = np.sort(xa + (row - ya) * (xb - xa) / (yb - ya))
        for left, right in zip(xs[0::2], xs[1::2], strict=False):
            columns = np.arange(max(0, math.ceil(left)), min(shape[1] - 1, math.floor(right)) + 1)
            out.append(np.stack([columns, np.full_like(columns, row)], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)


def _draw(mask: NDArray[np.uint8], measurement: PlanarMeasurement, plane: _Plane, t2w: sitk.Image) -> None:
    """Set the voxels of ``measurement`` (on the image of ``plane``) in ``mask``, the T2W grid's array."""
    points, closed = _outline(measurement)
    xy, slice_index = _on_grid(points, plane, t2w)
    shape = (mask.shape[1], mask.shape[2])
    if measurement.graphic_type in ("POINT", "MULTIPOINT"):
        pixels = np.floor(xy + 0.5).astype(np.int64)
    elif closed:
        ring = np.concatenate([xy, xy[:1]]) if measurement.graphic_type != "POLYLINE" else xy
        pixels = np.concatenate([_fill(ring, shape), _line(ring)])
    else:
        pixels = _line(xy)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < shape[1]) & (pixels[:, 1] >= 0) & (pixels[:, 1] < shape[0])
    if not np.any(inside):
        raise _NotPlacedError("it lies outside the T2W image")
    mask[slice_index, pixels[inside, 1], pixels[inside, 0]] = 1


def draw_verdicts(
    verdicts: Sequence[NodeVerdicts], images: Sequence[Path], t2w: sitk.Image, t2w_series_uid: str
) -> VerdictMasks:
    """Draw a study's verdicts on its T2W grid (see the module docstring).

    Parameters
    ----------
    verdicts : sequence of NodeVerdicts
        The study's current verdicts (one record per judged model).
    images : sequence of Path
        The study's DICOM files as the build read them (the measurements' images are looked up among them).
    t2w : SimpleITK.Image
        The T2W volume the case is built on (the grid of its lesion label).
    t2w_series_uid : str
        SeriesInstanceUID of that T2W series: measurements on other series' images are not placed.

    Returns
    -------
    VerdictMasks
    """
    shape = tuple(reversed(t2w.GetSize()))
    negative = np.zeros(shape, dtype=np.uint8)
    hints = np.zeros(shape, dtype=np.uint8)
    todo = [(record, "rejected", m, negative) for record in verdicts for m in record.rejected] + [
        (record, "missed", m, hints) for record in verdicts for m in record.missed
    ]
    planes = _planes(images, {m.sop_instance_uid for _, _, m, _ in todo})
    not_placed = []
    for record, verdict, measurement, mask in todo:
        plane = planes.get(measurement.sop_instance_uid)
        try:
            if plane is None:
                raise _NotPlacedError("its image is not among the study's images fetched from the node")
            if plane.series_instance_uid != t2w_series_uid:
                raise _NotPlacedError(
                    f"its image is in series {plane.series_number} ({plane.series_instance_uid}), not in the "
                    "study's T2W series the case is built on"
                )
            if plane.frames > 1:
                raise _NotPlacedError("its image is multi-frame and the verdict does not say which frame")
            if plane.problem is not None:
                raise _NotPlacedError(plane.problem)
            _draw(mask, measurement, plane, t2w)
        except _NotPlacedError as exc:
            logger.info("%s: %s %s not placed: %s", record.source, verdict, measurement.kind, exc)
            not_placed.append(
                {
                    "record": record.id,
                    "verdict": verdict,
                    "tool": measurement.tool,
                    "label": measurement.label,
                    "sop_instance_uid": measurement.sop_instance_uid,
                    "reason": str(exc),
                }
            )
    summary: dict[str, Any] = {
        "counts": {k: sum(r.counts[k] for r in verdicts) for k in ("accepted", "rejected", "missed")},
        "negative_voxels": int(negative.sum()),
        "hint_voxels": int(hints.sum()),
        "sources": [{"id": r.id, "sop_instance_uid": r.sop_instance_uid, "model": r.model} for r in verdicts],
        "not_placed": not_placed,
    }
    return VerdictMasks(negative, hints, summary)
