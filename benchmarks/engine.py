"""Engine speed and memory on the fixture, beside the PI-CAI baseline U-Net recipe, in one run.

Ours: what ``lesion-ai infer`` does from a loaded study to the result (choose roles and co-register the
volumes, model input, networks, candidates, outputs on the T2W grid); the median of several runs, with the
engine's per-stage times. Baseline: the forward passes alone of the PI-CAI baseline recipe
(:mod:`benchmarks.picai_baseline`: 5 folds x 2 flips on a 3 x 20 x 256 x 256 input), timed in the same
process and interleaved with ours, so that the ratio holds on any machine. Peak resident memory is measured
for each in a fresh subprocess.

The gland model runs as the engine's defaults say (``GlandPrecision: auto``: bfloat16 on a CPU with bfloat16
instructions); when that is bfloat16, ``gland_float32`` times ours again with it in float32, against the same
baseline.

Weights do not change the time: without a trained default model, a random-weight artifact with the default
architecture is used, and the report says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.picai_baseline import FOLDS, INPUT_SHAPE, BaselineUNet
from lesion_engine.engine import DEFAULT_ARTIFACT, Engine
from lesion_engine.intake.loading import LoadedStudy, load_study
from lesion_engine.intake.preprocess import prepare_loaded_study
from lesion_engine.model.artifact import save_artifact
from lesion_engine.model.candidates import CandidateConfig
from lesion_engine.model.devices import configure_cpu_threads
from lesion_engine.model.model_input import PreprocessConfig
from lesion_engine.model.networks import JointModel

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
BASELINE_PASSES = 2 * FOLDS
TARGET_RATIO = 5.0
#: Loaded study -> result with the anatomical gate on (the gland model runs too), seconds on 2 cores.
TARGET_SECONDS = 1.2
TARGET_RSS_GB = 2.5


def _artifact(given: Path | None, scratch: Path) -> tuple[Path, str]:
    """The artifact to time and a note on its weights."""
    if given is not None:
        return given, "given artifact"
    if (DEFAULT_ARTIFACT / "model.json").is_file():
        return DEFAULT_ARTIFACT, "installed default model"
    torch.manual_seed(0)
    path = save_artifact(
        JointModel(),
        scratch / "random-default",
        name="random-default-architecture",
        version="0",
        preprocessing=PreprocessConfig(),
        candidates=CandidateConfig(),
        training={"data": "none: random weights, for timing only"},
    )
    return (
        path,
        "random weights with the default architecture (no trained default model is installed; timing does not depend on weights)",
    )


def _baseline_study(model: BaselineUNet, images: torch.Tensor, passes: int) -> float:
    """Seconds for ``passes`` forward passes of the baseline recipe (softmax, every other pass flipped)."""
    start = time.perf_counter()
    with torch.inference_mode():
        total = torch.zeros_like(images[:, :1])
        for i in range(passes):
            if i % 2:
                out = torch.softmax(model(torch.flip(images, dims=[4])), dim=1)[:, 1:]
                total += torch.flip(out, dims=[4])
            else:
                total += torch.softmax(model(images), dim=1)[:, 1:]
    return time.perf_counter() - start


def _probe(kind: str, *args: str) -> dict[str, Any]:
    """Run this module's probe in a fresh interpreter; return what it reports."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.engine", "--probe", kind, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if completed.returncode != 0:
        return {"error": completed.stderr.strip()[-2000:]}
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


@dataclass(frozen=True)
class _Timings:
    """Interleaved runs of ours and of the baseline: one entry per repeat in each list.

    Attributes
    ----------
    first_run_s : float
        Ours, loaded study -> result, the first (cold) run.
    loaded_to_result_s : list of float
        Ours, loaded study -> result.
    prepared_to_result_s : list of float
        Ours, prepared study -> result.
    stages_s : list of dict of str to float
        The engine's per-stage seconds.
    baseline_study_s : list of float
        One baseline study (all passes, extrapolated from the measured ones).
    lesions_found : int
        Lesions in ours' last result.
    """

    first_run_s: float
    loaded_to_result_s: list[float]
    prepared_to_result_s: list[float]
    stages_s: list[dict[str, float]]
    baseline_study_s: list[float]
    lesions_found: int


def _time_interleaved(engine: Engine, loaded: LoadedStudy, repeats: int, baseline_passes: int) -> _Timings:
    """Time ours once cold, then ``repeats`` times, each run followed by one baseline study.

    Parameters
    ----------
    engine : Engine
        Ours, on the CPU.
    loaded : LoadedStudy
        The study, loaded once.
    repeats : int
        Runs of ours (and baseline studies).
    baseline_passes : int
        Baseline forward passes measured per study; extrapolated to :data:`BASELINE_PASSES`.

    Returns
    -------
    _Timings
    """
    start = time.perf_counter()
    result = engine.run(prepare_loaded_study(loaded))
    first_run = time.perf_counter() - start

    baseline = BaselineUNet().eval()
    images = torch.randn(1, *INPUT_SHAPE)
    _baseline_study(baseline, images, 1)  # warm up

    ours_loaded, ours_prepared, stages, base = [], [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        prepared = prepare_loaded_study(loaded)
        middle = time.perf_counter()
        result = engine.run(prepared)
        end = time.perf_counter()
        ours_loaded.append(end - start)
        ours_prepared.append(end - middle)
        stages.append(result.timings_s)
        base.append(_baseline_study(baseline, images, baseline_passes) * BASELINE_PASSES / baseline_passes)
    return _Timings(first_run, ours_loaded, ours_prepared, stages, base, len(result.lesions))


def _networks_alone(engine: Engine, repeats: int) -> list[float]:
    """Seconds of the two networks' forward passes alone (localization on the model grid, and the gland model
    on its first window when the gate is on), ``repeats`` times: what no pipeline running them can beat."""
    size = engine.card.preprocessing.size_zyx
    images = torch.randn((1, engine.card.localization.in_channels, *size))
    window = (
        None if engine.gland is None else np.zeros((1, 1, *engine.gland.card.window_xyz), dtype=np.float32)
    )
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            engine.model.loc(images)
            if window is not None and engine.gland is not None:
                engine.gland.network_logits(window)
            times.append(time.perf_counter() - start)
    return times[1:]


def _gland_float32_section(
    artifact: Path, loaded: LoadedStudy, repeats: int, base_s: float, engine: Engine
) -> dict[str, Any] | None:
    """The report's ``gland_float32``: ours again with the gland model in float32 (as its authors run it),
    when the timed engine ran it in bfloat16; its median and its ratio to the same baseline."""
    if engine.gland is None or engine.gland.precision == "float32":
        return None
    settings = dataclasses.replace(engine.gland_settings, precision="float32")
    single = Engine.from_artifact(artifact, "cpu", gland=settings)
    single.run(prepare_loaded_study(loaded))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        single.run(prepare_loaded_study(loaded))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "what": "ours with the gland model in float32 (GlandPrecision: float32), after the main runs",
        "loaded_to_result_s_median": round(median, 4),
        "speed_ratio": round(base_s / median, 2),
    }


def _bound_section(networks_s: float, base_s: float) -> dict[str, Any]:
    """The report's ``bound``: the networks alone, and the best ratio and time they leave."""
    return {
        "what": "the localization network and the gland model's network, forward passes alone on this device: "
        "no pipeline that runs them can take less time, or be faster than the baseline by more than "
        "baseline / networks",
        "networks_s_median": round(networks_s, 4),
        "max_speed_ratio": round(base_s / networks_s, 2),
    }


def _model_section(engine: Engine, weights: str) -> dict[str, Any]:
    """The report's ``model``: identity, weights note and the architecture of the timed artifact."""
    card = engine.card
    return {
        **engine.model_info.to_dict(),
        "weights": weights,
        "localization": card.localization.to_dict() | {"num_zones": card.localization.num_zones},
        "classification": card.classification.to_dict(),
        "model_grid_zyx": list(card.preprocessing.size_zyx),
        "gland_model": None
        if engine.gland is None
        else {"runtime": engine.gland.runtime, "precision": engine.gland.precision},
    }


def _ours_section(timings: _Timings, ours_s: float, ours_rss: dict[str, Any]) -> dict[str, Any]:
    """The report's ``ours``: medians of the engine's runs, per stage too, and its peak memory."""
    stages = timings.stages_s
    return {
        "what": "loaded study -> roles, co-registered volumes, model input, networks, candidates, outputs",
        "loaded_to_result_s_median": round(ours_s, 4),
        "prepared_to_result_s_median": round(statistics.median(timings.prepared_to_result_s), 4),
        "first_run_loaded_to_result_s": round(timings.first_run_s, 4),
        "stages_s_median": {k: round(statistics.median(s[k] for s in stages), 4) for k in stages[0]},
        "lesions_found": timings.lesions_found,
        "peak_rss_mb_fresh_process": ours_rss,
    }


def _baseline_section(baseline_passes: int, base_s: float, baseline_rss: dict[str, Any]) -> dict[str, Any]:
    """The report's ``picai_baseline``: what the baseline recipe is, its median study time and memory."""
    return {
        "what": "forward passes only (no resampling, no candidate extraction): plain 3D U-Net, channels "
        "(32, 64, 128, 256, 512, 1024), strides [(2,2,2), (1,2,2), (1,2,2), (1,2,2), (2,2,2)], input "
        "3x20x256x256, 5 folds x 2 flips, random weights",
        "passes": BASELINE_PASSES,
        "measured_passes": baseline_passes,
        "extrapolated": baseline_passes != BASELINE_PASSES,
        "study_s_median": round(base_s, 4),
        "peak_rss_mb_fresh_process": baseline_rss,
    }


def run(
    dicom_dir: Path, artifact: Path | None = None, repeats: int = 5, baseline_passes: int = BASELINE_PASSES
) -> dict[str, Any]:
    """Time the engine and the PI-CAI baseline recipe side by side; return the report.

    Parameters
    ----------
    dicom_dir : Path
        The study (the fixture's ``dicom`` folder).
    artifact : Path, optional
        Model artifact; the installed default, else random weights with the default architecture.
    repeats : int
        Runs of ours, each followed by one baseline study; medians are reported.
    baseline_passes : int
        Baseline forward passes measured per study (1..10); fewer than 10 are extrapolated linearly.
    """
    if not 1 <= baseline_passes <= BASELINE_PASSES:
        raise ValueError(f"baseline_passes must be in 1..{BASELINE_PASSES}, got {baseline_passes}")
    threads = configure_cpu_threads()
    with tempfile.TemporaryDirectory() as scratch:
        artifact_path, weights = _artifact(artifact, Path(scratch))
        loaded = load_study(dicom_dir)
        engine = Engine.from_artifact(artifact_path, "cpu")
        timings = _time_interleaved(engine, loaded, repeats, baseline_passes)
        networks_s = statistics.median(_networks_alone(engine, repeats))
        base_s = statistics.median(timings.baseline_study_s)
        gland_float32 = _gland_float32_section(artifact_path, loaded, repeats, base_s, engine)
        ours_rss = _probe("engine", str(dicom_dir), str(artifact_path))
    baseline_rss = _probe("baseline")

    ours_s = statistics.median(timings.loaded_to_result_s)
    ratio = base_s / ours_s
    rss_mb = float(ours_rss.get("peak_rss_mb", float("nan")))
    return {
        "device": "cpu",
        "threads": threads,
        "repeats": repeats,
        "model": _model_section(engine, weights),
        "ours": _ours_section(timings, ours_s, ours_rss),
        "picai_baseline": _baseline_section(baseline_passes, base_s, baseline_rss),
        "speed_ratio": round(ratio, 2),
        "bound": _bound_section(networks_s, base_s),
        "gland_float32": gland_float32,
        "targets": {
            "speed_ratio_min": TARGET_RATIO,
            "loaded_to_result_s_max": TARGET_SECONDS,
            "peak_rss_gb_max": TARGET_RSS_GB,
        },
        "meets_targets": {
            "speed_ratio": ratio >= TARGET_RATIO,
            "loaded_to_result_s": ours_s <= TARGET_SECONDS,
            "peak_rss": rss_mb / 1024.0 <= TARGET_RSS_GB,
        },
    }


def _probe_engine(dicom_dir: str, artifact: str) -> dict[str, Any]:
    """What ``lesion-ai infer`` holds at most: load, prepare, run once."""
    start = time.perf_counter()
    engine = Engine.from_artifact(Path(artifact), "cpu")
    prepared = prepare_loaded_study(load_study(Path(dicom_dir)))
    result = engine.run(prepared)
    return {
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "cold_process_s": round(time.perf_counter() - start, 3),
        "lesions": len(result.lesions),
    }


def _probe_baseline() -> dict[str, Any]:
    """The baseline recipe's peak memory: five fold models in memory, one pass each way."""
    configure_cpu_threads()
    models = [BaselineUNet().eval() for _ in range(FOLDS)]
    images = torch.randn(1, *INPUT_SHAPE)
    _baseline_study(models[0], images, 2)
    return {"peak_rss_mb": round(_peak_rss_mb(), 1), "fold_models_in_memory": len(models)}


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine")
    parser.add_argument("--probe", choices=("engine", "baseline"))
    parser.add_argument("args", nargs="*")
    args = parser.parse_args()
    if args.probe == "engine":
        report = _probe_engine(*args.args)
    elif args.probe == "baseline":
        report = _probe_baseline()
    else:
        parser.error("use python -m benchmarks for the full report")
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
