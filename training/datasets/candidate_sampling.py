"""Which candidate centres the classifier sees in a training batch, and their targets.

Per batch item, three sources of centres:

1. **ground truth**: the centre of every lesion in the crop, of every kind; the benign mimics (BPH,
   prostatitis) and indolent cancers are the hard negatives;
2. **the current map**: candidates extracted from the detached localization map with the engine's own
   dynamic-threshold extraction (:func:`lesion_engine.model.candidates.extract_candidates`), as at inference;
3. **random negatives**: a few voxels inside the field of view and outside every lesion.

Targets (the labelling rule):

* a ground-truth centre takes its lesion's targets: csPCa = 1 for ``cspca`` lesions, else 0; category from
  :func:`training.datasets.cases.target_category`;
* a map candidate is csPCa when its region overlaps a ground-truth csPCa lesion with IoU >= ``min_iou``
  (PI-CAI's hit criterion, 0.10) or when its centre lies inside one; it then takes the category of the
  csPCa lesion it overlaps most. Otherwise it takes the targets of the non-csPCa lesion its centre lies in
  (or that it overlaps with IoU >= ``min_iou``), and else it is background: csPCa 0, category 2;
* random negatives are background: csPCa 0, category 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from lesion_engine.model.candidates import CandidateConfig, extract_candidates

logger = logging.getLogger(__name__)

__all__ = ["CandidateSet", "SamplingConfig", "ground_truth_and_random", "map_candidates"]

BACKGROUND_CATEGORY_INDEX = 0
"""Category index of background (category 2)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How many candidates of each source per batch item.

    Attributes
    ----------
    random_negatives : int
        Random background centres per item (at least 1, so that every batch classifies something).
    max_map_candidates : int
        At most this many candidates from the current map per item (0: none).
    min_iou : float
        Overlap with a csPCa lesion that makes a map candidate positive.
    extraction : CandidateConfig
        Settings of the extraction from the map.
    """

    random_negatives: int = 2
    max_map_candidates: int = 3
    min_iou: float = 0.10
    extraction: CandidateConfig = field(default_factory=lambda: CandidateConfig(min_voxels=4))

    def __post_init__(self) -> None:
        if self.random_negatives < 1:
            raise ValueError(f"SamplingConfig.random_negatives must be >= 1, got {self.random_negatives}")
        if self.max_map_candidates < 0:
            raise ValueError(f"SamplingConfig.max_map_candidates must be >= 0, got {self.max_map_candidates}")
        if not 0.0 < self.min_iou <= 1.0:
            raise ValueError(f"SamplingConfig.min_iou must be in (0, 1], got {self.min_iou}")


@dataclass
class CandidateSet:
    """Candidate centres of a batch and their targets.

    Attributes
    ----------
    centers : ndarray
        (N, 3) int64 voxel coordinates (z, y, x) in the crop.
    batch_index : ndarray
        (N,) int64 batch item of each centre.
    cancer : ndarray
        (N,) float32 csPCa target.
    category : ndarray
        (N,) int64 category index (0..3 for categories 2..5; -1 unknown).
    source : ndarray
        (N,) int8: 0 ground truth, 1 map, 2 random.
    """

    centers: NDArray[np.int64]
    batch_index: NDArray[np.int64]
    cancer: NDArray[np.float32]
    category: NDArray[np.int64]
    source: NDArray[np.int8]

    @classmethod
    def empty(cls) -> CandidateSet:
        """No candidates."""
        return cls(
            np.zeros((0, 3), np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int8),
        )

    def __len__(self) -> int:
        return int(self.centers.shape[0])


def _build(rows: list[tuple[int, int, int, int, float, int, int]]) -> CandidateSet:
    if not rows:
        return CandidateSet.empty()
    array = np.asarray(rows, dtype=np.float64)
    return CandidateSet(
        centers=array[:, 0:3].astype(np.int64),
        batch_index=array[:, 3].astype(np.int64),
        cancer=array[:, 4].astype(np.float32),
        category=array[:, 5].astype(np.int64),
        source=array[:, 6].astype(np.int8),
    )


def ground_truth_and_random(
    lesions: list[NDArray[np.float64]],
    lesion_index: NDArray[np.int16],
    images: NDArray[np.float32],
    n_random: int,
    rng: np.random.Generator,
) -> CandidateSet:
    """Centres of the ground-truth lesions of every item plus ``n_random`` background centres per item.

    Parameters
    ----------
    lesions : list of ndarray
        Per item, rows ``[z, y, x, label, is_cspca, category_index]`` (:func:`training.datasets.dataset.crop_lesions`).
    lesion_index : ndarray
        (B, Z, Y, X) lesion labels of the crops.
    images : ndarray
        (B, C, Z, Y, X) crops (random centres are drawn where a channel is non-zero, if anywhere).
    n_random : int
        Random negatives per item.
    rng : numpy.random.Generator
        Source of the random centres.
    """
    rows: list[tuple[int, int, int, int, float, int, int]] = []
    for b, item in enumerate(lesions):
        for z, y, x, _label, is_cspca, category in item:
            rows.append((round(z), round(y), round(x), b, float(is_cspca), int(category), 0))
        free = (lesion_index[b] == 0) & np.any(images[b] != 0, axis=0)
        if not free.any():
            free = lesion_index[b] == 0
        if not free.any():
            free = np.ones(lesion_index[b].shape, dtype=bool)
        flat = np.flatnonzero(free)
        picks = flat[rng.integers(0, flat.size, n_random)]
        for pick in picks:
            z, y, x = np.unravel_index(int(pick), free.shape)
            rows.append((int(z), int(y), int(x), b, 0.0, BACKGROUND_CATEGORY_INDEX, 2))
    return _build(rows)


def _targets_of(
    mask: NDArray[np.bool_],
    center: tuple[int, int, int],
    index: NDArray[np.int16],
    table: dict[int, tuple[float, int]],
    min_iou: float,
) -> tuple[float, int]:
    """(cancer, category index) of one map candidate, by the labelling rule of the module docstring."""
    labels, counts = np.unique(index[mask], return_counts=True)
    ious: dict[int, float] = {}
    for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
        if label == 0:
            continue
        union = int(mask.sum()) + int((index == label).sum()) - int(count)
        ious[int(label)] = count / union if union else 0.0
    at_centre = int(index[center])
    cancers = {lab: iou for lab, iou in ious.items() if table.get(lab, (0.0, 0))[0] > 0}
    if at_centre in table and table[at_centre][0] > 0:
        return table[at_centre]
    if cancers:
        best = max(cancers, key=lambda lab: cancers[lab])
        if cancers[best] >= min_iou:
            return table[best]
    if at_centre in table:
        return table[at_centre]
    others = {lab: iou for lab, iou in ious.items() if lab in table and iou >= min_iou}
    if others:
        return table[max(others, key=lambda lab: others[lab])]
    return 0.0, BACKGROUND_CATEGORY_INDEX


def map_candidates(
    probability: NDArray[np.float32],
    lesions: list[NDArray[np.float64]],
    lesion_index: NDArray[np.int16],
    config: SamplingConfig,
) -> CandidateSet:
    """Candidates of the current (detached) map of every item, labelled by overlap with the ground truth.

    Parameters
    ----------
    probability : ndarray
        (B, Z, Y, X) localization map of the crops.
    lesions, lesion_index
        Ground truth of the crops (see :func:`ground_truth_and_random`).
    config : SamplingConfig
        Extraction settings and limits.
    """
    if config.max_map_candidates == 0:
        return CandidateSet.empty()
    rows: list[tuple[int, int, int, int, float, int, int]] = []
    for b in range(probability.shape[0]):
        table = {int(r[3]): (float(r[4]), int(r[5])) for r in lesions[b]}
        for candidate in extract_candidates(probability[b], config.extraction)[: config.max_map_candidates]:
            cancer, category = _targets_of(
                candidate.mask, candidate.center_zyx, lesion_index[b], table, config.min_iou
            )
            z, y, x = candidate.center_zyx
            rows.append((z, y, x, b, cancer, category, 1))
    return _build(rows)


def concatenate(*sets: CandidateSet) -> CandidateSet:
    """One set holding the candidates of several."""
    parts = [s for s in sets if len(s)]
    if not parts:
        return CandidateSet.empty()
    return CandidateSet(
        centers=np.concatenate([s.centers for s in parts]),
        batch_index=np.concatenate([s.batch_index for s in parts]),
        cancer=np.concatenate([s.cancer for s in parts]),
        category=np.concatenate([s.category for s in parts]),
        source=np.concatenate([s.source for s in parts]),
    )
