"""The PI-CAI reference pipeline as a test oracle, and PI-CAI baseline U-Net fold checkpoints to run it on.

The PI-CAI challenge's baseline U-Net is deployed by the grand-challenge algorithm
``picai_unet_semi_supervised_gc_algorithm`` (Apache-2.0); its ``process.py`` is the authors' inference
pipeline. This module loads that file unchanged (from ``../shared/reference/`` beside the repository, or
wherever ``LESION_AI_PICAI_REFERENCE`` points) and runs its ``csPCaAlgorithm.predict()`` on three ``.mha``
files, so that tests can compare the node's import of such a model with what its authors' code gives.

Two shims make ``process.py`` importable here, neither of which changes what it computes:

* picai_baseline 0.8.5's ``unets.py`` imports ``alias`` and ``export`` from ``monai.utils``, which MONAI 1.6
  no longer has; they only register names, so they are given as no-op decorators.
* ``process.py`` imports ``evalutils`` (grand-challenge's container framework) for its base class and
  validators, which only its ``__init__`` uses; a stub module stands in while the file is loaded, and the
  algorithm object is built with ``object.__new__`` with the attributes ``predict()`` reads.

Real fold checkpoints are not available to the tests, so :func:`make_fold_checkpoints` writes five in exactly
the published format (``torch.save({'model_state_dict': state_dict}, 'unet_F<fold>.pt')``), each
picai_baseline's own network briefly trained on synthetic studies so that its maps have structure.
:func:`cached_fold_checkpoints` (and the session fixture :func:`picai_folds`) builds them once into
``var/picai_reference/`` and reuses them across test sessions and xdist workers.

A test module uses the session fixture ``picai_folds`` by importing it (under its function's name, so that
ruff does not take test arguments named ``picai_folds`` for redefinitions of the import)::

    from tests.oracles.picai_reference import picai_folds_fixture  # noqa: F401

    def test_something(picai_folds: PicaiFolds) -> None: ...
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from tests.paths import REPO

REFERENCE_ROOT = Path(
    os.environ.get(
        "LESION_AI_PICAI_REFERENCE",
        REPO.parent / "shared" / "reference" / "picai_unet_semi_supervised_gc_algorithm",
    )
)
"""Folder of the grand-challenge algorithm repository (it holds ``process.py``)."""

IMG_SPEC: dict[str, Any] = {
    "image_shape": [20, 256, 256],
    "spacing": [3.0, 0.5, 0.5],
    "num_channels": 3,
    "num_classes": 2,
}
"""``img_spec`` of ``process.py``'s ``__init__``: input shape (z, y, x), spacing (z, y, x) in mm, channels,
classes."""

FOLDS = range(5)
"""Fold indices that ``process.py`` looks for (``unet_F0.pt`` .. ``unet_F4.pt``)."""

FIXTURE_SERIES: dict[str, int] = {"t2w": 10, "adc": 8, "hbv": 9}
"""SeriesNumber per role in the ProstateX-0001 fixture as the node chooses them (HBV: calculated b1000)."""

# ------------------------------------------------------------------------------------ fold training settings
# The synthetic training studies: (vendor, data-set seed, cases) per study set. Each case gets two csPCa
# lesions so that every crop has something to learn from.
TRAINING_STUDIES: tuple[tuple[str, int, int], ...] = (
    ("siemens", 101, 1),
    ("ge", 102, 1),
    ("philips", 103, 1),
)
TRAINING_LESIONS: tuple[str, ...] = ("cspca", "cspca")
TRAIN_STEPS = 10
"""Optimizer steps per fold."""
TRAIN_CROP: tuple[int, int, int] = (20, 96, 96)
"""Crop (z, y, x) of the training steps: z a multiple of 4, y and x of 32 (the U-Net's strides)."""
TRAIN_LR = 1e-2
FOCAL_ALPHA = 0.75
"""picai_baseline's focal-loss alpha is the training set's fraction of negative cases (about 0.75 in PI-CAI)."""
FOCAL_GAMMA = 1.0
"""picai_baseline's default ``--focal_loss_gamma``."""
LESION_CROP_FRACTION = 0.75
"""Share of training crops centred (with jitter) on a lesion; the others are placed at random."""

CACHE_VERSION = 1
STALE_AFTER_S = 24 * 3600.0
"""Cache folders of other keys are removed when a build starts and they have not been touched this long."""

_T = TypeVar("_T")


# ------------------------------------------------------------------------------------------------- loading
def _register_nothing(*_args: object, **_kwargs: object) -> Callable[[_T], _T]:
    """Stand-in for ``monai.utils.alias`` and ``export``: a decorator that returns what it decorates."""

    def decorate(obj: _T) -> _T:
        return obj

    return decorate


def install_monai_shims() -> None:
    """Give ``monai.utils`` the no-op ``alias`` and ``export`` that picai_baseline 0.8.5 imports.

    Call before importing ``picai_baseline.unet.training_setup.neural_networks``; a MONAI that still has
    them keeps its own.
    """
    import monai.utils

    for name in ("alias", "export"):
        if not hasattr(monai.utils, name):
            setattr(monai.utils, name, _register_nothing)


def _evalutils_stub() -> dict[str, types.ModuleType]:
    """Modules ``evalutils`` and ``evalutils.validators`` with only the names ``process.py`` imports."""

    class SegmentationAlgorithm:
        """Stub base class; the reference algorithm is never built through ``__init__``."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("evalutils is a stub here: build the algorithm with object.__new__")

    class UniqueImagesValidator:
        """Stub validator (used only by the algorithm's ``__init__``)."""

    class UniquePathIndicesValidator:
        """Stub validator (used only by the algorithm's ``__init__``)."""

    evalutils = types.ModuleType("evalutils")
    validators = types.ModuleType("evalutils.validators")
    evalutils.SegmentationAlgorithm = SegmentationAlgorithm  # type: ignore[attr-defined]
    evalutils.validators = validators  # type: ignore[attr-defined]
    validators.UniqueImagesValidator = UniqueImagesValidator  # type: ignore[attr-defined]
    validators.UniquePathIndicesValidator = UniquePathIndicesValidator  # type: ignore[attr-defined]
    return {"evalutils": evalutils, "evalutils.validators": validators}


def reference_process_path() -> Path:
    """Path of the reference ``process.py``; fails the test with where to put it when it is missing."""
    path = REFERENCE_ROOT / "process.py"
    if not path.is_file():
        pytest.fail(
            f"the PI-CAI reference pipeline is missing at {path}; put a copy of the grand-challenge algorithm "
            "repository picai_unet_semi_supervised_gc_algorithm (its process.py) in "
            "../shared/reference/ beside the repository, or set LESION_AI_PICAI_REFERENCE to its folder"
        )
    return path


@functools.cache
def load_reference() -> types.ModuleType:
    """The reference ``process.py`` loaded as a module (once per process).

    The MONAI shims are installed first; the ``evalutils`` stub is in ``sys.modules`` only while the file
    is executed.

    Returns
    -------
    types.ModuleType
        The module, with ``csPCaAlgorithm`` and the names it imported (``Sample``, ``resample_img``,
        ``extract_lesion_candidates``, ...).
    """
    path = reference_process_path()
    install_monai_shims()
    spec = importlib.util.spec_from_file_location("picai_gc_algorithm_process", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a module")
    module = importlib.util.module_from_spec(spec)
    stubs = _evalutils_stub()
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def _picai_baseline() -> tuple[Callable[[dict[str, Any]], Any], Callable[..., torch.nn.Module]]:
    """picai_baseline's ``get_default_hyperparams`` and ``neural_network_for_run``."""
    install_monai_shims()
    from picai_baseline.unet.training_setup.default_hyperparam import get_default_hyperparams
    from picai_baseline.unet.training_setup.neural_network_selector import neural_network_for_run

    return get_default_hyperparams, neural_network_for_run


def new_fold_network() -> torch.nn.Module:
    """A fresh picai_baseline U-Net as ``process.py`` builds one (on the CPU; weights from torch's RNG)."""
    get_default_hyperparams, neural_network_for_run = _picai_baseline()
    args = get_default_hyperparams({"model_type": "unet", **_img_spec()})
    return neural_network_for_run(args=args, device="cpu")


def _img_spec() -> dict[str, Any]:
    """A fresh copy of :data:`IMG_SPEC` (picai_baseline adds keys to the dictionary it is given)."""
    return {key: list(value) if isinstance(value, list) else value for key, value in IMG_SPEC.items()}


def load_reference_folds(weights_dir: Path) -> list[torch.nn.Module]:
    """Load the fold networks of ``weights_dir`` exactly as ``process.py``'s ``__init__`` does.

    For each fold 0..4 whose ``unet_F<fold>.pt`` exists: ``get_default_hyperparams`` and
    ``neural_network_for_run`` on ``'cpu'``, ``torch.load`` (with ``weights_only=True``, torch's default
    since 2.6; ``process.py`` passes nothing), ``load_state_dict(checkpoint['model_state_dict'])``.

    Parameters
    ----------
    weights_dir : Path
        Folder with ``unet_F0.pt`` .. ``unet_F4.pt`` (some may be missing).

    Returns
    -------
    list of torch.nn.Module
        The networks, by fold.

    Raises
    ------
    FileNotFoundError
        When no fold checkpoint is there (``process.py`` raises "No models have been found/initialized.").
    """
    module = load_reference()
    models: list[torch.nn.Module] = []
    for fold in FOLDS:
        checkpoint_path = weights_dir / f"unet_F{fold}.pt"
        if not checkpoint_path.exists():
            continue
        args = module.get_default_hyperparams({"model_type": "unet", **_img_spec()})
        model: torch.nn.Module = module.neural_network_for_run(args=args, device="cpu")
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        model.load_state_dict(checkpoint["model_state_dict"])
        model.to("cpu")
        models.append(model)
    if not models:
        raise FileNotFoundError(f"no fold checkpoint unet_F0.pt .. unet_F4.pt in {weights_dir}")
    return models


# -------------------------------------------------------------------------------------------------- inputs
def dicom_series_to_mha(files: Sequence[Path], out: Path) -> sitk.Image:
    """Convert one DICOM series to ``.mha`` as the PI-CAI archive conversion (picai_prep ``dcm2mha``) does.

    The files are copied into a temporary folder that ``picai_prep.dcm2mha.DICOMImageReader`` reads; the
    image keeps its pixel type (e.g. uint16 for the fixture), which is what the reference pipeline sees.

    Parameters
    ----------
    files : sequence of Path
        The instances of one series (one image per file).
    out : Path
        The ``.mha`` file to write (its folder is created).

    Returns
    -------
    SimpleITK.Image
        The image as written.
    """
    from picai_prep.dcm2mha import DICOMImageReader

    if not files:
        raise ValueError("no DICOM file given")
    with tempfile.TemporaryDirectory(prefix="picai-dcm2mha-") as tmp:
        folder = Path(tmp)
        for index, path in enumerate(files):
            shutil.copyfile(path, folder / f"{index:05d}.dcm")
        image: sitk.Image = DICOMImageReader(folder).image
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(out), useCompression=True)
    return image


def fixture_reference_inputs(series: Mapping[int, Path], out_dir: Path) -> tuple[Path, Path, Path]:
    """The fixture's T2W, ADC and HBV (series 10, 8, 9) as ``.mha`` files, converted by picai_prep.

    Parameters
    ----------
    series : mapping of int to Path
        SeriesNumber -> folder (the ``prostatex_series`` fixture).
    out_dir : Path
        Where to write ``t2w.mha``, ``adc.mha`` and ``hbv.mha``.

    Returns
    -------
    tuple of Path
        The T2W, ADC and HBV files.
    """
    paths: list[Path] = []
    for role, number in FIXTURE_SERIES.items():
        path = out_dir / f"{role}.mha"
        dicom_series_to_mha(sorted(series[number].glob("*.dcm")), path)
        paths.append(path)
    return paths[0], paths[1], paths[2]


def _b_value(path: Path) -> float | None:
    """b-value of a classic synthetic DWI instance (wherever its vendor keeps it)."""
    from tests.support.synth_support import classic_b_value

    return classic_b_value(pydicom.dcmread(path, stop_before_pixels=True))


def synthetic_series_files(case_dir: Path, role: str) -> list[Path]:
    """The instances of a synthetic case's ``t2w``, ``adc`` or ``hbv`` (per its ``truth.json`` roles).

    For ``hbv`` only the instances at the role's b-value (a DWI series holds several b-values).
    """
    truth = json.loads((case_dir / "truth.json").read_text(encoding="utf-8"))
    chosen = truth["roles"][role]
    folder = next(
        case_dir / s["folder"] for s in truth["series"] if s["series_number"] == chosen["series_number"]
    )
    files = sorted(folder.glob("*.dcm"))
    if role == "hbv":
        b_value = float(chosen["b_value"])
        files = [path for path in files if _b_value(path) == b_value]
    if not files:
        raise FileNotFoundError(f"{case_dir}: no instance for role {role!r} in {folder}")
    return files


def synthetic_reference_inputs(case_dir: Path, out_dir: Path) -> tuple[Path, Path, Path]:
    """A synthetic case's T2W, ADC and HBV (its ``truth.json`` roles) as ``.mha`` files, converted by picai_prep.

    Works for classic (one image per file) studies, as :func:`cached_fold_checkpoints` writes them.

    Returns
    -------
    tuple of Path
        ``out_dir/t2w.mha``, ``adc.mha``, ``hbv.mha``.
    """
    paths: list[Path] = []
    for role in ("t2w", "adc", "hbv"):
        path = out_dir / f"{role}.mha"
        dicom_series_to_mha(synthetic_series_files(case_dir, role), path)
        paths.append(path)
    return paths[0], paths[1], paths[2]


# ---------------------------------------------------------------------------------------------- reference
@dataclass
class ReferenceOutput:
    """What the reference ``predict()`` gave for one case.

    Attributes
    ----------
    detection_map : SimpleITK.Image
        The detection map it wrote (``cspca_detection_map.mha``, on the T2W grid).
    case_level : float
        The case-level likelihood it wrote to the json.
    softmax_t2w : numpy.ndarray
        float32 (z, y, x): the ensemble probability map, resampled back to the T2W's spacing and padded to
        its field of view, as ``predict()`` passes it to ``extract_lesion_candidates``. Its shape is the
        T2W's unless reverse resampling rounded a size (``predict()`` crops or pads only the detection map).
    seconds : float
        Wall time of ``predict()`` (reading, preprocessing, the networks, candidates, writing).
    """

    detection_map: sitk.Image
    case_level: float
    softmax_t2w: NDArray[np.float32]
    seconds: float


def run_reference(
    t2w: Path, adc: Path, hbv: Path, models: list[torch.nn.Module], out_dir: Path
) -> ReferenceOutput:
    """Run ``process.py``'s ``csPCaAlgorithm.predict()`` unchanged on three ``.mha`` files.

    The algorithm object gets the attributes its ``__init__`` would set (input paths, output paths in
    ``out_dir``, ``device='cpu'``, ``img_spec``, the models); ``extract_lesion_candidates`` is wrapped in the
    module's namespace during the call to capture the probability map.

    Parameters
    ----------
    t2w, adc, hbv : Path
        The input images, in ``process.py``'s order.
    models : list of torch.nn.Module
        The fold networks (:func:`load_reference_folds`).
    out_dir : Path
        Where ``predict()`` writes ``cspca_detection_map.mha`` and ``cspca-case-level-likelihood.json``.

    Returns
    -------
    ReferenceOutput
    """
    module = load_reference()
    out_dir.mkdir(parents=True, exist_ok=True)
    algorithm = object.__new__(module.csPCaAlgorithm)
    algorithm.image_input_paths = [Path(t2w), Path(adc), Path(hbv)]
    algorithm.detection_map_output_path = out_dir / "cspca_detection_map.mha"
    algorithm.case_level_likelihood_output_file = out_dir / "cspca-case-level-likelihood.json"
    algorithm.device = "cpu"
    algorithm.img_spec = _img_spec()
    algorithm.models = models

    captured: list[NDArray[np.float32]] = []
    namespace = vars(module)
    original = namespace["extract_lesion_candidates"]

    def capturing(softmax: NDArray[Any], *args: Any, **kwargs: Any) -> Any:
        captured.append(np.array(softmax, dtype=np.float32, copy=True))
        return original(softmax, *args, **kwargs)

    namespace["extract_lesion_candidates"] = capturing
    try:
        started = time.perf_counter()
        algorithm.predict()
        seconds = time.perf_counter() - started
    finally:
        namespace["extract_lesion_candidates"] = original
    if len(captured) != 1:
        raise RuntimeError(f"predict() called extract_lesion_candidates {len(captured)} times, expected once")
    detection_map = sitk.ReadImage(str(algorithm.detection_map_output_path))
    case_level = float(json.loads(algorithm.case_level_likelihood_output_file.read_text(encoding="utf-8")))
    return ReferenceOutput(detection_map, case_level, captured[0], seconds)


# --------------------------------------------------------------------------------------- fold checkpoints
@dataclass
class _TrainingCase:
    """One preprocessed training case: (3, z, y, x) normalized images, (z, y, x) lesion mask."""

    images: NDArray[np.float32]
    lesion: NDArray[np.uint8]
    lesion_voxels: NDArray[np.intp]  # (n, 3) indices of lesion voxels


def _training_case(case_dir: Path) -> _TrainingCase:
    """Preprocess a synthetic case as the reference does (picai_prep ``Sample``, z-score at 99.5 %)."""
    from picai_baseline.unet.training_setup.preprocess_utils import z_score_norm
    from picai_prep.preprocessing import PreprocessingSettings, Sample

    from lesion_engine.intake.preprocess import prepare_study

    prepared = prepare_study(case_dir / "dicom")
    hbv = prepared.native["hbv"] if "hbv" in prepared.native else prepared.native["high_b"]
    label = sitk.ReadImage(str(case_dir / "labels" / f"{case_dir.name}_lesion.nii.gz"))
    lesion = sitk.Cast(label > 0, sitk.sitkUInt8)
    lesion.CopyInformation(label)
    sample = Sample(
        scans=[prepared.t2w, prepared.native["adc"], hbv],
        lbl=lesion,
        settings=PreprocessingSettings(matrix_size=IMG_SPEC["image_shape"], spacing=IMG_SPEC["spacing"]),
    )
    sample.preprocess()  # type: ignore[no-untyped-call]
    assert sample.lbl is not None
    images = np.vstack(
        [
            z_score_norm(np.expand_dims(sitk.GetArrayFromImage(s), axis=0), percentile=99.5)
            for s in sample.scans
        ]
    ).astype(np.float32)
    mask = (sitk.GetArrayFromImage(sample.lbl) > 0).astype(np.uint8)
    return _TrainingCase(images, mask, np.argwhere(mask > 0))


def _crop(
    case: _TrainingCase, rng: np.random.Generator, size: tuple[int, int, int]
) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    """A training crop: around a random lesion voxel (with jitter) or anywhere."""
    shape = case.lesion.shape
    if case.lesion_voxels.size and rng.random() < LESION_CROP_FRACTION:
        centre = case.lesion_voxels[rng.integers(len(case.lesion_voxels))]
        jitter = rng.integers(-np.asarray(size) // 4, np.asarray(size) // 4 + 1)
        start = np.clip(centre - np.asarray(size) // 2 + jitter, 0, np.asarray(shape) - np.asarray(size))
    else:
        start = np.array([int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size, strict=True)])
    z, y, x = (int(v) for v in start)
    window = (slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
    return case.images[(slice(None), *window)], case.lesion[window]


def _train_fold(cases: Sequence[_TrainingCase], fold_seed: int) -> torch.nn.Module:
    """One fold: picai_baseline's network (seeded), trained for :data:`TRAIN_STEPS` steps with its loss."""
    from picai_baseline.unet.training_setup.loss_functions.focal import FocalLoss

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fold_seed)
        model = new_fold_network()
    rng = np.random.default_rng(fold_seed)
    loss_func = FocalLoss(alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA)  # type: ignore[no-untyped-call]
    optimizer = torch.optim.Adam(params=model.parameters(), lr=TRAIN_LR, amsgrad=True)
    model.train()
    order = rng.permutation(np.resize(np.arange(len(cases)), TRAIN_STEPS))
    for index in order:
        image, lesion = _crop(cases[int(index)], rng, TRAIN_CROP)
        inputs = torch.from_numpy(np.ascontiguousarray(image[None]))
        labels = torch.nn.functional.one_hot(torch.from_numpy(lesion[None].astype(np.int64)), num_classes=2)
        labels = labels.permute(0, 4, 1, 2, 3).float().contiguous()  # (B, C, D, H, W) as picai_baseline
        loss = loss_func(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def make_fold_checkpoints(out_dir: Path, studies: Sequence[Path], *, seed: int = 0) -> list[Path]:
    """Write five PI-CAI baseline U-Net fold checkpoints ``unet_F0.pt`` .. ``unet_F4.pt``.

    Each is picai_baseline's own ``neural_network_for_run(get_default_hyperparams({...}))`` (``img_spec`` of
    ``process.py``), initialized with seed ``seed * 10 + fold`` and trained briefly (Adam, picai_baseline's
    focal loss on the one-hot two-class label, :data:`TRAIN_STEPS` steps on crops of :data:`TRAIN_CROP`, a
    different data order per fold) on ``studies`` preprocessed as the reference does; saved in the published
    format ``torch.save({'model_state_dict': model.state_dict()}, path)``.

    Parameters
    ----------
    out_dir : Path
        Folder of the checkpoints (created).
    studies : sequence of Path
        Synthetic case folders (``dicom/``, ``labels/<case>_lesion.nii.gz``, ``truth.json``).
    seed : int
        Base seed.

    Returns
    -------
    list of Path
        The five checkpoint files, by fold.
    """
    if not studies:
        raise ValueError("no training study given")
    install_monai_shims()
    cases = [_training_case(Path(folder)) for folder in studies]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for fold in FOLDS:
        model = _train_fold(cases, seed * 10 + fold)
        path = out_dir / f"unet_F{fold}.pt"
        torch.save({"model_state_dict": model.state_dict()}, path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------- cache
class PicaiFolds(NamedTuple):
    """Cached fold checkpoints: their folder, and the synthetic case folders they were trained on."""

    weights_dir: Path
    studies: list[Path]


def _cache_parameters(seed: int) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "seed": seed,
        "studies": [list(s) for s in TRAINING_STUDIES],
        "lesions": list(TRAINING_LESIONS),
        "profile": "full",
        "steps": TRAIN_STEPS,
        "crop": list(TRAIN_CROP),
        "lr": TRAIN_LR,
        "focal": [FOCAL_ALPHA, FOCAL_GAMMA],
        "lesion_crop_fraction": LESION_CROP_FRACTION,
        "img_spec": IMG_SPEC,
    }


def cache_key(seed: int = 0) -> str:
    """Hash of the generating parameters and of this file's source: the cache folder's name."""
    digest = hashlib.sha256(json.dumps(_cache_parameters(seed), sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def _generate_studies(out: Path) -> list[Path]:
    from training.synth import SynthConfig, generate

    folders: list[Path] = []
    for vendor, data_seed, cases in TRAINING_STUDIES:
        config = SynthConfig(vendor=vendor, profile="full", lesion_kinds=TRAINING_LESIONS)
        folders += generate(out / vendor, cases=cases, seed=data_seed, config=config)
    return folders


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_fold_checkpoints(repo_root: Path, *, seed: int = 0) -> PicaiFolds:
    """The synthetic training studies and the five fold checkpoints, built once and kept in ``var/``.

    The cache lives in ``<repo_root>/var/picai_reference/folds-<key>/`` (``weights/unet_F*.pt``,
    ``studies/<vendor>/<case>/``, ``manifest.json``), ``key`` hashing the generating parameters and this
    file's source. A complete folder is used as it is; builders take an exclusive ``fcntl`` lock
    (``var/picai_reference/.lock``), so that parallel sessions and xdist workers build it once, and build
    into a temporary folder that is renamed into place when complete (``manifest.json`` is written last).
    Folders of other keys (other versions of this file) untouched for :data:`STALE_AFTER_S` are removed then.

    In an xdist worker the build trains with the worker's share of the CPU cores as torch threads (1 of 2
    under ``pytest -n 2``): torch's default of one thread per core, with the other worker busy, runs several
    times slower.

    Parameters
    ----------
    repo_root : Path
        The repository (its ``var/`` is ignored by git).
    seed : int
        Base seed of :func:`make_fold_checkpoints`.

    Returns
    -------
    PicaiFolds
        ``(weights_dir, studies)``: a ``tuple[Path, list[Path]]``.
    """
    root = repo_root / "var" / "picai_reference"
    target = root / f"folds-{cache_key(seed)}"
    manifest = target / "manifest.json"
    if not manifest.is_file():
        with _locked(root / ".lock"):
            if not manifest.is_file():
                _remove_stale(root, keep=target)
                _build(target, seed)
    data = json.loads(manifest.read_text(encoding="utf-8"))
    with contextlib.suppress(OSError):
        os.utime(target)  # in use: not stale
    return PicaiFolds(target / "weights", [target / p for p in data["studies"]])


def _remove_stale(root: Path, keep: Path) -> None:
    """Remove unfinished builds and cache folders of other keys not touched for :data:`STALE_AFTER_S`."""
    now = time.time()
    for stale in [*root.glob(".build-*"), *root.glob("folds-*")]:
        if stale != keep and now - stale.stat().st_mtime > (
            0 if stale.name.startswith(".") else STALE_AFTER_S
        ):
            shutil.rmtree(stale, ignore_errors=True)


def _build(target: Path, seed: int) -> None:
    """Generate the studies and train the folds into a temporary folder, then rename it to ``target``."""
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    build.chmod(0o755)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        started = time.perf_counter()
        studies = _generate_studies(build / "studies")
        generated = time.perf_counter()
        make_fold_checkpoints(build / "weights", studies, seed=seed)
        trained = time.perf_counter()
        torch_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    (build / "manifest.json").write_text(
        json.dumps(
            {
                "parameters": _cache_parameters(seed),
                "studies": [str(p.relative_to(build)) for p in studies],
                "seconds": {"studies": generated - started, "folds": trained - generated},
                "torch_threads": torch_threads,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    build.rename(target)


@pytest.fixture(scope="session", name="picai_folds")
def picai_folds_fixture() -> PicaiFolds:
    """Session fixture ``picai_folds``: :func:`cached_fold_checkpoints` of this repository (built at most once).

    Import it into a test module with ``from tests.oracles.picai_reference import picai_folds_fixture  # noqa: F401``
    and name the test argument ``picai_folds``.
    """
    return cached_fold_checkpoints(REPO)


picai_folds = picai_folds_fixture
"""The same fixture under its own name: ``from tests.oracles.picai_reference import picai_folds  # noqa: F401`` works
too, but then ruff reports each test argument ``picai_folds`` as a redefinition (F811)."""
