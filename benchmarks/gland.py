"""The anatomical gate on the fixture: the gland model's agreement with the PI-CAI gland mask and its speed.

Reports, side by side, for the card's first window (what the engine runs) and for its larger re-centring
window: the Dice of our gland against the fixture's PI-CAI whole-gland mask (AI-derived, Bosma22b) and the
gland model's seconds (wall and CPU). Then the engine's loaded study -> result time (choose roles and
co-register, model input, gland, networks, candidates, outputs) with and without the gate, and the gate's
share of it; medians of ``repeats`` runs. ``goal`` checks the issue's targets: Dice >= 0.8 and loaded
study -> result <= 1.2 s with the gate on (on the machine's CPUs; ``threads`` says how many). The load average
is reported: on a shared machine, wall times above CPU times / threads mean other processes took CPU.
``runtimes`` compares, side by side on the first window, the two runtimes of the gland network (ONNX Runtime
on the prepared graph, and our torch SegResNetDS read from the same file), on the CPU and, where a CUDA GPU
is present, torch on it: the network's median seconds, the whole gland step's, and the largest difference
of their probabilities from ONNX Runtime's, and the Dice of the gland each finds against ONNX Runtime's; torch
in float32 and in bfloat16. ``auto`` takes torch, the faster here too, in bfloat16 on a CPU with bfloat16
instructions (``auto_precision_cpu``).
``python -m benchmarks.gland`` runs this key alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from benchmarks import DEFAULT_FIXTURE, write_report
from lesion_engine.anatomy.gland import GlandModel, GlandSettings, load_gland_model
from lesion_engine.anatomy.gland_card import resolve_weights
from lesion_engine.engine import Engine
from lesion_engine.intake.loading import load_study
from lesion_engine.intake.preprocess import prepare_loaded_study
from lesion_engine.logsetup import configure_cli_logging
from lesion_engine.model.devices import configure_cpu_threads

logger = logging.getLogger(__name__)

GLAND_LABEL = Path("picai_labels") / "10795_1000811_gland.nii.gz"
TARGET_DICE = 0.8
TARGET_SECONDS = 1.2


def _dice(found: np.ndarray[Any, Any], reference: np.ndarray[Any, Any]) -> float:
    return 2.0 * float((found & reference).sum()) / float(found.sum() + reference.sum())


def _window_row(
    model: GlandModel, t2w: sitk.Image, reference: np.ndarray[Any, Any] | None, repeats: int
) -> dict[str, Any]:
    """Dice and seconds (wall and CPU, medians) of one gland model on the T2W."""
    model.warm_up()
    walls, cpus = [], []
    for _ in range(repeats):
        cpu = time.process_time()
        found = model.segment(t2w)
        cpus.append(time.process_time() - cpu)
        walls.append(found.seconds)
    row: dict[str, Any] = {
        "window_xyz": list(model.card.window_xyz),
        "gland_s": round(statistics.median(walls), 3),
        "gland_cpu_s": round(statistics.median(cpus), 3),
        "passes": found.passes,
        "gland_volume_ml": round(found.volume_ml, 2),
    }
    if reference is not None:
        row["dice_vs_picai_gland"] = round(_dice(found.mask, reference), 4)
    return row


def _runtime_rows(t2w: sitk.Image, threads: int, repeats: int) -> dict[str, Any]:
    """The gland network's seconds in each runtime and precision, side by side on the same first window, and
    each one's gland on the T2W against ONNX Runtime's (Dice)."""
    import torch

    rows: dict[str, Any] = {}
    batch: np.ndarray[Any, Any] | None = None
    baseline: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None
    candidates = [
        ("onnxruntime cpu", GlandSettings(runtime="onnxruntime"), False),
        ("torch cpu float32", GlandSettings(runtime="torch", precision="float32"), False),
        ("torch cpu bfloat16", GlandSettings(runtime="torch", precision="bfloat16"), False),
    ]
    if torch.cuda.is_available():
        candidates.append(("torch cuda float32", GlandSettings(runtime="torch", precision="float32"), True))
        candidates.append(("torch cuda bfloat16", GlandSettings(runtime="torch", precision="bfloat16"), True))
    for name, settings, use_cuda in candidates:
        model, warning = load_gland_model(settings, use_cuda=use_cuda, threads=threads)
        if model is None:
            rows[name] = {"error": warning}
            continue
        if batch is None:
            batch = (
                np.random.default_rng(0).standard_normal((1, 1, *model.card.window_xyz)).astype(np.float32)
            )
        model.warm_up()
        network = []
        for _ in range(repeats):
            start = time.perf_counter()
            logits = model.network_logits(batch)
            network.append(time.perf_counter() - start)
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        found = [model.segment(t2w) for _ in range(repeats)]
        if baseline is None:
            baseline = probabilities, found[0].mask
        rows[name] = {
            "network_s": round(statistics.median(network), 3),
            "gland_s": round(statistics.median(f.seconds for f in found), 3),
            "max_probability_difference_vs_onnxruntime": float(np.abs(probabilities - baseline[0]).max()),
            "gland_dice_vs_onnxruntime": round(_dice(found[0].mask, baseline[1]), 5),
            "providers": model.providers,
        }
    return rows


def _loaded_to_result(engine: Engine, loaded: Any, repeats: int) -> tuple[float, float, int]:
    """Median seconds of loaded study -> result, median seconds of its gland stage, lesions reported."""
    times, gland, lesions = [], [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        result = engine.run(prepare_loaded_study(loaded))
        times.append(time.perf_counter() - start)
        gland.append(result.timings_s.get("gland", 0.0))
        lesions = len(result.lesions)
    return statistics.median(times), statistics.median(gland), lesions


def run(dicom_dir: Path, repeats: int = 5) -> dict[str, Any]:
    """Measure the gate on the fixture; return the report (``dicom_dir`` is the fixture's ``dicom`` folder)."""
    threads = configure_cpu_threads()
    load_before = os.getloadavg()[0]
    loaded = load_study(dicom_dir)
    prepared = prepare_loaded_study(loaded)
    model, warning = load_gland_model(GlandSettings(), threads=threads)
    if model is None:
        return {"error": warning}
    reference_path = dicom_dir.parent / GLAND_LABEL
    reference = (
        sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path))) > 0 if reference_path.is_file() else None
    )
    first = _window_row(model, prepared.t2w, reference, repeats)
    larger_card = dataclasses.replace(model.card, window_xyz=model.card.recentre_window_xyz)
    larger = GlandModel(larger_card, resolve_weights(model.card), threads=threads)
    report: dict[str, Any] = {
        "threads": threads,
        "providers": model.providers,
        "windows": {
            "first (engine)": first,
            "recentre (larger)": _window_row(larger, prepared.t2w, reference, repeats),
        },
    }
    if reference is not None:
        report["picai_gland_volume_ml"] = round(
            float(reference.sum()) * float(np.prod(prepared.t2w.GetSpacing())) / 1000.0, 2
        )
    engine_rows: dict[str, Any] = {}
    for name, enabled in (("with_gate", True), ("without_gate", False)):
        engine = Engine.from_artifact(None, "cpu", threads=threads, gland=GlandSettings(enabled=enabled))
        engine.warm_up()
        engine.run(prepare_loaded_study(loaded))
        median, gland_stage, lesions = _loaded_to_result(engine, loaded, repeats)
        engine_rows[name] = {
            "loaded_to_result_s": round(median, 3),
            "gland_stage_s": round(gland_stage, 3),
            "lesions": lesions,
        }
    gated = engine_rows["with_gate"]["loaded_to_result_s"]
    dice = first.get("dice_vs_picai_gland")
    report["side_by_side"] = {
        "dice_vs_picai_gland": dice,
        "gland_s": first["gland_s"],
        "loaded_to_result_s_with_gate": gated,
        "loaded_to_result_s_without_gate": engine_rows["without_gate"]["loaded_to_result_s"],
    }
    report["engine"] = engine_rows
    report["runtimes"] = _runtime_rows(prepared.t2w, threads, repeats)
    report["auto_runtime_cpu"] = model.runtime
    report["auto_precision_cpu"] = model.precision
    report["load_average"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    report["goal"] = {
        "dice_min": TARGET_DICE,
        "dice_met": dice is not None and dice >= TARGET_DICE,
        "loaded_to_result_s_with_gate_max": TARGET_SECONDS,
        "loaded_to_result_met": gated <= TARGET_SECONDS,
    }
    return report


def main() -> int:
    """``python -m benchmarks.gland [--fixture DIR] [--repeats N] [--out FILE]``: this key alone."""
    configure_cli_logging(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gland")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    dicom = args.fixture / "dicom"
    if not dicom.is_dir():
        sys.stderr.write(f"fixture study not found at {dicom}; set LESION_AI_FIXTURE or pass --fixture\n")
        return 2
    write_report(run(dicom, args.repeats), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
