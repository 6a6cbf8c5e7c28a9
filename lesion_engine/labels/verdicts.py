"""A radiologist's verdicts on the AI's findings, read from the measurements they saved.

In OHIF a radiologist loads the AI's SR as measurements, deletes those they disagree with, draws those that
were missed, and saves a new SR ("Create SR"). :func:`judge` compares that SR's planar measurements
(:mod:`lesion_engine.labels.sr_measurements`) with the AI's, by the image they lie on and their geometry, never by
UIDs (OHIF writes new Tracking UIDs at every save):

* an AI measurement is **accepted** when a measurement of the same kind (tool: ``Length``,
  ``PlanarFreehandROI``, ...) lies on the same image within ``tolerance_mm`` of it, and **rejected**
  otherwise;
* a saved measurement that matches no AI measurement is **missed**: a finding the radiologist drew that the
  AI did not report.

The distance of two measurements is the symmetric Hausdorff distance of their points, in millimetres (the
image's pixel spacing: row spacing for rows, column spacing for columns). Pairs are matched one to one,
closest first.

A saved SR that cannot be judged raises :class:`VerdictError`: one whose measurements lie on images that are
not the study's (:class:`ForeignImageError`), or whose points fall outside their image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lesion_engine.errors import LesionAIError
from lesion_engine.labels.sr_measurements import PlanarMeasurement

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "FindingVerdict",
    "ForeignImageError",
    "ImageGeometry",
    "VerdictError",
    "Verdicts",
    "judge",
    "shown_in_viewer",
]

#: Default largest distance (mm) at which a saved measurement is the AI's measurement kept.
DEFAULT_TOLERANCE_MM = 3.0
#: Points may lie this far (pixels) outside an image's pixel centres and still be on it (its edge is at -0.5).
_EDGE_PX = 1.0

Verdict = Literal["accepted", "rejected"]
#: Tracking Identifiers by which OHIF loads a measurement group as one of its tools; the node writes them on
#: the groups meant to be seen and judged (outline, long axis), not on its volumetric and prostate groups.
VIEWER_TOOL_PREFIX = "Cornerstone3DTools@"


class VerdictError(LesionAIError):
    """A saved SR cannot be judged against the AI's findings; the message says why."""


class ForeignImageError(VerdictError):
    """A saved measurement lies on an image that is not one of the study's."""


@dataclass(frozen=True)
class ImageGeometry:
    """Size and pixel spacing of one image, to place and measure points on it.

    Attributes
    ----------
    rows, columns : int
        Rows and Columns.
    row_spacing_mm, column_spacing_mm : float
        PixelSpacing (the distance between rows, then between columns).
    """

    rows: int
    columns: int
    row_spacing_mm: float
    column_spacing_mm: float

    def __post_init__(self) -> None:
        if self.rows < 1 or self.columns < 1:
            raise ValueError(f"an image has at least one row and column, got {self.rows} x {self.columns}")
        for name in ("row_spacing_mm", "column_spacing_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of millimetres, got {value!r}")

    def contains(self, points: Sequence[tuple[float, float]]) -> bool:
        """Whether every (column, row) point lies on the image."""
        return all(
            -_EDGE_PX <= c <= self.columns - 1 + _EDGE_PX and -_EDGE_PX <= r <= self.rows - 1 + _EDGE_PX
            for c, r in points
        )

    def millimetres(self, points: Sequence[tuple[float, float]]) -> np.ndarray:
        """The points in millimetres of the image plane, shape (n, 2)."""
        array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        scaled: np.ndarray = array * np.array([self.column_spacing_mm, self.row_spacing_mm])
        return scaled


@dataclass(frozen=True)
class FindingVerdict:
    """The verdict on one AI measurement.

    Attributes
    ----------
    finding : PlanarMeasurement
        The AI's measurement.
    verdict : {"accepted", "rejected"}
        Kept (a saved measurement matches it) or deleted.
    distance_mm : float or None
        Distance to the saved measurement that matched it (None when rejected).
    """

    finding: PlanarMeasurement
    verdict: Verdict
    distance_mm: float | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FindingVerdict:
        """Read :meth:`to_json`'s form."""
        verdict = str(data.get("verdict"))
        if verdict not in ("accepted", "rejected"):
            raise ValueError(f"a verdict is 'accepted' or 'rejected', got {verdict!r}")
        distance = data.get("distance_mm")
        return cls(
            PlanarMeasurement.from_json(data),
            "accepted" if verdict == "accepted" else "rejected",
            None if distance is None else float(distance),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            **self.finding.to_json(),
            "verdict": self.verdict,
            "distance_mm": None if self.distance_mm is None else round(self.distance_mm, 3),
        }


@dataclass(frozen=True)
class Verdicts:
    """The verdicts given by one saved SR.

    Attributes
    ----------
    findings : tuple of FindingVerdict
        One per AI measurement, in the AI's order.
    missed : tuple of PlanarMeasurement
        The saved measurements that match none of the AI's.
    """

    findings: tuple[FindingVerdict, ...]
    missed: tuple[PlanarMeasurement, ...]

    @property
    def counts(self) -> dict[str, int]:
        """``accepted``, ``rejected`` and ``missed`` counts."""
        return {
            "accepted": sum(v.verdict == "accepted" for v in self.findings),
            "rejected": sum(v.verdict == "rejected" for v in self.findings),
            "missed": len(self.missed),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdicts:
        """Read :meth:`to_json`'s form."""
        return cls(
            tuple(FindingVerdict.from_json(f) for f in data.get("findings", [])),
            tuple(PlanarMeasurement.from_json(m) for m in data.get("missed", [])),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "counts": self.counts,
            "findings": [v.to_json() for v in self.findings],
            "missed": [m.to_json() for m in self.missed],
        }


def shown_in_viewer(measurements: Sequence[PlanarMeasurement]) -> list[PlanarMeasurement]:
    """The AI's measurements a radiologist sees and judges in the viewer (Tracking Identifier of a viewer
    tool, :data:`VIEWER_TOOL_PREFIX`)."""
    return [m for m in measurements if m.tool.startswith(VIEWER_TOOL_PREFIX)]


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
    return float(max(distances.min(axis=1).max(), distances.min(axis=0).max()))


def _check(saved: Sequence[PlanarMeasurement], images: Mapping[str, ImageGeometry]) -> None:
    for number, measurement in enumerate(saved, start=1):
        geometry = images.get(measurement.sop_instance_uid)
        if geometry is None:
            raise ForeignImageError(
                f"saved measurement {number} ({measurement.label or measurement.kind}) lies on image "
                f"{measurement.sop_instance_uid}, which is not one of this study's"
            )
        if not geometry.contains(measurement.points):
            raise VerdictError(
                f"saved measurement {number} ({measurement.label or measurement.kind}) has points outside its "
                f"image ({geometry.columns} x {geometry.rows} pixels)"
            )


def judge(
    findings: Sequence[PlanarMeasurement],
    saved: Sequence[PlanarMeasurement],
    images: Mapping[str, ImageGeometry],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> Verdicts:
    """Match a saved SR's measurements to the AI's (see the module docstring).

    Parameters
    ----------
    findings : sequence of PlanarMeasurement
        The AI's measurements (from the node's own SR).
    saved : sequence of PlanarMeasurement
        The measurements the radiologist saved.
    images : mapping
        SOPInstanceUID -> :class:`ImageGeometry` of every image of the study a measurement may lie on.
    tolerance_mm : float
        Largest distance at which a saved measurement is the AI's kept (> 0).

    Raises
    ------
    VerdictError
        A saved measurement lies on an image not in ``images`` (:class:`ForeignImageError`) or outside its
        image; or ``tolerance_mm`` is not a positive number.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm > 0):
        raise VerdictError(
            f"the matching tolerance must be a positive number of millimetres, got {tolerance_mm!r}"
        )
    _check(saved, images)
    pairs: list[tuple[float, int, int]] = []
    for i, finding in enumerate(findings):
        geometry = images.get(finding.sop_instance_uid)
        if geometry is None:
            continue
        ours = geometry.millimetres(finding.points)
        for j, measurement in enumerate(saved):
            if measurement.sop_instance_uid != finding.sop_instance_uid or measurement.kind != finding.kind:
                continue
            distance = _hausdorff(ours, geometry.millimetres(measurement.points))
            if distance <= tolerance_mm:
                pairs.append((distance, i, j))
    matched: dict[int, float] = {}
    used: set[int] = set()
    for distance, i, j in sorted(pairs):
        if i not in matched and j not in used:
            matched[i] = distance
            used.add(j)
    verdicts = tuple(
        FindingVerdict(f, "accepted", matched[i]) if i in matched else FindingVerdict(f, "rejected", None)
        for i, f in enumerate(findings)
    )
    return Verdicts(verdicts, tuple(m for j, m in enumerate(saved) if j not in used))
