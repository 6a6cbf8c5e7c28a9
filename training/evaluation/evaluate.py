"""Evaluate a model artifact on a labelled data set, as the engine runs it, with PI-CAI's metrics.

For every case the engine (:class:`lesion_engine.engine.Engine`) runs on the study as in production, and its
PI-CAI detection map (on the T2W grid) is written to ``<out>/detection_maps/<case>_detection_map.nii.gz``
next to the binary csPCa reference ``<out>/labels/<case>_label.nii.gz``. Then :func:`picai_eval.evaluate`
gives:

* ``auroc``: patient-level AUROC (patient score = maximum of the detection map);
* ``AP``: lesion-level average precision (a detection hits a lesion at IoU >= 0.10);
* ``ranking_score``: (AUROC + AP) / 2, PI-CAI's ranking score;
* ``sensitivity_at_0.5_fp`` and ``sensitivity_at_1_fp``: lesion-level sensitivity at 0.5 and 1 false
  positive per patient.

Synthetic cases also know their non-csPCa lesions (``truth.json``), which gives per-kind results: how often
each kind of lesion (csPCa, indolent, BPH, prostatitis) is detected (a reported lesion with IoU >= 0.10) and
called csPCa (probability >= 0.5), and a confusion matrix of the suspicion category. Everything goes into
``<out>/metrics.json``, with ``roc.png``, ``froc.png`` and ``pr.png``.

PI-CAI cases (``.mha`` images) are wrapped as prepared studies whose T2W, ADC and HBV are the image files.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from lesion_engine.engine import AnyEngine, load_engine
from lesion_engine.intake.loading import LoadedStudy
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.intake.study_report import RoleChoice
from lesion_engine.model.result_types import EngineResult
from training.datasets.cases import components_as_lesions, grid_points_lps, target_category
from training.datasets.dataset import DataSpec, list_cases

logger = logging.getLogger(__name__)

__all__ = [
    "HEADLINE_KEYS",
    "LabelledStudy",
    "evaluate_model",
    "iter_labelled_studies",
    "prepared_from_images",
]

MIN_IOU = 0.10
THRESHOLD = 0.5
CATEGORY_LABELS: tuple[str, ...] = ("2", "3", "4", "5")


@dataclass
class TruthMask:
    """A reference lesion on the T2W grid."""

    kind: str
    category: int
    mask: NDArray[np.bool_]


@dataclass
class LabelledStudy:
    """A study with its reference.

    Attributes
    ----------
    case_id : str
        ``<patient>_<study>``.
    prepared : PreparedStudy
        The study as the engine takes it.
    label : SimpleITK.Image
        csPCa label (ISUP values or 1) on the T2W grid.
    truth : list of TruthMask
        Every known lesion (all kinds for synthetic cases; csPCa only for PI-CAI).
    """

    case_id: str
    prepared: PreparedStudy
    label: sitk.Image
    truth: list[TruthMask] = field(default_factory=list)


def prepared_from_images(case_id: str, t2w: sitk.Image, adc: sitk.Image, hbv: sitk.Image) -> PreparedStudy:
    """A :class:`PreparedStudy` from image files (ADC and HBV are resampled onto the T2W grid when read)."""
    t2w = sitk.Cast(t2w, sitk.sitkFloat32)
    roles = {
        role: RoleChoice(
            role=role,
            series_instance_uid=f"{case_id}_{role}",
            series_number=None,
            description=f"{case_id}_{role}.mha",
            b_value=None,
            computed=False,
            reason="image file of the PI-CAI layout",
        )
        for role in ("t2w", "adc", "hbv")
    }
    return PreparedStudy(
        study_instance_uid=case_id,
        t2w=t2w,
        native={"t2w": t2w, "adc": adc, "hbv": hbv},
        roles=roles,
        computed=None,
        loaded=LoadedStudy(study_instance_uid=case_id, series=[]),
        verdicts={},
    )


def _synthetic_study(root: Path, case_id: str) -> LabelledStudy:
    from training.datasets.synthetic_data import read_truth, synthetic_label_path

    case_dir = root / case_id
    prepared = prepare_study(case_dir / "dicom")
    label = sitk.ReadImage(str(synthetic_label_path(case_dir, "lesion")))
    _, truth_lesions = read_truth(case_dir)
    cspca = sitk.GetArrayFromImage(label)
    truth = [
        TruthMask("cspca", target_category("cspca", isup), mask)
        for mask, isup in components_as_lesions(cspca)
    ]
    others = [t for t in truth_lesions if t.kind != "cspca"]
    if others:
        points = grid_points_lps(label)
        for lesion in others:
            mask = lesion.mask(points) & (cspca == 0)
            if mask.any():
                truth.append(TruthMask(lesion.kind, target_category(lesion.kind, lesion.isup), mask))
    return LabelledStudy(case_id, prepared, label, truth)


def _picai_study(spec: DataSpec, case_id: str, marksheet: dict[str, Any]) -> LabelledStudy | None:
    from training.datasets.picai_data import cspca_label_image

    layout = spec.picai_layout()
    images = [
        sitk.ReadImage(str(layout.image_path(case_id, s)), sitk.sitkFloat32) for s in ("t2w", "adc", "hbv")
    ]
    prepared = prepared_from_images(case_id, *images)
    row = marksheet.get(case_id)
    label, _ = cspca_label_image(layout, case_id, prepared.t2w, row)
    if label is None:
        if row is None or row.case_cspca is not False:
            logger.warning("%s: no csPCa label and not negative by the marksheet; left out", case_id)
            return None
        label = sitk.Image(prepared.t2w.GetSize(), sitk.sitkUInt8)
        label.CopyInformation(prepared.t2w)
    cspca = sitk.GetArrayFromImage(label)
    truth = [
        TruthMask("cspca", target_category("cspca", isup), mask)
        for mask, isup in components_as_lesions(cspca)
    ]
    return LabelledStudy(case_id, prepared, label, truth)


def iter_labelled_studies(spec: DataSpec, case_ids: list[str] | None = None) -> Iterator[LabelledStudy | str]:
    """Yield each case of a data set as a :class:`LabelledStudy`, or its id when it cannot be read."""
    ids = case_ids if case_ids is not None else list_cases(spec)
    marksheet: dict[str, Any] = {}
    if spec.data_format == "picai":
        from training.datasets.picai_data import read_marksheet

        marksheet = read_marksheet(spec.picai_layout().marksheet_path)
    for case_id in ids:
        try:
            if spec.data_format == "synthetic":
                yield _synthetic_study(spec.root, case_id)
            else:
                study = _picai_study(spec, case_id, marksheet)
                yield study if study is not None else case_id
        except Exception as exc:  # report and go on: one unreadable study must not end an evaluation
            logger.warning("case %s could not be read: %s: %s", case_id, type(exc).__name__, exc)
            yield case_id


def _on_grid(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    if image.GetSize() == reference.GetSize() and np.allclose(
        image.GetOrigin(), reference.GetOrigin(), atol=1e-3
    ):
        return image
    resampled: sitk.Image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return resampled


def _match(
    result: EngineResult, truth: list[TruthMask], label_grid: sitk.Image, reference: sitk.Image
) -> list[dict[str, Any]]:
    """Pair reported lesions and reference lesions by IoU; one row per reference lesion and per unmatched report."""
    rows: list[dict[str, Any]] = []
    same = label_grid.GetSize() == reference.GetSize()
    masks = [t.mask for t in truth]
    if not same:
        moved = []
        for t in truth:
            image = sitk.GetImageFromArray(t.mask.astype(np.uint8))
            image.CopyInformation(label_grid)
            moved.append(sitk.GetArrayFromImage(_on_grid(image, reference)).astype(bool))
        masks = moved
    used: set[int] = set()
    for t, mask in zip(truth, masks, strict=True):
        best, best_iou = None, 0.0
        for k, lesion in enumerate(result.lesions):
            inter = int(np.count_nonzero(mask & lesion.mask))
            if not inter:
                continue
            iou = inter / int(np.count_nonzero(mask | lesion.mask))
            if iou > best_iou:
                best, best_iou = k, iou
        hit = best is not None and best_iou >= MIN_IOU
        if hit and best is not None:
            used.add(best)
        matched = result.lesions[best] if hit and best is not None else None
        rows.append(
            {
                "kind": t.kind,
                "true_category": t.category,
                "detected": hit,
                "iou": round(best_iou, 4),
                "probability": None if matched is None else round(matched.probability, 6),
                "predicted_category": None if matched is None else matched.category,
            }
        )
    for k, lesion in enumerate(result.lesions):
        if k not in used:
            rows.append(
                {
                    "kind": "none",
                    "true_category": None,
                    "detected": True,
                    "iou": 0.0,
                    "probability": round(lesion.probability, 6),
                    "predicted_category": lesion.category,
                }
            )
    return rows


def _per_kind(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("cspca", "indolent", "bph", "prostatitis", "none"):
        subset = [r for r in rows if r["kind"] == kind]
        if not subset:
            continue
        detected = [r for r in subset if r["detected"]]
        called = [r for r in detected if (r["probability"] or 0.0) >= THRESHOLD]
        entry: dict[str, Any] = {
            "lesions": len(subset),
            "detected": len(detected),
            "called_cspca": len(called),
            "called_cspca_rate": round(len(called) / len(subset), 4),
            "mean_probability_when_detected": (
                round(float(np.mean([r["probability"] for r in detected])), 4) if detected else None
            ),
        }
        if kind != "none":
            entry["detection_rate"] = round(len(detected) / len(subset), 4)
        out[kind] = entry
    return out


def _confusion(rows: list[dict[str, Any]]) -> dict[str, Any]:
    row_labels = [*CATEGORY_LABELS, "unknown", "no lesion"]
    col_labels = [*CATEGORY_LABELS, "not detected"]
    matrix = np.zeros((len(row_labels), len(col_labels)), dtype=int)
    for r in rows:
        true = r["true_category"]
        i = (
            row_labels.index("no lesion")
            if true is None
            else row_labels.index(str(true))
            if str(true) in CATEGORY_LABELS
            else row_labels.index("unknown")
        )
        predicted = r["predicted_category"]
        j = (
            col_labels.index(str(predicted))
            if r["detected"] and str(predicted) in CATEGORY_LABELS
            else col_labels.index("not detected")
        )
        matrix[i, j] += 1
    return {"rows_true": row_labels, "columns_predicted": col_labels, "matrix": matrix.tolist()}


def _picai_metrics(det_paths: list[Path], label_paths: list[Path], ids: list[str]) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # picai_eval announces itself on import
        from picai_eval import evaluate

    return evaluate(
        y_det=[str(p) for p in det_paths],
        y_true=[str(p) for p in label_paths],
        subject_list=ids,
        min_overlap=MIN_IOU,
        num_parallel_calls=1,
        verbose=0,
    )


@dataclass(frozen=True)
class _CaseOutcome:
    """What the engine gave on one case.

    Attributes
    ----------
    case_id : str
        The case.
    det_path, label_path : Path
        Its detection map and binary csPCa reference, written for picai_eval.
    case : dict
        Its row of ``metrics.json``'s ``cases``.
    lesions : list of dict
        Its rows of ``metrics.json``'s ``lesions`` (:func:`_match`, with the case id).
    seconds : float
        The engine's time on it.
    """

    case_id: str
    det_path: Path
    label_path: Path
    case: dict[str, Any]
    lesions: list[dict[str, Any]]
    seconds: float


def _evaluate_case(engine: AnyEngine, item: LabelledStudy, det_dir: Path, label_dir: Path) -> _CaseOutcome:
    """Run the engine on one study, write its detection map and reference, and match its lesions."""
    started = time.perf_counter()
    result = engine.run(item.prepared)
    seconds = time.perf_counter() - started
    reference = result.detection_map
    label = _on_grid(sitk.Cast(item.label > 0, sitk.sitkUInt8), reference)
    det_path = det_dir / f"{item.case_id}_detection_map.nii.gz"
    label_path = label_dir / f"{item.case_id}_label.nii.gz"
    sitk.WriteImage(reference, str(det_path), useCompression=True)
    sitk.WriteImage(label, str(label_path), useCompression=True)
    rows = _match(result, item.truth, item.label, reference)
    for row in rows:
        row["case_id"] = item.case_id
    case = {
        "case_id": item.case_id,
        "cspca": bool(np.any(sitk.GetArrayViewFromImage(label) > 0)),
        "patient_score": round(result.patient_score, 6),
        "reported_lesions": len(result.lesions),
        "seconds": round(seconds, 3),
    }
    return _CaseOutcome(item.case_id, det_path, label_path, case, rows, seconds)


def _picai_numbers(metrics: Any) -> dict[str, Any]:
    """PI-CAI's headline metrics of a picai_eval result (AUROC NaN when it is undefined), and their setting."""
    try:
        auroc = float(metrics.auroc)
    except ValueError:
        auroc = float("nan")
    ap = float(metrics.AP) + 0.0  # no negative zero
    return {
        "auroc": auroc,
        "AP": ap,
        "ranking_score": (auroc + ap) / 2.0,
        "sensitivity_at_0.5_fp": float(metrics.lesion_TPR_at_FPR(0.5)),
        "sensitivity_at_1_fp": float(metrics.lesion_TPR_at_FPR(1.0)),
        "num_cases": int(metrics.num_cases),
        "num_lesions": int(metrics.num_lesions),
        "picai_eval_version": str(metrics.version),
        "min_iou": MIN_IOU,
    }


def _metrics_record(
    metrics: Any, outcomes: list[_CaseOutcome], failed: list[str], engine: AnyEngine, spec: DataSpec
) -> dict[str, Any]:
    """The content of ``metrics.json``: PI-CAI's metrics, per-kind results, and the cases and lesions."""
    lesion_rows = [row for outcome in outcomes for row in outcome.lesions]
    cases = [outcome.case for outcome in outcomes]
    seconds = [outcome.seconds for outcome in outcomes]
    return {
        **_picai_numbers(metrics),
        "patient_level_at_0.5": _patient_counts(cases),
        "per_kind": _per_kind(lesion_rows),
        "category_confusion": _confusion(lesion_rows),
        "model": engine.model_info.to_dict(),
        "data": spec.to_dict(),
        "failed_cases": failed,
        "seconds_per_case": round(float(np.mean(seconds)), 3) if seconds else None,
        "cases": cases,
        "lesions": lesion_rows,
    }


def evaluate_model(
    spec: DataSpec,
    model: Path | None,
    out_dir: Path,
    *,
    device: str | None = None,
    threads: int | None = None,
    case_ids: list[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run the engine on every case of ``spec`` and write ``metrics.json`` and the plots into ``out_dir``.

    Parameters
    ----------
    spec : DataSpec
        The labelled data set.
    model : Path or None
        Model artifact; the packaged default when None.
    out_dir : Path
        Output folder.
    device : str, optional
        ``cpu`` or ``cuda``; the engine's choice when None.
    threads : int, optional
        CPU threads of the engine.
    case_ids : list of str, optional
        Evaluate only these cases.
    progress : callable, optional
        Called with (done, total, case id) after each case.

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    engine = load_engine(model, device, threads=threads)
    ids = case_ids if case_ids is not None else list_cases(spec)
    det_dir, label_dir = out_dir / "detection_maps", out_dir / "labels"
    det_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[_CaseOutcome] = []
    failed: list[str] = []
    for n, item in enumerate(iter_labelled_studies(spec, ids), start=1):
        if isinstance(item, str):
            failed.append(item)
        else:
            outcomes.append(_evaluate_case(engine, item, det_dir, label_dir))
        if progress:
            progress(n, len(ids), item if isinstance(item, str) else item.case_id)
    if not outcomes:
        raise ValueError(f"no case of {spec.root} could be evaluated")
    metrics = _picai_metrics(
        [o.det_path for o in outcomes], [o.label_path for o in outcomes], [o.case_id for o in outcomes]
    )
    record = _metrics_record(metrics, outcomes, failed, engine, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(_json_ready(record), indent=2) + "\n", encoding="utf-8")
    from training.evaluation.plots import plot_curves

    plot_curves(metrics, out_dir, title=engine.card.name)
    return record


def _patient_counts(cases: list[dict[str, Any]]) -> dict[str, Any]:
    positive = [c for c in cases if c["cspca"]]
    negative = [c for c in cases if not c["cspca"]]
    tp = sum(1 for c in positive if c["patient_score"] >= THRESHOLD)
    tn = sum(1 for c in negative if c["patient_score"] < THRESHOLD)
    return {
        "sensitivity": round(tp / len(positive), 4) if positive else None,
        "specificity": round(tn / len(negative), 4) if negative else None,
        "positives": len(positive),
        "negatives": len(negative),
    }


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


HEADLINE_KEYS = (
    "auroc",
    "AP",
    "ranking_score",
    "sensitivity_at_0.5_fp",
    "sensitivity_at_1_fp",
    "num_cases",
    "num_lesions",
)
"""PI-CAI's headline metrics and the counts they rest on, as :func:`headline` and ``metrics.json`` hold them."""


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation (for model cards and tables)."""
    out: dict[str, Any] = {k: _json_ready(record[k]) for k in HEADLINE_KEYS}
    out["per_kind"] = record["per_kind"]
    out["category_confusion"] = record["category_confusion"]
    out["patient_level_at_0.5"] = record["patient_level_at_0.5"]
    return out
