"""Benchmarks run by ``make bench``; each writes its figures into one JSON report."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURE = Path(
    os.environ.get("LESION_AI_FIXTURE", REPO.parent / "shared" / "fixtures" / "prostatex-0001")
)
"""The real fixture study (its ``dicom`` folder is benchmarked); ``LESION_AI_FIXTURE`` overrides it."""
