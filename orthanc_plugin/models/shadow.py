"""Shadow runs of candidate models, kept in the node, and their agreement with the active model and labels.

On every study a worker analyses, each model in shadow (:mod:`orthanc_plugin.models.registry`) runs on the same
instances. What it found is kept in its shadow folder, never stored into Orthanc nor sent to PACS::

    <models>/<name>/shadow/<StudyInstanceUID>.npz    detection maps of the shadow and the active model
                                                      (PI-CAI detection maps on the T2W grid) and the grid
    <models>/<name>/shadow/<StudyInstanceUID>.json   summary: job, models, patient scores, lesions
    <models>/<name>/shadow/<StudyInstanceUID>/       the shadow model's result objects (SEG, SR)
    <models>/<name>/agreement.json                    the last agreement report

The agreement report compares the shadow model's detection maps, by picai_eval, with

* the active model's findings (its reported lesions as the reference): patient-level AUROC, average
  precision and lesion-level sensitivity at 0.5 and 1 false positive per study; with the fraction of
  studies where both call the study positive or both negative, and the mean difference of patient scores;
* the radiologists' labels, for the studies that have one (:mod:`orthanc_plugin.intake.labels`), for the shadow
  model and, side by side, for the active model.

The report compares the newest :data:`MAX_COMPARED` runs (``studies``; ``studies_kept`` counts them
all). A figure that cannot be computed (picai_eval's AUROC needs positive and negative studies) is null, with a
note saying why. Arrays are stored with :func:`numpy.savez_compressed` and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from lesion_engine.model.result_types import EngineResult

logger = logging.getLogger(__name__)

__all__ = [
    "AGREEMENT_FILE",
    "LabelSource",
    "ShadowStore",
    "StudyEvidence",
    "agreement_report",
]

AGREEMENT_FILE = "agreement.json"
#: The agreement compares the newest shadow runs, at most this many (each report reads them all again).
MAX_COMPARED = 500
_UID = re.compile(r"[0-9][0-9.]{0,63}")
#: The overlap a detection needs with a reference lesion to count as a hit (PI-CAI's).
_MIN_IOU = 0.1

#: Labels of a study on a grid: ``(StudyInstanceUID, grid) -> int (Z, Y, X) PI-CAI lesion label`` (csPCa
#: where > 0), or None when the study has no usable label.
LabelSource = Callable[[str, "Grid"], "NDArray[np.int16] | None"]


@dataclass(frozen=True)
class Grid:
    """A T2W grid: origin and spacing (mm, LPS), direction cosines (row-major 3x3) and size (x, y, z)."""

    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]
    size: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.origin) != 3 or len(self.spacing) != 3 or len(self.direction) != 9 or len(self.size) != 3:
            raise ValueError(f"a grid needs 3 origin, 3 spacing, 9 direction and 3 size values, got {self}")

    def image(self) -> Any:
        """An empty SimpleITK image on this grid (for mapping labels onto it)."""
        import SimpleITK as sitk

        image = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class StudyEvidence:
    """What a model found in a study, as the agreement needs it.

    Attributes
    ----------
    study_instance_uid : str
        The study.
    patient_score : float
        Highest lesion probability (0: no lesion).
    detection_map : ndarray
        float32 (Z, Y, X) PI-CAI detection map on the T2W grid (each lesion's blob holds its probability).
    grid : Grid
        The T2W grid.
    lesions : tuple of dict
        ``probability``, ``category``, ``volume_ml``, ``center_lps_mm`` of each reported lesion.
    """

    study_instance_uid: str
    patient_score: float
    detection_map: NDArray[np.float32]
    grid: Grid
    lesions: tuple[dict[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.detection_map.ndim != 3 or tuple(self.detection_map.shape[::-1]) != self.grid.size:
            raise ValueError(
                f"detection map of shape {self.detection_map.shape} is not on the grid of size {self.grid.size}"
            )

    @classmethod
    def from_result(cls, result: EngineResult) -> StudyEvidence:
        """The evidence of an engine result."""
        import SimpleITK as sitk

        image = result.detection_map
        grid = Grid(
            tuple(image.GetOrigin()),
            tuple(image.GetSpacing()),
            tuple(image.GetDirection()),
            tuple(image.GetSize()),
        )
        lesions = tuple(
            {
                "probability": round(float(lesion.probability), 4),
                "category": None if lesion.category is None else int(lesion.category),
                "volume_ml": round(float(lesion.volume_ml), 3),
                "center_lps_mm": [round(float(c), 1) for c in lesion.center_lps_mm],
            }
            for lesion in result.lesions
        )
        detection = sitk.GetArrayFromImage(image).astype(np.float32)
        return cls(result.study_instance_uid, float(result.patient_score), detection, grid, lesions)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ShadowStore:
    """The shadow folder of one model (see the module docstring).

    Parameters
    ----------
    folder : Path
        The model's folder in the models folder (``<models>/<name>``).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shadow = folder / "shadow"

    def _uid(self, uid: str) -> str:
        if not _UID.fullmatch(uid):
            raise ValueError(f"not a StudyInstanceUID: {uid[:80]!r}")
        return uid

    def save(
        self,
        shadow: StudyEvidence,
        active: StudyEvidence,
        objects: Sequence[bytes],
        summary: Mapping[str, Any],
    ) -> None:
        """Keep one study's shadow run: both detection maps, the shadow's result objects, a summary."""
        uid = self._uid(shadow.study_instance_uid)
        if active.study_instance_uid != uid or active.detection_map.shape != shadow.detection_map.shape:
            raise ValueError(f"study {uid}: the active and the shadow results are not of the same study grid")
        self.shadow.mkdir(mode=0o700, parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            shadow=shadow.detection_map.astype(np.float32),
            active=active.detection_map.astype(np.float32),
            origin=np.asarray(shadow.grid.origin, dtype=np.float64),
            spacing=np.asarray(shadow.grid.spacing, dtype=np.float64),
            direction=np.asarray(shadow.grid.direction, dtype=np.float64),
        )
        _write_atomic(self.shadow / f"{uid}.npz", buffer.getvalue())
        objects_dir = self.shadow / uid
        objects_dir.mkdir(mode=0o700, exist_ok=True)
        for old in objects_dir.glob("*.dcm"):
            old.unlink()
        for number, data in enumerate(objects, 1):
            _write_atomic(objects_dir / f"{number:02d}.dcm", data)
        record = {
            **summary,
            "study_instance_uid": uid,
            "time": _now(),
            "shadow": {"patient_score": round(shadow.patient_score, 4), "lesions": list(shadow.lesions)},
            "active": {"patient_score": round(active.patient_score, 4), "lesions": list(active.lesions)},
            "objects": len(objects),
        }
        _write_atomic(self.shadow / f"{uid}.json", (json.dumps(record, indent=2) + "\n").encode())

    def studies(self, newest: int | None = None) -> list[str]:
        """StudyInstanceUIDs with a kept shadow run, sorted; only the ``newest`` runs when given."""
        if not self.shadow.is_dir():
            return []
        runs = [p for p in self.shadow.glob("*.npz") if _UID.fullmatch(p.stem)]
        if newest is not None:
            runs = sorted(runs, key=lambda p: p.stat().st_mtime)[-newest:] if newest > 0 else []
        return sorted(p.stem for p in runs)

    def load(self, uid: str) -> tuple[NDArray[np.float32], NDArray[np.float32], Grid]:
        """The shadow's and the active model's detection maps of a study, and its grid."""
        with np.load(self.shadow / f"{self._uid(uid)}.npz", allow_pickle=False) as data:
            shadow = np.asarray(data["shadow"], dtype=np.float32)
            active = np.asarray(data["active"], dtype=np.float32)
            grid = Grid(
                tuple(float(v) for v in data["origin"]),
                tuple(float(v) for v in data["spacing"]),
                tuple(float(v) for v in data["direction"]),
                tuple(int(s) for s in shadow.shape[::-1]),
            )
        return shadow, active, grid

    def report(self) -> dict[str, Any] | None:
        """The last agreement report (None when none was computed)."""
        try:
            data = json.loads((self.folder / AGREEMENT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_report(self, report: Mapping[str, Any]) -> None:
        """Keep an agreement report (atomically)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomic(self.folder / AGREEMENT_FILE, (json.dumps(report, indent=2) + "\n").encode())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _picai(y_det: list[NDArray[np.float32]], y_true: list[NDArray[Any]]) -> dict[str, Any]:
    """picai_eval's figures of detection maps against binary references (null where undefined)."""
    positives = sum(bool(np.any(t > 0)) for t in y_true)
    out: dict[str, Any] = {
        "studies": len(y_true),
        "positive_studies": positives,
        "auroc": None,
        "average_precision": None,
        "sensitivity_at_0.5_fp": None,
        "sensitivity_at_1_fp": None,
        "notes": [],
    }
    if not y_true:
        out["notes"].append("no study to compare")
        return out
    with contextlib.redirect_stdout(io.StringIO()):  # picai_eval announces itself on import
        from picai_eval import evaluate

        metrics = evaluate(
            y_det=cast(Any, y_det),  # float32 maps: picai_eval's hints say float64, it reads any float
            y_true=[(t > 0).astype(np.int32) for t in y_true],
            min_overlap=_MIN_IOU,
            num_parallel_calls=1,
            verbose=0,
        )

    def finite(value: Any) -> float | None:
        number = float(value)
        return round(number, 4) if math.isfinite(number) else None

    if 0 < positives < len(y_true):
        out["auroc"] = finite(metrics.auroc)
    else:
        out["notes"].append("patient-level AUROC needs studies with and without a reference lesion")
    if positives:
        out["average_precision"] = finite(metrics.AP)
        out["sensitivity_at_0.5_fp"] = finite(metrics.lesion_TPR_at_FPR(0.5))
        out["sensitivity_at_1_fp"] = finite(metrics.lesion_TPR_at_FPR(1.0))
    else:
        out["notes"].append("lesion-level figures need at least one reference lesion")
    return out


def agreement_report(
    store: ShadowStore, labels: LabelSource | None, identity: str, labels_signature: str | None = None
) -> dict[str, Any]:
    """Compare a shadow model with the active model and with the radiologists' labels (see the module
    docstring); the report is also kept in the store.

    Parameters
    ----------
    store : ShadowStore
        The shadow model's kept runs.
    labels : callable or None
        The radiologists' labels of a study on a grid (None: no labels are looked up).
    identity : str
        The shadow model's identity (named in the report).
    labels_signature : str, optional
        A digest of the labels the report was computed with (kept in it, to tell when to recompute).

    Returns
    -------
    dict
        ``model``, ``computed``, ``studies``, ``with_active`` and ``with_labels`` (see the module docstring).
    """
    shadow_maps: list[NDArray[np.float32]] = []
    active_maps: list[NDArray[np.float32]] = []
    labelled: list[tuple[NDArray[np.float32], NDArray[np.float32], NDArray[Any]]] = []
    labelled_uids: list[str] = []
    unreadable: list[str] = []
    kept = len(store.studies())
    for uid in store.studies(newest=MAX_COMPARED):
        try:
            shadow, active, grid = store.load(uid)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("shadow run of study %s cannot be read: %s", uid, exc)
            unreadable.append(uid)
            continue
        shadow_maps.append(shadow)
        active_maps.append(active)
        if labels is None:
            continue
        try:
            label = labels(uid, grid)
        except Exception as exc:  # one broken label must not hide the others
            logger.warning("the label of study %s cannot be used: %s", uid, exc)
            continue
        if label is not None:
            labelled.append((shadow, active, label))
            labelled_uids.append(uid)
    same = [bool(np.any(s > 0)) == bool(np.any(a > 0)) for s, a in zip(shadow_maps, active_maps, strict=True)]
    score_diffs = [
        abs(float(np.max(s, initial=0.0)) - float(np.max(a, initial=0.0)))
        for s, a in zip(shadow_maps, active_maps, strict=True)
    ]
    with_active = _picai(shadow_maps, [(a > 0).astype(np.uint8) for a in active_maps])
    with_active["same_patient_call"] = round(sum(same) / len(same), 4) if same else None
    with_active["mean_patient_score_difference"] = (
        round(sum(score_diffs) / len(score_diffs), 4) if score_diffs else None
    )
    with_labels = {
        "shadow": _picai([s for s, _, _ in labelled], [t for _, _, t in labelled]),
        "active": _picai([a for _, a, _ in labelled], [t for _, _, t in labelled]),
        "labelled_studies": labelled_uids,
    }
    report = {
        "model": identity,
        "computed": _now(),
        "studies": len(shadow_maps),
        "studies_kept": kept,
        "unreadable_studies": unreadable,
        "with_active": with_active,
        "with_labels": with_labels,
        **({"labels_signature": labels_signature} if labels_signature is not None else {}),
    }
    store.write_report(report)
    return report
