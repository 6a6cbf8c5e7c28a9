"""Engine on a CUDA GPU: CPU and GPU side by side in one process, batching, memory, agreement.

Run by ``make bench`` (key ``engine_cuda``; reports ``available: false`` on a machine without CUDA) or alone
with ``python -m benchmarks.engine_cuda --out FILE``. What is measured, all on the fixture:

* loaded study -> result on the CPU and on the GPU (mixed precision), medians of interleaved runs, and the
  GPU's per stage (``prepare``: choosing the series and building the volumes; then the engine's stages);
* the PI-CAI baseline recipe's forward passes (5 folds x 2 flips, 3 x 20 x 256 x 256) on the same GPU, in
  the same mixed precision, for the speed ratio;
* ``Engine.run_batch`` with several studies at once: studies per second against single runs;
* peak GPU memory of the engine and of the baseline;
* agreement of the GPU (bfloat16/float16 autocast) and CPU (float32) results: localization map, lesions.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks import DEFAULT_FIXTURE, write_report
from benchmarks.picai_baseline import FOLDS, INPUT_SHAPE, BaselineUNet
from lesion_engine.engine import DEFAULT_ARTIFACT, Engine
from lesion_engine.intake.loading import LoadedStudy, load_study
from lesion_engine.intake.preprocess import prepare_loaded_study
from lesion_engine.logsetup import configure_cli_logging
from lesion_engine.model.devices import configure_cpu_threads
from lesion_engine.model.result_types import EngineResult

logger = logging.getLogger(__name__)

BASELINE_PASSES = 2 * FOLDS
BATCH = 8


def _sync() -> None:
    torch.cuda.synchronize()


def _baseline_study(model: BaselineUNet, images: torch.Tensor, dtype: torch.dtype) -> float:
    """Seconds for the baseline recipe's forward passes on the GPU."""
    _sync()
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=dtype):
        total = torch.zeros_like(images[:, :1], dtype=torch.float32)
        for i in range(BASELINE_PASSES):
            if i % 2:
                out = torch.softmax(model(torch.flip(images, dims=[4])).float(), dim=1)[:, 1:]
                total += torch.flip(out, dims=[4])
            else:
                total += torch.softmax(model(images).float(), dim=1)[:, 1:]
    _sync()
    return time.perf_counter() - start


def _agreement(cpu: EngineResult, gpu: EngineResult) -> dict[str, Any]:
    cpu_map = sitk.GetArrayFromImage(cpu.localization_map)
    gpu_map = sitk.GetArrayFromImage(gpu.localization_map)
    return {
        "localization_map_max_abs_diff": round(float(np.abs(cpu_map - gpu_map).max()), 5),
        "patient_score_cpu": round(cpu.patient_score, 5),
        "patient_score_gpu": round(gpu.patient_score, 5),
        "lesions_cpu": len(cpu.lesions),
        "lesions_gpu": len(gpu.lesions),
    }


@dataclass(frozen=True)
class _Runs:
    """Interleaved single runs on the CPU and on the GPU, loaded study -> result.

    Attributes
    ----------
    cpu_s, gpu_s : list of float
        Seconds per run (the GPU's synchronised).
    gpu_stages_s : list of dict of str to float
        The GPU runs' seconds per stage, ``prepare`` first.
    cpu_result, gpu_result : EngineResult
        The last result of each.
    """

    cpu_s: list[float]
    gpu_s: list[float]
    gpu_stages_s: list[dict[str, float]]
    cpu_result: EngineResult
    gpu_result: EngineResult


def _time_cpu_and_gpu(cpu_engine: Engine, gpu_engine: Engine, loaded: LoadedStudy, repeats: int) -> _Runs:
    """Time ``repeats`` CPU runs, each followed by one GPU run, from the loaded study.

    Raises
    ------
    ValueError
        When ``repeats`` is less than 1.
    """
    cpu_s, gpu_s, gpu_stages = [], [], []
    cpu_result = gpu_result = None
    for _ in range(repeats):
        start = time.perf_counter()
        cpu_result = cpu_engine.run(prepare_loaded_study(loaded))
        cpu_s.append(time.perf_counter() - start)
        _sync()
        start = time.perf_counter()
        prepared_study = prepare_loaded_study(loaded)
        prepared_s = time.perf_counter() - start
        gpu_result = gpu_engine.run(prepared_study)
        _sync()
        gpu_s.append(time.perf_counter() - start)
        gpu_stages.append({"prepare": prepared_s, **gpu_result.timings_s})
    if cpu_result is None or gpu_result is None:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return _Runs(cpu_s, gpu_s, gpu_stages, cpu_result, gpu_result)


@dataclass(frozen=True)
class _Batch:
    """:data:`BATCH` studies on the GPU, one at a time and in one ``run_batch``.

    Attributes
    ----------
    single_s : list of float
        Seconds of each single run.
    batch_s : float
        Seconds of the batched run.
    results : list of EngineResult
        The batched run's results.
    peak_mb : float
        Peak GPU memory allocated over both (MiB).
    """

    single_s: list[float]
    batch_s: float
    results: list[EngineResult]
    peak_mb: float


def _time_batch(gpu_engine: Engine, loaded: LoadedStudy) -> _Batch:
    """Time :data:`BATCH` prepared studies run singly, then all at once, and the peak GPU memory."""
    prepared = [prepare_loaded_study(loaded) for _ in range(BATCH)]
    torch.cuda.reset_peak_memory_stats()
    single = []
    for study in prepared:
        _sync()
        start = time.perf_counter()
        gpu_engine.run(study)
        _sync()
        single.append(time.perf_counter() - start)
    _sync()
    start = time.perf_counter()
    batch_results = gpu_engine.run_batch(prepared)
    _sync()
    batch_s = time.perf_counter() - start
    return _Batch(single, batch_s, batch_results, torch.cuda.max_memory_allocated() / 2**20)


@dataclass(frozen=True)
class _Baseline:
    """The PI-CAI baseline recipe on the GPU: seconds per study and peak GPU memory (MiB)."""

    study_s: list[float]
    peak_mb: float


def _time_baseline(amp: torch.dtype, repeats: int) -> _Baseline:
    """Time ``repeats`` baseline studies on the GPU in the engine's autocast dtype, after one warm-up."""
    baseline = BaselineUNet().cuda().eval()
    images = torch.randn(1, *INPUT_SHAPE, device="cuda")
    _baseline_study(baseline, images, amp)  # warm up (cuDNN autotuning)
    torch.cuda.reset_peak_memory_stats()
    base = [_baseline_study(baseline, images, amp) for _ in range(repeats)]
    return _Baseline(base, torch.cuda.max_memory_allocated() / 2**20)


def _batch_section(batch: _Batch, single_result: EngineResult) -> dict[str, Any]:
    """The report's ``batch``: studies per second singly and batched, and whether the lesions agree."""
    single = batch.single_s
    return {
        "studies": BATCH,
        "single_runs_s_total": round(sum(single), 4),
        "run_batch_s": round(batch.batch_s, 4),
        "studies_per_s_single": round(BATCH / sum(single), 2),
        "studies_per_s_batched": round(BATCH / batch.batch_s, 2),
        "same_lesions_as_single": all(
            [lesion.to_dict() for lesion in r.lesions]
            == [lesion.to_dict() for lesion in single_result.lesions]
            for r in batch.results
        ),
    }


def run(dicom_dir: Path, artifact: Path | None = None, repeats: int = 5) -> dict[str, Any]:
    """Measure the engine on CUDA beside the CPU; ``{"available": False, ...}`` without a GPU."""
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA device (torch.cuda.is_available() is False)"}
    threads = configure_cpu_threads()
    path = artifact or DEFAULT_ARTIFACT
    loaded = load_study(dicom_dir)
    cpu_engine = Engine.from_artifact(path, "cpu")
    gpu_engine = Engine.from_artifact(path, "cuda")
    amp = gpu_engine.amp_dtype or torch.float32
    gpu_engine.warm_up()
    cpu_engine.run(prepare_loaded_study(loaded))
    runs = _time_cpu_and_gpu(cpu_engine, gpu_engine, loaded, repeats)
    batch = _time_batch(gpu_engine, loaded)
    baseline = _time_baseline(amp, repeats)

    ours = statistics.median(runs.gpu_s)
    gpu_stages = runs.gpu_stages_s
    return {
        "available": True,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "autocast_dtype": str(amp).replace("torch.", ""),
        "cpu_threads": threads,
        "repeats": repeats,
        "model": gpu_engine.model_info.to_dict(),
        "loaded_to_result_s_median": {"cpu": round(statistics.median(runs.cpu_s), 4), "cuda": round(ours, 4)},
        "cuda_stages_s_median": {
            k: round(statistics.median(s[k] for s in gpu_stages), 4) for k in gpu_stages[0]
        },
        "batch": _batch_section(batch, runs.gpu_result),
        "picai_baseline_cuda": {
            "what": "forward passes only, 5 folds x 2 flips, input 3x20x256x256, random weights, same autocast",
            "study_s_median": round(statistics.median(baseline.study_s), 4),
            "peak_gpu_memory_mb": round(baseline.peak_mb, 1),
        },
        "speed_ratio_cuda": round(statistics.median(baseline.study_s) / ours, 2),
        "peak_gpu_memory_mb": {"engine_batch": round(batch.peak_mb, 1)},
        "cpu_vs_cuda": _agreement(runs.cpu_result, runs.gpu_result),
    }


def main() -> int:
    """``python -m benchmarks.engine_cuda --fixture DIR --out FILE``."""
    configure_cli_logging(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_cuda")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    write_report(run(args.fixture / "dicom", args.model, args.repeats), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
