"""The anatomical gate on the fixture: the gland model's agreement with the PI-CAI gland mask and its speed.

Reports the Dice of our gland against the fixture's PI-CAI whole-gland mask (AI-derived, Bosma22b), the
gland model's seconds, and the engine's loaded study -> result time (choose roles and co-register, model
input, gland, networks, candidates, outputs) with and without the gate; medians of ``repeats`` runs.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from lesion_engine.devices import configure_cpu_threads
from lesion_engine.engine import Engine
from lesion_engine.gland import GlandSettings, load_gland_model
from lesion_engine.loading import load_study
from lesion_engine.preprocess import prepare_loaded_study

logger = logging.getLogger(__name__)

GLAND_LABEL = Path("picai_labels") / "10795_1000811_gland.nii.gz"
TARGET_DICE = 0.8
TARGET_SECONDS = 2.0


def _loaded_to_result(engine: Engine, loaded: Any, repeats: int) -> tuple[float, int]:
    times, lesions = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        result = engine.run(prepare_loaded_study(loaded))
        times.append(time.perf_counter() - start)
        lesions = len(result.lesions)
    return statistics.median(times), lesions


def run(dicom_dir: Path, repeats: int = 5) -> dict[str, Any]:
    """Measure the gate on the fixture; return the report (``dicom_dir`` is the fixture's ``dicom`` folder)."""
    threads = configure_cpu_threads()
    loaded = load_study(dicom_dir)
    prepared = prepare_loaded_study(loaded)
    model, warning = load_gland_model(GlandSettings())
    if model is None:
        return {"error": warning}
    reference_path = dicom_dir.parent / GLAND_LABEL
    seconds = []
    for _ in range(repeats):
        found = model.segment(prepared.t2w)
        seconds.append(found.seconds)
    report: dict[str, Any] = {
        "threads": threads,
        "providers": model.providers,
        "window_xyz": list(model.card.window_xyz),
        "gland_volume_ml": round(found.volume_ml, 2),
        "gland_s": round(statistics.median(seconds), 3),
        "passes": found.passes,
    }
    if reference_path.is_file():
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path))) > 0
        dice = 2.0 * float((found.mask & reference).sum()) / float(found.mask.sum() + reference.sum())
        report["dice_vs_picai_gland"] = round(dice, 4)
        report["picai_gland_volume_ml"] = round(
            float(reference.sum()) * float(np.prod(prepared.t2w.GetSpacing())) / 1000.0, 2
        )
        report["dice_target"] = TARGET_DICE
    for name, enabled in (("with_gate", True), ("without_gate", False)):
        engine = Engine.from_artifact(None, "cpu", gland=GlandSettings(enabled=enabled))
        engine.warm_up()
        engine.run(prepare_loaded_study(loaded))
        median, lesions = _loaded_to_result(engine, loaded, repeats)
        report[f"loaded_to_result_s_{name}"] = round(median, 3)
        report[f"lesions_{name}"] = lesions
    report["target_loaded_to_result_s"] = TARGET_SECONDS
    return report
