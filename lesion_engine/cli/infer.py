"""``lesion-ai infer``: find and classify the lesions of a DICOM study; write JSON and NIfTI maps.

Writes into ``--out``:

``lesions.json``
    The result (JSON Schema: ``lesion_engine/data/lesions.schema.json``, version ``1.4``)::

        {
          "schema_version": "1.4",
          "study_instance_uid": "1.2.3...",
          "model": {"name": "...", "version": "...", "sha256": "<weights sha256>", "kind": "joint"},
          "series": {"t2w": "<SeriesInstanceUID>", "adc": "...", "hbv": "..."},
          "patient_score": 0.83,                  # highest lesion probability, 0 without lesions
          "gland_volume_ml": 31.2,                # prostate gland (anatomical gate), null without it
          "lesions": [                            # by decreasing probability
            {"id": 1,                             # 1..n
             "center_lps_mm": [x, y, z],          # centre of mass, DICOM patient coordinates (LPS), mm
             "volume_ml": 0.52,
             "max_diameter_mm": 12.3,             # largest distance between two mask voxel centres
             "axial_diameter_mm": 10.5,           # in-plane on the index slice (PI-RADS size; SR Long axis)
             "probability": 0.83,                 # of clinically significant cancer (ISUP >= 2)
             "category": 4,                       # suspicion category 2..5 (PI-RADS-like); null for a detection-map model
             "zone": "pz"}                        # "pz", "tz", "outside" (beside the gland) or null
          ],
          "timings_s": {"model_input": ..., "gland": ..., "localization": ..., "candidates": ...,
                        "classification": ..., "outputs": ..., "total": ...},
          "roles": {"t2w": {...}, "adc": {...}, "hbv": {...}},   # as `lesion-ai inspect --json` reports
          "warnings": ["..."]
        }

``detection_map.nii.gz``
    float32 on the T2W grid: each lesion's voxels hold its probability, 0 elsewhere; lesions do not touch
    (a PI-CAI detection map).
``localization_map.nii.gz``
    float32 on the T2W grid: the localization network's per-voxel lesion likelihood (0 outside the prostate
    gland dilated by the gate's margin, when the anatomical gate is on).
``seg.dcm``, ``sr.dcm``, ``summary.dcm``, ``kos.dcm``
    The DICOM results a viewer shows: a Segmentation with one segment per lesion (none for a negative
    study), a TID 1500 Comprehensive 3D SR, the result summary image ("No lesion found" or the lesions, for
    any viewer) and a Key Object Selection of them and the lesions' key T2W images; with ``--pmap`` also
    ``pmap.dcm`` (Parametric Map of the localization map) and with ``--sc`` ``sc_NNN.dcm`` (T2W slices with
    lesion outlines burned in).
    ``--no-dicom`` skips them. When the study cannot be used, ``failure_*.dcm`` say why.

Exit status: 0 done; 1 the study cannot be used (the reason is printed); 2 bad arguments, or the model is
missing or invalid. Research use only; not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Collection
from pathlib import Path

import SimpleITK as sitk

from lesion_engine.engine import load_engine
from lesion_engine.errors import LesionAIError, ModelArtifactError, StudyError
from lesion_engine.intake.loading import load_study
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.intake.series_rules import load_series_rules
from lesion_engine.model.result_types import EngineResult
from lesion_engine.results.dicom_outputs import write_outputs
from lesion_engine.results.outputs import Output
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import write_failure

logger = logging.getLogger(__name__)

__all__ = [
    "DETECTION_MAP",
    "LESIONS_JSON",
    "LOCALIZATION_MAP",
    "SCHEMA_PATH",
    "register",
    "run",
    "write_dicom_results",
    "write_failure_results",
    "write_result",
]

EXIT_OK = 0
EXIT_UNUSABLE = 1
EXIT_USAGE = 2

LESIONS_JSON = "lesions.json"
DETECTION_MAP = "detection_map.nii.gz"
LOCALIZATION_MAP = "localization_map.nii.gz"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "data" / "lesions.schema.json"
"""JSON Schema of ``lesions.json``."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``infer`` sub-command."""
    parser = subparsers.add_parser(
        "infer",
        help="find and classify the lesions of a study; write lesions.json and the maps",
        description="Run the lesion model on a biparametric prostate MR study and write lesions.json, "
        "detection_map.nii.gz and localization_map.nii.gz into --out. Exit status 0 when done, 1 when the "
        "study cannot be used (with the reason), 2 on bad arguments or a missing or invalid model. "
        "Research use only; not for diagnosis.",
    )
    parser.add_argument(
        "dicom_dir", type=Path, help="folder holding the study's DICOM files (searched recursively)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the results (created if missing)")
    parser.add_argument(
        "--model",
        type=Path,
        help="model artifact: a folder with model.json and model.safetensors, or its model.json "
        "(default: the installed default model)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="where to run the networks (default: cuda when available)"
    )
    parser.add_argument("--rules", type=Path, help="site series-rules YAML overriding the defaults")
    parser.add_argument("--no-dicom", action="store_true", help="do not write the DICOM SEG and SR")
    parser.add_argument(
        "--pmap", action="store_true", help="also write a Parametric Map of the localization map"
    )
    parser.add_argument(
        "--sc", action="store_true", help="also write Secondary Capture overlays of the lesions"
    )
    parser.set_defaults(func=run)


def write_dicom_results(
    result: EngineResult,
    prepared: PreparedStudy,
    out: Path,
    settings: ResultSettings,
    outputs: Collection[Output] | None = None,
) -> list[Path]:
    """Write the DICOM objects of a result (``seg.dcm``, ``sr.dcm``, ``summary.dcm``, ``kos.dcm`` and the
    optional ones) into ``out``.

    Parameters
    ----------
    result, prepared
        The engine's result and the study it was computed from.
    out : Path
        The folder (it must exist).
    settings : ResultSettings
        Names and numbers of the objects.
    outputs : collection of Output, optional
        The outputs to write; None: the SR, and the Segmentation, Parametric Map and Secondary Capture
        images that ``settings`` switches on.

    Returns
    -------
    list of Path
        The files written: ``seg.dcm`` (not for a negative study), ``sr.dcm``, ``summary.dcm`` (the result
        summary image), ``pmap.dcm``, ``kos.dcm`` (the Key Object Selection), ``sc_NNN.dcm``.
    """
    if outputs is None:
        switches = {
            Output.SEG: settings.write_seg,
            Output.SR: True,
            Output.PMAP: settings.write_pmap,
            Output.SC: settings.write_sc,
            Output.KOS: settings.write_kos,
        }
        outputs = [output for output, wanted in switches.items() if wanted]
    objects = write_outputs(prepared, result, outputs, settings)
    named = [
        (f"{output.value}.dcm" if index == 0 else "summary.dcm", ds)
        for output in (Output.SEG, Output.SR, Output.PMAP, Output.KOS)
        for index, ds in enumerate(objects.get(output, []))
    ]
    named += [(f"sc_{i + 1:03d}.dcm", ds) for i, ds in enumerate(objects.get(Output.SC, []))]
    written = []
    for name, dataset in named:
        dataset.save_as(out / name, enforce_file_format=True)
        written.append(out / name)
    return written


def write_failure_results(dicom_dir: Path, reason: str, out: Path, settings: ResultSettings) -> list[Path]:
    """Write the failure objects of an unusable study into ``out``; nothing when no instance is readable."""
    try:
        loaded = load_study(dicom_dir)
    except LesionAIError:
        return []
    datasets = [instance.dataset for series in loaded.series for instance in series.instances]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, dataset in enumerate(write_failure(datasets, reason, settings)):
        path = out / f"failure_{i + 1}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def write_result(result: EngineResult, out: Path) -> dict[str, Path]:
    """Write ``lesions.json`` and both maps of a result into ``out`` (created if missing).

    Returns
    -------
    dict of str to Path
        ``lesions``, ``detection_map`` and ``localization_map`` paths.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "lesions": out / LESIONS_JSON,
        "detection_map": out / DETECTION_MAP,
        "localization_map": out / LOCALIZATION_MAP,
    }
    sitk.WriteImage(result.detection_map, str(paths["detection_map"]), useCompression=True)
    sitk.WriteImage(result.localization_map, str(paths["localization_map"]), useCompression=True)
    paths["lesions"].write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return paths


def _usage(message: str) -> int:
    sys.stderr.write(f"lesion-ai infer: {message}\n")
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Run ``infer`` and return the exit status."""
    if not args.dicom_dir.is_dir():
        return _usage(f"{args.dicom_dir} is not a folder")
    if args.out.exists() and not args.out.is_dir():
        return _usage(f"--out {args.out} exists and is not a folder")
    try:
        rules = load_series_rules(args.rules) if args.rules else None
        engine = load_engine(args.model, args.device)
    except ModelArtifactError as exc:
        return _usage(f"model: {exc}")
    except LesionAIError as exc:
        return _usage(f"{type(exc).__name__}: {exc}")
    settings = ResultSettings()
    outputs = [
        Output.SEG,
        Output.SR,
        Output.KOS,
        *([Output.PMAP] if args.pmap else []),
        *([Output.SC] if args.sc else []),
    ]
    started = time.perf_counter()
    try:
        prepared = prepare_study(args.dicom_dir, rules)
    except StudyError as exc:
        sys.stderr.write(f"lesion-ai infer: study not usable: {type(exc).__name__}: {exc}\n")
        if not args.no_dicom:
            for path in write_failure_results(args.dicom_dir, str(exc), args.out, settings):
                sys.stderr.write(f"wrote {path}\n")
        return EXIT_UNUSABLE
    except LesionAIError as exc:
        return _usage(f"{type(exc).__name__}: {exc}")
    result = engine.run(prepared)
    result.timings_s = {**{f"study_{k}": v for k, v in prepared.timings_s.items()}, **result.timings_s}
    result.timings_s["study_to_result"] = time.perf_counter() - started
    try:
        paths = write_result(result, args.out)
        dicom = [] if args.no_dicom else write_dicom_results(result, prepared, args.out, settings, outputs)
    except OSError as exc:
        return _usage(f"cannot write the results into {args.out}: {exc}")
    lesions = ", ".join(
        f"#{lesion.id} p={lesion.probability:.2f}" + (f" cat {lesion.category}" if lesion.category else "")
        for lesion in result.lesions
    )
    sys.stdout.write(
        f"{len(result.lesions)} lesion(s){': ' + lesions if lesions else ''}; "
        f"patient score {result.patient_score:.3f}\n"
        f"wrote {paths['lesions']}, {paths['detection_map']}, {paths['localization_map']}"
        + "".join(f", {path}" for path in dicom)
        + "\n"
    )
    return EXIT_OK
