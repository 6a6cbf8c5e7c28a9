"""The PI-CAI nnU-Net algorithm as a test oracle, and nnU-Net v1 fold checkpoints to run it on.

The PI-CAI semi-supervised nnU-Net baseline is deployed by the grand-challenge algorithm
``picai_nnunet_semi_supervised_gc_algorithm`` (Apache-2.0 code; CC BY-NC-SA 4.0 weights). Its ``process.py``
(copied unchanged, with the custom trainer files its Dockerfile installs into nnU-Net, in
``tests/data/picai_nnunet_gc_algorithm/``, or wherever ``LESION_AI_PICAI_NNUNET_REFERENCE`` points) is run
here as it runs in its container: ``csPCaAlgorithm.process()`` converts the scans with picai_prep, calls
``nnUNet_predict`` of nnunet 1.7.0 (a subprocess) and extracts the candidates.

Shims, none of which changes what is computed:

* ``evalutils`` (grand-challenge's framework, only ``__init__`` uses it) is a stub while ``process.py`` is
  loaded, and the algorithm object is built with ``object.__new__`` with the attributes ``process()`` reads;
* the Dockerfile copies ``nnUNetTrainerV2_Loss_FL_and_CE.py`` and ``nnUNetTrainerV2_focalLoss.py`` into
  nnunet's package; here ``nnUNet_predict`` is a small wrapper (on ``PATH`` for the call) that loads them
  from the reference folder and lets nnU-Net's trainer lookup find them, then runs nnU-Net's own ``main``;
* nnU-Net calls ``torch.load`` without ``weights_only``, which torch >= 2.6 turns into the restricted loader;
  the oracle (our own test checkpoints) is run with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, as torch 1.11
  (the container's) loaded them.

Real weights cannot be downloaded here. :func:`make_nnunet_folds` writes five folds in exactly nnU-Net v1's
format with nnU-Net's own trainer class (``save_checkpoint``: ``model_best.model`` with the optimizer's state
and numpy training curves, ``model_best.model.pkl`` with the plans, and ``plans.pkl``), small plans shaped
like PI-CAI's (T2W, ADC labelled ``CT`` with its intensity properties, HBV; anisotropic kernels and pooling)
and each fold trained briefly on synthetic studies preprocessed by nnU-Net itself, so that the maps have
structure. :func:`cached_nnunet_folds` builds them once into ``var/picai_nnunet_reference/``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from tests.oracles.picai_reference import _evalutils_stub, _locked, synthetic_reference_inputs
from tests.paths import DATA, REPO

REFERENCE_ROOT = Path(
    os.environ.get(
        "LESION_AI_PICAI_NNUNET_REFERENCE",
        DATA / "picai_nnunet_gc_algorithm",
    )
)
TASK = "Task2203_picai_baseline"
TRAINER = "nnUNetTrainerV2_Loss_FL_and_CE_checkpoints"
MODEL_SUBDIR = f"nnUNet/3d_fullres/{TASK}/{TRAINER}__nnUNetPlansv2.1"
"""The model folder under the results folder, as ``process.py`` names it."""
FOLDS = range(5)

# Small plans shaped like PI-CAI's (the real ones: patch 16 x 320 x 320 at 3 x 0.5 x 0.5 mm, 32 features): a
# coarse spacing and few features so that 5 folds x 8 mirrorings x several windows run in seconds on a CPU.
TARGET_SPACING = (3.0, 2.0, 2.0)
PATCH_SIZE = (16, 64, 64)
POOLS = ((1, 2, 2), (2, 2, 2), (2, 2, 2))
KERNELS = ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
BASE_FEATURES = 4
MODALITIES = {0: "T2W", 1: "CT", 2: "HBV"}
"""picai_prep's nnU-Net conversion labels the ADC ``CT``, so that nnU-Net normalises it with fixed statistics."""
TRAINING_STUDIES: tuple[tuple[str, int, int], ...] = (("siemens", 201, 1), ("ge", 202, 1))
TRAINING_LESIONS = ("cspca", "cspca")
# 40 steps give a map with structure (under 1% of voxels above 0.1); after 12, half the map was above 0.1, and
# report_guided_annotation's dynamic extraction (in the reference) took many minutes on it.
TRAIN_STEPS = 40
TRAIN_LR = 0.05
CACHE_VERSION = 1
STALE_AFTER_S = 24 * 3600.0


# ------------------------------------------------------------------------------------------------ loading
def _load_source(name: str, path: Path) -> types.ModuleType:
    """Load a Python source file of any suffix as module ``name`` (registered in ``sys.modules``)."""
    if not path.is_file():
        pytest.fail(
            f"the PI-CAI nnU-Net reference is missing at {path}; it is part of the repository "
            "(tests/data/picai_nnunet_gc_algorithm), or set LESION_AI_PICAI_NNUNET_REFERENCE to its folder"
        )
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


@functools.cache
def trainer_module() -> types.ModuleType:
    """The reference's ``nnUNetTrainerV2_Loss_FL_and_CE`` module, its focal-loss module installed under the name
    its Dockerfile gives it (in nnunet's package)."""
    import nnunet.training.network_training.nnUNet_variants.loss_function  # type: ignore[import-untyped]  # noqa: F401

    _load_source(
        "nnunet.training.network_training.nnUNet_variants.loss_function.nnUNetTrainerV2_focalLoss",
        REFERENCE_ROOT / "nnUNetTrainerV2_focalLoss.py.txt",
    )
    return _load_source(
        "picai_nnunet_trainer_FL_and_CE", REFERENCE_ROOT / "nnUNetTrainerV2_Loss_FL_and_CE.py.txt"
    )


def install_trainers() -> None:
    """Let nnU-Net's trainer lookup find the reference's trainer classes (as the Dockerfile's copies do)."""
    import nnunet.training.model_restore as model_restore  # type: ignore[import-untyped]

    module = trainer_module()
    original = model_restore.recursive_find_python_class
    if getattr(original, "picai_shim", False):
        return

    def find(folder: list[str], name: str, current_module: str) -> Any:
        return getattr(module, name) if hasattr(module, name) else original(folder, name, current_module)

    find.picai_shim = True  # type: ignore[attr-defined]
    model_restore.recursive_find_python_class = find


@functools.cache
def load_process() -> types.ModuleType:
    """The reference ``process.py`` as a module (the ``evalutils`` stub in place while it loads)."""
    stubs = _evalutils_stub()
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        return _load_source("picai_nnunet_gc_process", REFERENCE_ROOT / "process.py.txt")
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


_WRAPPER = """#!{python}
# nnUNet_predict with the reference's trainer classes findable (see tests/oracles/picai_nnunet_reference.py).
import sys
sys.path.insert(0, {repo!r})
from tests.oracles.picai_nnunet_reference import install_trainers
install_trainers()
from nnunet.inference.predict_simple import main  # type: ignore[import-untyped]
sys.exit(main())
"""


# ---------------------------------------------------------------------------------------------- reference
@dataclass
class NnunetReferenceOutput:
    """What the reference ``process()`` gave for one case.

    Attributes
    ----------
    detection_map : SimpleITK.Image
        ``cspca_detection_map.mha`` (on the T2W grid).
    case_level : float
        The case-level likelihood of the json.
    softmax : ndarray (z, y, x) float32
        The ensemble's map on the T2W grid (``softmax.nii.gz``, before the central crop).
    seconds : float
        Wall time of ``process()``.
    """

    detection_map: sitk.Image
    case_level: float
    softmax: NDArray[np.float32]
    seconds: float


def run_reference(t2w: Path, adc: Path, hbv: Path, results: Path, work: Path) -> NnunetReferenceOutput:
    """Run ``process.py``'s ``csPCaAlgorithm.process()`` on three ``.mha`` files with the model in ``results``.

    ``results`` is the results folder (``nnUNet/3d_fullres/Task2203_picai_baseline/...``); ``work`` receives
    the algorithm's folders (``nnunet/input``, ``nnunet/output``, ``output/``) and the ``nnUNet_predict``
    wrapper.
    """
    module = load_process()
    algorithm = object.__new__(module.csPCaAlgorithm)
    algorithm.scan_paths = [Path(t2w), Path(adc), Path(hbv)]
    algorithm.cspca_detection_map_path = (
        work / "output" / "images" / "cspca-detection-map" / "cspca_detection_map.mha"
    )
    algorithm.case_confidence_path = work / "output" / "cspca-case-level-likelihood.json"
    algorithm.nnunet_inp_dir = work / "nnunet" / "input"
    algorithm.nnunet_out_dir = work / "nnunet" / "output"
    algorithm.nnunet_results = Path(results)
    for folder in (
        algorithm.nnunet_inp_dir,
        algorithm.nnunet_out_dir,
        algorithm.cspca_detection_map_path.parent,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "nnUNet_predict"
    wrapper.write_text(_WRAPPER.format(python=sys.executable, repo=str(REPO)), encoding="utf-8")
    wrapper.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
    }
    saved = {key: os.environ.get(key) for key in (*env, "RESULTS_FOLDER")}
    os.environ.update(env)
    try:
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                algorithm.process()
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"nnUNet_predict failed:\n{str(exc.stdout)[-4000:]}") from exc
        seconds = time.perf_counter() - started
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    softmax = sitk.GetArrayFromImage(sitk.ReadImage(str(algorithm.nnunet_out_dir / "softmax.nii.gz")))
    return NnunetReferenceOutput(
        detection_map=sitk.ReadImage(str(algorithm.cspca_detection_map_path)),
        case_level=float(json.loads(algorithm.case_confidence_path.read_text(encoding="utf-8"))),
        softmax=np.asarray(softmax, dtype=np.float32),
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------- fold checkpoints
def _nifti_case(case_dir: Path, out: Path) -> tuple[list[str], str]:
    """A synthetic case as ``process.py`` feeds nnU-Net (picai_prep ``Sample``, NIfTI), with its label."""
    from picai_prep.data_utils import atomic_image_write
    from picai_prep.preprocessing import Sample

    t2w, adc, hbv = synthetic_reference_inputs(case_dir, out / "mha")
    label = sitk.ReadImage(str(case_dir / "labels" / f"{case_dir.name}_lesion.nii.gz"))
    lesion = sitk.Cast(label > 0, sitk.sitkUInt8)
    lesion.CopyInformation(label)
    sample = Sample(scans=[sitk.ReadImage(str(p)) for p in (t2w, adc, hbv)], lbl=lesion)
    sample.preprocess()  # type: ignore[no-untyped-call]
    files = []
    for index, scan in enumerate(sample.scans):
        path = out / f"case_{index:04d}.nii.gz"
        atomic_image_write(scan, path)
        files.append(str(path))
    assert sample.lbl is not None
    label_path = out / "case_label.nii.gz"
    atomic_image_write(sample.lbl, label_path)
    return files, str(label_path)


def _plans(intensity: dict[int, dict[str, Any]], spacings: list[NDArray[np.float64]]) -> dict[str, Any]:
    """Plans in ExperimentPlanner3D_v21's layout (the keys and types nnU-Net writes)."""
    stage = {
        "batch_size": 2,
        "num_pool_per_axis": [2, 3, 3],
        "patch_size": np.array(PATCH_SIZE),
        "median_patient_size_in_voxels": np.array([20, 96, 96]),
        "current_spacing": np.array(TARGET_SPACING),
        "original_spacing": np.array(TARGET_SPACING),
        "do_dummy_2D_data_aug": True,
        "pool_op_kernel_sizes": [list(p) for p in POOLS],
        "conv_kernel_sizes": [list(k) for k in KERNELS],
    }
    return {
        "num_stages": 1,
        "num_modalities": 3,
        "modalities": dict(MODALITIES),
        "normalization_schemes": OrderedDict([(0, "nonCT"), (1, "CT"), (2, "nonCT")]),
        "dataset_properties": {
            "all_spacings": spacings,
            "modalities": dict(MODALITIES),
            "intensityproperties": OrderedDict(sorted(intensity.items())),
            "all_classes": [1],
        },
        "list_of_npz_files": [],
        "original_spacings": spacings,
        "preprocessed_data_folder": "nnUNet_preprocessed/" + TASK,
        "num_classes": 1,
        "all_classes": [1],
        "base_num_features": BASE_FEATURES,
        "use_mask_for_norm": OrderedDict([(0, False), (1, False), (2, False)]),
        "keep_only_largest_region": None,
        "min_region_size_per_class": None,
        "min_size_per_class": None,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "data_identifier": "nnUNetData_plans_v2.1",
        "plans_per_stage": {0: stage},
        "preprocessor_name": "GenericPreprocessor",
        "conv_per_stage": 2,
    }


def _intensity(cases: Sequence[tuple[list[str], str]], modality: int) -> dict[str, Any]:
    """DatasetAnalyzer's intensity properties of one modality (every 10th foreground voxel, its statistics)."""
    from nnunet.experiment_planning.DatasetAnalyzer import DatasetAnalyzer  # type: ignore[import-untyped]
    from nnunet.preprocessing.cropping import ImageCropper  # type: ignore[import-untyped]

    voxels: list[Any] = []
    for files, label in cases:
        data, seg, _ = ImageCropper.crop_from_list_of_files(files, label)
        voxels += list(data[modality][seg[-1] > 0][::10])
    median, mean, sd, mn, mx, p99, p00 = DatasetAnalyzer._compute_stats(voxels)
    return {
        "median": median,
        "mean": mean,
        "sd": sd,
        "mn": mn,
        "mx": mx,
        "percentile_99_5": p99,
        "percentile_00_5": p00,
    }


def make_nnunet_folds(results: Path, studies: Sequence[Path], work: Path, *, seed: int = 0) -> Path:
    """Write five folds of an nnU-Net v1 model into ``results/<MODEL_SUBDIR>`` with nnU-Net's own trainer.

    Each fold: the reference trainer class built from the plans (``process_plans``, ``initialize``), its
    network seeded with ``seed * 10 + fold`` and trained for :data:`TRAIN_STEPS` steps of its own SGD
    optimizer (cross-entropy on the full-resolution output, windows of the patch size around lesions) on the
    studies preprocessed by nnU-Net's ``GenericPreprocessor`` from the files ``process.py`` would write, then
    ``save_checkpoint`` (``model_best.model`` and ``.model.pkl``). Returns the model folder.
    """
    from nnunet.preprocessing.preprocessing import GenericPreprocessor  # type: ignore[import-untyped]

    module = trainer_module()
    cases = [_nifti_case(study, work / study.name) for study in studies]
    spacings = [np.array(sitk.ReadImage(files[0]).GetSpacing())[[2, 1, 0]] for files, _ in cases]
    plans = _plans({1: _intensity(cases, 1)}, spacings)
    folder = results / MODEL_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "plans.pkl").open("wb") as handle:
        pickle.dump(plans, handle)
    preprocessor = GenericPreprocessor(
        plans["normalization_schemes"],
        plans["use_mask_for_norm"],
        plans["transpose_forward"],
        plans["dataset_properties"]["intensityproperties"],
    )
    prepared = []
    for files, label in cases:
        data, seg, _ = preprocessor.preprocess_test_case(files, np.array(TARGET_SPACING), label)
        prepared.append((data.astype(np.float32), np.clip(seg[0], 0, None).astype(np.int64)))
    for fold in FOLDS:
        _train_and_save(module, plans, folder, fold, prepared, seed * 10 + fold)
    return folder


def _window(
    data: NDArray[np.float32], seg: NDArray[np.int64], rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """A patch-size window (zero-padded where the case is smaller), centred near a lesion voxel."""
    pads = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(PATCH_SIZE, seg.shape, strict=True)]
    data = np.pad(data, pads)
    seg = np.pad(seg, pads[1:])
    lesion = np.argwhere(seg > 0)
    centre = lesion[rng.integers(len(lesion))] if len(lesion) else np.array(seg.shape) // 2
    start = [
        int(np.clip(c - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, s - p))
        for c, p, s in zip(centre, PATCH_SIZE, seg.shape, strict=True)
    ]
    box = tuple(slice(b, b + p) for b, p in zip(start, PATCH_SIZE, strict=True))
    return data[(slice(None), *box)], seg[box]


def _train_and_save(
    module: types.ModuleType,
    plans: dict[str, Any],
    folder: Path,
    fold: int,
    cases: Sequence[tuple[NDArray[np.float32], NDArray[np.int64]]],
    seed: int,
) -> None:
    trainer_class = getattr(module, TRAINER)
    fold_dir = folder / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trainer = trainer_class(
            str(folder / "plans.pkl"), fold, str(folder), str(folder), True, 0, True, True, True
        )
        trainer.log_file = str(folder / f"training_log_fold{fold}.txt")
        trainer.process_plans(plans)
        trainer.initialize(False)
    trainer.output_folder = str(fold_dir)
    network = trainer.network
    optimizer = trainer.optimizer
    for group in optimizer.param_groups:
        group["lr"] = TRAIN_LR
    rng = np.random.default_rng(seed)
    loss_function = torch.nn.CrossEntropyLoss()
    network.train()
    losses = []
    for step in range(TRAIN_STEPS):
        data, seg = _window(*cases[step % len(cases)], rng)
        output = network(torch.from_numpy(np.ascontiguousarray(data[None])))
        loss = loss_function(output[0], torch.from_numpy(np.ascontiguousarray(seg[None])))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    network.eval()
    trainer.epoch = TRAIN_STEPS - 1
    trainer.all_tr_losses = losses
    trainer.all_val_losses = [np.float64(losses[-1])]
    trainer.all_val_eval_metrics = [np.float64(0.5 + 0.01 * fold)]
    trainer._maybe_init_amp()
    trainer.save_checkpoint(str(fold_dir / "model_best.model"))


# ------------------------------------------------------------------------------------------------- cache
class NnunetFolds(NamedTuple):
    """Cached folds: the results folder (``process.py``'s ``nnunet_results``), the model folder inside it, and
    the synthetic studies they were trained on."""

    results: Path
    model_dir: Path
    studies: list[Path]


def cache_key(seed: int = 0) -> str:
    """Hash of the generating parameters and of this file's source: the cache folder's name."""
    parameters = {
        "version": CACHE_VERSION,
        "seed": seed,
        "studies": TRAINING_STUDIES,
        "lesions": TRAINING_LESIONS,
        "plans": [TARGET_SPACING, PATCH_SIZE, POOLS, KERNELS, BASE_FEATURES],
        "train": [TRAIN_STEPS, TRAIN_LR],
    }
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def cached_nnunet_folds(repo_root: Path, *, seed: int = 0) -> NnunetFolds:
    """The synthetic studies and the five nnU-Net folds, built once into ``var/picai_nnunet_reference/``
    (locked against parallel builders, built into a temporary folder and renamed when complete)."""
    root = repo_root / "var" / "picai_nnunet_reference"
    target = root / f"folds-{cache_key(seed)}"
    manifest = target / "manifest.json"
    if not manifest.is_file():
        with _locked(root / ".lock"):
            if not manifest.is_file():
                now = time.time()
                for stale in [*root.glob(".build-*"), *root.glob("folds-*")]:
                    if stale != target and now - stale.stat().st_mtime > (
                        0 if stale.name.startswith(".") else STALE_AFTER_S
                    ):
                        shutil.rmtree(stale, ignore_errors=True)
                _build(target, seed)
    data = json.loads(manifest.read_text(encoding="utf-8"))
    with contextlib.suppress(OSError):
        os.utime(target)
    return NnunetFolds(
        target / "results", target / "results" / MODEL_SUBDIR, [target / p for p in data["studies"]]
    )


def _build(target: Path, seed: int) -> None:
    from training.synth import SynthConfig, generate

    build = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    build.chmod(0o755)
    started = time.perf_counter()
    studies: list[Path] = []
    for vendor, data_seed, cases in TRAINING_STUDIES:
        config = SynthConfig(vendor=vendor, profile="full", lesion_kinds=TRAINING_LESIONS)
        studies += generate(build / "studies" / vendor, cases=cases, seed=data_seed, config=config)
    generated = time.perf_counter()
    make_nnunet_folds(build / "results", studies, build / "work", seed=seed)
    shutil.rmtree(build / "work", ignore_errors=True)
    (build / "manifest.json").write_text(
        json.dumps(
            {
                "studies": [str(p.relative_to(build)) for p in studies],
                "seconds": {"studies": generated - started, "folds": time.perf_counter() - generated},
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    build.rename(target)


@pytest.fixture(scope="session", name="nnunet_folds")
def nnunet_folds_fixture() -> NnunetFolds:
    """Session fixture ``nnunet_folds``: :func:`cached_nnunet_folds` of this repository."""
    return cached_nnunet_folds(REPO)
