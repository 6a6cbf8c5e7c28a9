"""Ground truth of a synthetic case in PI-CAI conventions: label images on the T2W grid, the marksheet row
and ``truth.json`` (expected series roles, lesions, geometry).

Expected diffusion roles: the high b-value image (HBV) is the highest-b trace image of the study (an
acquired DWI, a scanner-calculated series or a DTI scan's TRACEW; a b = 1400 image is computed only when no
trace image reaches 1400), and the ADC map is that of the same diffusion acquisition as the HBV image. FA
maps, directional DTI images and the DTI scan's b = 0 images are never chosen.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from training.synth.config import case_rng
from training.synth.geometry import Grid
from training.synth.phantom import Lesion, Phantom
from training.synth.protocol import SeriesPlan, StudyPlan

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORED_KINDS",
    "MARKSHEET_COLUMNS",
    "TRACE_KINDS",
    "LabelVolumes",
    "expected_diffusion",
    "expected_t2w",
    "label_volumes",
    "marksheet_row",
    "truth_record",
    "write_labels",
    "write_marksheet",
    "write_truth",
]

MARKSHEET_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "study_id",
    "mri_date",
    "patient_age",
    "psa",
    "psad",
    "prostate_volume",
    "histopath_type",
    "lesion_PIRADS",
    "lesion_GS",
    "lesion_ISUP",
    "case_ISUP",
    "case_csPCa",
    "center",
)

IGNORED_KINDS: tuple[str, ...] = ("localizer", "t2_sag", "t2_cor", "coil_reference", "dce", "screenshot")
"""Series kinds that a T2W/ADC/HBV selector must ignore (the names used in ``ignored_series``)."""

TRACE_KINDS: tuple[str, ...] = ("dwi", "calc", "trace")
"""Series kinds of isotropic (trace) diffusion images, the candidates for the high b-value image."""

_B_VALUE_KINDS: tuple[str, ...] = ("dwi", "calc", "dti", "trace")
_ACQUISITION_TYPES = {"dwi": "standard", "dwi_high_b": "high_b", "dti": "dti"}

CENTER = "SYNTH"


class LabelVolumes:
    """Label arrays (``slices, rows, columns``) of a case on its T2W grid."""

    def __init__(
        self,
        grid: Grid,
        lesion: NDArray[np.uint16],
        gland: NDArray[np.uint8],
        zones: NDArray[np.uint8],
        counts: list[int],
    ) -> None:
        self.grid = grid
        self.lesion = lesion
        self.gland = gland
        self.zones = zones
        self.counts = counts  # voxels of each lesion (same order as phantom.lesions)


def expected_t2w(study: StudyPlan) -> SeriesPlan:
    """The T2W series a selector should choose: the later acquisition when it was repeated."""
    t2 = [s for s in study.series if s.kind == "t2w"]
    return max(t2, key=lambda s: (s.acquisition_time, s.series_time, s.number))


def expected_diffusion(study: StudyPlan) -> tuple[SeriesPlan, SeriesPlan, SeriesPlan]:
    """The HBV series, the ADC map and the acquired DWI series a selector should choose.

    The HBV series holds the highest-b trace image of the study (a calculated series wins a tie with the
    acquired one, which cannot happen with the b-values the generator draws); the ADC map and the DWI
    series are those of its diffusion acquisition.
    """
    candidates = [s for s in study.series if s.kind in TRACE_KINDS]
    hbv = max(candidates, key=lambda s: (max(s.b_values), s.kind != "dwi"))
    adc = study.of_acquisition(hbv.acquisition, "adc")
    if adc is None:
        raise ValueError(f"diffusion acquisition {hbv.acquisition!r} has no ADC map")
    return hbv, adc, study.by_key(hbv.acquisition)


def _acquisitions(study: StudyPlan, chosen: str) -> list[dict[str, Any]]:
    """One entry per diffusion acquisition: its series by kind, b-values and whether it is the chosen one."""
    out: list[dict[str, Any]] = []
    for key, kind in _ACQUISITION_TYPES.items():
        members = [s for s in study.series if s.acquisition == key]
        if not members:
            continue
        root = study.by_key(key)
        trace_b = [b for s in members if s.kind in TRACE_KINDS for b in s.b_values]
        mddw = key == "dwi" and study.plan.dwi_scheme == "mddw"
        out.append(
            {
                "key": key,
                "type": "mddw" if mddw else kind,
                "b_values": list(root.b_values),
                "top_b_value": max(trace_b),
                "series": {s.kind: s.number for s in members},
                "directions": max(len(s.directions) for s in members),
                "chosen": key == chosen,
            }
        )
    return out


def label_volumes(ph: Phantom, grid: Grid) -> LabelVolumes:
    """csPCa lesion (ISUP value), gland (0/1) and zone (0/1 PZ/2 TZ) labels at the voxel centres of ``grid``."""
    lesion = np.zeros(grid.shape, dtype=np.uint16)
    gland = np.zeros(grid.shape, dtype=np.uint8)
    zones = np.zeros(grid.shape, dtype=np.uint8)
    counts = [0] * len(ph.lesions)
    values = np.array([les.label_value for les in ph.lesions] + [0], dtype=np.uint16)
    for k in range(grid.size[2]):
        lat = grid.lattice(k)
        s = ph.classify(lat.points, lat)
        zones[k] = s.zone[0]
        gland[k] = s.zone[0] > 0
        idx = s.lesion[0]
        lesion[k] = values[idx]  # index -1 picks the trailing 0
        for i in range(len(ph.lesions)):
            counts[i] += int(np.count_nonzero(idx == i))
    return LabelVolumes(grid, lesion, gland, zones, counts)


def _image(arr: NDArray[Any], grid: Grid) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(v) for v in grid.spacing))
    img.SetOrigin(tuple(float(v) for v in grid.origin))
    img.SetDirection(grid.sitk_direction())
    return img


def write_labels(labels: LabelVolumes, folder: Path, patient_id: str, study_id: str) -> dict[str, str]:
    """Write ``<patient>_<study>_{lesion,gland,zones}.nii.gz`` into ``folder``; return name -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for name, arr in (("lesion", labels.lesion), ("gland", labels.gland), ("zones", labels.zones)):
        fname = f"{patient_id}_{study_id}_{name}.nii.gz"
        sitk.WriteImage(_image(arr, labels.grid), str(folder / fname), useCompression=True)
        out[name] = fname
    return out


def marksheet_row(study: StudyPlan, ph: Phantom) -> dict[str, str]:
    """The case's row of the PI-CAI-style marksheet (lesions with PI-RADS >= 3 count as biopsied)."""
    plan = study.plan
    rng = case_rng(plan.seed, plan.case_index, 4)
    listed = [les for les in ph.lesions if les.pirads >= 3]
    case_isup = max((les.isup for les in ph.lesions), default=0)
    volume = round(ph.gland_volume_ml())
    psa = float(np.round(rng.lognormal(np.log(6.0 if case_isup < 2 else 9.0), 0.5), 1))
    biopsy = "MRBx" if rng.random() < 0.6 else "SysBx+MRBx"
    histopath = biopsy if listed else ""
    return {
        "patient_id": plan.patient_id,
        "study_id": plan.study_id,
        "mri_date": study.study_date.isoformat(),
        "patient_age": str(study.patient_age),
        "psa": f"{psa:g}",
        "psad": f"{psa / max(volume, 1):.2f}",
        "prostate_volume": str(volume),
        "histopath_type": histopath,
        "lesion_PIRADS": ",".join(str(les.pirads) for les in listed),
        "lesion_GS": ",".join(les.gleason for les in listed),
        "lesion_ISUP": ",".join(str(les.isup) for les in listed),
        "case_ISUP": str(case_isup),
        "case_csPCa": "YES" if case_isup >= 2 else "NO",
        "center": CENTER,
    }


def write_marksheet(path: Path, rows: list[dict[str, str]]) -> None:
    """Write the marksheet CSV (PI-CAI columns) with ``rows`` in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MARKSHEET_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _role(series: SeriesPlan) -> dict[str, Any]:
    return {"series_instance_uid": series.uid, "series_number": series.number}


def _lesion_entry(les: Lesion, count: int, voxel_ml: float) -> dict[str, Any]:
    """The ``truth.json`` entry of one lesion that covers ``count`` voxels of ``voxel_ml`` on the T2W grid."""
    return {
        "id": les.id,
        "kind": les.kind,
        "isup": les.isup,
        "gleason": les.gleason,
        "pirads": les.pirads,
        "zone": les.zone,
        "center_lps_mm": [round(float(v), 3) for v in les.shape.centre],
        "radii_mm": [round(float(v), 3) for v in les.shape.radii],
        "axes": [[round(float(v), 6) for v in row] for row in les.shape.rotation],
        "volume_ml": round(count * voxel_ml, 4),
        "label_value": les.label_value,
        "t2_relative": round(les.t2, 4),
        "adc": round(les.adc, 1),
    }


def _lesion_entries(
    ph: Phantom, labels: LabelVolumes, voxel_ml: float, patient_id: str
) -> list[dict[str, Any]]:
    """The ``truth.json`` entries of every lesion; a labelled lesion without a T2W voxel is logged."""
    lesions = []
    for les, count in zip(ph.lesions, labels.counts, strict=True):
        if les.label_value and count == 0:
            logger.warning("csPCa lesion %d of case %s has no voxel on the T2W grid", les.id, patient_id)
        lesions.append(_lesion_entry(les, count, voxel_ml))
    return lesions


def _roles(
    study: StudyPlan, t2w: SeriesPlan, hbv: SeriesPlan, adc: SeriesPlan, dwi: SeriesPlan
) -> dict[str, Any]:
    """The ``roles`` entry: the expected T2W, ADC, HBV and DWI series, and whether b = 1400 is computed."""
    all_b = [b for s in study.series if s.kind in TRACE_KINDS for b in s.b_values]
    return {
        "t2w": _role(t2w),
        "adc": _role(adc),
        "hbv": {**_role(hbv), "b_value": max(hbv.b_values), "computed": False},
        "dwi": _role(dwi),
        "b1400_computed": not any(b >= 1400 for b in all_b),
    }


def _series_entries(study: StudyPlan, folders: dict[str, str], files: dict[str, int]) -> list[dict[str, Any]]:
    """One ``truth.json`` entry per series: identity, kind, folder, file count and times."""
    return [
        {
            "series_number": s.number,
            "series_instance_uid": s.uid,
            "description": s.style.description,
            "kind": s.kind,
            "key": s.key,
            "folder": f"dicom/{folders[s.key]}",
            "files": files[s.key],
            "acquisition_time": s.acquisition_time,
            "series_time": s.series_time,
        }
        for s in study.series
    ]


def _grid_entry(grid: Grid) -> dict[str, Any]:
    """Size, spacing, origin and direction of a grid, as written in ``truth.json``."""
    return {
        "size": list(grid.size),
        "spacing": list(grid.spacing),
        "origin": list(grid.origin),
        "direction": list(grid.sitk_direction()),
    }


def truth_record(
    study: StudyPlan,
    ph: Phantom,
    labels: LabelVolumes,
    label_files: dict[str, str],
    folders: dict[str, str],
    files: dict[str, int],
) -> dict[str, Any]:
    """The ``truth.json`` content of a case.

    Parameters
    ----------
    study
        The study plan.
    ph
        Its phantom.
    labels
        Its label volumes on the expected T2W grid.
    label_files
        Label name -> file name (in ``labels/``).
    folders
        Series key -> folder name (in ``dicom/``).
    files
        Series key -> number of files written.
    """
    plan = study.plan
    t2w = expected_t2w(study)
    hbv, adc, dwi = expected_diffusion(study)
    voxel_ml = float(np.prod(labels.grid.spacing)) / 1000.0
    lesions = _lesion_entries(ph, labels, voxel_ml, plan.patient_id)
    return {
        "patient_id": plan.patient_id,
        "study_id": plan.study_id,
        "study_instance_uid": study.study_uid,
        "frame_of_reference_uid": study.frame_of_reference_uid,
        "seed": plan.seed,
        "case_index": plan.case_index,
        "vendor": plan.vendor,
        "enhanced": plan.enhanced,
        "compress": plan.compress,
        "profile": plan.profile,
        "tilt_deg": plan.tilt_deg,
        "extra_dwi": plan.extra_dwi,
        "roles": _roles(study, t2w, hbv, adc, dwi),
        "t2w_alternatives": [s.number for s in study.series if s.kind == "t2w" and s.uid != t2w.uid],
        "ignored_series": [
            {"series_number": s.number, "description": s.style.description, "kind": s.kind}
            for s in study.series
            if s.kind in IGNORED_KINDS
        ],
        "b_values": {str(s.number): list(s.b_values) for s in study.series if s.kind in _B_VALUE_KINDS},
        "diffusion_acquisitions": _acquisitions(study, dwi.key),
        "fa_series": [s.number for s in study.series if s.kind == "fa"],
        "directional_series": [s.number for s in study.series if s.directions],
        "lesions": lesions,
        "case_isup": max((les.isup for les in ph.lesions), default=0),
        "gland_volume_ml": round(float(labels.gland.sum()) * voxel_ml, 3),
        "series": _series_entries(study, folders, files),
        "labels": {name: f"labels/{fname}" for name, fname in label_files.items()},
        "t2w_grid": _grid_entry(labels.grid),
    }


def write_truth(path: Path, record: dict[str, Any]) -> None:
    """Write ``truth.json``."""
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
