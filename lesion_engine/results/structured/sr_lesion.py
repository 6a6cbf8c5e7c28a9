"""The measurement groups of one lesion in the TID 1500 report, and the words a radiologist reads.

Per lesion:

* the outline: a TID 1410 group whose first NUM, the "Area" (mm²) enclosed by the lesion's outline on its
  index slice, is INFERRED FROM a closed POLYLINE SCOORD of that outline (TID 300/320 "Source of
  Measurement", SELECTED FROM the T2W image); Tracking Identifier ``Cornerstone3DTools@^0.1.0:PlanarFreehandROI``;
* the long axis: a TID 1410 group whose first NUM, the "Long axis" (mm), is INFERRED FROM the two-point
  POLYLINE of that chord; Tracking Identifier ``Cornerstone3DTools@^0.1.0:Length``;
* with a SEG, the segment: a TID 1411 group with the SEG segment's Tracking Identifier and UID, the
  Referenced Segment, volume, maximum 3D diameter, probability of cancer (%), the PI-RADS-like category and
  the zone as finding site; its first NUM (Volume) is INFERRED FROM the outline as well.

Each group has its own Tracking Unique Identifier and a Comment (DCM 121106) TEXT naming the lesion, e.g.
"Lesion 1 outline, PZ, PI-RADS-like 4, 5 %". See :mod:`lesion_engine.results.structured.sr` for why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from lesion_engine.model.contour import enclosed_area, index_slice, long_axis, outline
from lesion_engine.results.common import (
    ASSESSMENT_CATEGORY,
    CATEGORY_CODES,
    DIAMETER,
    LESION,
    MAXIMUM,
    MILLILITRE,
    MILLIMETRE,
    OUTSIDE_PROSTATE,
    PERCENT,
    PROBABILITY_OF_CANCER,
    PROSTATE,
    SQUARE_MILLIMETRE,
    VOLUME,
    VOXEL_SUM_METHOD,
    ZONE_CODES,
    T2WGrid,
    UidFactory,
)
from lesion_engine.results.protocols import LesionLike
from lesion_engine.results.seg import tracking_id

logger = logging.getLogger(__name__)

__all__ = [
    "AREA",
    "COMMENT",
    "LONG_AXIS",
    "LONG_AXIS_TRACKING_ID",
    "OUTLINE_TRACKING_ID",
    "SOURCE_OF_MEASUREMENT",
    "LesionGroups",
    "LesionLabels",
    "image_region",
    "inferred_from",
    "lesion_groups",
    "lesion_labels",
    "percent",
    "percent_text",
    "probability_measurement",
    "source_coordinates",
    "with_comment",
]

#: Tracking Identifiers by which OHIF (Cornerstone3D adapters) maps a group to its tools.
OUTLINE_TRACKING_ID = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
LONG_AXIS_TRACKING_ID = "Cornerstone3DTools@^0.1.0:Length"
AREA = Code("42798000", "SCT", "Area")
LONG_AXIS = Code("103339001", "SCT", "Long axis")
COMMENT = Code("121106", "DCM", "Comment")
#: Concept name of the coordinates a measurement is inferred from (TID 300 includes TID 320 with this purpose).
SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")
ZONE_NAMES = {"pz": "PZ", "tz": "TZ", OUTSIDE_PROSTATE: "outside the prostate"}
UNKNOWN_ZONE = "zone unknown"
_SEPARATOR = ", "

PlanarGroup = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
VolumetricGroup = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
Coordinates = hd.sr.CoordinatesForMeasurement | hd.sr.CoordinatesForMeasurement3D


@dataclass(frozen=True)
class LesionLabels:
    """The Comment texts of a lesion's groups (OHIF shows them as the measurements' labels)."""

    outline: str
    long_axis: str
    lesion: str


@dataclass(frozen=True)
class LesionGroups:
    """The measurement groups of one lesion, in the order of TID 1500's rows."""

    outline: PlanarGroup
    long_axis: PlanarGroup
    volumetric: VolumetricGroup | None


@dataclass(frozen=True)
class _IndexSlice:
    """The lesion on its index slice: outline, long axis and enclosed area."""

    k: int
    outline: NDArray[np.float64]
    axis_ends: NDArray[np.float64]
    axis_mm: float
    area_mm2: float


def percent(probability: float) -> float:
    """A probability 0..1 as the percentage written into NUM items (two decimals)."""
    return round(100.0 * float(probability), 2)


def percent_text(probability: float) -> str:
    """A probability 0..1 as a whole percentage for labels: ``"5 %"``, ``"<1 %"``, ``">99 %"``."""
    value = 100.0 * float(probability)
    if not 0.0 <= value <= 100.0 or math.isnan(value):
        raise ValueError(f"probability {probability} is not in 0..1")
    if 0.0 < value < 1.0:
        return "<1 %"
    if 99.0 < value < 100.0:
        return ">99 %"
    return f"{math.floor(value + 0.5):d} %"


def lesion_labels(lesion: LesionLike) -> LesionLabels:
    """The Comment texts of a lesion's groups: number, zone, PI-RADS-like category and probability.

    ASCII only, whatever the SR's character set: dcmqi (3D Slicer's TID 1500 reader) garbles a non-ASCII
    separator in an ISO_IR 100 report.

    Parameters
    ----------
    lesion : LesionLike
        Its id, zone (``"pz"``, ``"tz"`` or None: "zone unknown"), category and probability are named.

    Returns
    -------
    LesionLabels
        E.g. ``"Lesion 1 outline, PZ, PI-RADS-like 4, 5 %"``, ``"Lesion 1 long axis"`` and
        ``"Lesion 1, PZ, PI-RADS-like 4, 5 %"``.
    """
    zone = ZONE_NAMES[lesion.zone] if lesion.zone else UNKNOWN_ZONE
    category = [] if lesion.category is None else [f"PI-RADS-like {int(lesion.category)}"]
    summary = _SEPARATOR.join([zone, *category, percent_text(lesion.probability)])
    name = f"Lesion {int(lesion.id)}"
    return LesionLabels(
        outline=f"{name} outline{_SEPARATOR}{summary}",
        long_axis=f"{name} long axis",
        lesion=f"{name}{_SEPARATOR}{summary}",
    )


def probability_measurement(
    probability: float, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.Measurement:
    """NUM "Probability of cancer" in percent (UCUM ``%``, 0..100), the unit of the standard's templates."""
    return hd.sr.Measurement(
        name=PROBABILITY_OF_CANCER, value=percent(probability), unit=PERCENT, algorithm_id=algorithm
    )


def _lesion_measurements(
    lesion: LesionLike, algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    return [
        hd.sr.Measurement(
            name=VOLUME,
            value=round(float(lesion.volume_ml), 4),
            unit=MILLILITRE,
            method=VOXEL_SUM_METHOD,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=DIAMETER,
            value=round(float(lesion.max_diameter_mm), 2),
            unit=MILLIMETRE,
            derivation=MAXIMUM,
            algorithm_id=algorithm,
        ),
        probability_measurement(lesion.probability, algorithm),
    ]


def _index_slice(lesion: LesionLike, grid: T2WGrid) -> _IndexSlice:
    mask = np.asarray(lesion.mask, dtype=bool)
    k = index_slice(mask)
    vertices = outline(mask[k])
    ends, length = long_axis(mask[k], grid.spacing)
    return _IndexSlice(k, vertices, ends, length, enclosed_area(vertices, grid.spacing))


def image_region(
    vertices: NDArray[np.float64], k: int, grid: T2WGrid, kind: str
) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
    """TID 1410's Image Region: a POLYLINE through (row, column) ``vertices`` of slice ``k``."""
    if kind == "scoord3d":
        return hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
            graphic_data=grid.to_patient(k, vertices[:, 0], vertices[:, 1]),
            frame_of_reference_uid=grid.frame_of_reference_uid,
        )
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_image_points(vertices),
        source_image=_source_image(k, grid),
    )


def _image_points(vertices: NDArray[np.float64]) -> NDArray[np.float64]:
    """SCOORD pixel coordinates (column, row), the top left corner of the first pixel at (0, 0)."""
    return np.stack([vertices[:, 1] + 0.5, vertices[:, 0] + 0.5], axis=1)


def _source_image(k: int, grid: T2WGrid) -> hd.sr.SourceImageForRegion:
    dataset, frame = grid.slice_sources[k]
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(dataset.SOPClassUID),
        referenced_sop_instance_uid=str(dataset.SOPInstanceUID),
        referenced_frame_numbers=[frame + 1] if frame is not None else None,
    )


def source_coordinates(vertices: NDArray[np.float64], k: int, grid: T2WGrid, kind: str) -> Coordinates:
    """TID 320 coordinates a NUM is INFERRED FROM ("Source of Measurement"): a POLYLINE SCOORD SELECTED FROM
    the slice's image, or with ``kind="scoord3d"`` a SCOORD3D in patient coordinates."""
    if kind == "scoord3d":
        return hd.sr.CoordinatesForMeasurement3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
            graphic_data=grid.to_patient(k, vertices[:, 0], vertices[:, 1]),
            frame_of_reference_uid=grid.frame_of_reference_uid,
            purpose=SOURCE_OF_MEASUREMENT,
        )
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_image_points(vertices),
        source_image=_source_image(k, grid),
        purpose=SOURCE_OF_MEASUREMENT,
    )


def inferred_from(measurement: hd.sr.Measurement, coordinates: Coordinates) -> None:
    """Append ``coordinates`` to the NUM of ``measurement`` as INFERRED FROM child content.

    Done after the group is built: highdicom's TID 1410/1411 classes refuse measurements with coordinates
    (their TID 1419 has no such row; the templates are extensible, and TID 300 has it).
    """
    num: Dataset = measurement[0]
    if "ContentSequence" not in num:
        num.ContentSequence = hd.sr.ContentSequence(is_root=False)
    num.ContentSequence.append(coordinates)


def with_comment(group: PlanarGroup | VolumetricGroup, text: str) -> None:
    """Append the Comment TEXT (OHIF's label of the annotation) to a measurement group."""
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )


def _referenced_segment(seg: Dataset, segment_number: int) -> hd.sr.ReferencedSegment:
    """The Referenced Segment item of one segment (TID 1411 rows: segment, then its source series).

    Built here rather than with highdicom's ``ReferencedSegment.from_segmentation``: that method looks for
    SegmentIdentificationSequence in every per-frame item, but for a one-segment SEG highdicom itself writes
    it into the shared functional groups; and it lists source images, which TID 1411 has no row for
    (PixelMed then validates the group as TID 1410), where TID 1411 names the source series.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    found = False
    for item in seg.PerFrameFunctionalGroupsSequence:
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if identification and int(identification[0].ReferencedSegmentNumber) == segment_number:
            found = True
            break
    if not found:
        raise ValueError(f"the SEG has no frame of segment {segment_number}")
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(
            str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        ),
    )


@dataclass(frozen=True)
class _Geometry:
    """Where a lesion's coordinates are written: its index slice of the T2W grid, as SCOORD or SCOORD3D."""

    where: _IndexSlice
    grid: T2WGrid
    kind: str

    def region(self, vertices: NDArray[np.float64]) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
        """TID 1410's Image Region through ``vertices`` of the index slice."""
        return image_region(vertices, self.where.k, self.grid, self.kind)

    def source(self, vertices: NDArray[np.float64]) -> Coordinates:
        """The coordinates a NUM is INFERRED FROM, through ``vertices`` of the index slice."""
        return source_coordinates(vertices, self.where.k, self.grid, self.kind)


def _finding_sites(lesion: LesionLike) -> list[hd.sr.FindingSite] | None:
    """The finding site of a lesion's groups: its zone, the prostate when unknown.

    A lesion centred outside the gland has no prostate finding site (its text says where it is): None.
    """
    if lesion.zone == OUTSIDE_PROSTATE:
        return None
    return [hd.sr.FindingSite(ZONE_CODES[lesion.zone] if lesion.zone else PROSTATE)]


def _category_evaluations(lesion: LesionLike) -> list[hd.sr.QualitativeEvaluation]:
    """The PI-RADS-like category of a lesion as a qualitative evaluation; empty without a category."""
    if lesion.category is None:
        return []
    return [hd.sr.QualitativeEvaluation(ASSESSMENT_CATEGORY, CATEGORY_CODES[int(lesion.category)])]


def _outline_group(
    lesion: LesionLike,
    geometry: _Geometry,
    sites: list[hd.sr.FindingSite] | None,
    categories: list[hd.sr.QualitativeEvaluation],
    carries_lesion: bool,
    uids: UidFactory,
    algorithm: hd.sr.AlgorithmIdentification,
) -> PlanarGroup:
    """The TID 1410 outline group: its area INFERRED FROM the closed outline on the index slice.

    Parameters
    ----------
    lesion : LesionLike
        The lesion.
    geometry : _Geometry
        Its index slice and how coordinates are written.
    sites : list of highdicom.sr.FindingSite or None
        The finding site.
    categories : list of highdicom.sr.QualitativeEvaluation
        The category evaluation, written only when ``carries_lesion``.
    carries_lesion : bool
        True without a SEG: the group then carries the lesion's measurements and category itself (after
        the area).
    uids : UidFactory
        Derives the group's tracking UID.
    algorithm : highdicom.sr.AlgorithmIdentification
        Written as child content of every NUM.

    Returns
    -------
    PlanarGroup
    """
    where = geometry.where
    area = hd.sr.Measurement(
        name=AREA, value=round(where.area_mm2, 2), unit=SQUARE_MILLIMETRE, algorithm_id=algorithm
    )
    group = PlanarGroup(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("lesion", int(lesion.id), "outline"), identifier=OUTLINE_TRACKING_ID
        ),
        referenced_region=geometry.region(where.outline),
        finding_type=LESION,
        finding_sites=sites,
        measurements=[area, *(_lesion_measurements(lesion, algorithm) if carries_lesion else [])],
        qualitative_evaluations=(categories or None) if carries_lesion else None,
    )
    inferred_from(area, geometry.source(where.outline))
    return group


def _long_axis_group(
    lesion: LesionLike,
    geometry: _Geometry,
    sites: list[hd.sr.FindingSite] | None,
    uids: UidFactory,
    algorithm: hd.sr.AlgorithmIdentification,
) -> PlanarGroup:
    """The TID 1410 long axis group: its length INFERRED FROM the two-point chord on the index slice.

    Parameters
    ----------
    lesion : LesionLike
        The lesion.
    geometry : _Geometry
        Its index slice and how coordinates are written.
    sites : list of highdicom.sr.FindingSite or None
        The finding site.
    uids : UidFactory
        Derives the group's tracking UID.
    algorithm : highdicom.sr.AlgorithmIdentification
        Written as child content of the NUM.

    Returns
    -------
    PlanarGroup
    """
    where = geometry.where
    axis = hd.sr.Measurement(
        name=LONG_AXIS, value=round(where.axis_mm, 2), unit=MILLIMETRE, algorithm_id=algorithm
    )
    group = PlanarGroup(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("lesion", int(lesion.id), "long-axis"), identifier=LONG_AXIS_TRACKING_ID
        ),
        referenced_region=geometry.region(where.axis_ends),
        finding_type=LESION,
        finding_sites=sites,
        measurements=[axis],
    )
    inferred_from(axis, geometry.source(where.axis_ends))
    return group


def _volumetric_group(
    lesion: LesionLike,
    segment_number: int,
    seg: Dataset,
    geometry: _Geometry,
    sites: list[hd.sr.FindingSite] | None,
    categories: list[hd.sr.QualitativeEvaluation],
    uids: UidFactory,
    algorithm: hd.sr.AlgorithmIdentification,
) -> VolumetricGroup:
    """The TID 1411 group of the lesion's SEG segment, under the segment's tracking identifier and UID.

    Parameters
    ----------
    lesion : LesionLike
        The lesion.
    segment_number : int
        Its segment in ``seg``.
    seg : Dataset
        The SEG of the lesions.
    geometry : _Geometry
        Its index slice and how coordinates are written.
    sites : list of highdicom.sr.FindingSite or None
        The finding site.
    categories : list of highdicom.sr.QualitativeEvaluation
        The category evaluation, if any.
    uids : UidFactory
        Derives the tracking UID (equal to the SEG segment's).
    algorithm : highdicom.sr.AlgorithmIdentification
        Written as child content of every NUM.

    Returns
    -------
    VolumetricGroup
    """
    measurements = _lesion_measurements(lesion, algorithm)
    group = VolumetricGroup(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("lesion", int(lesion.id)), identifier=tracking_id(lesion)
        ),
        referenced_segment=_referenced_segment(seg, segment_number),
        finding_type=LESION,
        finding_sites=sites,
        measurements=measurements,
        qualitative_evaluations=categories or None,
    )
    # Every group needs coordinates for OHIF's SR loader (see lesion_engine.results.structured.sr).
    inferred_from(measurements[0], geometry.source(geometry.where.outline))
    return group


def lesion_groups(
    lesion: LesionLike,
    segment_number: int,
    seg: Dataset | None,
    grid: T2WGrid,
    uids: UidFactory,
    algorithm: hd.sr.AlgorithmIdentification,
    outline_kind: str = "scoord",
) -> LesionGroups:
    """The measurement groups of one lesion.

    Parameters
    ----------
    lesion : LesionLike
        The lesion (mask on the T2W grid).
    segment_number : int
        Its segment in ``seg``.
    seg : Dataset or None
        The SEG of the lesions; None when no SEG was written: the outline group then carries the volume,
        diameter, probability and category itself.
    grid : T2WGrid
        The T2W source instances.
    uids : UidFactory
        Derives the groups' tracking UIDs; the volumetric group's equals the SEG segment's.
    algorithm : highdicom.sr.AlgorithmIdentification
        Written as child content of every NUM.
    outline_kind : str
        ``"scoord"`` (image coordinates on the T2W image, what OHIF loads) or ``"scoord3d"``.

    Returns
    -------
    LesionGroups
    """
    where = _index_slice(lesion, grid)
    labels = lesion_labels(lesion)
    sites = _finding_sites(lesion)
    categories = _category_evaluations(lesion)
    geometry = _Geometry(where, grid, outline_kind)

    outline_group = _outline_group(lesion, geometry, sites, categories, seg is None, uids, algorithm)
    with_comment(outline_group, labels.outline)
    axis_group = _long_axis_group(lesion, geometry, sites, uids, algorithm)
    with_comment(axis_group, labels.long_axis)

    volumetric = None
    if seg is not None:
        volumetric = _volumetric_group(
            lesion, segment_number, seg, geometry, sites, categories, uids, algorithm
        )
        with_comment(volumetric, labels.lesion)
    logger.debug("SR groups of lesion %d: index slice %d, %s", int(lesion.id), where.k, labels.outline)
    return LesionGroups(outline_group, axis_group, volumetric)
