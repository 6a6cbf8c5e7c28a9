"""Reading a DICOM study from a folder tree, a list of files or in-memory bytes.

The loader never lets one bad instance take the study down: what it cannot read is recorded as a
:class:`SkippedInstance` with the reason, and non-image objects (SR, SEG, PR, KO, ...) are recorded as
:class:`IgnoredObject`. Pixel data is not decoded here: files are parsed with deferred pixel data, and only
the series that the role selection picks are decoded later.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lesion_engine.errors import (
    InvalidValueError,
    MixedPatientsError,
    MixedSeriesError,
    MultipleStudiesError,
    NoImagesError,
)
from lesion_engine.intake.series import InvalidValue, Series, build_series

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SOP_CLASSES",
    "IgnoredObject",
    "LoadedStudy",
    "SkippedInstance",
    "Source",
    "load_study",
]

#: Storage SOP classes the engine reads as images.
IMAGE_SOP_CLASSES: dict[str, str] = {
    str(sop_class): sop_class.name
    for sop_class in (
        pydicom.uid.MRImageStorage,
        pydicom.uid.EnhancedMRImageStorage,
        pydicom.uid.LegacyConvertedEnhancedMRImageStorage,
        pydicom.uid.CTImageStorage,
        pydicom.uid.EnhancedCTImageStorage,
        pydicom.uid.SecondaryCaptureImageStorage,
        pydicom.uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        pydicom.uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        pydicom.uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    )
}

#: One input: a path (file or folder) or the bytes of one DICOM file (Part 10, or a bare dataset).
Source = str | os.PathLike[str] | bytes | bytearray | memoryview

# Pixel data (and other large values) are read from the file only when accessed.
_DEFER_SIZE = 4096


@dataclass(frozen=True)
class SkippedInstance:
    """An input the loader could not use, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class IgnoredObject:
    """A readable DICOM object that is not an image (SR, SEG, PR, KO, ...)."""

    source: str
    sop_class_uid: str
    sop_class_name: str
    modality: str
    series_instance_uid: str


@dataclass
class LoadedStudy:
    """Everything read from one study's inputs.

    Attributes
    ----------
    study_instance_uid : str
        The study's StudyInstanceUID.
    series : list of Series
        Image series, in SeriesNumber order.
    skipped : list of SkippedInstance
        Inputs that could not be read, with the reason.
    ignored : list of IgnoredObject
        Non-image objects, not used.
    invalid : list of str
        Image series left out because they hold values DICOM does not allow, each with what is wrong (see
        :func:`invalid_value_error`: a study whose needed series is among them fails naming the value).
    """

    study_instance_uid: str
    series: list[Series]
    skipped: list[SkippedInstance] = field(default_factory=list)
    ignored: list[IgnoredObject] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)

    def series_by_uid(self, series_instance_uid: str) -> Series:
        """Return the series with this SeriesInstanceUID (KeyError if absent)."""
        for series in self.series:
            if series.series_instance_uid == series_instance_uid:
                return series
        raise KeyError(series_instance_uid)


def _iter_inputs(source: Source | Iterable[Source]) -> Iterator[tuple[str, Path | bytes]]:
    """Yield (label, path-or-bytes) for every input, walking folders recursively in sorted order."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield "<bytes #0>", bytes(source)
        return
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield str(Path(root) / name), Path(root) / name
        elif path.exists():
            yield str(path), path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
        return
    for index, item in enumerate(source):
        if isinstance(item, bytes | bytearray | memoryview):
            yield f"<bytes #{index}>", bytes(item)
        else:
            yield from _iter_inputs(item)


def _read(label: str, item: Path | bytes) -> Dataset:
    """Parse one input; raise InvalidDicomError (or another exception) when it is not readable DICOM."""
    if isinstance(item, Path):
        return pydicom.dcmread(item, defer_size=_DEFER_SIZE)
    # Bytes without the Part 10 preamble may still be a bare dataset (as some REST APIs return it).
    return pydicom.dcmread(io.BytesIO(item), force=item[128:132] != b"DICM")


def _patient_key(ds: Dataset) -> tuple[str, str]:
    """Who an instance belongs to: PatientID and its issuer (PatientName is not compared: the same patient's
    name is often written differently by different systems)."""
    return str(ds.get("PatientID", "") or "").strip(), str(ds.get("IssuerOfPatientID", "") or "").strip()


def _check_one_patient(by_series: dict[str, list[tuple[str, Dataset]]]) -> None:
    """Raise :class:`MixedPatientsError` when the images belong to more than one patient.

    The message names the series by number and UID, never the patients' identifiers (logs and job records
    carry no PHI); the failure report in the study lets the radiologist see both.
    """
    patients: dict[tuple[str, str], list[str]] = {}
    for series_uid, items in by_series.items():
        for _, ds in items:
            number = ds.get("SeriesNumber")
            where = f"series {number}" if number not in (None, "") else f"series {series_uid}"
            found = patients.setdefault(_patient_key(ds), [])
            if where not in found:
                found.append(where)
    if len(patients) > 1:
        parts = "; ".join(
            f"patient {i + 1}: {', '.join(where[:4])}" for i, where in enumerate(patients.values())
        )
        raise MixedPatientsError(
            f"this study holds images of {len(patients)} different patients (PatientID differs: {parts}); "
            "one StudyInstanceUID was given to two patients, or images were filed into the wrong study. "
            "Correct the study in the PACS (split or reconcile it), then send it again"
        )


def _series_label(series_uid: str, ds: Dataset) -> str:
    """``series 8 'ep2d_diff_tra_ADC' (SeriesInstanceUID 1.2.3)``, from one of its instances."""
    number = ds.get("SeriesNumber")
    description = str(ds.get("SeriesDescription", "") or "").strip()
    return (
        f"series {number if number not in (None, '') else '(no SeriesNumber)'}"
        + (f" {description!r}" if description else "")
        + f" (SeriesInstanceUID {series_uid})"
    )


def _check_series_identity(by_series: dict[str, list[tuple[str, Dataset]]]) -> None:
    """Raise :class:`MixedSeriesError` when one series' instances belong to more than one study or patient.

    Checked before the study-level checks, so that the message names the series rather than the study. It
    names StudyInstanceUIDs (identifiers of the data, as in every log) but never a PatientID.
    """
    problems = []
    for series_uid, items in by_series.items():
        studies: dict[str, int] = {}
        patients: dict[tuple[str, str], int] = {}
        for _, ds in items:
            study = str(ds.get("StudyInstanceUID", ""))
            studies[study] = studies.get(study, 0) + 1
            patient = _patient_key(ds)
            patients[patient] = patients.get(patient, 0) + 1
        label = _series_label(series_uid, items[0][1])
        if len(studies) > 1:
            counts = ", ".join(f"StudyInstanceUID {uid}: {n} image(s)" for uid, n in sorted(studies.items()))
            problems.append(f"{label} holds images of {len(studies)} studies ({counts})")
        if len(patients) > 1:
            counts = " / ".join(str(n) for n in patients.values())
            problems.append(
                f"{label} holds images of {len(patients)} different patients (PatientID differs; "
                f"{counts} image(s))"
            )
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        logger.error("mixed series: %s", shown)
        raise MixedSeriesError(
            f"{shown}: one SeriesInstanceUID was given to images of different studies or patients, so the "
            "series is not one acquisition. Correct the series in the PACS (or at the modality), then send "
            "the study again"
        )


def _invalid_values(item: Series) -> list[str]:
    """What is wrong in a series' values that DICOM does not allow (see :mod:`lesion_engine.intake.series`), naming
    the attribute, the value, the series and the first instance; empty when nothing is."""
    groups: dict[tuple[str, str], list[InvalidValue]] = {}
    for invalid in item.invalid_values:
        groups.setdefault((invalid.keyword, invalid.problem), []).append(invalid)
    problems = []
    for found in groups.values():
        first = found[0]
        images = len({v.source for v in found})
        problems.append(
            f"{_series_label(item.series_instance_uid, item.header)}: {first.describe()} "
            f"({images} of {len(item.instances)} image(s); first: SOPInstanceUID {first.sop_instance_uid})"
        )
    return problems


def invalid_value_error(problems: list[str], cause: str | None = None) -> InvalidValueError:
    """The error of a study that cannot be analysed because of invalid values: ``problems`` as
    :attr:`LoadedStudy.invalid` lists them; ``cause``: what could then not be done (e.g. no T2W found)."""
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return InvalidValueError(
        (f"{cause}, because series were left out for invalid value(s): " if cause else "invalid value(s): ")
        + f"{shown}. DICOM does not allow these values, so where the images lie or what their pixels mean "
        "cannot be trusted; correct them at the modality or in the PACS, then send the study again"
    )


@dataclass(frozen=True)
class _InputScan:
    """The inputs of a study sorted out: image instances by series, and what was skipped or ignored.

    Attributes
    ----------
    n_inputs : int
        How many inputs were read.
    skipped : list of SkippedInstance
        Inputs that could not be used, with the reason.
    ignored : list of IgnoredObject
        Non-image objects.
    by_series : dict of str to list of (str, Dataset)
        The image instances (label, dataset) of each SeriesInstanceUID, in input order.
    """

    n_inputs: int
    skipped: list[SkippedInstance]
    ignored: list[IgnoredObject]
    by_series: dict[str, list[tuple[str, Dataset]]]


def _scan_inputs(source: Source | Iterable[Source]) -> _InputScan:
    """Parse every input (pixel data deferred) and sort it into image instances, skipped and ignored.

    Parameters
    ----------
    source : path, bytes, or an iterable of them
        As :func:`load_study` takes it.

    Returns
    -------
    _InputScan

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    """
    skipped: list[SkippedInstance] = []
    ignored: list[IgnoredObject] = []
    by_series: dict[str, list[tuple[str, Dataset]]] = {}
    seen_sop: set[str] = set()
    n_inputs = 0
    for label, item in _iter_inputs(source):
        n_inputs += 1
        try:
            ds = _read(label, item)
        except InvalidDicomError:
            skipped.append(SkippedInstance(label, "not a DICOM file"))
            continue
        except Exception as exc:  # a truncated or corrupt file may raise anything from the parser
            skipped.append(SkippedInstance(label, f"unreadable DICOM ({type(exc).__name__}: {exc})"))
            continue
        if "SOPClassUID" not in ds:
            skipped.append(SkippedInstance(label, "not a DICOM object (no SOPClassUID)"))
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        series_uid = str(ds.get("SeriesInstanceUID", ""))
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        if sop_class not in IMAGE_SOP_CLASSES or "PixelData" not in ds:
            name = pydicom.uid.UID(sop_class).name if sop_class else "no SOPClassUID"
            ignored.append(IgnoredObject(label, sop_class, name, str(ds.get("Modality", "")), series_uid))
            continue
        if not series_uid or not sop_uid or "StudyInstanceUID" not in ds:
            skipped.append(
                SkippedInstance(label, "missing StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID")
            )
            continue
        if sop_uid in seen_sop:
            skipped.append(SkippedInstance(label, f"duplicate of SOPInstanceUID {sop_uid} already read"))
            continue
        seen_sop.add(sop_uid)
        by_series.setdefault(series_uid, []).append((label, ds))
    return _InputScan(n_inputs, skipped, ignored, by_series)


def _report_scan(scan: _InputScan) -> None:
    """Log the skipped and ignored inputs; raise :class:`NoImagesError` when no image was found.

    Parameters
    ----------
    scan : _InputScan
        The sorted inputs.

    Raises
    ------
    NoImagesError
        Nothing readable holds an image.
    """
    skipped, ignored = scan.skipped, scan.ignored
    for entry in skipped:
        logger.warning("skipped %s: %s", entry.source, entry.reason)
    if ignored:
        logger.info(
            "ignored %d non-image object(s): %s",
            len(ignored),
            ", ".join(sorted({f"{o.sop_class_name} ({o.modality})" for o in ignored})),
        )
    if not scan.by_series:
        raise NoImagesError(
            f"no readable DICOM image among {scan.n_inputs} input(s)"
            + (
                f"; {len(skipped)} skipped (first: {skipped[0].source}: {skipped[0].reason})"
                if skipped
                else ""
            )
            + (f"; {len(ignored)} non-image object(s) ignored" if ignored else "")
        )


def _study_uid(by_series: dict[str, list[tuple[str, Dataset]]]) -> str:
    """The one StudyInstanceUID of the images; raise :class:`MultipleStudiesError` when there are more.

    Parameters
    ----------
    by_series : dict of str to list of (str, Dataset)
        The image instances of each series.

    Returns
    -------
    str
    """
    studies = {str(ds.StudyInstanceUID) for items in by_series.values() for _, ds in items}
    if len(studies) > 1:
        raise MultipleStudiesError(
            f"the input holds images of {len(studies)} studies ({', '.join(sorted(studies))}); "
            "pass the files of one study at a time"
        )
    return studies.pop()


def _build_all_series(
    by_series: dict[str, list[tuple[str, Dataset]]], skipped: list[SkippedInstance]
) -> list[Series]:
    """The image series built from their instances, in SeriesNumber order.

    Parameters
    ----------
    by_series : dict of str to list of (str, Dataset)
        The image instances of each series.
    skipped : list of SkippedInstance
        Appended to: the instances a series could not use.

    Returns
    -------
    list of Series
    """
    series: list[Series] = []
    for series_uid, items in by_series.items():
        built, bad = build_series(series_uid, items)
        skipped.extend(SkippedInstance(label, reason) for label, reason in bad)
        if built is not None:
            series.append(built)
    series.sort(
        key=lambda s: (s.series_number if s.series_number is not None else 1 << 31, s.series_instance_uid)
    )
    return series


def _usable_series(series: list[Series]) -> tuple[list[Series], list[str]]:
    """The series without invalid values, and what is wrong in the others (logged).

    Parameters
    ----------
    series : list of Series
        All image series.

    Returns
    -------
    usable : list of Series
        The series whose values DICOM allows, in the same order.
    invalid : list of str
        What is wrong in the series left out (:func:`_invalid_values`).

    Raises
    ------
    InvalidValueError
        Every series holds an invalid value.
    """
    invalid: list[str] = []
    usable: list[Series] = []
    for one in series:
        problems = _invalid_values(one)
        invalid.extend(problems)
        if not problems:
            usable.append(one)
    if invalid:
        logger.warning("series left out for invalid values: %s", "; ".join(invalid[:3]))
    if not usable:
        raise invalid_value_error(invalid)
    return usable, invalid


def load_study(source: Source | Iterable[Source]) -> LoadedStudy:
    """Read one DICOM study.

    Parameters
    ----------
    source : path, bytes, or an iterable of them
        A folder (walked recursively), a file, the bytes of one DICOM file, or a list mixing these.

    Returns
    -------
    LoadedStudy
        The study's image series (headers parsed, pixel data not yet decoded), the skipped inputs and the
        ignored non-image objects.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    NoImagesError
        Nothing readable holds an image.
    MixedSeriesError
        One series' images belong to more than one study or patient.
    MultipleStudiesError
        The inputs hold images of more than one study.
    MixedPatientsError
        The images belong to more than one patient (PatientID and its issuer differ).
    InvalidValueError
        Every image series holds a value that places or scales its images but that DICOM does not allow (a
        non-numeric PixelSpacing, an ImagePositionPatient with 2 values, ...). A series with such values is
        left out (:attr:`LoadedStudy.invalid`); a study that then lacks a series it needs fails naming them.
    """
    scan = _scan_inputs(source)
    _report_scan(scan)
    _check_series_identity(scan.by_series)
    study_uid = _study_uid(scan.by_series)
    _check_one_patient(scan.by_series)
    series = _build_all_series(scan.by_series, scan.skipped)
    usable, invalid = _usable_series(series)
    return LoadedStudy(study_uid, usable, scan.skipped, scan.ignored, invalid)
