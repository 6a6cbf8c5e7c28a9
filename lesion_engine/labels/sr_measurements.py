"""The planar measurements of a TID 1500 Structured Report, as a viewer shows them: one per measurement group.

Both the node's own SR (:mod:`lesion_engine.results.structured.sr`) and the SR a viewer writes when a radiologist saves
the measurements (OHIF's "Create SR") are read the same way. A measurement group (TID 1501, ``(125007, DCM,
"Measurement Group")``) under Imaging Measurements (``(126010, DCM)``) gives one
:class:`PlanarMeasurement`:

* ``tool``: its Tracking Identifier text (OHIF's ``Cornerstone3DTools@^0.1.0:Length`` and the like);
* ``label``: its Comment (``(121106, DCM)``), OHIF's label of the measurement;
* the geometry: the 2D SCOORD (pixel column/row of one image, with its ``SELECTED FROM`` IMAGE reference) of
  the first NUM that has one (``INFERRED FROM``), else the group's own SCOORD (Image Region). OHIF keeps the
  points of a measurement it loaded (within 2e-5 pixel) but writes a new Tracking UID at every save, and may
  rename a NUM's concept (Long axis -> Length) and add NaN statistics, so neither UIDs nor values are read
  for matching;
* ``algorithm``: the Algorithm Name and Version (TID 4019) of its NUMs, when present (the node writes them).

Groups without a 2D SCOORD on one image (volumetric groups, the node's prostate volume) are skipped. Input is
bounded: more than :data:`MAX_MEASUREMENTS` groups, a SCOORD with more than :data:`MAX_POINTS` points, points
that are not finite numbers in pairs, or a SCOORD without its image raise :class:`SRMeasurementError`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lesion_engine.errors import LesionAIError

logger = logging.getLogger(__name__)

__all__ = ["MAX_MEASUREMENTS", "MAX_POINTS", "PlanarMeasurement", "SRMeasurementError", "planar_measurements"]

#: Most measurement groups read from one SR (a radiologist's report has a handful).
MAX_MEASUREMENTS = 500
#: Most points of one SCOORD (the node's outlines have tens).
MAX_POINTS = 5000
#: Deepest content tree walked (TID 1500 needs 5 levels).
_MAX_DEPTH = 8

_IMAGING_MEASUREMENTS = "126010"
_MEASUREMENT_GROUP = "125007"
_TRACKING_IDENTIFIER = "112039"
_COMMENT = "121106"
_ALGORITHM_NAME = "111001"
_ALGORITHM_VERSION = "111003"


class SRMeasurementError(LesionAIError):
    """An SR's measurements cannot be read: too many, malformed geometry, or geometry without its image.

    The message says which group and what is wrong.
    """


@dataclass(frozen=True)
class PlanarMeasurement:
    """One measurement group of an SR with its geometry on one image.

    Attributes
    ----------
    tool : str
        Tracking Identifier ('' when the group has none).
    label : str
        Comment ('' when none).
    sop_instance_uid : str
        ReferencedSOPInstanceUID of the image the geometry lies on.
    graphic_type : str
        GraphicType of the SCOORD (``POLYLINE``, ``POINT``, ``CIRCLE``, ``ELLIPSE``, ``MULTIPOINT``, ...).
    points : tuple of (float, float)
        The SCOORD's points, (column, row) in pixels of that image.
    algorithm : str
        ``"name version"`` of the algorithm its NUMs name ('' when none: a person's measurement).
    """

    tool: str
    label: str
    sop_instance_uid: str
    graphic_type: str
    points: tuple[tuple[float, float], ...]
    algorithm: str = ""

    @property
    def kind(self) -> str:
        """The tool without its library prefix (``Length``, ``PlanarFreehandROI``), or the graphic type."""
        return self.tool.rsplit(":", 1)[-1] if self.tool else self.graphic_type

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "tool": self.tool,
            "label": self.label,
            "sop_instance_uid": self.sop_instance_uid,
            "graphic_type": self.graphic_type,
            "points": [[round(c, 3), round(r, 3)] for c, r in self.points],
            "algorithm": self.algorithm,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanarMeasurement:
        """Read :meth:`to_json`'s form."""
        return cls(
            tool=str(data.get("tool", "")),
            label=str(data.get("label", "")),
            sop_instance_uid=str(data["sop_instance_uid"]),
            graphic_type=str(data.get("graphic_type", "")),
            points=tuple((float(c), float(r)) for c, r in data.get("points", [])),
            algorithm=str(data.get("algorithm", "")),
        )


def _code(item: Any, sequence: str = "ConceptNameCodeSequence") -> str:
    codes = item.get(sequence)
    return str(codes[0].get("CodeValue", "")) if codes else ""


def _children(item: Any) -> Sequence[Any]:
    return item.get("ContentSequence") or ()


def _groups(items: Sequence[Any], depth: int = 0) -> Iterator[Any]:
    """Measurement groups under Imaging Measurements containers, wherever these lie in the tree."""
    if depth > _MAX_DEPTH:
        return
    for item in items:
        if item.get("ValueType") != "CONTAINER":
            continue
        if _code(item) == _IMAGING_MEASUREMENTS:
            yield from (
                c
                for c in _children(item)
                if c.get("ValueType") == "CONTAINER" and _code(c) == _MEASUREMENT_GROUP
            )
        else:
            yield from _groups(_children(item), depth + 1)


def _text(group: Any, concept: str) -> str:
    for item in _children(group):
        if item.get("ValueType") == "TEXT" and _code(item) == concept:
            return str(item.get("TextValue", "") or "")
    return ""


def _scoord(group: Any) -> Any | None:
    """The first NUM's inferred-from SCOORD, else the group's own."""
    for item in _children(group):
        if item.get("ValueType") == "NUM":
            for child in _children(item):
                if child.get("ValueType") == "SCOORD":
                    return child
    for item in _children(group):
        if item.get("ValueType") == "SCOORD":
            return item
    return None


def _algorithm(group: Any) -> str:
    for item in _children(group):
        if item.get("ValueType") != "NUM":
            continue
        name = _text(item, _ALGORITHM_NAME)
        if name:
            return f"{name} {_text(item, _ALGORITHM_VERSION)}".strip()
    return ""


def _measurement(group: Any, number: int) -> PlanarMeasurement | None:
    scoord = _scoord(group)
    if scoord is None:
        return None
    images = [c for c in _children(scoord) if c.get("ValueType") == "IMAGE"]
    references = images[0].get("ReferencedSOPSequence") if images else None
    uid = str(references[0].get("ReferencedSOPInstanceUID", "") or "") if references else ""
    if not uid:
        raise SRMeasurementError(
            f"measurement group {number}: its SCOORD names no image (SELECTED FROM IMAGE)"
        )
    data = scoord.get("GraphicData")
    values = [] if data is None else list(data) if isinstance(data, Sequence) else [data]
    if len(values) > 2 * MAX_POINTS:
        raise SRMeasurementError(
            f"measurement group {number}: {len(values) // 2} points, more than the {MAX_POINTS} accepted"
        )
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise SRMeasurementError(f"measurement group {number}: its GraphicData are not numbers") from None
    if not numbers or len(numbers) % 2 or not all(math.isfinite(v) for v in numbers):
        raise SRMeasurementError(
            f"measurement group {number}: its GraphicData are not pairs of finite numbers ({len(numbers)} values)"
        )
    return PlanarMeasurement(
        tool=_text(group, _TRACKING_IDENTIFIER),
        label=_text(group, _COMMENT),
        sop_instance_uid=uid,
        graphic_type=str(scoord.get("GraphicType", "") or ""),
        points=tuple(zip(numbers[0::2], numbers[1::2], strict=True)),
        algorithm=_algorithm(group),
    )


def planar_measurements(sr: Any) -> list[PlanarMeasurement]:
    """The planar measurements of a TID 1500 SR (see the module docstring).

    Parameters
    ----------
    sr : pydicom.Dataset
        The SR document.

    Raises
    ------
    SRMeasurementError
        More than :data:`MAX_MEASUREMENTS` groups, or a group whose geometry is malformed.
    """
    out: list[PlanarMeasurement] = []
    for number, group in enumerate(_groups(_children(sr)), start=1):
        if number > MAX_MEASUREMENTS:
            raise SRMeasurementError(f"the SR holds more than {MAX_MEASUREMENTS} measurement groups")
        found = _measurement(group, number)
        if found is not None:
            out.append(found)
    return out
