"""Data sets for training: where the cases come from, their ``.npz`` cache, and random crops of them.

:class:`DataSpec` names a labelled data set (synthetic studies or the PI-CAI layout). :func:`build_cache`
turns every case into one ``.npz`` file (:func:`training.datasets.cases.save_case`) once; later runs and epochs read
the cache only. The file name carries a key of the preprocessing settings and the cache format, so a change
of the model grid never reuses stale files. :class:`CropDataset` serves random, augmented crops of the
cached cases for :mod:`torch.utils.data`.

Crop sampling: with probability ``foreground_prob`` the crop is centred on a lesion of any kind (csPCa
twice as likely as the others), jittered by up to a quarter of the crop; otherwise anywhere on the grid.
The random stream of sample ``i`` in epoch ``e`` is ``default_rng([seed, e, i])``: independent of the
worker that serves it and of the number of processes, so runs are reproducible and resumable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from lesion_engine.model.model_input import PreprocessConfig
from training.datasets.augment import AugmentConfig, augment_crop
from training.datasets.cases import CACHE_FORMAT_VERSION, TrainingCase, category_index, load_case, save_case

logger = logging.getLogger(__name__)

__all__ = [
    "DATA_FORMATS",
    "Batch",
    "CropDataset",
    "DataSpec",
    "build_cache",
    "cache_key",
    "cached_files",
    "collate",
    "list_cases",
]

DATA_FORMATS: tuple[str, ...] = ("synthetic", "picai")
Triple = tuple[int, int, int]


@dataclass(frozen=True)
class DataSpec:
    """A labelled data set.

    Attributes
    ----------
    root : Path
        Synthetic: the folder ``lesion-ai synth`` wrote. PI-CAI: the images root
        (``<root>/<patient>/<patient>_<study>_t2w.mha`` ...).
    data_format : str
        ``synthetic`` or ``picai``.
    labels_root : Path or None
        PI-CAI: the picai_labels folder; ``<root>/picai_labels`` when None.
    split : Path or None
        PI-CAI: a split file or folder (:func:`training.datasets.picai_data.read_split`); all cases when None.
    fold : int
        Fold of ``split``.
    subset : str
        ``train`` or ``valid`` part of the fold.
    label_source : str
        PI-CAI: ``human``, ``ai`` or ``human+ai``.
    """

    root: Path
    data_format: str = "synthetic"
    labels_root: Path | None = None
    split: Path | None = None
    fold: int = 0
    subset: str = "train"
    label_source: str = "human+ai"

    def __post_init__(self) -> None:
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"DataSpec.data_format must be one of {DATA_FORMATS}, got {self.data_format!r}")
        if self.subset not in ("train", "valid"):
            raise ValueError(f"DataSpec.subset must be 'train' or 'valid', got {self.subset!r}")
        if self.fold < 0:
            raise ValueError(f"DataSpec.fold must be >= 0, got {self.fold}")

    def picai_layout(self) -> Any:
        """The :class:`~training.datasets.picai_data.PicaiLayout` of a PI-CAI spec."""
        from training.datasets.picai_data import PicaiLayout

        return PicaiLayout(
            images_root=self.root,
            labels_root=self.labels_root or self.root / "picai_labels",
            label_source=self.label_source,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for logs and model cards)."""
        return {
            "root": str(self.root),
            "data_format": self.data_format,
            "labels_root": None if self.labels_root is None else str(self.labels_root),
            "split": None if self.split is None else str(self.split),
            "fold": self.fold,
            "subset": self.subset,
            "label_source": self.label_source,
        }


def list_cases(spec: DataSpec) -> list[str]:
    """Case ids of a data set (for PI-CAI: the split's, restricted to cases with images)."""
    if spec.data_format == "synthetic":
        from training.datasets.synthetic_data import find_synthetic_cases

        return [p.name for p in find_synthetic_cases(spec.root)]
    from training.datasets.picai_data import find_picai_cases, read_split

    subjects = read_split(spec.split, spec.fold, spec.subset) if spec.split is not None else None
    return find_picai_cases(spec.picai_layout(), subjects)


def cache_key(preprocess: PreprocessConfig) -> str:
    """Short hash of everything a cached case depends on besides its source files."""
    text = json.dumps({"preprocess": preprocess.to_dict(), "format": CACHE_FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _build_one(args: tuple[DataSpec, str, PreprocessConfig, Path]) -> tuple[str, str | None]:
    spec, case_id, preprocess, path = args
    case: TrainingCase | None
    try:
        if spec.data_format == "synthetic":
            from training.datasets.synthetic_data import synthetic_case

            case = synthetic_case(spec.root / case_id, preprocess)
        else:
            from training.datasets.picai_data import picai_case

            case = picai_case(spec.picai_layout(), case_id, preprocess)
    except Exception as exc:  # one bad case must not stop a data set of hundreds
        logger.warning("case %s could not be prepared: %s: %s", case_id, type(exc).__name__, exc)
        return case_id, None
    if case is None:
        return case_id, None
    save_case(case, path)
    return case_id, str(path)


def build_cache(
    spec: DataSpec,
    preprocess: PreprocessConfig,
    cache_dir: Path,
    *,
    workers: int = 1,
    case_ids: Sequence[str] | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Prepare every case of a data set once, as ``<cache_dir>/<case_id>.<key>.npz``.

    Parameters
    ----------
    spec : DataSpec
        The data set.
    preprocess : PreprocessConfig
        The model grid (part of the file key).
    cache_dir : Path
        Where the files go; existing files with the right key are reused.
    workers : int
        Processes that prepare cases in parallel (1: in this process).
    case_ids : sequence of str, optional
        The cases; all of the data set when None.
    shard : (index, count)
        Build only the cases whose position modulo ``count`` is ``index`` (one shard per distributed rank);
        the returned list still names every case whose file exists.
    progress : callable, optional
        Called with (done, total) after each case.

    Returns
    -------
    list of Path
        The cache files of the usable cases, in data-set order.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ids = list(case_ids) if case_ids is not None else list_cases(spec)
    key = cache_key(preprocess)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {case_id: cache_dir / f"{case_id}.{key}.npz" for case_id in ids}
    skip_file = cache_dir / f"unusable.{key}.json"
    unusable: set[str] = set(json.loads(skip_file.read_text())) if skip_file.is_file() else set()
    index, count = shard
    todo = [
        (spec, c, preprocess, paths[c])
        for i, c in enumerate(ids)
        if i % count == index and not paths[c].is_file() and c not in unusable
    ]
    if todo:
        logger.info("preparing %d case(s) into %s with %d worker(s)", len(todo), cache_dir, workers)
    results: list[tuple[str, str | None]] = []
    if workers == 1 or len(todo) <= 1:
        for n, item in enumerate(todo, start=1):
            results.append(_build_one(item))
            if progress:
                progress(n, len(todo))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for n, result in enumerate(pool.map(_build_one, todo), start=1):
                results.append(result)
                if progress:
                    progress(n, len(todo))
    failed = {case_id for case_id, path in results if path is None}
    if failed:
        logger.warning("%d case(s) unusable and left out: %s", len(failed), ", ".join(sorted(failed)[:10]))
        if count == 1:
            skip_file.write_text(json.dumps(sorted(unusable | failed)))
    return [paths[c] for c in ids if paths[c].is_file()]


def cached_files(
    spec: DataSpec, preprocess: PreprocessConfig, cache_dir: Path, case_ids: Sequence[str] | None = None
) -> list[Path]:
    """The cache files that exist for a data set, in data-set order (builds nothing)."""
    ids = list(case_ids) if case_ids is not None else list_cases(spec)
    key = cache_key(preprocess)
    paths = [cache_dir / f"{case_id}.{key}.npz" for case_id in ids]
    return [p for p in paths if p.is_file()]


@dataclass
class Batch:
    """A collated batch of crops.

    Attributes
    ----------
    images : Tensor
        (B, C, Z, Y, X) float32.
    cspca : Tensor
        (B, Z, Y, X) float32 csPCa mask (0/1).
    zones : Tensor
        (B, Z, Y, X) int64 zone classes.
    has_zones : Tensor
        (B,) bool.
    lesion_index : ndarray
        (B, Z, Y, X) int16 lesion labels (kept on the CPU for candidate labelling).
    lesions : list of ndarray
        Per item, (K, 6) float64 rows ``[z, y, x, label, is_cspca, category_index]`` of the lesions in the crop.
    case_ids : list of str
        The items' cases.
    """

    images: torch.Tensor
    cspca: torch.Tensor
    zones: torch.Tensor
    has_zones: torch.Tensor
    lesion_index: NDArray[np.int16]
    lesions: list[NDArray[np.float64]]
    case_ids: list[str]

    def to(self, device: torch.device) -> Batch:
        """The batch with its tensors on ``device``."""
        return Batch(
            self.images.to(device, non_blocking=True),
            self.cspca.to(device, non_blocking=True),
            self.zones.to(device, non_blocking=True),
            self.has_zones.to(device),
            self.lesion_index,
            self.lesions,
            self.case_ids,
        )


def collate(samples: list[dict[str, Any]]) -> Batch:
    """Collate :class:`CropDataset` samples into a :class:`Batch`."""
    return Batch(
        images=torch.from_numpy(np.stack([s["images"] for s in samples])),
        cspca=torch.from_numpy(np.stack([s["cspca"] for s in samples]).astype(np.float32)),
        zones=torch.from_numpy(np.stack([s["zones"] for s in samples]).astype(np.int64)),
        has_zones=torch.tensor([bool(s["has_zones"]) for s in samples]),
        lesion_index=np.stack([s["lesion_index"] for s in samples]),
        lesions=[s["lesions"] for s in samples],
        case_ids=[str(s["case_id"]) for s in samples],
    )


def _center_inside(mask: NDArray[np.bool_]) -> tuple[float, float, float]:
    points = np.argwhere(mask)
    mean = points.mean(axis=0)
    nearest = points[int(np.argmin(((points - mean) ** 2).sum(axis=1)))]
    return (float(nearest[0]), float(nearest[1]), float(nearest[2]))


def crop_lesions(lesion_index: NDArray[np.int16], case: TrainingCase) -> NDArray[np.float64]:
    """Rows ``[z, y, x, label, is_cspca, category_index]`` of the lesions visible in a (cropped) index map.

    The centre is the mask voxel nearest to the centre of mass, so it always lies inside the lesion.
    """
    rows: list[list[float]] = []
    present = np.unique(lesion_index)
    for label in present[present > 0]:
        lesion = case.lesions[int(label) - 1]
        z, y, x = _center_inside(lesion_index == label)
        rows.append([z, y, x, float(label), float(lesion.is_cspca), float(category_index(lesion.category))])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


class CropDataset(Dataset[dict[str, Any]]):
    """Random, augmented crops of cached cases (see the module docstring).

    Parameters
    ----------
    files : sequence of Path
        Cache files from :func:`build_cache`.
    crop_size : (z, y, x)
        Crop size in voxels (the full grid when equal to it).
    augment : AugmentConfig or None
        None: no augmentation.
    seed : int
        Base seed.
    samples_per_epoch : int or None
        Length of an epoch; the number of cases when None.
    foreground_prob : float
        Probability that a crop is centred on a lesion.
    preload : bool
        Keep every case in memory (fast; needs about 4 MB per case on the default grid).
    """

    def __init__(
        self,
        files: Sequence[Path],
        crop_size: Triple,
        *,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        foreground_prob: float = 0.7,
        preload: bool = True,
    ) -> None:
        if not files:
            raise ValueError("CropDataset needs at least one case file")
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"foreground_prob must be in [0, 1], got {foreground_prob}")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.files = list(files)
        self.crop_size = crop_size
        self.augment = augment
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch or len(self.files)
        self.foreground_prob = foreground_prob
        self.epoch = 0
        self._cases: dict[int, TrainingCase] = {}
        if preload:
            for i in range(len(self.files)):
                self._cases[i] = load_case(self.files[i])
        self._preload = preload

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the random streams of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def case(self, i: int) -> TrainingCase:
        """The case of file ``i``."""
        cached = self._cases.get(i)
        if cached is not None:
            return cached
        return load_case(self.files[i])

    def _origin(self, case: TrainingCase, rng: np.random.Generator) -> Triple:
        shape = np.asarray(case.shape)
        size = np.asarray(self.crop_size)
        u = rng.random()
        pick = rng.random()
        jitter = rng.uniform(-0.25, 0.25, 3) * size
        anywhere = rng.random(3)
        lesions = case.lesions
        if lesions and u < self.foreground_prob:
            weights = np.asarray([2.0 if lesion.is_cspca else 1.0 for lesion in lesions])
            cumulative = np.cumsum(weights / weights.sum())
            chosen = lesions[min(int(np.searchsorted(cumulative, pick)), len(lesions) - 1)]
            centre = np.asarray(chosen.center_zyx) + jitter
            origin = np.round(centre - (size - 1) / 2.0).astype(int)
        else:
            origin = np.floor(anywhere * (np.maximum(shape - size, 0) + 1)).astype(int)
        origin = np.clip(origin, 0, np.maximum(shape - size, 0))
        return (int(origin[0]), int(origin[1]), int(origin[2]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_number = index % len(self.files)
        case = self.case(case_number)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        origin = self._origin(case, rng)
        labels: dict[str, NDArray[Any]] = {
            "cspca": case.cspca,
            "zones": case.zones,
            "lesion_index": case.lesion_index,
        }
        images, out = augment_crop(case.images, labels, origin, self.crop_size, self.augment, rng)
        return {
            "images": np.ascontiguousarray(images, dtype=np.float32),
            "cspca": (out["cspca"] > 0).astype(np.uint8),
            "zones": out["zones"].astype(np.uint8),
            "has_zones": case.has_zones,
            "lesion_index": out["lesion_index"].astype(np.int16),
            "lesions": crop_lesions(out["lesion_index"], case),
            "case_id": case.case_id,
        }
