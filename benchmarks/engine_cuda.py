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
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks import DEFAULT_FIXTURE, write_report
from benchmarks.picai_baseline import FOLDS, INPUT_SHAPE, BaselineUNet
from lesion_engine.devices import configure_cpu_threads
from lesion_engine.engine import DEFAULT_ARTIFACT, Engine
from lesion_engine.loading import load_study
from lesion_engine.logsetup import configure_cli_logging
from lesion_engine.preprocess import prepare_loaded_study
from lesion_engine.result_types import EngineResult

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
    engine_peak = torch.cuda.max_memory_allocated() / 2**20

    baseline = BaselineUNet().cuda().eval()
    images = torch.randn(1, *INPUT_SHAPE, device="cuda")
    _baseline_study(baseline, images, amp)  # warm up (cuDNN autotuning)
    torch.cuda.reset_peak_memory_stats()
    base = [_baseline_study(baseline, images, amp) for _ in range(repeats)]
    base_peak = torch.cuda.max_memory_allocated() / 2**20

    ours = statistics.median(gpu_s)
    return {
        "available": True,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "autocast_dtype": str(amp).replace("torch.", ""),
        "cpu_threads": threads,
        "repeats": repeats,
        "model": gpu_engine.model_info,
        "loaded_to_result_s_median": {"cpu": round(statistics.median(cpu_s), 4), "cuda": round(ours, 4)},
        "cuda_stages_s_median": {
            k: round(statistics.median(s[k] for s in gpu_stages), 4) for k in gpu_stages[0]
        },
        "batch": {
            "studies": BATCH,
            "single_runs_s_total": round(sum(single), 4),
            "run_batch_s": round(batch_s, 4),
            "studies_per_s_single": round(BATCH / sum(single), 2),
            "studies_per_s_batched": round(BATCH / batch_s, 2),
            "same_lesions_as_single": all(
                [lesion.to_dict() for lesion in r.lesions]
                == [lesion.to_dict() for lesion in gpu_result.lesions]
                for r in batch_results
            ),
        },
        "picai_baseline_cuda": {
            "what": "forward passes only, 5 folds x 2 flips, input 3x20x256x256, random weights, same autocast",
            "study_s_median": round(statistics.median(base), 4),
            "peak_gpu_memory_mb": round(base_peak, 1),
        },
        "speed_ratio_cuda": round(statistics.median(base) / ours, 2),
        "peak_gpu_memory_mb": {"engine_batch": round(engine_peak, 1)},
        "cpu_vs_cuda": _agreement(cpu_result, gpu_result),
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
