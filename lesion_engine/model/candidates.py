"""Lesion candidates from the localization map (dynamic threshold extraction).

In the spirit of PI-CAI's dynamic lesion-candidate extraction (Bosma et al., *report-guided annotation*):

1. take the global maximum of what is left of the map; stop when it is below ``min_peak``;
2. the candidate is the connected region around that maximum of voxels at or above
   ``max(peak * dynamic_fraction, floor)``;
3. remove the region from the map and repeat, at most ``max_lesions`` candidates;
4. regions smaller than ``min_voxels``, and regions that touch (26-neighbourhood) a candidate already
   accepted, are removed from the map but not reported (PI-CAI's ``remove_adjacent_lesion_candidates``:
   such a region is usually the shoulder of a blob already found). Unlike PI-CAI, a shoulder dropped this
   way also counts as part of its blob's neighbourhood, so that its outer rings (at lower thresholds) are
   dropped too rather than reported as lesions of their own.

So candidates never touch: two blobs are always at least one voxel apart, as PI-CAI detection maps require.
:func:`separate_labels` enforces the same on any label map (e.g. after resampling to another grid).

Arrays are (z, y, x).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.model.model_config import CandidateConfig

logger = logging.getLogger(__name__)

__all__ = [
    "Box",
    "Candidate",
    "CandidateConfig",
    "blobs_touch",
    "extract_candidates",
    "label_map",
    "separate_labels",
    "shift_box",
]

Triple = tuple[int, int, int]
Box = tuple[slice, slice, slice]

_TOUCH = np.ones((3, 3, 3), dtype=bool)
"""Two blobs touch when a voxel of one is in the 26-neighbourhood of a voxel of the other."""


@dataclass(frozen=True)
class Candidate:
    """One lesion candidate on the model grid.

    Attributes
    ----------
    index : int
        1-based order of extraction (highest peak first).
    mask : ndarray of bool
        (Z, Y, X) the candidate's region.
    peak : float
        Highest map value inside the region.
    peak_zyx : (z, y, x)
        Voxel of that value.
    center_zyx : (z, y, x)
        Centre of mass of the region, moved to the nearest voxel inside the region when it falls outside
        (non-convex regions). The classifier's patch is centred here.
    voxels : int
        Number of voxels of the region.
    """

    index: int
    mask: NDArray[np.bool_]
    peak: float
    peak_zyx: Triple
    center_zyx: Triple
    voxels: int


def _structure(connectivity: int) -> NDArray[np.bool_]:
    rank = 1 if connectivity == 6 else 3
    structure: NDArray[np.bool_] = ndimage.generate_binary_structure(3, rank)
    return structure


def _dilate_touch(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """``mask`` grown by its 26-neighbourhood (same shape; as ``binary_dilation`` with a 3x3x3 cube).

    The cube is the product of three 1D steps, one per axis; this is much cheaper than SciPy's general
    dilation on the small boxes of the extraction loop.
    """
    out = mask.copy()
    for axis in range(mask.ndim):
        low = [slice(None)] * mask.ndim
        high = [slice(None)] * mask.ndim
        low[axis], high[axis] = slice(None, -1), slice(1, None)
        step = out.copy()
        step[tuple(high)] |= out[tuple(low)]
        step[tuple(low)] |= out[tuple(high)]
        out = step
    return out


def _component_at(mask: NDArray[np.bool_], seed: Triple, structure: NDArray[np.bool_]) -> NDArray[np.bool_]:
    labels, _ = ndimage.label(mask, structure=structure)
    out: NDArray[np.bool_] = labels == labels[seed]
    return out


def _grow_component(
    work: NDArray[np.float32], seed: Triple, threshold: float, structure: NDArray[np.bool_]
) -> tuple[Box, NDArray[np.bool_]]:
    """The connected region of ``work >= threshold`` around ``seed``, as (box, mask inside the box).

    Labels a box around the seed, doubled until the region does not reach an inner face of the box (then
    it is the whole region), so that small regions cost little on a large map.
    """
    shape = np.asarray(work.shape)
    centre = np.asarray(seed)
    half = np.array([4, 8, 8])
    while True:
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        box: Box = (
            slice(int(lo[0]), int(hi[0])),
            slice(int(lo[1]), int(hi[1])),
            slice(int(lo[2]), int(hi[2])),
        )
        local_seed: Triple = (int(centre[0] - lo[0]), int(centre[1] - lo[1]), int(centre[2] - lo[2]))
        local = _component_at(work[box] >= threshold, local_seed, structure)
        open_faces = [
            (lo[axis] > 0 and local.take(0, axis=axis).any())
            or (hi[axis] < shape[axis] and local.take(-1, axis=axis).any())
            for axis in range(3)
        ]
        if not any(open_faces):
            return box, local
        half = half * 2


def _center_inside(mask: NDArray[np.bool_], offset: Triple = (0, 0, 0)) -> Triple:
    """Centre of mass of ``mask``, moved to the nearest voxel of the mask; ``offset`` is added."""
    points = np.argwhere(mask)
    mean = points.mean(axis=0)
    nearest = points[int(np.argmin(((points - mean) ** 2).sum(axis=1)))]
    return (int(nearest[0]) + offset[0], int(nearest[1]) + offset[1], int(nearest[2]) + offset[2])


def shift_box(box: tuple[slice, ...], within: Box) -> Box:
    """``box``, found inside the part ``within`` of an array, in the whole array's indices."""
    z, y, x = (slice(b.start + w.start, b.stop + w.start) for b, w in zip(box, within, strict=True))
    return (z, y, x)


def _bounding_box(mask: NDArray[np.bool_], margin: int) -> Box:
    points = np.argwhere(mask)
    lo = np.maximum(points.min(axis=0) - margin, 0)
    hi = np.minimum(points.max(axis=0) + margin + 1, mask.shape)
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))


def _map_values(probability_map: NDArray[Any]) -> NDArray[Any]:
    """The localization map as an array, checked to be 3D and (unless empty) finite.

    Parameters
    ----------
    probability_map : ndarray
        (Z, Y, X) lesion likelihood.

    Returns
    -------
    ndarray
        The map as given (no copy where it already is an array).

    Raises
    ------
    ValueError
        When the map is not 3D or holds non-finite values.
    """
    values = np.asarray(probability_map)
    if values.ndim != 3:
        raise ValueError(f"the localization map must be 3D (z, y, x), got shape {values.shape}")
    if values.size and not np.all(np.isfinite(values)):
        raise ValueError("the localization map holds NaN or infinite values")
    return values


def _seed_order(flat_work: NDArray[np.float32], min_peak: float) -> Iterator[int]:
    """Flat indices of the voxels at or above ``min_peak``, in descending order of value.

    Ties go to the lowest flat index, as ``np.argmax``. Extraction rounds only zero voxels, so the maximum of
    what is left of the map is always the first of these not yet zeroed.

    Parameters
    ----------
    flat_work : ndarray
        The map, flattened.
    min_peak : float
        The lowest peak a candidate may have.

    Returns
    -------
    iterator of int
    """
    above = np.flatnonzero(flat_work >= min_peak)
    return iter(above[np.argsort(-flat_work[above], kind="stable")].tolist())


def _candidate_from_region(
    values: NDArray[Any],
    region: NDArray[np.bool_],
    box: Box,
    local: NDArray[np.bool_],
    index: int,
    voxels: int,
) -> Candidate:
    """The candidate of an accepted region: its peak on the original map and its centre.

    Parameters
    ----------
    values : ndarray
        (Z, Y, X) the original map.
    region : ndarray of bool
        (Z, Y, X) the region on the whole grid.
    box : Box
        A box of the grid holding the region.
    local : ndarray of bool
        The region inside ``box``.
    index : int
        1-based order of extraction.
    voxels : int
        Number of voxels of the region.

    Returns
    -------
    Candidate
    """
    best = np.unravel_index(int(np.argmax(np.where(local, values[box], -np.inf))), local.shape)
    best_zyx: Triple = (
        int(best[0]) + box[0].start,
        int(best[1]) + box[1].start,
        int(best[2]) + box[2].start,
    )
    starts: Triple = (box[0].start, box[1].start, box[2].start)
    return Candidate(
        index=index,
        mask=region,
        peak=float(values[best_zyx]),
        peak_zyx=best_zyx,
        center_zyx=_center_inside(local, starts),
        voxels=voxels,
    )


def _forbid_around(
    forbidden: NDArray[np.bool_], region: NDArray[np.bool_], box: Box, local: NDArray[np.bool_]
) -> None:
    """Mark an accepted region and its 26-neighbourhood as forbidden to later candidates (in place).

    Parameters
    ----------
    forbidden : ndarray of bool
        (Z, Y, X) accepted blobs and their neighbourhood so far; updated.
    region : ndarray of bool
        (Z, Y, X) the region on the whole grid.
    box : Box
        A box of the grid holding the region.
    local : ndarray of bool
        The region inside ``box``.
    """
    tight = _bounding_box(local, 1)
    grown = shift_box(tight, box)
    forbidden[grown] |= _dilate_touch(region[grown])


def extract_candidates(
    probability_map: NDArray[Any], config: CandidateConfig | None = None
) -> list[Candidate]:
    """Extract non-touching lesion candidates from a localization map.

    Parameters
    ----------
    probability_map : ndarray
        (Z, Y, X) lesion likelihood in [0, 1] on the model grid.
    config : CandidateConfig, optional
        Thresholds and limits; the defaults when None.

    Returns
    -------
    list of Candidate
        Highest peak first; at most ``config.max_lesions``.

    Raises
    ------
    ValueError
        When the map is not 3D or holds non-finite values.
    """
    config = config or CandidateConfig()
    values = _map_values(probability_map)
    if values.size == 0:
        return []
    work = values.astype(np.float32, copy=True)
    structure = _structure(config.connectivity)
    forbidden = np.zeros(work.shape, dtype=bool)  # accepted blobs and their 26-neighbourhood
    candidates: list[Candidate] = []
    flat_work = work.reshape(-1)
    seeds = _seed_order(flat_work, config.min_peak)
    # Each round zeroes at least the peak voxel; bound the rounds spent on dropped regions all the same.
    rejected, max_rejected = 0, 100 * config.max_lesions + 1000
    while len(candidates) < config.max_lesions and rejected < max_rejected:
        flat = next((i for i in seeds if flat_work[i] >= config.min_peak), None)
        if flat is None:
            break
        at = np.unravel_index(flat, work.shape)
        seed: Triple = (int(at[0]), int(at[1]), int(at[2]))
        peak = float(work[seed])
        threshold = max(peak * config.dynamic_fraction, config.floor)
        box, local = _grow_component(work, seed, threshold, structure)
        work[box][local] = 0.0
        if np.any(local & forbidden[box]):
            # Touches an accepted blob: the shoulder of a blob already found, dropped as in PI-CAI. Its
            # neighbourhood joins that blob's, so that the next ring of the same shoulder is dropped too.
            forbidden[box] |= _dilate_touch(local)
            rejected += 1
            logger.debug("candidate at %s (peak %.3f) dropped: touches an earlier candidate", seed, peak)
            continue
        voxels = int(local.sum())
        if voxels < config.min_voxels:
            rejected += 1
            logger.debug(
                "candidate at %s (peak %.3f) dropped: %d voxels < %d", seed, peak, voxels, config.min_voxels
            )
            continue
        region = np.zeros(work.shape, dtype=bool)
        region[box] = local
        _forbid_around(forbidden, region, box, local)
        candidates.append(_candidate_from_region(values, region, box, local, len(candidates) + 1, voxels))
    if rejected >= max_rejected:
        logger.info("candidate extraction stopped after dropping %d regions", rejected)
    return candidates


def label_map(candidates: list[Candidate], shape: Triple) -> NDArray[np.uint16]:
    """One label image of the candidates: voxel value = candidate ``index``, 0 elsewhere."""
    out = np.zeros(shape, dtype=np.uint16)
    for candidate in candidates:
        if candidate.mask.shape != tuple(shape):
            raise ValueError(f"candidate mask shape {candidate.mask.shape} differs from {tuple(shape)}")
        out[candidate.mask] = candidate.index
    return out


def blobs_touch(labels: NDArray[Any]) -> bool:
    """Whether two different non-zero labels touch (26-neighbourhood) anywhere."""
    values = np.asarray(labels)
    if values.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), got shape {values.shape}")
    if not np.any(values > 0):
        return False
    part = values[_bounding_box(values > 0, 1)].astype(np.int64)
    big = int(part.max()) + 1  # stands for background in the minimum filter (cval goes through a float)
    high = ndimage.maximum_filter(part, footprint=_TOUCH, mode="constant", cval=0)
    low = ndimage.minimum_filter(np.where(part > 0, part, big), footprint=_TOUCH, mode="constant", cval=big)
    inside = part > 0
    return bool(np.any(inside & ((high != part) | (low != part))))


def separate_labels(labels: NDArray[Any]) -> NDArray[Any]:
    """Make the blobs of a label map non-touching: a voxel next to a lower label is cleared.

    Lower labels keep all their voxels, higher ones lose those in the 26-neighbourhood of a lower label, so
    that every pair of blobs ends at least one voxel apart. One pass suffices (see the module docstring).

    Parameters
    ----------
    labels : ndarray of int
        (Z, Y, X) label map, 0 = background.

    Returns
    -------
    ndarray
        A copy with touching voxels cleared.
    """
    values = np.asarray(labels)
    if values.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), got shape {values.shape}")
    out = values.copy()
    if not np.any(values > 0):
        return out
    box = _bounding_box(values > 0, 1)
    part = values[box]
    big = int(part.max()) + 1  # stands for background in the minimum filter (cval goes through a float)
    masked = np.where(part > 0, part, big).astype(np.int64)
    low = ndimage.minimum_filter(masked, footprint=_TOUCH, mode="constant", cval=big)
    out[box][(part > 0) & (low < part)] = 0
    return out
