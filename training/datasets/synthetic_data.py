"""Training cases from synthetic studies written by :mod:`training.synth`.

A synthetic data set is a folder with ``marksheet.csv`` and one folder per case::

    <root>/<patient>_<study>/dicom/...                       the DICOM study
    <root>/<patient>_<study>/labels/<p>_<s>_lesion.nii.gz     csPCa ISUP value per voxel (T2W grid)
    <root>/<patient>_<study>/labels/<p>_<s>_zones.nii.gz      0 background / 1 PZ / 2 TZ (T2W grid)
    <root>/<patient>_<study>/truth.json                       every lesion, of every kind

The study goes through the engine's own input pipeline (:func:`lesion_engine.intake.preprocess.prepare_study`,
then :func:`lesion_engine.model.model_input.to_model_input`), so training sees exactly what inference sees. The
labels are resampled onto the model grid with nearest neighbour (the model grid being the PI-CAI crop for a
model whose localization network is the PI-CAI U-Net). csPCa lesions are the connected components
of the resampled csPCa label, each matched to the nearest csPCa lesion of ``truth.json``; the other lesions
(indolent cancer, BPH, prostatitis) are not in any label image and are rasterized from ``truth.json``: the
ellipsoid of ``center_lps_mm``, ``radii_mm`` and ``axes`` (the rotation ``R`` of ``|R^T (p - c) / r| <= 1``;
axis-aligned when absent). The phantom's lesions may have a slightly wavy boundary that the truth does not
describe, so these masks are close approximations, used to label classifier candidates and to match
detections.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from lesion_engine.intake.preprocess import prepare_study
from lesion_engine.model.model_input import PreprocessConfig, resample_label, to_model_input
from training.datasets.cases import (
    LESION_KINDS,
    UNKNOWN,
    LesionRecord,
    TrainingCase,
    components_as_lesions,
    grid_points_lps,
    lesion_centroid,
    target_category,
)

logger = logging.getLogger(__name__)

__all__ = [
    "TruthLesion",
    "find_synthetic_cases",
    "read_truth",
    "synthetic_case",
    "synthetic_label_path",
]

_ZONE_NAMES = {1: "pz", 2: "tz"}


class TruthLesion:
    """One lesion of a synthetic case's ``truth.json``.

    Parameters
    ----------
    data : dict
        The lesion's entry.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        try:
            self.lesion_id = str(data["id"])
            self.kind = str(data["kind"])
            self.isup = int(data.get("isup", 0))
            self.center = np.asarray(data["center_lps_mm"], dtype=np.float64).reshape(3)
            self.radii = np.asarray(data["radii_mm"], dtype=np.float64).reshape(3)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"truth lesion entry {data!r} is incomplete or malformed: {exc}") from exc
        if self.kind not in LESION_KINDS:
            raise ValueError(
                f"truth lesion {self.lesion_id}: kind {self.kind!r} is not one of {LESION_KINDS}"
            )
        if np.any(self.radii <= 0):
            raise ValueError(f"truth lesion {self.lesion_id}: radii_mm must be positive, got {self.radii}")
        zone = data.get("zone")
        self.zone = None if zone is None else str(zone).lower()
        rotation = data.get("axes", data.get("rotation"))
        self.rotation = None if rotation is None else np.asarray(rotation, dtype=np.float64).reshape(3, 3)

    def mask(self, points_lps: NDArray[np.float64], scale: float = 1.0) -> NDArray[np.bool_]:
        """Voxels whose centre lies inside the lesion's ellipsoid (radii times ``scale``)."""
        offset = points_lps - self.center
        if self.rotation is not None:
            offset = offset @ self.rotation  # into the ellipsoid's own axes
        q = offset / (self.radii * scale)
        inside: NDArray[np.bool_] = np.sum(q * q, axis=-1) <= 1.0
        return inside


def find_synthetic_cases(root: Path) -> list[Path]:
    """Case folders of a synthetic data set, in marksheet order (or sorted when there is no marksheet).

    Raises
    ------
    FileNotFoundError
        When ``root`` holds no case (no folder with ``dicom/`` and ``truth.json``).
    """
    marksheet = root / "marksheet.csv"
    folders: list[Path] = []
    if marksheet.is_file():
        import csv

        with marksheet.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                folder = root / f"{row['patient_id']}_{row['study_id']}"
                if folder.is_dir():
                    folders.append(folder)
    if not folders:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "dicom").is_dir())
    folders = [f for f in folders if (f / "dicom").is_dir() and (f / "truth.json").is_file()]
    if not folders:
        raise FileNotFoundError(
            f"{root} holds no synthetic case (folders with dicom/ and truth.json, as `lesion-ai synth` writes)"
        )
    return folders


def synthetic_label_path(case_dir: Path, name: str) -> Path:
    """Path of a case's label image ``name`` (``lesion``, ``gland`` or ``zones``)."""
    return case_dir / "labels" / f"{case_dir.name}_{name}.nii.gz"


def read_truth(case_dir: Path) -> tuple[dict[str, Any], list[TruthLesion]]:
    """The parsed ``truth.json`` of a case and its lesions."""
    truth = json.loads((case_dir / "truth.json").read_text(encoding="utf-8"))
    if not isinstance(truth, dict) or not isinstance(truth.get("lesions", []), list):
        raise ValueError(f"{case_dir / 'truth.json'}: expected an object with a 'lesions' list")
    return truth, [TruthLesion(d) for d in truth.get("lesions", [])]


def _zone_of(mask: NDArray[np.bool_], zones: NDArray[np.integer[Any]], fallback: str | None) -> str | None:
    values = zones[mask]
    values = values[values > 0]
    if values.size == 0:
        return fallback
    return _ZONE_NAMES.get(int(np.bincount(values).argmax()), fallback)


def _to_index(grid: sitk.Image, point: NDArray[np.float64]) -> tuple[float, float, float]:
    x, y, z = grid.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point))
    return (float(z), float(y), float(x))


@dataclass(frozen=True)
class _PaintedLesion:
    """A lesion mask to paint on the model grid, with the truth lesion it stands for and its ISUP grade."""

    mask: NDArray[np.bool_]
    truth: TruthLesion | None
    isup: int


def _rasterized(
    grid: sitk.Image, points: NDArray[np.float64], shape: tuple[int, ...], lesion: TruthLesion
) -> NDArray[np.bool_] | None:
    """The mask of a truth lesion's ellipsoid on the model grid.

    Parameters
    ----------
    grid
        The model grid.
    points
        Its voxel centres (LPS mm), shape (Z, Y, X, 3).
    shape
        Its shape (Z, Y, X).
    lesion
        The truth lesion.

    Returns
    -------
    numpy.ndarray or None
        The voxels inside the ellipsoid; the voxel at its centre when the ellipsoid is too small to cover a
        voxel centre; None (logged) when that centre lies outside the grid.
    """
    mask = lesion.mask(points)
    if mask.any():
        return mask
    z, y, x = (round(v) for v in _to_index(grid, lesion.center))
    if 0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]:
        mask[z, y, x] = True
        return mask
    logger.info("lesion %s (%s) lies outside the model grid; left out", lesion.lesion_id, lesion.kind)
    return None


def _other_lesions(
    grid: sitk.Image, cspca: NDArray[np.int16], truth_lesions: list[TruthLesion]
) -> list[_PaintedLesion]:
    """The lesions that are not in the csPCa label, rasterized from the truth, less the csPCa voxels."""
    shape = cspca.shape
    points = grid_points_lps(grid)
    painted: list[_PaintedLesion] = []
    for lesion in truth_lesions:
        if lesion.kind == "cspca":
            continue
        mask = _rasterized(grid, points, shape, lesion)
        if mask is not None:
            painted.append(_PaintedLesion(mask & (cspca == 0), lesion, lesion.isup))
    return painted


def _nearest_unused(cancers: list[TruthLesion], used: set[int], centre: NDArray[np.float64]) -> int | None:
    """Index of the truth cancer nearest to ``centre`` that is not in ``used``; None when none is left."""
    if not cancers:
        return None
    distances = [
        float(np.linalg.norm(t.center - centre)) if i not in used else np.inf for i, t in enumerate(cancers)
    ]
    best = int(np.argmin(distances))
    return best if np.isfinite(distances[best]) else None


def _cancer_components(
    grid: sitk.Image, cspca: NDArray[np.int16], truth_lesions: list[TruthLesion]
) -> list[_PaintedLesion]:
    """The connected components of the csPCa label, each matched to the nearest unmatched truth cancer.

    A component whose grade the label does not give takes that of its truth cancer (or stays unknown).
    """
    cancers = [t for t in truth_lesions if t.kind == "cspca"]
    used: set[int] = set()
    painted: list[_PaintedLesion] = []
    for component, isup in components_as_lesions(cspca):
        cz, cy, cx = lesion_centroid(component)
        centre = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((cx, cy, cz)), dtype=np.float64)
        best = _nearest_unused(cancers, used, centre)
        match: TruthLesion | None = None
        if best is not None:
            used.add(best)
            match = cancers[best]
        grade = isup if isup != UNKNOWN else (match.isup if match is not None else UNKNOWN)
        painted.append(_PaintedLesion(component, match, grade))
    return painted


def _paint(
    painted: list[_PaintedLesion], zones: NDArray[np.uint8], shape: tuple[int, ...]
) -> tuple[NDArray[np.int16], list[LesionRecord]]:
    """Paint the non-empty masks in order, each over the earlier ones, and record each lesion.

    Parameters
    ----------
    painted
        The lesions, in painting order.
    zones
        The zone label on the model grid.
    shape
        The grid's shape (Z, Y, X).

    Returns
    -------
    lesion_index, records
        The map of 1-based labels and one record per painted lesion (label = its position).
    """
    lesion_index = np.zeros(shape, dtype=np.int16)
    records: list[LesionRecord] = []
    for lesion in painted:
        mask, truth, isup = lesion.mask, lesion.truth, lesion.isup
        if not mask.any():
            continue
        label = len(records) + 1
        lesion_index[mask] = label
        kind = truth.kind if truth is not None else "cspca"
        records.append(
            LesionRecord(
                lesion_id=truth.lesion_id if truth is not None else f"component{label}",
                kind=kind,
                isup=isup,
                category=target_category(kind, isup),
                label=label,
                center_zyx=lesion_centroid(mask),
                voxels=int(mask.sum()),
                zone=_zone_of(mask, zones, truth.zone if truth is not None else None),
            )
        )
    return lesion_index, records


def _kept(
    lesion_index: NDArray[np.int16], records: list[LesionRecord]
) -> tuple[NDArray[np.int16], tuple[LesionRecord, ...]]:
    """What each label kept after later masks painted over it: labels renumbered, emptied ones dropped."""
    final: list[LesionRecord] = []
    relabel = np.zeros(len(records) + 1, dtype=np.int16)
    for record in records:
        mask = lesion_index == record.label
        if not mask.any():
            continue
        new_label = len(final) + 1
        relabel[record.label] = new_label
        final.append(
            replace(record, label=new_label, center_zyx=lesion_centroid(mask), voxels=int(mask.sum()))
        )
    return relabel[lesion_index], tuple(final)


def build_lesions(
    grid: sitk.Image,
    cspca: NDArray[np.int16],
    zones: NDArray[np.uint8],
    truth_lesions: list[TruthLesion],
) -> tuple[NDArray[np.int16], tuple[LesionRecord, ...]]:
    """The ``lesion_index`` map and lesion records of a synthetic case on the model grid.

    Non-csPCa lesions are painted first and csPCa components last, so that a csPCa voxel always belongs to
    its cancer. A truth lesion that covers no voxel of the grid is left out (logged).
    """
    painted = _other_lesions(grid, cspca, truth_lesions) + _cancer_components(grid, cspca, truth_lesions)
    lesion_index, records = _paint(painted, zones, cspca.shape)
    # Later (csPCa) masks may have overwritten earlier ones: recompute what each label kept.
    return _kept(lesion_index, records)


def synthetic_case(case_dir: Path, config: PreprocessConfig) -> TrainingCase:
    """Build the :class:`~training.datasets.cases.TrainingCase` of one synthetic case folder.

    Parameters
    ----------
    case_dir : Path
        ``<root>/<patient>_<study>`` as written by :func:`training.synth.generate`.
    config : PreprocessConfig
        The model grid and normalization (the same as the model's).

    Returns
    -------
    TrainingCase
    """
    prepared = prepare_study(case_dir / "dicom")
    model_input = to_model_input(prepared, config)
    grid = model_input.grid
    cspca = resample_label(sitk.ReadImage(str(synthetic_label_path(case_dir, "lesion"))), grid)
    zones_path = synthetic_label_path(case_dir, "zones")
    has_zones = zones_path.is_file()
    if has_zones:
        zones = np.clip(resample_label(sitk.ReadImage(str(zones_path)), grid), 0, 2).astype(np.uint8)
    else:
        zones = np.zeros(cspca.shape, dtype=np.uint8)
    truth, truth_lesions = read_truth(case_dir)
    lesion_index, lesions = build_lesions(grid, cspca, zones, truth_lesions)
    roles = truth.get("roles", {})
    meta: dict[str, Any] = {
        "case_dir": case_dir.name,
        "vendor": truth.get("vendor"),
        "enhanced": truth.get("enhanced"),
        "truth_lesions": len(truth_lesions),
        "roles": roles if isinstance(roles, dict) else {},
    }
    return TrainingCase(
        case_id=case_dir.name,
        images=model_input.images,
        cspca=cspca.astype(np.int16),
        zones=zones,
        lesion_index=lesion_index,
        lesions=lesions,
        has_zones=has_zones,
        source="synthetic",
        meta=meta,
    )
