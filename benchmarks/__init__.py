"""Benchmarks run by ``make bench``; each writes its figures into one JSON report."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURE = Path(
    os.environ.get("LESION_AI_FIXTURE", REPO.parent / "shared" / "fixtures" / "prostatex-0001")
)
"""The real fixture study (its ``dicom`` folder is benchmarked); ``LESION_AI_FIXTURE`` overrides it."""


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """Write a benchmark report as indented JSON to ``out`` (when given) and to standard output."""
    text = json.dumps(report, indent=2) + "\n"
    if out is not None:
        out.write_text(text)
    sys.stdout.write(text)
