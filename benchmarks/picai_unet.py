"""An imported PI-CAI U-Net ensemble in the node, beside the authors' own pipeline, in one run (``picai_unet``).

Both run the same five fold checkpoints (the tests' folds: picai_baseline's ``neural_network_for_run`` with
fixed seeds, the published format, trained briefly on synthetic studies so that the maps have structure;
the reference's candidate extraction takes longer the more the map holds) on the real fixture study:

* reference: ``process.py``'s ``predict()`` unchanged (:mod:`tests.oracles.picai_reference`), from the three
  ``.mha`` files picai_prep converts the chosen series to, to the detection map and case-level likelihood
  written to files, as the grand-challenge container does;
* ours: :class:`~lesion_engine.model.picai_unet.engine.DetectionEngine` from the prepared study (the same volumes,
  read from DICOM by our loader) to the :class:`~lesion_engine.model.result_types.EngineResult`, with the
  reference's pipeline (the default: the same numbers) and with ``crop_resampling='crop'`` (only the crop
  of each scan resampled: faster, but a few voxels of integer series differ by 1, see the pipeline).

Runs alternate (ours, reference, ours, ...) so that the ratio holds on any machine; medians are reported
with the agreement of the two results. Where a CUDA GPU is present, ours is timed on it too.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks import DEFAULT_FIXTURE, REPO, write_report
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.model.devices import configure_cpu_threads
from lesion_engine.model.picai_unet.card import DetectionModelCard
from lesion_engine.model.picai_unet.checkpoint import import_picai_unet
from lesion_engine.model.picai_unet.engine import DetectionEngine
from lesion_engine.model.picai_unet.pipeline import crop_or_pad

logger = logging.getLogger(__name__)

TARGET_RATIO = 2.0
FIXTURE_SERIES = {"t2w": 10, "adc": 8, "hbv": 9}


def _folds() -> Path:
    """The tests' five fold checkpoints (published format, trained briefly on synthetic studies: their maps
    have structure, several candidates on the fixture, as real weights give; built once, kept in var/)."""
    from tests.oracles.picai_reference import cached_fold_checkpoints

    return cached_fold_checkpoints(REPO).weights_dir


def _series_folders(dicom_dir: Path) -> dict[int, Path]:
    import pydicom

    out: dict[int, Path] = {}
    for folder in sorted(p for p in dicom_dir.glob("*/*") if p.is_dir()):
        first = next(folder.glob("*.dcm"), None)
        if first is not None:
            out[int(pydicom.dcmread(first, stop_before_pixels=True).SeriesNumber)] = folder
    return out


FAST = {"crop_resampling": "crop"}
"""The deliberate differences that buy speed (see :class:`lesion_engine.model.picai_unet.config.PicaiPipeline`)."""


def _agreement(result: Any, reference: Any) -> dict[str, Any]:
    ours_map = sitk.GetArrayFromImage(result.localization_map)
    their_map = np.asarray(crop_or_pad(reference.softmax_t2w, ours_map.shape))
    theirs = sitk.GetArrayFromImage(reference.detection_map)
    ours = sitk.GetArrayFromImage(result.detection_map)
    return {
        "probability_map_max_abs": float(np.abs(ours_map - their_map).max()),
        "detection_map_max_abs": float(np.abs(ours - theirs).max()),
        "detection_map_voxels_differing": int((ours != theirs).sum()),
        "case_level_abs": abs(result.patient_score - reference.case_level),
        "lesions": len(result.lesions),
        "reference_lesions": len(np.unique(theirs[theirs > 0])),
    }


@dataclass(frozen=True)
class _Imported:
    """The fold checkpoints imported as the node's artifact and loaded on the CPU, with their seconds."""

    engine: DetectionEngine
    import_s: float
    warm_up_s: float


def _import_folds(weights: Path, artifact: Path) -> _Imported:
    """Import the fold checkpoints in ``weights`` into ``artifact``, load it on the CPU and warm it up."""
    started = time.perf_counter()
    import_picai_unet(weights, artifact, name="picai-unet-bench", version="synthetic-folds")
    import_s = time.perf_counter() - started
    engine = DetectionEngine.from_artifact(artifact, "cpu")
    warm_up_s = engine.warm_up()
    return _Imported(engine, import_s, warm_up_s)


@dataclass(frozen=True)
class _Alternating:
    """Alternating runs of ours (each card) and of the reference.

    Attributes
    ----------
    times : dict of str to list of float
        Seconds per run, by name (``ours``, ``ours_fast``, ``reference``).
    stages : dict of str to list of dict
        Ours' seconds per stage, by card name.
    results : dict of str to EngineResult
        Ours' last result, by card name.
    reference : ReferenceOutput or None
        The reference's last output (None without runs).
    """

    times: dict[str, list[float]]
    stages: dict[str, list[dict[str, float]]]
    results: dict[str, Any]
    reference: Any


def _time_alternating(
    engine: DetectionEngine,
    cards: Sequence[tuple[str, DetectionModelCard]],
    prepared: PreparedStudy,
    inputs: tuple[Path, Path, Path],
    models: list[torch.nn.Module],
    work: Path,
    repeats: int,
) -> _Alternating:
    """Run ours with each card, then the reference, ``repeats`` times.

    Parameters
    ----------
    engine : DetectionEngine
        Ours, on the CPU; its card is set before each run.
    cards : sequence of (str, DetectionModelCard)
        The pipelines of ours to time, by name.
    prepared : PreparedStudy
        The study, prepared once.
    inputs : tuple of Path
        The reference's T2W, ADC and HBV ``.mha`` files.
    models : list of torch.nn.Module
        The reference's fold networks.
    work : Path
        Scratch folder (the reference writes its outputs under ``reference``).
    repeats : int
        Rounds of runs.

    Returns
    -------
    _Alternating
    """
    from tests.oracles.picai_reference import run_reference

    times: dict[str, list[float]] = {"ours": [], "ours_fast": [], "reference": []}
    stages: dict[str, list[dict[str, float]]] = {"ours": [], "ours_fast": []}
    results: dict[str, Any] = {}
    reference = None
    for _ in range(repeats):
        for name, card in cards:
            engine.card = card
            started = time.perf_counter()
            results[name] = engine.run(prepared)
            times[name].append(time.perf_counter() - started)
            stages[name].append(results[name].timings_s)
        reference = run_reference(*inputs, models, work / "reference")
        times["reference"].append(reference.seconds)
    return _Alternating(times, stages, results, reference)


def _variant_section(runs: _Alternating, name: str, median_s: float, what: str) -> dict[str, Any]:
    """The report's section of one variant of ours: median time, stages and agreement with the reference."""
    return {
        "what": what,
        "study_s_median": round(median_s, 3),
        "stages_s_median": _stages(runs.stages[name]),
        "agreement": _agreement(runs.results[name], runs.reference),
    }


def _bound_section(stages: list[dict[str, float]], reference_s: float) -> dict[str, Any]:
    """The report's ``bound``: the folds' forward passes alone, and the speed ratio they allow at most."""
    return {
        "what": "the five folds' forward passes (input and flip) alone, as ours times them: no pipeline "
        "that runs the same networks with the same numbers on this device can be faster than the "
        "reference by more than reference / networks",
        "networks_s_median": round(statistics.median(run["localization"] for run in stages), 3),
        "max_speed_ratio": round(reference_s / statistics.median(run["localization"] for run in stages), 2),
    }


def run(dicom_dir: Path, repeats: int = 3) -> dict[str, Any]:
    """Time the node's ensemble (the reference's pipeline, and only the crops resampled) and the reference pipeline
    side by side; return the report."""
    from tests.oracles.picai_reference import fixture_reference_inputs, load_reference_folds

    threads = configure_cpu_threads()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        weights = _folds()
        imported = _import_folds(weights, work / "artifact")
        exact_card = imported.engine.card
        fast_card = replace(exact_card, pipeline=exact_card.pipeline.replace(**FAST))
        prepared = prepare_study(dicom_dir)
        inputs = fixture_reference_inputs(_series_folders(dicom_dir), work / "mha")
        models = load_reference_folds(weights)
        cards = (("ours", exact_card), ("ours_fast", fast_card))
        runs = _time_alternating(imported.engine, cards, prepared, inputs, models, work, repeats)
        cuda = _cuda(work / "artifact", prepared, repeats)

    median = {name: statistics.median(values) for name, values in runs.times.items()}
    ratio = median["reference"] / median["ours"]
    fast_ratio = median["reference"] / median["ours_fast"]
    return {
        "device": "cpu",
        "threads": threads,
        "repeats": repeats,
        "weights": "the tests' folds: picai_baseline's neural_network_for_run, fixed seeds, trained briefly on "
        "synthetic studies (the reference's candidate extraction takes longer on maps with more structure)",
        "import_s": round(imported.import_s, 2),
        "warm_up_s": round(imported.warm_up_s, 2),
        "ours": _variant_section(
            runs,
            "ours",
            median["ours"],
            "prepared study -> result, the reference's pipeline (the default): resampling, "
            "normalisation, 5 folds x (input, flipped), blur, back to the T2W grid, dynamic candidates, lesions",
        ),
        "ours_fast": _variant_section(
            runs,
            "ours_fast",
            median["ours_fast"],
            f"the same with the deliberate differences {FAST} (only the crop of each scan resampled)",
        ),
        "reference": {
            "what": "process.py predict(): read the .mha files, picai_prep preprocessing, 5 folds x 2 flips, "
            "blur per prediction, undo, extract_lesion_candidates, write the outputs",
            "study_s_median": round(median["reference"], 3),
        },
        "speed_ratio": round(ratio, 2),
        "speed_ratio_fast": round(fast_ratio, 2),
        "bound": _bound_section(runs.stages["ours"], median["reference"]),
        "targets": {"speed_ratio_min": TARGET_RATIO},
        "meets_targets": {
            "speed_ratio": ratio >= TARGET_RATIO,
            "speed_ratio_fast": fast_ratio >= TARGET_RATIO,
        },
        "cuda": cuda,
    }


def _stages(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}


def _cuda(artifact: Path, prepared: Any, repeats: int) -> dict[str, Any]:
    """Ours on a CUDA GPU (where there is one)."""
    if not torch.cuda.is_available():
        return {"available": False}
    engine = DetectionEngine.from_artifact(artifact, "cuda")
    engine.warm_up()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        engine.run(prepared)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {
        "available": True,
        "device": torch.cuda.get_device_name(0),
        "study_s_median": round(statistics.median(times), 3),
    }


def main() -> int:
    """``python -m benchmarks.picai_unet [--out FILE]``: this benchmark alone."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.picai_unet")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    write_report({"picai_unet": run(args.fixture / "dicom", args.repeats)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
