"""``python -m benchmarks --out bench.json``: run every benchmark and write one JSON report."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from pathlib import Path

from benchmarks import (
    DEFAULT_FIXTURE,
    cluster,
    engine,
    engine_cuda,
    gland,
    input_pipeline,
    node,
    picai_unet,
    results,
    soak,
    training,
    write_report,
)
from lesion_engine.logsetup import configure_cli_logging


def main() -> int:
    """Run the benchmarks; write the JSON report to ``--out`` and to standard output."""
    configure_cli_logging(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--model", type=Path, help="model artifact for the engine benchmark (default: the installed default)"
    )
    args = parser.parse_args()
    dicom = args.fixture / "dicom"
    if not dicom.is_dir():
        sys.stderr.write(f"fixture study not found at {dicom}; set LESION_AI_FIXTURE or pass --fixture\n")
        return 2
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "input_pipeline": input_pipeline.run(dicom, args.repeats),
        "engine": engine.run(dicom, args.model, args.repeats),
        "engine_cuda": engine_cuda.run(dicom, args.model, args.repeats),
        "gland": gland.run(dicom, args.repeats),
        "picai_unet": picai_unet.run(dicom, min(args.repeats, 3)),
        "training": training.run(),
        "results": results.run(dicom, args.repeats),
        "node": node.run(dicom, args.model),
        "soak": soak.run(),
        "cluster": cluster.run(model=args.model),
    }
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
