"""Input pipeline speed: load + roles + resampling of the fixture, beside a bare pydicom read.

Both are measured side by side in one run, alternating, so that the ratio holds on any machine. The
resampling of ADC, HBV and the computed b1400 onto the T2W grid happens when those images are first read
(:class:`~lesion_engine.intake.preprocess.PreparedStudy`); the benchmark reads all three, so it times the whole
pipeline whatever a caller later uses.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import pydicom

from lesion_engine.intake.preprocess import prepare_study

logger = logging.getLogger(__name__)


def bare_read(files: list[Path]) -> int:
    """Read every file with pydicom and decode its pixels: the least any reader must do."""
    total = 0
    for path in files:
        total += int(pydicom.dcmread(path).pixel_array.size)
    return total


def run(dicom_dir: Path, repeats: int = 5) -> dict[str, Any]:
    """Time ``prepare_study`` and a bare read of the same files; return the figures."""
    files = sorted(p for p in dicom_dir.rglob("*") if p.is_file())
    bare_read(files)  # warm the page cache and imports for both
    prepare_study(dicom_dir)
    bare, ours, stages = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        bare_read(files)
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        prepared = prepare_study(dicom_dir)
        resampled = time.perf_counter()
        _ = (prepared.adc, prepared.hbv, prepared.high_b)
        done = time.perf_counter()
        ours.append(done - start)
        stages.append({**prepared.timings_s, "resample_to_t2w": done - resampled})
    bare_s = statistics.median(bare)
    ours_s = statistics.median(ours)
    return {
        "files": len(files),
        "repeats": repeats,
        "bare_pydicom_read_s": round(bare_s, 4),
        "load_roles_resample_s": round(ours_s, 4),
        "ratio": round(ours_s / bare_s, 3),
        "target_ratio_max": 3.0,
        "meets_target": ours_s / bare_s <= 3.0,
        "stages_s_median": {k: round(statistics.median(s[k] for s in stages), 4) for k in stages[0]},
    }
