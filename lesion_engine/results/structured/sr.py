"""Comprehensive 3D SR, TID 1500 Measurement Report, of the lesions (or of their absence).

Per lesion the report holds three measurement groups (built in :mod:`lesion_engine.results.structured.sr_lesion`):

* TID 1410 (planar), the outline: the "Area" (mm²) enclosed by the lesion's closed outline on its index
  slice (the T2W slice of largest area), with that outline as a POLYLINE.
* TID 1410 (planar), the long axis on the same slice: a two-point POLYLINE and its NUM "Long axis" (mm), the
  in-plane maximum diameter that PI-RADS reports as lesion size.
* TID 1411 (volumetric), only with a SEG: the Referenced Segment, volume, maximum (3D) diameter, probability
  of cancer (%), the PI-RADS-like category and the zone as finding site, under the SEG segment's Tracking
  Identifier ("Lesion n") and Tracking UID.

By default the coordinates are SCOORDs on the T2W image; the setting ``sr_outline="scoord3d"`` writes
SCOORD3Ds in patient coordinates instead (PixelMed's validator of 2022 knows no SCOORD3D in TID 1410 and
then reports errors, and OHIF loads them less well: see below). Without a SEG (disabled by the settings) the
outline group carries the volume, diameter, probability and category. The document-level Qualitative
Evaluations (TID 1500 rows 12-14) hold the patient-level finding: whether any lesion was found (CAD
Processing and Findings Summary), the highest category, and the patient score, in codes and words; a report
without lesions has the score as a NUM in a TID 1501 group as well. With the anatomical gate, the prostate
volume is reported as radiologists report it: a TID 1411 group "Prostate gland" with its volume in mL, the
gland's outlines and the gland model as the method (:mod:`lesion_engine.results.structured.sr_gland`), and a line in
the Qualitative Evaluations. Every NUM carries the algorithm identification as child content. Groups are
written in the order of TID 1500's rows (all TID 1410 groups, then all TID 1411 groups, the prostate's
last, then TID 1501).

Choices made for OHIF 3.x (its SR loader and the Cornerstone3D adapters that turn groups into tracked,
editable measurements), each within the standard:

* Tracking Identifier of the planar groups: exactly ``Cornerstone3DTools@^0.1.0:PlanarFreehandROI`` (outline)
  and ``Cornerstone3DTools@^0.1.0:Length`` (long axis). OHIF picks a group's tool by this text alone; the
  standard lets it be any text. The lesion's identity is kept elsewhere: in a Comment (DCM 121106) TEXT of
  every group ("Lesion 1 outline, PZ, PI-RADS-like 4, 5 %", "Lesion 1 long axis", "Lesion 1, PZ, ...";
  OHIF shows it as the measurement's label), and in the volumetric group, which keeps the SEG
  segment's Tracking Identifier and UID. TID 1410 and 1411 are extensible, so the Comment is allowed.
* Own Tracking Unique Identifier per group (derived from the UID factory): OHIF merges the groups that share
  one into a single annotation, which showed the three groups' values in one text box. The standard's link
  between a lesion's planar and volumetric groups (a shared UID) is therefore replaced by the labels.
* The first NUM of each group is INFERRED FROM the group's coordinates (TID 300 includes TID 320, "Source of
  Measurement"; SCOORD SELECTED FROM the T2W image): OHIF's importer reads the geometry only from the first
  NUM's child SCOORD and drops a group whose first NUM has none. TID 1410's Image Region stays as well (the
  template requires it), so the geometry is written twice. The outline's first NUM is therefore its area
  and the long axis group's its length (OHIF restores them as the tools' values).
* The volumetric group's Volume is INFERRED FROM the outline too: OHIF's SR loader stops with an error on a
  group without any coordinates, and TID 1411 has no image region beside a Referenced Segment. OHIF shows
  it read-only (it maps to no tool). For the same reason a report with lesions has no TID 1501 group (a
  negative report keeps one: there is nothing for OHIF to track).
* POLYLINE, closed by repeating the first point, never POLYGON: OHIF draws only POLYLINE and treats a
  polyline that ends where it starts as a closed contour.
* SCOORD (2D) by default: OHIF places a SCOORD3D by frame of reference, possibly on another series of that
  frame of reference, and shows its values only once rendered.
* Probability in percent (UCUM ``%``, 0..100), the unit the standard's own templates give "Probability of
  cancer" (TID 4005); OHIF prints a NUM as its value and unit code, so a fraction with unit ``1`` read
  "0.05 1".
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import TypeAlias

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from lesion_engine.results.common import (
    ASSESSMENT_CATEGORY,
    CAD_SUMMARY,
    CATEGORY_CODES,
    FINDING,
    PROBABILITY_OF_CANCER,
    PROCEDURE,
    PROSTATE,
    QUALITATIVE_EVALUATIONS,
    WITH_FINDINGS,
    WITHOUT_FINDINGS,
    ModelInfo,
    T2WGrid,
    UidFactory,
    algorithm_identity,
    contributing_equipment,
    device_and_dates,
    device_observer_uid,
    evidence_headers,
)
from lesion_engine.results.protocols import LesionLike
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr_gland import ProstateVolume, prostate_group, prostate_line
from lesion_engine.results.structured.sr_lesion import lesion_groups, probability_measurement

logger = logging.getLogger(__name__)

__all__ = [
    "NO_LESION_TEXT",
    "PATIENT_SCORE_PREFIX",
    "PATIENT_TRACKING_ID",
    "device_observer",
    "observation_context",
    "patient_score_text",
    "write_sr",
]

PATIENT_TRACKING_ID = "Patient-level finding"
MR = Code("MR", "DCM", "Magnetic Resonance")
SOURCE = Code("260753009", "SCT", "Source")
_TEMPLATE_MEANINGS = {
    ("121233", "DCM"): "Source image for segmentation",
    ("121232", "DCM"): "Source series for segmentation",
}
NO_LESION_TEXT = "No lesion detected by the AI (research use only)"
PATIENT_SCORE_PREFIX = "Patient-level probability of clinically significant cancer: "


def device_observer(settings: ResultSettings) -> hd.sr.ObserverContext:
    """The device observer (TID 1004) naming the product: the SR's and the Key Object Selection's."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(settings),
            name=settings.device_observer_name,
            manufacturer_name=settings.manufacturer,
            model_name=settings.manufacturer_model_name,
            serial_number=settings.device_serial_number,
        ),
    )


def observation_context(settings: ResultSettings) -> hd.sr.ObservationContext:
    """Device observer context (TID 1004) naming the product."""
    return hd.sr.ObservationContext(observer_device_context=device_observer(settings))


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
    """TID 1501 group with the patient score as a NUM in percent (only in reports without lesions)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("patient-finding"), identifier=PATIENT_TRACKING_ID
        ),
        finding_sites=[hd.sr.FindingSite(PROSTATE)],
        measurements=[probability_measurement(score, algorithm)],
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
    """The patient-level finding in words (document-level qualitative evaluation), in percent."""
    return f"{PATIENT_SCORE_PREFIX}{100.0 * float(score):.1f} %"


def _document_evaluations(
    lesions: Sequence[LesionLike],
    score: float,
    prostate: ProstateVolume | None = None,
    warnings: Sequence[str] = (),
) -> hd.sr.ContainerContentItem:
    """TID 1500 document-level Qualitative Evaluations: the patient-level finding, in codes and words, the
    prostate volume in words when there is one, and each warning a radiologist must see (``Warning: ...``).

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
    categories = [int(lesion.category) for lesion in lesions if lesion.category is not None]
    if categories:
        items.append(
            hd.sr.CodeContentItem(
                name=ASSESSMENT_CATEGORY, value=CATEGORY_CODES[max(categories)], relationship_type=contains
            )
        )
    text = f"{len(lesions)} lesion(s) detected by the AI (research use only)" if lesions else NO_LESION_TEXT
    items.append(hd.sr.TextContentItem(name=FINDING, value=text, relationship_type=contains))
    items.append(
        hd.sr.TextContentItem(
            name=PROBABILITY_OF_CANCER, value=patient_score_text(score), relationship_type=contains
        )
    )
    if prostate is not None:
        items.append(
            hd.sr.TextContentItem(name=FINDING, value=prostate_line(prostate), relationship_type=contains)
        )
    for warning in warnings:
        items.append(
            hd.sr.TextContentItem(name=FINDING, value=f"Warning: {warning}", relationship_type=contains)
        )
    container.ContentSequence = items
    return container


_MeasurementGroup: TypeAlias = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def _measurement_groups(
    lesions: Sequence[LesionLike],
    patient_score: float,
    seg: Dataset | None,
    grid: T2WGrid,
    uids: UidFactory,
    algorithm: hd.sr.AlgorithmIdentification,
    settings: ResultSettings,
    prostate: ProstateVolume | None,
) -> list[_MeasurementGroup]:
    """The report's measurement groups, in the order of TID 1500's rows.

    Parameters
    ----------
    lesions : sequence of LesionLike
        The lesions, in SEG segment order; empty for a negative study.
    patient_score : float
        Patient-level probability of cancer (a TID 1501 group only when there is no lesion).
    seg : Dataset or None
        The SEG referenced by the volumetric groups; None when no SEG was written.
    grid : T2WGrid
        The T2W source instances (geometry of the outlines).
    uids : UidFactory
        Derives the tracking UIDs.
    algorithm : highdicom.sr.AlgorithmIdentification
        The algorithm identification carried by every NUM.
    settings : ResultSettings
        Chooses the kind of outline coordinates.
    prostate : ProstateVolume or None
        The prostate gland found by the anatomical gate, if any.

    Returns
    -------
    list
        All TID 1410 groups, then all TID 1411 groups (the prostate's last), then TID 1501.
    """
    planar: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    volumetric: list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = []
    for number, lesion in enumerate(lesions, start=1):
        lesion_set = lesion_groups(lesion, number, seg, grid, uids, algorithm, settings.sr_outline)
        planar.extend([lesion_set.outline, lesion_set.long_axis])
        if lesion_set.volumetric is not None:
            volumetric.append(lesion_set.volumetric)
    # In the order of TID 1500's rows (1410, 1411, 1501): validators match groups to rows in order.
    groups: list[_MeasurementGroup] = [*planar, *volumetric]
    if prostate is not None:
        groups.append(prostate_group(prostate, grid, uids, settings.sr_outline))
    if not lesions:
        # A negative study: the patient score is the one measurement (TID 1501; no spatial coordinates).
        groups.append(_patient_group(patient_score, uids, algorithm))
    return groups


def _report_content(
    groups: Sequence[_MeasurementGroup],
    lesions: Sequence[LesionLike],
    patient_score: float,
    grid: T2WGrid,
    settings: ResultSettings,
    prostate: ProstateVolume | None,
    warnings: Sequence[str],
) -> Dataset:
    """The root content item of the TID 1500 Measurement Report.

    Parameters
    ----------
    groups : sequence of measurement groups
        The Imaging Measurements, in TID 1500 row order.
    lesions : sequence of LesionLike
        The lesions (for the document-level evaluations).
    patient_score : float
        Patient-level probability of cancer.
    grid : T2WGrid
        The T2W source instances (Image Library).
    settings : ResultSettings
        Names of the product (device observer).
    prostate : ProstateVolume or None
        The prostate gland, written as a line of the evaluations when present.
    warnings : sequence of str
        Warnings written as document-level findings.

    Returns
    -------
    pydicom.Dataset
        The root CONTAINER: observation context, procedure, Image Library, Imaging Measurements and
        Qualitative Evaluations, with the templates' code meanings.
    """
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
    report[0].ContentSequence.append(_document_evaluations(lesions, patient_score, prostate, warnings))
    _fix_meanings(report[0])
    root: Dataset = report[0]
    return root


def _comprehensive_sr(
    content: Dataset,
    seg: Dataset | None,
    grid: T2WGrid,
    model: ModelInfo,
    settings: ResultSettings,
    uids: UidFactory,
    when: datetime.datetime,
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR instance holding the report content.

    Parameters
    ----------
    content : pydicom.Dataset
        The report's root content item.
    seg : Dataset or None
        The SEG, added to the evidence when written.
    grid : T2WGrid
        The T2W source instances (evidence, patient and study attributes).
    model : ModelInfo
        The model that produced the result (contributing equipment).
    settings : ResultSettings
        Names and numbers of the product.
    uids : UidFactory
        Derives the series and instance UIDs.
    when : datetime.datetime
        Time of the analysis.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The complete, unverified SR.
    """
    evidence = evidence_headers(grid.datasets)
    if seg is not None:
        evidence.append(seg)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content,
        series_instance_uid=uids.uid("sr", "series"),
        series_number=settings.sr_series_number,
        sop_instance_uid=uids.uid("sr", "instance"),
        instance_number=1,
        **device_and_dates(settings, when, grid.datasets[0]),
        is_complete=True,
        is_final=False,
        contributing_equipment=contributing_equipment(settings, model, when),
        series_description=settings.sr_series_description,
    )


def write_sr(
    lesions: Sequence[LesionLike],
    patient_score: float,
    seg: Dataset | None,
    grid: T2WGrid,
    model: ModelInfo,
    settings: ResultSettings,
    uids: UidFactory,
    when: datetime.datetime,
    prostate: ProstateVolume | None = None,
    warnings: Sequence[str] = (),
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
    prostate : ProstateVolume, optional
        The prostate gland found by the anatomical gate: its volume group and line are written; none
        without it.
    warnings : sequence of str
        What a radiologist must know about this result (the anatomical gate's failures), written as
        findings ``Warning: ...`` at the document level.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.Comprehensive3DSR``.
    """
    name, version = algorithm_identity(settings, model)
    algorithm = hd.sr.AlgorithmIdentification(name=name, version=version)
    groups = _measurement_groups(lesions, patient_score, seg, grid, uids, algorithm, settings, prostate)
    content = _report_content(groups, lesions, patient_score, grid, settings, prostate, warnings)
    sr = _comprehensive_sr(content, seg, grid, model, settings, uids, when)
    logger.info(
        "SR %s: %d lesion(s), prostate volume %s, T2W series %s",
        sr.SOPInstanceUID,
        len(lesions),
        "none" if prostate is None else f"{prostate.volume_ml:.1f} ml",
        grid.series_instance_uid,
    )
    return sr
