"""Shared pieces of the result writers: codes, deterministic UIDs, the T2W grid, equipment, checks."""

from __future__ import annotations

import datetime
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lesion_engine.intake.series import Vector3, build_series
from lesion_engine.model.result_types import OUTSIDE_PROSTATE, ModelInfo
from lesion_engine.results.protocols import LesionLike, ResultLike
from lesion_engine.results.settings import ResultSettings

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORY_CODES",
    "LESION_COLORS",
    "OUTSIDE_PROSTATE",
    "ZONE_CODES",
    "ModelInfo",
    "T2WGrid",
    "UidFactory",
    "algorithm_identity",
    "character_set_of",
    "check_result",
    "contributing_equipment",
    "copy_study_extras",
    "evidence_headers",
    "set_body_part",
    "t2w_grid",
    "text_image",
]

#: Segmented property category / finding category of a lesion.
ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically abnormal structure")
#: Segmented property type / finding type of a lesion.
LESION = Code("52988006", "SCT", "Lesion")
PROSTATE = Code("41216001", "SCT", "Prostate")
#: Zones of the prostate (CID 6300 Prostate Sector Anatomy).
ZONE_CODES: dict[str, Code] = {
    "pz": Code("279706003", "SCT", "Peripheral zone of the prostate"),
    "tz": Code("399384005", "SCT", "Transition zone of the prostate"),
}
#: Procedure reported (CID 100).
PROCEDURE = Code("126020", "DCM", "Multiparametric MRI")
PROBABILITY_OF_CANCER = Code("111047", "DCM", "Probability of cancer")
ASSESSMENT_CATEGORY = Code("111005", "DCM", "Assessment Category")
#: PI-RADS-like lesion categories, coded with the PI-RADS lesion assessment values (CID 6328).
CATEGORY_CODES: dict[int, Code] = {
    1: Code("RID50296", "RADLEX", "PI-RADS 1 - Very low (lesion)"),
    2: Code("RID50297", "RADLEX", "PI-RADS 2 - Low (lesion)"),
    3: Code("RID50298", "RADLEX", "PI-RADS 3 - Intermediate (lesion)"),
    4: Code("RID50299", "RADLEX", "PI-RADS 4 - High (lesion)"),
    5: Code("RID50300", "RADLEX", "PI-RADS 5 - Very high (lesion)"),
}
CAD_SUMMARY = Code("111017", "DCM", "CAD Processing and Findings Summary")
WITH_FINDINGS = Code("111242", "DCM", "All algorithms succeeded; with findings")
WITHOUT_FINDINGS = Code("111241", "DCM", "All algorithms succeeded; without findings")
NOT_RUN = Code("111245", "DCM", "No algorithms succeeded; without findings")
FINDING = Code("121071", "DCM", "Finding")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
VOLUME = Code("118565006", "SCT", "Volume")
DIAMETER = Code("81827009", "SCT", "Diameter")
MAXIMUM = Code("56851009", "SCT", "Maximum")
VOXEL_SUM_METHOD = Code("126030", "DCM", "Sum of segmented voxel method for volume")
MILLILITRE = Code("ml", "UCUM", "milliliter")
MILLIMETRE = Code("mm", "UCUM", "millimeter")
SQUARE_MILLIMETRE = Code("mm2", "UCUM", "square millimeter")
NO_UNITS = Code("1", "UCUM", "no units")
#: The unit of "Probability of cancer" in the standard's own templates (TID 4005, Mammography CAD).
PERCENT = Code("%", "UCUM", "Percent")
AI_FAMILY = codes.cid7162.ArtificialIntelligence

#: Display colours (RGB) of lesions 1, 2, ...; the SEG stores them as CIELab, the overlays as RGB.
LESION_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 60, 60),
    (255, 210, 0),
    (0, 200, 255),
    (255, 0, 255),
    (60, 255, 60),
    (255, 140, 0),
)


def algorithm_identity(settings: ResultSettings, model: ModelInfo) -> tuple[str, str]:
    """Algorithm name and version written into SEG and SR (each at most 64 characters)."""
    name = settings.algorithm_name or model.name
    version = settings.algorithm_version or model.version
    return name[:64], version[:64]


class UidFactory:
    """Deterministic UIDs: the same inputs, model and settings always give the same UIDs.

    Parameters
    ----------
    settings : ResultSettings
        Supplies the UID root and the settings fingerprint.
    parts : sequence of str
        What identifies the analysis (input series UIDs, model digest, ...).
    """

    def __init__(self, settings: ResultSettings, parts: Sequence[str]) -> None:
        self._root = settings.uid_root
        self._parts = ["lesion-ai-results/1", settings.fingerprint(), settings.uid_context, *parts]

    def uid(self, *kind: str | int) -> str:
        """The UID of one object or item, named by ``kind`` (e.g. ``("seg", "instance")``)."""
        parts = [*self._parts, *(str(k) for k in kind)]
        if self._root is None:
            return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(parts)).int}"
        return str(generate_uid(prefix=self._root, entropy_srcs=parts))


def device_observer_uid(settings: ResultSettings) -> str:
    """The SR's Device Observer UID: from the settings, or derived from the product's names."""
    if settings.device_observer_uid is not None:
        return settings.device_observer_uid
    return UidFactory(
        ResultSettings(uid_root=settings.uid_root),
        ["device-observer", settings.manufacturer, settings.manufacturer_model_name],
    ).uid("device")


def character_set_of(dataset: Dataset) -> str | list[str] | None:
    """SpecificCharacterSet of a source dataset; None when absent (the default repertoire, as the source)."""
    value = dataset.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return [str(v) for v in value]


def device_and_dates(settings: ResultSettings, when: datetime.datetime, reference: Dataset) -> dict[str, Any]:
    """The header arguments every result writer gives highdicom alike: the device (manufacturer, model name,
    software versions, serial number, institution), the series and content date and time (``when``) and
    the character set of the ``reference`` image."""
    return {
        "manufacturer": settings.manufacturer,
        "institution_name": settings.institution_name,
        "manufacturer_model_name": settings.manufacturer_model_name,
        "software_versions": settings.software_versions,
        "device_serial_number": settings.device_serial_number,
        "content_date": when.date(),
        "content_time": when.time(),
        "series_date": when.date(),
        "series_time": when.time(),
        "specific_character_set": character_set_of(reference),
    }


def contributing_equipment(
    settings: ResultSettings, model: ModelInfo, when: datetime.datetime
) -> list[hd.ContributingEquipment]:
    """Contributing Equipment naming the AI model (IHE AI Results)."""
    return [
        hd.ContributingEquipment(
            manufacturer=settings.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=model.name[:64],
            software_versions=[model.version[:64], settings.software_versions],
            device_serial_number=settings.device_serial_number,
            contribution_datetime=when,
            contribution_description=(
                f"AI model {model.name} version {model.version}, weights sha256 {model.sha256}"
            )[:1024],
        )
    ]


_EVIDENCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_PATIENT_STUDY = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def evidence_headers(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Light copies of source instances for an SR's evidence: UIDs, and patient/study attributes on the
    first (empty where the source lacks a type 2 attribute)."""
    out = []
    for i, ds in enumerate(datasets):
        header = Dataset()
        for keyword in _EVIDENCE_UIDS + (_PATIENT_STUDY if i == 0 else ()):
            element = ds.data_element(keyword) if keyword in ds else None
            if element is not None:
                header.add(element)
            elif i == 0 and keyword not in _EVIDENCE_UIDS and keyword != "SpecificCharacterSet":
                setattr(header, keyword, None)
        out.append(header)
    return out


def copy_study_extras(target: Dataset, source: Dataset) -> None:
    """Copy every Patient and General Study module attribute of ``source`` (highdicom's SR and SC
    constructors copy only the main ones), so that the study stays consistent across its instances."""
    if isinstance(target, hd.SOPClass):
        target.copy_patient_and_study_information(source)
    # Type 2 attributes that the source has, even empty, are kept present (consistency checkers compare
    # presence too).
    for keyword in _PATIENT_STUDY[1:]:
        if keyword in source and keyword not in target:
            element = source.data_element(keyword)
            if element is not None:
                target.add(element)


def set_body_part(target: Dataset, source: Dataset) -> None:
    """BodyPartExamined of the source, or PROSTATE: it tells validators the part is unpaired."""
    value = source.get("BodyPartExamined")
    target.BodyPartExamined = str(value) if value else "PROSTATE"


@dataclass(frozen=True)
class T2WGrid:
    """The T2W series as the grid of the lesion masks.

    Attributes
    ----------
    datasets : list of Dataset
        The source instances in SEG frame order: one per slice (single-frame series, sorted along the
        normal) or the one multi-frame instance.
    frame_slices : list of int
        For each frame of ``datasets`` (in order), its slice index on the grid.
    slice_sources : list of (Dataset, int or None)
        For each grid slice, the instance and frame (0-based, None for single-frame) that holds it.
    positions : ndarray, shape (Z, 3)
        ImagePositionPatient of each slice.
    row_dir, col_dir, normal : ndarray, shape (3,)
        Direction of increasing column index, of increasing row index, and the slice normal.
    spacing : tuple of 2 float
        PixelSpacing (between rows, between columns) in mm.
    rows, columns : int
        Matrix size.
    """

    datasets: list[Dataset]
    frame_slices: list[int]
    slice_sources: list[tuple[Dataset, int | None]]
    positions: NDArray[np.float64]
    row_dir: NDArray[np.float64]
    col_dir: NDArray[np.float64]
    normal: NDArray[np.float64]
    spacing: tuple[float, float]
    rows: int
    columns: int
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return (len(self.slice_sources), self.rows, self.columns)

    def to_patient(self, k: int, rows: NDArray[np.float64], cols: NDArray[np.float64]) -> NDArray[np.float64]:
        """Patient coordinates (LPS mm, shape (N, 3)) of continuous pixel indices on slice ``k``."""
        out = (
            self.positions[k][np.newaxis, :]
            + np.asarray(cols, dtype=np.float64)[:, np.newaxis] * self.spacing[1] * self.row_dir
            + np.asarray(rows, dtype=np.float64)[:, np.newaxis] * self.spacing[0] * self.col_dir
        )
        return np.asarray(out, dtype=np.float64)


def t2w_grid(datasets: Sequence[Dataset]) -> T2WGrid:
    """Order the T2W source instances along the slice normal, as the engine's volume is ordered.

    Parameters
    ----------
    datasets : sequence of Dataset
        Every instance of the chosen T2W series (pixel data need not be loaded).

    Returns
    -------
    T2WGrid

    Raises
    ------
    ValueError
        No instance, instances of several series, missing geometry, or several multi-frame instances.
    """
    if not datasets:
        raise ValueError("no T2W source instance given")
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series_uids) != 1 or "" in series_uids:
        raise ValueError(
            f"the T2W source instances must belong to one series (found {len(series_uids)} SeriesInstanceUIDs)"
        )
    series_uid = series_uids.pop()
    multi = ["PerFrameFunctionalGroupsSequence" in ds for ds in datasets]
    if any(multi) and len(datasets) > 1:
        raise ValueError("a multi-frame T2W series must consist of one instance")
    series, bad = build_series(series_uid, [(f"instance {i + 1}", ds) for i, ds in enumerate(datasets)])
    if series is None or bad:
        reasons = "; ".join(reason for _, reason in bad)
        raise ValueError(f"unusable T2W source instances: {reasons}")
    frames = series.frames
    first = frames[0]
    if first.orientation is None or first.pixel_spacing is None or first.normal is None:
        raise ValueError("the T2W source instances lack ImageOrientationPatient or PixelSpacing")
    if any(f.position is None for f in frames):
        raise ValueError("some T2W source instances lack ImagePositionPatient")
    normal = first.normal
    heights = np.array([np.dot(np.asarray(f.position), normal) for f in frames])
    order = np.argsort(heights, kind="stable")
    slice_of_frame = [0] * len(frames)
    slice_sources: list[tuple[Dataset, int | None]] = []
    positions: list[tuple[float, float, float]] = []
    last_height = -math.inf
    kept_order: list[int] = []
    for i in order:
        if heights[i] - last_height >= 0.01:
            slice_sources.append((series.instances[frames[i].instance].dataset, frames[i].frame))
            positions.append(cast(Vector3, frames[i].position))
            kept_order.append(int(i))
            last_height = float(heights[i])
        slice_of_frame[int(i)] = len(slice_sources) - 1
    if any(multi):
        ordered = [datasets[0]]
        frame_slices = slice_of_frame
    else:
        ordered = [series.instances[frames[i].instance].dataset for i in kept_order]
        frame_slices = list(range(len(kept_order)))
    header = series.header
    return T2WGrid(
        datasets=ordered,
        frame_slices=frame_slices,
        slice_sources=slice_sources,
        positions=np.asarray(positions, dtype=np.float64),
        row_dir=np.asarray(first.orientation[:3], dtype=np.float64),
        col_dir=np.asarray(first.orientation[3:], dtype=np.float64),
        normal=np.asarray(normal, dtype=np.float64),
        spacing=(float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        rows=first.rows,
        columns=first.columns,
        series_instance_uid=series_uid,
        study_instance_uid=str(header.StudyInstanceUID),
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "")),
    )


def category_text(lesion: LesionLike, prefix: str) -> str:
    """``prefix`` + the lesion's category and ", " for a label (e.g. ``"cat 4, "``); empty without one
    (a detection-map model's lesion)."""
    return "" if lesion.category is None else f"{prefix}{int(lesion.category)}, "


def check_result(result: ResultLike, grid: T2WGrid) -> list[LesionLike]:
    """Check a result against the T2W grid; return its lesions.

    Raises
    ------
    ValueError
        A value out of range, a mask of another shape than the grid, an empty mask, a duplicate id, or a
        result of another study.
    """
    if str(result.study_instance_uid) != grid.study_instance_uid:
        raise ValueError(
            f"the result is for study {result.study_instance_uid}, the T2W instances for study "
            f"{grid.study_instance_uid}"
        )
    score = float(result.patient_score)
    if not 0.0 <= score <= 1.0 or math.isnan(score):
        raise ValueError(f"patient_score {score} is not a probability in 0..1")
    lesions = list(result.lesions)
    seen: set[int] = set()
    for lesion in lesions:
        label = f"lesion {lesion.id}"
        if isinstance(lesion.id, bool) or not isinstance(lesion.id, int | np.integer) or lesion.id < 1:
            raise ValueError(f"{label}: id must be a positive integer")
        if int(lesion.id) in seen:
            raise ValueError(f"{label}: id used twice")
        seen.add(int(lesion.id))
        mask = np.asarray(lesion.mask)
        if mask.shape != grid.shape:
            raise ValueError(
                f"{label}: mask shape {mask.shape} differs from the T2W grid {grid.shape} (Z, Y, X)"
            )
        if not mask.any():
            raise ValueError(f"{label}: empty mask")
        p = float(lesion.probability)
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ValueError(f"{label}: probability {p} is not in 0..1")
        if lesion.category is not None and (
            int(lesion.category) not in CATEGORY_CODES or int(lesion.category) != lesion.category
        ):
            raise ValueError(f"{label}: category {lesion.category} is not 1..5 (or None)")
        if lesion.zone is not None and lesion.zone not in ZONE_CODES and lesion.zone != OUTSIDE_PROSTATE:
            raise ValueError(f"{label}: zone {lesion.zone!r} is not 'pz', 'tz', {OUTSIDE_PROSTATE!r} or None")
        for name in ("volume_ml", "max_diameter_mm"):
            value = float(getattr(lesion, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{label}: {name} {value} is not a finite non-negative number")
        if len(lesion.center_lps_mm) != 3:
            raise ValueError(f"{label}: center_lps_mm must hold 3 coordinates")
    return sorted(lesions, key=lambda lesion: int(lesion.id))


def text_image(
    reference: Dataset,
    pixels: NDArray[np.uint8],
    settings: ResultSettings,
    when: datetime.datetime,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    series_description: str,
    equipment: Sequence[hd.ContributingEquipment] | None = None,
) -> Dataset:
    """A single-frame MONOCHROME2 Secondary Capture of a text panel (the failure notice, the result summary),
    with the patient and study of ``reference`` and the product's names from ``settings``.

    A text panel has no anatomical orientation (PatientOrientation is type 2: present, empty) and holds no
    patient data in its pixels (BurnedInAnnotation NO).
    """
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        **device_and_dates(settings, when, reference),
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=equipment,
        series_description=series_description,
    )
    del image.PatientOrientation
    image.add_new("PatientOrientation", "CS", None)
    image.BurnedInAnnotation = "NO"
    copy_study_extras(image, reference)
    set_body_part(image, reference)
    return image
