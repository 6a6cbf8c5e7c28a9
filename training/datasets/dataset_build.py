"""``lesion-ai dataset build``: DICOM studies and their labels into the PI-CAI layout that training reads.

Output (``lesion-ai train --data OUT --data-format picai`` reads it as it is)::

    OUT/<patient>/<case>_{t2w,adc,hbv}.mha                          as the node sees them (see below)
    OUT/picai_labels/csPCa_lesion_delineations/human_expert/resampled/<case>.nii.gz   ISUP values, T2W grid
    OUT/picai_labels/anatomical_delineations/whole_gland/provided/<case>.nii.gz       when given
    OUT/picai_labels/anatomical_delineations/zonal_pz_tz/AI/<model>/<case>.nii.gz     when given
    OUT/picai_labels/clinical_information/marksheet.csv
    OUT/picai_labels/verdicts/negative/<case>.nii.gz                rejected AI findings, T2W grid (--from-node)
    OUT/picai_labels/verdicts/hints/<case>.nii.gz                   missed findings, T2W grid (--from-node)
    OUT/dataset.json                                                what was built, from what, and what not

Images come from :func:`lesion_engine.intake.preprocess.prepare_study`, the node's own series selection and
co-registration: the T2W as selected, ADC and HBV resampled onto the T2W grid; HBV is the computed b1400
image when the study has no b >= 1400 and ``hbv_source`` is ``b1400`` (the model default), as
:func:`lesion_engine.model.model_input.to_model_input` does. Labels come from label files
(:mod:`training.datasets.dataset_inputs`) or a radiologist's DICOM SEG (:mod:`lesion_engine.labels.seg_labels`; a radiologist's
SEG wins over label files; the node's own SEGs are never used). Studies come from folders, or from a
lesion-ai node (``--from-node``: the studies radiologists sent a SEG back for, :mod:`training.datasets.node_source`),
or both.

Radiologists' verdicts on the AI's findings (the node's ``GET /lesion-ai/verdicts``, read from the reports
they save in the viewer) come with a node's labelled studies: for each such case the rejected findings are
drawn as negative regions and the missed findings as lesion hints, on the T2W grid of its lesion label
(:mod:`training.datasets.verdict_masks`), and its dataset.json entry gets ``verdicts`` (counts, voxels, the node's
records, the measurements that could not be placed and why). ``lesion-ai train`` does not read these masks;
they are there for training code that uses hard negatives and hints. A study with verdicts but no label is
skipped (not fetched).

A case is rebuilt only when its inputs (file contents, and a node's verdicts), the options or its outputs
changed; otherwise it is left alone, so that a second run changes nothing. Each case is written into a
temporary folder and moved into place when complete; a case that fails leaves no file behind (and its
earlier outputs are removed, since they no longer match the inputs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from lesion_engine.errors import LesionAIError
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.labels.seg_labels import LabelError, SegLabelOptions, node_made, read_seg_labels
from lesion_engine.results.settings import PRODUCT_NAME
from training.datasets.dataset_inputs import (
    LabelFiles,
    StudyInput,
    default_case_id,
    file_sha256,
    find_label_files,
    find_studies,
    label_on_t2w,
    read_case_ids,
)
from training.datasets.node_source import (
    DEFAULT_MAX_STUDY_BYTES,
    PASSWORD_ENV,
    USER_ENV,
    NodeSource,
    NodeSourceError,
    NodeVerdicts,
    add_node_studies,
)
from training.datasets.verdict_masks import DRAWING, HINTS_DIR, NEGATIVE_DIR, draw_verdicts
from training.synth.truth import MARKSHEET_COLUMNS

logger = logging.getLogger(__name__)

__all__ = ["BuildOptions", "BuildResult", "DatasetBuilder", "build_dataset", "register", "run"]

FORMAT = "lesion-ai dataset 1"
HBV_SOURCES = ("b1400", "native")
_LESION_DIR = Path("picai_labels/csPCa_lesion_delineations/human_expert/resampled")
_GLAND_DIR = Path("picai_labels/anatomical_delineations/whole_gland/provided")
_ZONES_DIR = Path("picai_labels/anatomical_delineations/zonal_pz_tz/AI")
_MARKSHEET = Path("picai_labels/clinical_information/marksheet.csv")


@dataclass(frozen=True)
class BuildOptions:
    """Settings of a build.

    Attributes
    ----------
    hbv_source : str
        ``b1400`` (computed b1400 when the study has no b >= 1400; the model default) or ``native``.
    seg : SegLabelOptions
        How SEG segments become label values.
    center : str
        ``center`` column of derived marksheet rows (InstitutionName when empty).
    zones_model : str
        Folder of zone masks named ``<case>_zones.*`` (training looks in HeviAI23 and BDay23).
    """

    hbv_source: str = "b1400"
    seg: SegLabelOptions = field(default_factory=SegLabelOptions)
    center: str = ""
    zones_model: str = "HeviAI23"

    def __post_init__(self) -> None:
        if self.hbv_source not in HBV_SOURCES:
            raise ValueError(f"hbv_source must be one of {HBV_SOURCES}, got {self.hbv_source!r}")
        if not self.zones_model or "/" in self.zones_model or self.zones_model.startswith("."):
            raise ValueError(f"zones_model must be a folder name, got {self.zones_model!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (part of every case's fingerprint)."""
        return {
            "hbv_source": self.hbv_source,
            "pirads_cspca": self.seg.pirads_cspca,
            "node_manufacturers": list(self.seg.node_manufacturers),
            "center": self.center,
            "zones_model": self.zones_model,
        }


@dataclass
class BuildResult:
    """What a build did: case ids built, unchanged, removed, and the skipped inputs with reasons."""

    built: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the run changed the output."""
        return bool(self.built or self.removed)


@dataclass
class _Labels:
    lesion: NDArray[np.int16]
    gland: NDArray[np.uint8] | None
    zones: NDArray[np.int16] | None
    zones_model: str | None
    record: dict[str, Any]
    lesion_isup: list[str]
    lesion_pirads: list[str]


class _SkipError(Exception):
    """A case that cannot be built; the message says why."""


def _write_atomic(path: Path, text: str) -> bool:
    """Write ``text`` unless the file already holds it; True when written."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


def _hbv(prepared: PreparedStudy, hbv_source: str) -> sitk.Image:
    if prepared.high_b is not None and (hbv_source == "b1400" or "hbv" not in prepared.native):
        return prepared.high_b
    return prepared.hbv


def _image(array: NDArray[Any], t2w: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(t2w)
    return image


def _radiologist_segs(study: StudyInput, options: BuildOptions, result: BuildResult) -> list[Path]:
    import pydicom

    out = []
    for path in study.segs:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise _SkipError(f"SEG {path.name} cannot be read ({type(exc).__name__}: {exc})") from exc
        why = node_made(header, options.seg.node_manufacturers)
        if why is not None:
            result.ignored.append(
                {"input": str(path), "reason": f"{why}; the node's results are never labels"}
            )
            continue
        out.append(path)
    return out


def _labels_from_segs(segs: list[Path], t2w: sitk.Image, options: BuildOptions) -> _Labels:
    if len(segs) > 1:
        names = ", ".join(p.name for p in segs)
        raise _SkipError(
            f"{len(segs)} radiologist SEGs for one study ({names}); keep one (the final) and rebuild"
        )
    labels = read_seg_labels(segs[0], t2w, options.seg)
    return _Labels(
        lesion=labels.lesion,
        gland=labels.gland,
        zones=None,
        zones_model=None,
        record={
            "source": "seg",
            "seg": segs[0].name,
            "segments": [s.to_dict() for s in labels.segments],
            "ignored_segments": labels.ignored,
        },
        lesion_isup=[str(s.isup) for s in labels.segments if s.isup is not None],
        lesion_pirads=[str(s.pirads) for s in labels.segments if s.pirads is not None],
    )


def _labels_from_files(files: LabelFiles, t2w: sitk.Image) -> _Labels:
    if files.lesion is None:
        raise _SkipError("labels missing: no lesion label file and no radiologist SEG")
    lesion = label_on_t2w(files.lesion, t2w, "lesion")
    gland = None if files.gland is None else label_on_t2w(files.gland, t2w, "gland").astype(np.uint8)
    zones = None if files.zones is None else label_on_t2w(files.zones, t2w, "zones")
    return _Labels(
        lesion=lesion,
        gland=gland,
        zones=zones,
        zones_model=files.zones_model,
        record={"source": "files", "files": [p.name for p in files.paths()]},
        lesion_isup=[],
        lesion_pirads=[],
    )


def _marksheet_row(
    case_id: str, study: StudyInput, labels: _Labels, given: dict[str, str] | None, options: BuildOptions
) -> dict[str, str]:
    patient, study_id = case_id.split("_", 1)
    if given is not None:
        row = {k: given.get(k, "") or "" for k in MARKSHEET_COLUMNS}
        row.update(patient_id=patient, study_id=study_id)
        return row
    header = study.header
    date = str(header.get("StudyDate", "") or "")
    age = str(header.get("PatientAge", "") or "")
    values = labels.lesion[labels.lesion > 0]
    isup = [int(v) for v in labels.lesion_isup]
    return {
        "patient_id": patient,
        "study_id": study_id,
        "mri_date": f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else "",
        "patient_age": str(int(age[:3])) if age[:3].isdigit() else "",
        "psa": "",
        "psad": "",
        "prostate_volume": "",
        "histopath_type": "",
        "lesion_PIRADS": ",".join(labels.lesion_pirads),
        "lesion_GS": "",
        "lesion_ISUP": ",".join(labels.lesion_isup),
        "case_ISUP": str(max(isup))
        if isup
        else (str(int(values.max())) if values.size and values.max() >= 2 else ""),
        "case_csPCa": "YES" if values.size else "NO",
        "center": options.center or str(header.get("InstitutionName", "") or ""),
    }


def _fingerprint(
    case_id: str,
    study: StudyInput,
    segs: list[Path],
    files: LabelFiles,
    given: dict[str, str] | None,
    options: BuildOptions,
    verdicts: Sequence[NodeVerdicts] = (),
) -> str:
    digest = hashlib.sha256()
    parts: dict[str, Any] = {
        "format": FORMAT,
        "case_id": case_id,
        "options": options.to_dict(),
        "images": sorted(file_sha256(p) for p in study.images),
        "segs": sorted(file_sha256(p) for p in segs),
        "files": [[p.name, file_sha256(p)] for p in files.paths()],
        "marksheet": given,
    }
    if verdicts:  # absent without verdicts: the fingerprints of cases built before verdicts existed hold
        parts["verdicts"] = {"drawing": DRAWING, "records": [v.fingerprint() for v in verdicts]}
    digest.update(json.dumps(parts, sort_keys=True).encode())
    return digest.hexdigest()


def _outputs_intact(out: Path, entry: dict[str, Any]) -> bool:
    outputs: dict[str, str] = entry.get("outputs", {})
    return bool(outputs) and all(
        (out / rel).is_file() and file_sha256(out / rel) == sha for rel, sha in outputs.items()
    )


def _remove_outputs(out: Path, entry: dict[str, Any]) -> None:
    for rel in entry.get("outputs", {}):
        (out / rel).unlink(missing_ok=True)


def _prepared(study: StudyInput) -> PreparedStudy:
    """The study as the node reads it (series selection, co-registration); _SkipError when it cannot be read."""
    if not study.images:
        raise _SkipError("no images: only SEG objects of this study were found")
    try:
        return prepare_study(study.images)
    except LesionAIError as exc:
        raise _SkipError(f"{type(exc).__name__}: {exc}") from exc


def _case_labels(segs: list[Path], files: LabelFiles, t2w: sitk.Image, options: BuildOptions) -> _Labels:
    """The case's labels on the T2W grid: its radiologist SEG's, else its label files'; _SkipError if unusable."""
    try:
        labels = _labels_from_segs(segs, t2w, options) if segs else _labels_from_files(files, t2w)
    except LabelError as exc:
        raise _SkipError(str(exc)) from exc
    if segs and files.lesion is not None:
        labels.record["not_used"] = [f"{p.name}: a radiologist SEG exists" for p in files.paths()]
    return labels


def _planned_volumes(
    case_id: str, prepared: PreparedStudy, labels: _Labels, options: BuildOptions
) -> list[tuple[Path, sitk.Image]]:
    """The case's images and label volumes, each with its path relative to the output folder."""
    t2w = prepared.t2w
    patient = case_id.split("_", 1)[0]
    zones_model = labels.zones_model or options.zones_model
    planned: list[tuple[Path, sitk.Image]] = [
        (Path(patient) / f"{case_id}_t2w.mha", t2w),
        (Path(patient) / f"{case_id}_adc.mha", prepared.adc),
        (Path(patient) / f"{case_id}_hbv.mha", _hbv(prepared, options.hbv_source)),
        (_LESION_DIR / f"{case_id}.nii.gz", _image(labels.lesion.astype(np.uint8), t2w)),
    ]
    if labels.gland is not None:
        planned.append((_GLAND_DIR / f"{case_id}.nii.gz", _image(labels.gland, t2w)))
    if labels.zones is not None:
        planned.append(
            (_ZONES_DIR / zones_model / f"{case_id}.nii.gz", _image(labels.zones.astype(np.uint8), t2w))
        )
    return planned


@dataclass(frozen=True)
class _VerdictOutputs:
    """A case's verdicts drawn on its T2W grid.

    Attributes
    ----------
    planned : list of (Path, SimpleITK.Image)
        The negative and hint masks, each with its path relative to the output folder.
    record : dict
        The case's ``verdicts`` entry of dataset.json.
    warnings : list of str
        A warning when rejected findings lie inside the lesion label.
    """

    planned: list[tuple[Path, sitk.Image]]
    record: dict[str, Any]
    warnings: list[str]


def _verdict_outputs(
    case_id: str,
    verdicts: Sequence[NodeVerdicts],
    study: StudyInput,
    prepared: PreparedStudy,
    labels: _Labels,
) -> _VerdictOutputs:
    """Draw the case's verdicts as negative and hint masks on its T2W grid."""
    t2w = prepared.t2w
    masks = draw_verdicts(verdicts, study.images, t2w, prepared.roles["t2w"].series_instance_uid)
    planned = [
        (NEGATIVE_DIR / f"{case_id}.nii.gz", _image(masks.negative, t2w)),
        (HINTS_DIR / f"{case_id}.nii.gz", _image(masks.hints, t2w)),
    ]
    inside = int(np.count_nonzero(masks.negative & (labels.lesion > 0)))
    warnings = [f"{inside} voxel(s) of rejected AI findings lie inside the lesion label"] if inside else []
    return _VerdictOutputs(planned, masks.record, warnings)


def _write_outputs(case_id: str, planned: list[tuple[Path, sitk.Image]], out: Path) -> dict[str, str]:
    """Write a case's volumes into a staging folder, then move them into ``out``; their SHA-256 by path.

    The staging folder is removed in any case, so a case that fails to write leaves no partial output there.
    """
    staging = out / f".building-{case_id}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for rel, image in planned:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(target), useCompression=True)
        outputs = {}
        for rel, _ in planned:
            outputs[rel.as_posix()] = file_sha256(staging / rel)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, out / rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outputs


def _roles_record(prepared: PreparedStudy) -> dict[str, dict[str, Any]]:
    """The series chosen for each role (the ``images`` entry of dataset.json)."""
    return {
        role: {
            "series_instance_uid": c.series_instance_uid,
            "series_number": c.series_number,
            "description": c.description,
            "b_value": c.b_value,
        }
        for role, c in prepared.roles.items()
    }


def _build_case(
    case_id: str,
    study: StudyInput,
    segs: list[Path],
    files: LabelFiles,
    given: dict[str, str] | None,
    options: BuildOptions,
    out: Path,
    verdicts: Sequence[NodeVerdicts] = (),
) -> dict[str, Any]:
    """Build one case into ``out``; returns its dataset.json entry (without fingerprint). Raises _SkipError."""
    prepared = _prepared(study)
    labels = _case_labels(segs, files, prepared.t2w, options)
    warnings = []
    row = _marksheet_row(case_id, study, labels, given, options)
    if row["case_csPCa"].upper() == "YES" and not np.any(labels.lesion > 0):
        warnings.append("csPCa by the marksheet but the lesion label is empty: training will skip this case")
    planned = _planned_volumes(case_id, prepared, labels, options)
    verdict_record = None
    if verdicts:
        drawn = _verdict_outputs(case_id, verdicts, study, prepared, labels)
        planned += drawn.planned
        verdict_record = drawn.record
        warnings += drawn.warnings
    outputs = _write_outputs(case_id, planned, out)
    values = labels.lesion[labels.lesion > 0]
    return {
        "study_instance_uid": study.study_instance_uid,
        "images": _roles_record(prepared),
        "computed_high_b": prepared.computed is not None,
        "labels": {**labels.record, "lesion_values": sorted({int(v) for v in np.unique(values)})},
        "marksheet": row,
        **({"verdicts": verdict_record} if verdict_record is not None else {}),
        "outputs": outputs,
        "warnings": warnings + prepared.warnings,
    }


class DatasetBuilder:
    """A build of a PI-CAI layout, one study at a time (:func:`build_dataset` for folders; the node's studies
    come one by one through :mod:`training.datasets.node_source`, so that only one is on disk at a time).

    Parameters
    ----------
    out : Path
        Output folder (see the module docstring).
    labels : Path, optional
        Folder of label files and an optional ``marksheet.csv`` (:mod:`training.datasets.dataset_inputs`).
    options : BuildOptions, optional
    case_ids : Path, optional
        CSV mapping StudyInstanceUID to case id (``<patient>_<study>``); default from PatientID and
        AccessionNumber/StudyID.

    Raises
    ------
    ValueError
        A missing labels folder, a bad case-id CSV or marksheet.
    """

    def __init__(
        self,
        out: Path,
        labels: Path | None = None,
        options: BuildOptions | None = None,
        case_ids: Path | None = None,
    ) -> None:
        self.out = out
        self.labels = labels
        self.options = options or BuildOptions()
        if labels is not None and not labels.exists():
            raise ValueError(f"input {labels} does not exist")
        self.mapping = read_case_ids(case_ids) if case_ids is not None else {}
        self.marksheet: dict[str, dict[str, str]] = {}
        if labels is not None and (labels / "marksheet.csv").is_file():
            from training.datasets.picai_data import read_marksheet

            self.marksheet = {k: r.raw for k, r in read_marksheet(labels / "marksheet.csv").items()}
        out.mkdir(parents=True, exist_ok=True)
        record_path = out / "dataset.json"
        previous: dict[str, Any] = (
            json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
        )
        self.old_cases: dict[str, Any] = previous.get("cases", {})
        self.result = BuildResult()
        self.cases: dict[str, Any] = {}

    def add(self, study: StudyInput, verdicts: Sequence[NodeVerdicts] = ()) -> str | None:
        """Build (or keep) one study's case (its labels: its radiologist SEGs, else the label files; its
        verdicts, a node's: drawn beside the labels, see :mod:`training.datasets.verdict_masks`); returns its case id,
        None when skipped (recorded in :attr:`result`)."""
        options, out, result = self.options, self.out, self.result
        case_id = self.mapping.get(study.study_instance_uid) or default_case_id(study.header)
        if case_id in self.cases:
            result.skipped.append(
                {
                    "case_id": case_id,
                    "input": study.study_instance_uid,
                    "reason": "a second study with the same case id; give it its own in --case-ids",
                }
            )
            return None
        old = self.old_cases.get(case_id)
        try:
            radiologist = _radiologist_segs(study, options, result)
            files = find_label_files(self.labels, case_id)
            given = self.marksheet.get(case_id)
            fingerprint = _fingerprint(case_id, study, radiologist, files, given, options, verdicts)
            if old is not None and old.get("fingerprint") == fingerprint and _outputs_intact(out, old):
                self.cases[case_id] = old
                result.unchanged.append(case_id)
                return case_id
            entry = _build_case(case_id, study, radiologist, files, given, options, out, verdicts)
        except _SkipError as exc:
            result.skipped.append({"case_id": case_id, "input": study.study_instance_uid, "reason": str(exc)})
            if old is not None:
                _remove_outputs(out, old)
                result.removed.append(case_id)
            return None
        if old is not None:
            for rel in set(old.get("outputs", {})) - set(entry["outputs"]):
                (out / rel).unlink(missing_ok=True)
        self.cases[case_id] = {"fingerprint": fingerprint, **entry}
        result.built.append(case_id)
        return case_id

    def skip(self, source: str, reason: str) -> None:
        """Report an input that was not built (``source``: what it was), and why."""
        self.result.skipped.append({"input": source, "reason": reason})

    def ignore(self, source: str, reason: str) -> None:
        """Report an input left out on purpose (``source``: what it was), and why."""
        self.result.ignored.append({"input": source, "reason": reason})

    def finish(self) -> BuildResult:
        """Write the marksheet and ``dataset.json`` (cases built earlier from inputs not given this time are
        kept); returns what the build did."""
        out, result, cases = self.out, self.result, self.cases
        for case_id, old in self.old_cases.items():
            if case_id not in cases and case_id not in result.removed:
                cases[case_id] = old  # built earlier from inputs not given this time: kept
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(MARKSHEET_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for case_id in sorted(cases):
            writer.writerow(cases[case_id]["marksheet"])
        _write_atomic(out / _MARKSHEET, text.getvalue())
        record = {
            "format": FORMAT,
            "layout": "picai",
            "train": f"lesion-ai train --data {out} --data-format picai",
            "options": self.options.to_dict(),
            "cases": {k: cases[k] for k in sorted(cases)},
            "skipped": result.skipped,
            "ignored": result.ignored,
        }
        _write_atomic(out / "dataset.json", json.dumps(record, indent=2, sort_keys=False) + "\n")
        return result


def build_dataset(
    studies: Sequence[Path],
    out: Path,
    labels: Path | None = None,
    options: BuildOptions | None = None,
    case_ids: Path | None = None,
    segs: Sequence[Path] = (),
    node: NodeSource | None = None,
) -> BuildResult:
    """Build (or bring up to date) a PI-CAI layout from DICOM studies and labels.

    Parameters
    ----------
    studies : sequence of Path
        Folders (or files) with DICOM studies, any layout; SEGs among them are label candidates.
    out : Path
        Output folder (see the module docstring).
    labels : Path, optional
        Folder of label files and an optional ``marksheet.csv`` (:mod:`training.datasets.dataset_inputs`).
    options : BuildOptions, optional
    case_ids : Path, optional
        CSV mapping StudyInstanceUID to case id (``<patient>_<study>``); default from PatientID and
        AccessionNumber/StudyID.
    segs : sequence of Path
        More folders or files with SEGs.
    node : NodeSource, optional
        A lesion-ai node whose labelled studies are built too (the labels radiologists sent back to it;
        :mod:`training.datasets.node_source`).

    Returns
    -------
    BuildResult

    Raises
    ------
    ValueError
        No input, a missing input folder, a bad case-id CSV or marksheet.
    NodeSourceError
        The node cannot be reached or read (the cases built until then are recorded).
    """
    if not studies and node is None:
        raise ValueError("nothing to build: give folders of DICOM studies, a node (--from-node URL), or both")
    for path in (*studies, *segs):
        if not path.exists():
            raise ValueError(f"input {path} does not exist")
    builder = DatasetBuilder(out, labels, options, case_ids)
    found, skipped_inputs = find_studies(list(studies), list(segs))
    builder.result.skipped.extend(skipped_inputs)
    for study in found:
        builder.add(study)
    if node is not None:
        try:
            add_node_studies(node, out, builder)
        except NodeSourceError:
            builder.finish()  # what was built until then is recorded
            raise
    return builder.finish()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dataset`` sub-command (``lesion-ai dataset build``)."""
    parser = subparsers.add_parser(
        "dataset", help="build a training data set (PI-CAI layout) from the site's DICOM studies and labels"
    )
    commands = parser.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)
    build = commands.add_parser(
        "build",
        help="DICOM studies + labels -> PI-CAI layout for `lesion-ai train --data-format picai`",
        description="Turn DICOM studies into the PI-CAI layout that `lesion-ai train --data OUT --data-format "
        "picai` reads, with the node's own series selection and resampling. Labels: a folder of PI-CAI style "
        "label files (<case>.nii.gz or <case>_lesion.nii.gz with ISUP values; <case>_gland.nii.gz, "
        "<case>_zones[_MODEL].nii.gz, marksheet.csv optional), or a radiologist's DICOM SEG of the study "
        "(it wins over label files). SEG convention: each lesion segment states 'ISUP n' (0..5) or 'PI-RADS n' "
        "(1..5) in its SegmentLabel or SegmentDescription; ISUP >= 2 is csPCa with that grade, ISUP 0/1 is not "
        "csPCa; PI-RADS-only segments at or above --pirads-cspca are csPCa of unknown grade; a 'prostate' "
        "segment is the gland mask. SEGs made by the node (Manufacturer --node-manufacturer) are never used. "
        "With --from-node, the studies for which radiologists sent a SEG back to a lesion-ai node "
        "(GET /lesion-ai/labels) are fetched from it, one at a time, and built with that SEG as labels; "
        "their radiologists' verdicts on the AI's findings (GET /lesion-ai/verdicts) are drawn on the T2W "
        "grid beside the labels: rejected findings in OUT/picai_labels/verdicts/negative/<case>.nii.gz "
        "(hard negatives), missed findings in OUT/picai_labels/verdicts/hints/<case>.nii.gz (lesion hints), "
        "for training code that uses them (`lesion-ai train` does not read them); studies with verdicts but "
        "no label are skipped. "
        "Unchanged cases are not rebuilt; OUT/dataset.json says what was built and what was skipped and why.",
    )
    build.add_argument(
        "studies", nargs="*", type=Path, help="folders (or files) with DICOM studies, any layout"
    )
    build.add_argument("--out", type=Path, required=True, help="output folder (the PI-CAI layout)")
    build.add_argument("--labels", type=Path, help="folder of label files and marksheet.csv")
    build.add_argument("--segs", type=Path, nargs="*", default=[], help="more folders or files with SEGs")
    build.add_argument(
        "--case-ids", type=Path, help="CSV StudyInstanceUID,case_id (default <PatientID>_<AccessionNumber>)"
    )
    build.add_argument("--hbv-source", choices=HBV_SOURCES, default="b1400", help="HBV image (default b1400)")
    build.add_argument(
        "--pirads-cspca",
        default="4",
        choices=("1", "2", "3", "4", "5", "never"),
        help="PI-RADS-only SEG segments at or above this are csPCa of unknown grade (default 4)",
    )
    build.add_argument(
        "--node-manufacturer",
        action="append",
        help=f"Manufacturer of the node's own results (default {PRODUCT_NAME!r}; repeatable)",
    )
    build.add_argument(
        "--center", default="", help="center column of the marksheet (default InstitutionName)"
    )
    build.add_argument(
        "--zones-model", default="HeviAI23", help="folder of <case>_zones.* masks (default HeviAI23)"
    )
    build.add_argument(
        "--from-node",
        metavar="URL",
        help="a lesion-ai node's URL (e.g. http://node:8042): build the studies it holds labels for",
    )
    build.add_argument(
        "--user", help=f"the node's user name (HTTP Basic; default the environment's {USER_ENV})"
    )
    build.add_argument(
        "--password",
        help=f"the node's password (default the environment's {PASSWORD_ENV}, which keeps it out of the "
        "process list)",
    )
    build.add_argument(
        "--max-study-gb",
        type=float,
        default=DEFAULT_MAX_STUDY_BYTES / 1024**3,
        help="most GiB fetched for one study from the node; larger ones are skipped "
        f"(default {DEFAULT_MAX_STUDY_BYTES / 1024**3:g})",
    )
    build.set_defaults(func=run)


def _node(args: argparse.Namespace, options: BuildOptions) -> NodeSource | None:
    if not args.from_node:
        for flag in ("user", "password"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} is for --from-node; give the node's URL too")
        return None
    if not args.max_study_gb > 0:
        raise ValueError(f"--max-study-gb must be positive, got {args.max_study_gb}")
    user = args.user if args.user is not None else os.environ.get(USER_ENV) or None
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV)
    return NodeSource(
        args.from_node,
        user,
        password,
        options.seg.node_manufacturers,
        max(1, int(args.max_study_gb * 1024**3)),
    )


def run(args: argparse.Namespace) -> int:
    """Run ``dataset build``; 0 when the output holds at least one case, 1 when none, 2 on bad arguments."""
    try:
        options = BuildOptions(
            hbv_source=args.hbv_source,
            seg=SegLabelOptions(
                pirads_cspca=None if args.pirads_cspca == "never" else int(args.pirads_cspca),
                node_manufacturers=tuple(args.node_manufacturer or (PRODUCT_NAME,)),
            ),
            center=args.center,
            zones_model=args.zones_model,
        )
        node = _node(args, options)
        result = build_dataset(args.studies, args.out, args.labels, options, args.case_ids, args.segs, node)
    except (ValueError, OSError, NodeSourceError) as exc:
        sys.stderr.write(f"lesion-ai dataset build: {exc}\n")
        return 2
    lines = []
    for entry in result.skipped:
        lines.append(f"skipped {entry.get('case_id') or entry['input']}: {entry['reason']}")
    for entry in result.ignored:
        lines.append(f"ignored {entry['input']}: {entry['reason']}")
    if result.changed:
        lines.append(
            f"built {len(result.built)} case(s), {len(result.unchanged)} unchanged, "
            f"{len(result.removed)} removed, {len(result.skipped)} skipped"
        )
    else:
        lines.append(
            f"nothing changed: {len(result.unchanged)} case(s) up to date, {len(result.skipped)} skipped"
        )
    record = json.loads((args.out / "dataset.json").read_text(encoding="utf-8"))
    lines.append(f"wrote {args.out / 'dataset.json'}; train with: {record['train']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if record["cases"] else 1
