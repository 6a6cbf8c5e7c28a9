"""``lesion-ai synth``: generate synthetic bpMRI studies with ground truth."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from training.synth.config import COMPRESSIONS, DWI_SCHEMES, EXTRA_DWI, PROFILES, VENDOR_CHOICES, SynthConfig
from training.synth.dicom.encoding import DcmtkMissingError
from training.synth.generator import generate

logger = logging.getLogger(__name__)

__all__ = ["register", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``synth`` sub-command to the ``lesion-ai`` command line."""
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic bpMRI DICOM studies with PI-CAI style labels",
        description="Generate deterministic synthetic prostate bpMRI studies (DICOM), their lesion, gland and "
        "zone labels on the T2W grid, truth.json per case and a PI-CAI style marksheet.csv.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data set (default 0)")
    parser.add_argument(
        "--vendor",
        choices=VENDOR_CHOICES,
        default="siemens",
        help="vendor conventions; 'mixed' cycles through them by case (default siemens)",
    )
    parser.add_argument("--enhanced", action="store_true", help="write Enhanced MR multi-frame objects")
    parser.add_argument(
        "--compress",
        choices=("none", *COMPRESSIONS),
        default="none",
        help="lossless pixel encoding (default none); jpeg-lossless needs DCMTK's dcmcjpeg",
    )
    parser.add_argument("--profile", choices=PROFILES, default="small", help="image sizes (default small)")
    parser.add_argument(
        "--extra-dwi",
        choices=(*EXTRA_DWI, "random"),
        default="none",
        help="a second diffusion acquisition: a separate high-b scan, a DTI scan, none (default) or drawn "
        "per case (random)",
    )
    parser.add_argument(
        "--dwi-scheme",
        choices=DWI_SCHEMES,
        default="standard",
        help="standard (default) or mddw: the only diffusion acquisition is a Siemens multi-direction scan "
        "whose TRACEW, ADC and CALC_BVAL outputs are flagged DIRECTIONAL (needs --vendor siemens)",
    )
    parser.add_argument(
        "--tilt",
        type=float,
        default=None,
        metavar="DEG",
        help="oblique tilt of axial series (default: by seed)",
    )
    parser.set_defaults(func=run)


def _usage_error(message: str) -> int:
    sys.stderr.write(f"lesion-ai synth: error: {message}\n")
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Run ``lesion-ai synth`` with parsed ``args``; return the exit status (0 ok, 1 failed, 2 bad usage)."""
    if args.cases < 1:
        return _usage_error(f"--cases must be at least 1, got {args.cases}")
    if args.seed < 0:
        return _usage_error(f"--seed must be a non-negative integer, got {args.seed}")
    try:
        config = SynthConfig(
            vendor=args.vendor,
            enhanced=bool(args.enhanced),
            compress=None if args.compress == "none" else args.compress,
            profile=args.profile,
            tilt_deg=args.tilt,
            extra_dwi=None if args.extra_dwi == "random" else args.extra_dwi,
            dwi_scheme=args.dwi_scheme,
        )
    except ValueError as exc:
        return _usage_error(str(exc).replace("SynthConfig.tilt_deg", "--tilt"))
    started = time.perf_counter()
    try:
        folders = generate(args.out, args.cases, args.seed, config)
    except DcmtkMissingError as exc:
        logger.error("%s", exc)
        return EXIT_FAILED
    except OSError as exc:
        logger.error("cannot write the data set to %s: %s", args.out, exc)
        return EXIT_FAILED
    sys.stdout.write(
        f"generated {len(folders)} case(s) in {args.out} ({time.perf_counter() - started:.1f} s); "
        f"marksheet: {Path(args.out) / 'marksheet.csv'}\n"
    )
    return EXIT_OK
