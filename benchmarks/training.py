"""Training throughput: optimizer steps per second of the default recipe, on the CPU and, where one is
available, on a CUDA GPU.

A few small synthetic studies are generated and cached on the default model grid; then the default model's
recipe (architecture, crop, batch size, joint loss) runs ``steps`` optimizer steps on each device. The first
steps (allocation, cuDNN autotuning) are not counted. ``python -m benchmarks.training --out FILE`` runs it
alone.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks import write_report
from lesion_engine.logsetup import configure_cli_logging
from lesion_engine.model.model_input import PreprocessConfig
from training.datasets.dataset import DataSpec, build_cache
from training.default_model import DEFAULTS
from training.fit.train import TrainConfig, train
from training.synth import SynthConfig, generate_case

logger = logging.getLogger(__name__)

CASES = 4
WARMUP_STEPS = 3


def _seconds_per_step(run_dir: Path) -> list[float]:
    with (run_dir / "steps.csv").open() as handle:
        return [float(row["seconds"]) for row in csv.DictReader(handle)]


def run(steps: int = 20, devices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps per device; return steps/s and s/step (medians)."""
    if steps <= WARMUP_STEPS:
        raise ValueError(f"steps must exceed the {WARMUP_STEPS} uncounted warm-up steps, got {steps}")
    chosen = devices or (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    report: dict[str, Any] = {
        "what": "optimizer steps of the default recipe (batch size, crop, architecture, joint loss) on "
        f"{CASES} cached small synthetic studies; the first {WARMUP_STEPS} steps are not counted",
        "steps": steps,
        "batch_size": DEFAULTS["batch_size"],
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for index in range(CASES):
            generate_case(root / "data", index, 11, SynthConfig(vendor="mixed", profile="small"))
        spec = DataSpec(root / "data")
        build_cache(spec, PreprocessConfig(), root / "cache")
        for device in chosen:
            config = TrainConfig(
                data=spec,
                out_dir=root / f"run-{device}",
                cache_dir=root / "cache",
                batch_size=int(DEFAULTS["batch_size"]),
                lr=float(DEFAULTS["lr"]),
                warmup_epochs=0,
                epochs=1,
                samples_per_epoch=steps * int(DEFAULTS["batch_size"]),
                device=device,
                progress=False,
            )
            result = train(config, argv=["benchmark"])
            timed = _seconds_per_step(result.run_dir)[WARMUP_STEPS:]
            per_step = statistics.median(timed)
            report[device] = {
                "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
                "s_per_step_median": round(per_step, 4),
                "steps_per_s": round(1.0 / per_step, 2),
                "studies_per_s": round(config.batch_size / per_step, 2),
            }
    return report


def main() -> int:
    """``python -m benchmarks.training [--steps N] [--out FILE]``."""
    configure_cli_logging(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    write_report(run(args.steps), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
