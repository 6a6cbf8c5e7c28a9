"""Comprehensive 3D SR, TID 1500 Measurement Report, of the lesions (or of their absence).

Per lesion the report holds three measurement groups with the SEG segment's tracking identifier and UID:

* TID 1410 (planar): a closed POLYLINE outlining the lesion on its index slice (the slice of largest area),
  so that viewers that draw planar ROIs (OHIF) show it. By default a SCOORD on that T2W image; with the
  setting ``sr_outline="scoord3d"`` a SCOORD3D in patient coordinates (PixelMed's validator of 2022 knows
  no SCOORD3D in TID 1410 and then reports errors).
* TID 1410 (planar): the lesion's long axis on the same slice, a two-point POLYLINE (viewers draw it as a
  length) with its NUM "Long axis" in mm: the in-plane maximum diameter that PI-RADS reports as lesion size.
* TID 1411 (volumetric): the Referenced Segment, volume, maximum (3D) diameter, probability of cancer, the
  PI-RADS-like category and the zone as finding site.

Without a SEG (disabled by the settings) the planar group carries the measurements. The document-level
Qualitative Evaluations (TID 1500 rows 12-14) hold the patient-level finding: whether any lesion was found
(CAD Processing and Findings Summary), the highest category, and the patient score, in codes and words.
Every NUM item carries the algorithm identification as child content (OHIF's SR loader needs children).
Groups are written in the order of TID 1500's rows (all TID 1410 groups, then all TID 1411 groups).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from lesion_engine.contour import index_slice, long_axis, outline
from lesion_engine.results.common import (
    ASSESSMENT_CATEGORY,
    CAD_SUMMARY,
    CATEGORY_CODES,
    DIAMETER,
    FINDING,
    LESION,
    MAXIMUM,
    MILLILITRE,
    MILLIMETRE,
    NO_UNITS,
    PROBABILITY_OF_CANCER,
    PROCEDURE,
    PROSTATE,
    QUALITATIVE_EVALUATIONS,
    VOLUME,
    VOXEL_SUM_METHOD,
    WITH_FINDINGS,
    WITHOUT_FINDINGS,
    ZONE_CODES,
    ModelInfo,
    T2WGrid,
    UidFactory,
    algorithm_identity,
    character_set_of,
    contributing_equipment,
    device_observer_uid,
    evidence_headers,
)
from lesion_engine.results.protocols import LesionLike
from lesion_engine.results.seg import tracking_id
from lesion_engine.results.settings import ResultSettings

logger = logging.getLogger(__name__)

__all__ = [
    "NO_LESION_TEXT",
    "PATIENT_SCORE_PREFIX",
    "PATIENT_TRACKING_ID",
    "observation_context",
    "patient_score_text",
    "write_sr",
]

PATIENT_TRACKING_ID = "Patient-level finding"
MR = Code("MR", "DCM", "Magnetic Resonance")
SOURCE = Code("260753009", "SCT", "Source")
LONG_AXIS = Code("103339001", "SCT", "Long axis")
_TEMPLATE_MEANINGS = {
    ("121233", "DCM"): "Source image for segmentation",
    ("121232", "DCM"): "Source series for segmentation",
}
NO_LESION_TEXT = "No lesion detected by the AI (research use only)"
PATIENT_SCORE_PREFIX = "Patient-level probability of clinically significant cancer: "


def observation_context(settings: ResultSettings) -> hd.sr.ObservationContext:
    """Device observer context (TID 1004) naming the product."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_observer_uid(settings),
                name=settings.device_observer_name,
                manufacturer_name=settings.manufacturer,
                model_name=settings.manufacturer_model_name,
                serial_number=settings.device_serial_number,
            ),
        )
    )


def _measurements(lesion: LesionLike, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
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
        hd.sr.Measurement(
            name=PROBABILITY_OF_CANCER,
            value=round(float(lesion.probability), 4),
            unit=NO_UNITS,
            algorithm_id=algorithm,
        ),
    ]


def _outline_region(lesion: LesionLike, grid: T2WGrid, kind: str) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
    """Closed polyline around the lesion on its index slice: on that image (SCOORD) or in patient
    coordinates (SCOORD3D)."""
    k = index_slice(np.asarray(lesion.mask, dtype=bool))
    return _region(outline(np.asarray(lesion.mask[k], dtype=bool)), k, grid, kind)


def _long_axis(
    lesion: LesionLike, grid: T2WGrid, kind: str
) -> tuple[hd.sr.ImageRegion | hd.sr.ImageRegion3D, float]:
    """The in-plane maximum diameter on the index slice, as a two-point polyline, and its length in mm."""
    k = index_slice(np.asarray(lesion.mask, dtype=bool))
    ends, length = long_axis(np.asarray(lesion.mask[k], dtype=bool), grid.spacing)
    return _region(ends, k, grid, kind), length


def _region(
    vertices: np.ndarray, k: int, grid: T2WGrid, kind: str
) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
    """A POLYLINE through (row, column) ``vertices`` of slice ``k``, as SCOORD or SCOORD3D."""
    if kind == "scoord3d":
        return hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
            graphic_data=grid.to_patient(k, vertices[:, 0], vertices[:, 1]),
            frame_of_reference_uid=grid.frame_of_reference_uid,
        )
    dataset, frame = grid.slice_sources[k]
    # SCOORD pixel coordinates: (column, row), the top left corner of the first pixel at (0, 0).
    points = np.stack([vertices[:, 1] + 0.5, vertices[:, 0] + 0.5], axis=1)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=points,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(dataset.SOPClassUID),
            referenced_sop_instance_uid=str(dataset.SOPInstanceUID),
            referenced_frame_numbers=[frame + 1] if frame is not None else None,
        ),
    )


Groups = tuple[
    list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations],
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | None,
]


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


def _lesion_groups(
    lesion: LesionLike,
    segment_number: int,
    seg: Dataset | None,
    grid: T2WGrid,
    uids: UidFactory,
    algorithm: hd.sr.AlgorithmIdentification,
    outline_kind: str,
) -> Groups:
    """The planar groups (outline, long axis) and, with a SEG, the volumetric (segment) group of a lesion."""
    tracking_uid = uids.uid("lesion", int(lesion.id))
    site = hd.sr.FindingSite(ZONE_CODES[lesion.zone] if lesion.zone else PROSTATE)
    category = hd.sr.QualitativeEvaluation(ASSESSMENT_CATEGORY, CATEGORY_CODES[int(lesion.category)])
    volumetric = None
    if seg is not None:
        volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking_id(lesion)),
            referenced_segment=_referenced_segment(seg, segment_number),
            finding_type=LESION,
            finding_sites=[site],
            measurements=_measurements(lesion, algorithm),
            qualitative_evaluations=[category],
        )
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking_id(lesion)),
        referenced_region=_outline_region(lesion, grid, outline_kind),
        finding_type=LESION,
        finding_sites=[site],
        # Without a SEG the planar group carries the measurements itself.
        measurements=_measurements(lesion, algorithm) if seg is None else None,
        qualitative_evaluations=[category] if seg is None else None,
    )
    axis_region, axis_mm = _long_axis(lesion, grid, outline_kind)
    axis = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking_id(lesion)),
        referenced_region=axis_region,
        finding_type=LESION,
        finding_sites=[site],
        measurements=[
            hd.sr.Measurement(
                name=LONG_AXIS,
                value=round(axis_mm, 2),
                unit=MILLIMETRE,
                algorithm_id=algorithm,
            )
        ],
    )
    return [planar, axis], volumetric


def _image_library(grid: T2WGrid) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library of the T2W series: modality and frame of reference once, at group level
    (TID 1601), then each image.

    The geometry descriptors (NUM items) of TID 1602 are left out: every NUM of the report is to carry
    child content, and viewers take the geometry from the images themselves.
    """
    acquisition = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = hd.sr.ContentSequence(is_root=False)
    items.append(hd.sr.CodeContentItem(name=codes.DCM.Modality, value=MR, relationship_type=acquisition))
    if grid.frame_of_reference_uid:
        items.append(
            hd.sr.UIDRefContentItem(
                name=codes.DCM.FrameOfReferenceUID,
                value=grid.frame_of_reference_uid,
                relationship_type=acquisition,
            )
        )
    for dataset in grid.datasets:
        items.append(
            hd.sr.ImageContentItem(
                name=SOURCE,
                referenced_sop_class_uid=str(dataset.SOPClassUID),
                referenced_sop_instance_uid=str(dataset.SOPInstanceUID),
                relationship_type=contains,
            )
        )
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=contains)
    group.ContentSequence = items
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=contains)
    library.ContentSequence = hd.sr.ContentSequence([group], is_root=False)
    return library


def _patient_group(
    score: float, uids: UidFactory, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group with the patient score as a NUM (only in reports without a segment reference)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("patient-finding"), identifier=PATIENT_TRACKING_ID
        ),
        finding_sites=[hd.sr.FindingSite(PROSTATE)],
        measurements=[
            hd.sr.Measurement(
                name=PROBABILITY_OF_CANCER,
                value=round(float(score), 4),
                unit=NO_UNITS,
                algorithm_id=algorithm,
            )
        ],
    )


def _fix_meanings(item: Dataset) -> None:
    """Use the code meanings of the templates where highdicom's differ in case only."""
    for child in item.get("ContentSequence", []):
        for code in child.get("ConceptNameCodeSequence", []):
            meaning = _TEMPLATE_MEANINGS.get((str(code.CodeValue), str(code.CodingSchemeDesignator)))
            if meaning is not None:
                code.CodeMeaning = meaning
        _fix_meanings(child)


def patient_score_text(score: float) -> str:
    """The patient-level finding in words (document-level qualitative evaluation)."""
    return f"{PATIENT_SCORE_PREFIX}{float(score):.4f}"


def _document_evaluations(lesions: Sequence[LesionLike], score: float) -> hd.sr.ContainerContentItem:
    """TID 1500 document-level Qualitative Evaluations: the patient-level finding, in codes and words.

    The patient score is written here (as text) rather than as a NUM in a TID 1501 group: PixelMed's
    validator applies the TID 1411 checks to every measurement group once one group references a segment,
    and so rejects a patient-level group beside the lesion groups.
    """
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    items = hd.sr.ContentSequence(is_root=False)
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items.append(
        hd.sr.CodeContentItem(
            name=CAD_SUMMARY, value=WITH_FINDINGS if lesions else WITHOUT_FINDINGS, relationship_type=contains
        )
    )
    if lesions:
        highest = max(int(lesion.category) for lesion in lesions)
        items.append(
            hd.sr.CodeContentItem(
                name=ASSESSMENT_CATEGORY, value=CATEGORY_CODES[highest], relationship_type=contains
            )
        )
        text = f"{len(lesions)} lesion(s) detected by the AI (research use only)"
    else:
        text = NO_LESION_TEXT
    items.append(hd.sr.TextContentItem(name=FINDING, value=text, relationship_type=contains))
    items.append(
        hd.sr.TextContentItem(
            name=PROBABILITY_OF_CANCER, value=patient_score_text(score), relationship_type=contains
        )
    )
    container.ContentSequence = items
    return container


def write_sr(
    lesions: Sequence[LesionLike],
    patient_score: float,
    seg: Dataset | None,
    grid: T2WGrid,
    model: ModelInfo,
    settings: ResultSettings,
    uids: UidFactory,
    when: datetime.datetime,
) -> Dataset:
    """Build the TID 1500 Measurement Report.

    Parameters
    ----------
    lesions : sequence of LesionLike
        The lesions, in SEG segment order (segment n = ``lesions[n - 1]``); empty for a negative study.
    patient_score : float
        Patient-level probability of cancer.
    seg : Dataset or None
        The SEG of the lesions (referenced by each volumetric group); None when no SEG was written.
    grid : T2WGrid
        The T2W source instances (image library, geometry of the outlines).
    model : ModelInfo
        The model that produced the result.
    settings : ResultSettings
        Names and numbers of the product.
    uids : UidFactory
        Derives the SR's UIDs and the tracking UIDs (equal to the SEG's).
    when : datetime.datetime
        Time of the analysis.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.Comprehensive3DSR``.
    """
    name, version = algorithm_identity(settings, model)
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=version)
    planar: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    volumetric: list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = []
    for number, lesion in enumerate(lesions, start=1):
        planar_groups, segment_group = _lesion_groups(
            lesion, number, seg, grid, uids, algorithm, settings.sr_outline
        )
        planar.extend(planar_groups)
        if segment_group is not None:
            volumetric.append(segment_group)
    # In the order of TID 1500's rows (1410, 1411, 1501): validators match groups to rows in order.
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [*planar, *volumetric]
    if seg is None:
        # No group references a segment: the patient score can also be a NUM in a TID 1501 group.
        groups.append(_patient_group(patient_score, uids, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(settings),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    # The Image Library goes before the Imaging Measurements (TID 1500 row order).
    content = report[0].ContentSequence
    index = next(i for i, item in enumerate(content) if item.ValueType == "CONTAINER")
    content.insert(index, _image_library(grid))
    report[0].ContentSequence.append(_document_evaluations(lesions, patient_score))
    _fix_meanings(report[0])
    evidence = evidence_headers(grid.datasets)
    if seg is not None:
        evidence.append(seg)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=uids.uid("sr", "series"),
        series_number=settings.sr_series_number,
        sop_instance_uid=uids.uid("sr", "instance"),
        instance_number=1,
        manufacturer=settings.manufacturer,
        is_complete=True,
        is_final=False,
        institution_name=settings.institution_name,
        contributing_equipment=contributing_equipment(settings, model, when),
        series_description=settings.sr_series_description,
        manufacturer_model_name=settings.manufacturer_model_name,
        software_versions=settings.software_versions,
        device_serial_number=settings.device_serial_number,
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        specific_character_set=character_set_of(grid.datasets[0]),
    )
    logger.info(
        "SR %s: %d lesion(s), T2W series %s",
        sr.SOPInstanceUID,
        len(lesions),
        grid.series_instance_uid,
    )
    return sr
