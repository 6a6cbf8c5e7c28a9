"""DICOM result writing speed: SEG + SR for the fixture's T2W series with two crafted lesions.

The first call pays one-off costs (highdicom loads its tables of the standard); the figure that counts
is the median of the repeated, warm calls. The lesions are crafted (no engine run), so the writers are
called directly (:func:`lesion_engine.results.writer.write_results`, which reports the seconds per object) with
the input series UIDs the node derives its result UIDs from
(:func:`lesion_engine.results.dicom_outputs.input_series_uids`: the series chosen for T2W, ADC and HBV).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lesion_engine.intake.preprocess import prepare_study
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import write_results

logger = logging.getLogger(__name__)

TARGET_S = 0.5


@dataclass(frozen=True)
class _Lesion:
    id: int
    center_lps_mm: tuple[float, float, float]
    mask: NDArray[np.bool_]
    volume_ml: float
    max_diameter_mm: float
    probability: float
    category: int
    zone: str | None


@dataclass(frozen=True)
class _Result:
    lesions: list[_Lesion]
    patient_score: float
    localization_map: Any
    model: dict[str, str]
    study_instance_uid: str


def _ball(
    shape: tuple[int, int, int], centre: tuple[int, int, int], radii: tuple[float, float, float]
) -> NDArray[np.bool_]:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = (
        ((zz - centre[0]) / radii[0]) ** 2
        + ((yy - centre[1]) / radii[1]) ** 2
        + ((xx - centre[2]) / radii[2]) ** 2
    )
    return np.asarray(d <= 1.0)


def run(dicom_dir: Path, repeats: int = 5) -> dict[str, Any]:
    """Time SEG + SR writing for the fixture with two crafted lesions; return the figures."""
    prepared = prepare_study(dicom_dir)
    series = prepared.loaded.series_by_uid(prepared.roles["t2w"].series_instance_uid)
    datasets = [instance.dataset for instance in series.instances]
    z, y, x = (int(v) for v in reversed(prepared.t2w.GetSize()))
    shape = (z, y, x)
    lesions = [
        _Lesion(
            1,
            (0.0, 0.0, 0.0),
            _ball(shape, (z // 2, y * 2 // 3, x // 2), (1.6, 14, 18)),
            1.2,
            16.0,
            0.8,
            4,
            "pz",
        ),
        _Lesion(
            2,
            (0.0, 0.0, 0.0),
            _ball(shape, (z // 3, y // 2, x // 2 - 30), (1.2, 8, 8)),
            0.3,
            8.0,
            0.3,
            3,
            None,
        ),
    ]
    result = _Result(
        lesions, 0.8, None, {"name": "bench", "version": "1", "sha256": "0" * 64}, prepared.study_instance_uid
    )
    settings = ResultSettings()
    inputs = sorted({prepared.roles[role].series_instance_uid for role in ("t2w", "adc", "hbv")})
    start = time.perf_counter()
    write_results(result, datasets, settings, input_series_uids=inputs)
    first_s = time.perf_counter() - start
    totals, seg, sr = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        objects = write_results(result, datasets, settings, input_series_uids=inputs)
        totals.append(time.perf_counter() - start)
        seg.append(objects.timings_s["seg"])
        sr.append(objects.timings_s["sr"])
    median = statistics.median(totals)
    return {
        "lesions": len(lesions),
        "t2w_slices": z,
        "repeats": repeats,
        "first_call_s": round(first_s, 4),
        "seg_sr_s": round(median, 4),
        "seg_s": round(statistics.median(seg), 4),
        "sr_s": round(statistics.median(sr), 4),
        "target_s_max": TARGET_S,
        "meets_target": median <= TARGET_S,
    }
