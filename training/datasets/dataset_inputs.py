"""Inputs of ``lesion-ai dataset build``: DICOM studies found in folders, and label files on the T2W grid.

Studies are found by reading the headers of every file under the given folders and grouping them by
StudyInstanceUID, whatever the folder layout. Segmentation objects (SEG) are kept apart: they are label
candidates of their study, not images. Files that are not DICOM are passed over.

Label files (a flat folder, PI-CAI style; ``.nii.gz``, ``.nii``, ``.mha`` or ``.nrrd``):

* ``<case>.nii.gz`` or ``<case>_lesion.nii.gz``: csPCa lesions, voxel value = ISUP grade (2..5; 1 = csPCa
  of unknown grade; 0 background), as in PI-CAI's ``picai_labels``;
* ``<case>_gland.nii.gz``: whole-gland mask (optional);
* ``<case>_zones.nii.gz`` or ``<case>_zones_<model>.nii.gz``: zones, 1 = PZ, 2 = TZ (optional);
* ``marksheet.csv``: PI-CAI marksheet rows (optional).

Labels are put onto the T2W grid with nearest neighbour; one that does not overlap the T2W volume, that
would lose labelled voxels outside it, or whose lesions vanish on the T2W grid is refused.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lesion_engine.labels.seg_labels import SEG_SOP_CLASS_UID, LabelError

logger = logging.getLogger(__name__)

__all__ = [
    "CASE_ID_PATTERN",
    "LabelFiles",
    "StudyInput",
    "default_case_id",
    "file_sha256",
    "find_label_files",
    "find_studies",
    "label_on_t2w",
    "read_case_ids",
]

#: ``<patient>_<study>``; the patient part names the image folder.
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9.-]+_[A-Za-z0-9.-]+$")
LABEL_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".nrrd")
_HEADER_TAGS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "Modality",
    "PatientID",
    "StudyID",
    "AccessionNumber",
    "StudyDate",
    "PatientAge",
    "InstitutionName",
)


@dataclass
class StudyInput:
    """One DICOM study found in the input folders.

    Attributes
    ----------
    study_instance_uid : str
    header : Dataset
        Patient and study attributes (from the first image file).
    images : list of Path
        Files of the study that are not SEGs.
    segs : list of Path
        SEG files that belong to the study.
    """

    study_instance_uid: str
    header: Dataset
    images: list[Path] = field(default_factory=list)
    segs: list[Path] = field(default_factory=list)


def _walk(roots: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        if root.is_file():
            out.append(root)
            continue
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            out.extend(Path(folder) / name for name in sorted(files))
    return out


def find_studies(
    roots: Sequence[Path], seg_roots: Sequence[Path] = ()
) -> tuple[list[StudyInput], list[dict[str, str]]]:
    """Group the DICOM files under ``roots`` (images and SEGs) and ``seg_roots`` (SEGs only) by study.

    Returns
    -------
    (studies, skipped)
        Studies in StudyInstanceUID order; ``skipped`` lists the DICOM-looking inputs that could not be used
        (``{"input": ..., "reason": ...}``). Files that are not DICOM are passed over silently.
    """
    studies: dict[str, StudyInput] = {}
    skipped: list[dict[str, str]] = []
    seg_only = {p.resolve() for p in _walk(seg_roots)}
    for path in _walk([*roots, *seg_roots]):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        except (InvalidDicomError, EOFError):
            continue
        except Exception as exc:  # a damaged header: say which file
            skipped.append(
                {"input": str(path), "reason": f"unreadable DICOM header ({type(exc).__name__}: {exc})"}
            )
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "")
        is_seg = str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID or ds.get("Modality") == "SEG"
        if not uid:
            skipped.append({"input": str(path), "reason": "no StudyInstanceUID"})
            continue
        study = studies.setdefault(uid, StudyInput(uid, ds))
        if is_seg:
            if path not in study.segs:
                study.segs.append(path)
        elif path.resolve() not in seg_only:
            if not study.images:
                study.header = ds
            study.images.append(path)
    return [studies[uid] for uid in sorted(studies)], skipped


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text.strip()).strip("-.")


def default_case_id(header: Dataset) -> str:
    """``<PatientID>_<AccessionNumber or StudyID or a digest of the StudyInstanceUID>``, made file-name safe."""
    patient = _token(str(header.get("PatientID", "") or "")) or "anonymous"
    study = _token(str(header.get("AccessionNumber", "") or "")) or _token(
        str(header.get("StudyID", "") or "")
    )
    if not study:
        study = hashlib.sha1(str(header.StudyInstanceUID).encode(), usedforsecurity=False).hexdigest()[:12]
    return f"{patient}_{study}"


def read_case_ids(path: Path) -> dict[str, str]:
    """StudyInstanceUID -> case id from a CSV with the columns ``StudyInstanceUID`` and ``case_id``.

    Raises
    ------
    ValueError
        Missing columns, a case id that is not ``<patient>_<study>``, or a case id given twice.
    """
    out: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"StudyInstanceUID", "case_id"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: needs the columns StudyInstanceUID and case_id")
        for line, row in enumerate(reader, start=2):
            uid, case_id = row["StudyInstanceUID"].strip(), row["case_id"].strip()
            if not CASE_ID_PATTERN.match(case_id):
                raise ValueError(
                    f"{path} line {line}: case id {case_id!r} must be <patient>_<study> (letters, digits, '.', '-')"
                )
            if case_id in out.values():
                raise ValueError(f"{path} line {line}: case id {case_id!r} is given to two studies")
            out[uid] = case_id
    return out


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LabelFiles:
    """The label files of one case (None where absent)."""

    lesion: Path | None
    gland: Path | None
    zones: Path | None
    zones_model: str | None

    def paths(self) -> list[Path]:
        """The files that exist."""
        return [p for p in (self.lesion, self.gland, self.zones) if p is not None]


def _first(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in LABEL_SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def find_label_files(folder: Path | None, case_id: str) -> LabelFiles:
    """The label files of ``case_id`` in ``folder`` (see the module docstring)."""
    if folder is None:
        return LabelFiles(None, None, None, None)
    lesion = _first(folder, (case_id, f"{case_id}_lesion"))
    gland = _first(folder, (f"{case_id}_gland",))
    zones = _first(folder, (f"{case_id}_zones",))
    model = None
    if zones is None:
        for path in sorted(folder.glob(f"{case_id}_zones_*")):
            name = path.name
            suffix = next((s for s in LABEL_SUFFIXES if name.endswith(s)), None)
            if suffix is not None:
                zones, model = path, name[len(f"{case_id}_zones_") : -len(suffix)]
                break
    return LabelFiles(lesion, gland, zones, model)


def _box(image: sitk.Image) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint(
            [c * (s - 0.5) + (1 - c) * -0.5 for c, s in zip(bits, size, strict=True)]
        )
        for bits in np.ndindex(2, 2, 2)
    ]
    points = np.asarray(corners, dtype=np.float64)
    return points.min(axis=0), points.max(axis=0)


def _read_label(path: Path, where: str) -> sitk.Image:
    """Read a label file as a 3D scalar image (LabelError when it is not one)."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise LabelError(f"{where} cannot be read: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LabelError(
            f"{where}: expected a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)"
        )
    return image


def _label_values(image: sitk.Image, kind: str, where: str) -> NDArray[Any]:
    """A label's voxel values as (Z, Y, X), checked against ``kind`` (a gland mask made 0/1 in int16)."""
    values = sitk.GetArrayFromImage(image)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise LabelError(f"{where}: values must be whole numbers")
    allowed = {"lesion": set(range(6)), "zones": {0, 1, 2}}.get(kind)
    found = {int(v) for v in np.unique(values)}
    if allowed is not None and not found <= allowed:
        raise LabelError(
            f"{where}: values {sorted(found - allowed)} are not allowed "
            f"({'ISUP grades 0..5' if kind == 'lesion' else '0, 1 = PZ, 2 = TZ'})"
        )
    if kind == "gland":
        values = (values != 0).astype(np.int16)
    return values


def _on_t2w_grid(image: sitk.Image, t2w: sitk.Image) -> bool:
    """Whether a label has the T2W's grid (size, origin within half a voxel, direction, spacing)."""
    spacing = np.asarray(t2w.GetSpacing())
    return bool(
        image.GetSize() == t2w.GetSize()
        and np.all(np.abs(np.subtract(image.GetOrigin(), t2w.GetOrigin())) < spacing / 2)
        and np.allclose(image.GetDirection(), t2w.GetDirection(), atol=1e-3)
        and np.allclose(image.GetSpacing(), spacing, rtol=1e-3)
    )


def _check_overlap(image: sitk.Image, t2w: sitk.Image, where: str) -> None:
    """LabelError when the label's volume and the T2W's do not overlap at all."""
    low, high = _box(image)
    t_low, t_high = _box(t2w)
    if np.any(high < t_low) or np.any(t_high < low):
        raise LabelError(
            f"{where} is on another grid that does not overlap the T2W volume (label origin "
            f"{tuple(round(v, 1) for v in image.GetOrigin())}, T2W origin {tuple(round(v, 1) for v in t2w.GetOrigin())}); "
            "is it the label of another study?"
        )


def _check_inside(values: NDArray[Any], image: sitk.Image, t2w: sitk.Image, where: str) -> None:
    """LabelError when labelled voxels of ``image`` (``values``) lie outside the T2W volume."""
    labelled = np.argwhere(values != 0)
    if not labelled.size:
        return
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    points = np.asarray(image.GetOrigin()) + labelled[:, ::-1] @ matrix.T
    t_matrix = np.asarray(t2w.GetDirection()).reshape(3, 3) * np.asarray(t2w.GetSpacing())
    index = (points - np.asarray(t2w.GetOrigin())) @ np.linalg.inv(t_matrix).T
    outside = np.any((index < -0.5) | (index > np.asarray(t2w.GetSize()) - 0.5), axis=1)
    if outside.any():
        raise LabelError(
            f"{where} is on another grid: {int(outside.sum())} of {len(labelled)} labelled voxel(s) lie outside "
            "the T2W volume; resample it onto the T2W series first"
        )


def _check_nothing_lost(values: NDArray[Any], out: NDArray[np.int16], where: str) -> None:
    """LabelError when label values of ``values`` are missing from their resampled ``out``."""
    lost = {int(v) for v in np.unique(values) if v} - {int(v) for v in np.unique(out) if v}
    if lost:
        raise LabelError(
            f"{where} is on another grid: the value(s) {sorted(lost)} vanish on the T2W grid (too small to "
            "resample); resample it onto the T2W series first"
        )


def label_on_t2w(path: Path, t2w: sitk.Image, kind: str) -> NDArray[np.int16]:
    """A label file on the T2W grid (nearest neighbour), as (Z, Y, X).

    Parameters
    ----------
    path : Path
        The label file.
    t2w : SimpleITK.Image
        The T2W volume.
    kind : str
        ``lesion`` (values 0..5, ISUP), ``gland`` (non-zero = gland, returned as 0/1) or ``zones`` (0, 1, 2).

    Raises
    ------
    LabelError
        Unreadable file, values that are not of ``kind``, or a label on another grid (no overlap with the
        T2W volume, labelled voxels outside it, or labels lost on the T2W grid).
    """
    where = f"{kind} label {path.name}"
    image = _read_label(path, where)
    values = _label_values(image, kind, where)
    if _on_t2w_grid(image, t2w):
        return values.astype(np.int16)
    _check_overlap(image, t2w, where)
    label = sitk.GetImageFromArray(values.astype(np.int16))
    label.CopyInformation(image)
    on_t2w = sitk.Resample(label, t2w, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt16)
    out = sitk.GetArrayFromImage(on_t2w).astype(np.int16)
    _check_inside(values, image, t2w, where)
    _check_nothing_lost(values, out, where)
    logger.info("%s resampled onto the T2W grid", where)
    return out
