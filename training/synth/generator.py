"""Generating whole synthetic cases: study plan -> pixel data -> DICOM files, labels and ``truth.json``."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from training.synth.config import CasePlan, SynthConfig, resolve_case
from training.synth.dicom.dicom_writer import series_folder_name, write_series
from training.synth.imaging import synthesize
from training.synth.phantom import build_phantom
from training.synth.protocol import plan_study
from training.synth.truth import (
    expected_t2w,
    label_volumes,
    marksheet_row,
    truth_record,
    write_labels,
    write_marksheet,
    write_truth,
)

logger = logging.getLogger(__name__)

__all__ = ["case_folder_name", "generate", "generate_case"]


def case_folder_name(plan: CasePlan) -> str:
    """Folder of a case: ``<patient_id>_<study_id>``."""
    return f"{plan.patient_id}_{plan.study_id}"


def _check_args(seed: int, index: int, name: str) -> None:
    for label, value in (("seed", seed), (name, index)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be a non-negative integer, got {value!r}")


def generate_case(out_dir: Path | str, case_index: int, seed: int, config: SynthConfig | None = None) -> Path:
    """Generate one case into ``out_dir/<patient_id>_<study_id>/`` and return that folder.

    The case folder holds ``dicom/<NNN>_<description>/*.dcm``, ``labels/<patient>_<study>_{lesion,gland,
    zones}.nii.gz`` and ``truth.json`` (whose ``marksheet`` entry is the case's marksheet row). An existing
    case folder is replaced. The result depends only on ``case_index``, ``seed`` and ``config``.

    Parameters
    ----------
    out_dir
        Data set folder (created if needed).
    case_index
        Index of the case in the data set (>= 0).
    seed
        Seed of the data set (>= 0).
    config
        What to generate; default ``SynthConfig()``.

    Returns
    -------
    pathlib.Path
        The case folder.
    """
    _check_args(seed, case_index, "case_index")
    cfg = config if config is not None else SynthConfig()
    started = time.perf_counter()
    plan = resolve_case(cfg, seed, case_index)
    ph = build_phantom(plan)
    study = plan_study(plan, ph)
    images = synthesize(study, ph)
    case_dir = Path(out_dir) / case_folder_name(plan)
    if case_dir.exists():
        shutil.rmtree(case_dir)
    folders: dict[str, str] = {}
    files: dict[str, int] = {}
    for series in study.series:
        folder = series_folder_name(series)
        folders[series.key] = folder
        files[series.key] = len(write_series(study, series, images[series.key], case_dir / "dicom" / folder))
    labels = label_volumes(ph, expected_t2w(study).grids[0])
    label_files = write_labels(labels, case_dir / "labels", plan.patient_id, plan.study_id)
    record = truth_record(study, ph, labels, label_files, folders, files)
    record["marksheet"] = marksheet_row(study, ph)
    write_truth(case_dir / "truth.json", record)
    logger.info(
        "case %s (%s, %s%s%s): %d series, %d lesion(s), %.2f s",
        case_dir.name,
        plan.vendor,
        "enhanced" if plan.enhanced else "classic",
        f", {plan.compress}" if plan.compress else "",
        f", {plan.profile}",
        len(study.series),
        len(ph.lesions),
        time.perf_counter() - started,
    )
    return case_dir


def generate(out_dir: Path | str, cases: int, seed: int, config: SynthConfig | None = None) -> list[Path]:
    """Generate ``cases`` cases (indices ``0..cases-1``) and ``out_dir/marksheet.csv``.

    Parameters
    ----------
    out_dir
        Data set folder (created if needed).
    cases
        Number of cases (>= 1).
    seed
        Seed of the data set (>= 0).
    config
        What to generate; default ``SynthConfig()``.

    Returns
    -------
    list of pathlib.Path
        The case folders, by case index.
    """
    _check_args(seed, cases, "cases")
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    rows: list[dict[str, str]] = []
    for index in range(cases):
        folder = generate_case(out, index, seed, config)
        folders.append(folder)
        rows.append(_marksheet_of(folder))
    write_marksheet(out / "marksheet.csv", rows)
    logger.info("generated %d case(s) in %s", cases, out)
    return folders


def _marksheet_of(folder: Path) -> dict[str, str]:
    import json

    record = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    row: dict[str, str] = record["marksheet"]
    return row
