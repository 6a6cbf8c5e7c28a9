"""PI-CAI's dynamic lesion-candidate extraction, bit for bit and faster.

This module reproduces ``report_guided_annotation.extract_lesion_candidates(softmax, threshold='dynamic')``
(and ``threshold='dynamic-v2'``) of the PyPI package ``report_guided_annotation`` 0.3.4, with
``max_prob_round_decimals=None`` and the ``np.max`` aggregation, as the PI-CAI reference pipeline calls it:
the same hard blobs (same dtype), the same ``(index, confidence)`` list and the same indexed blobs.

The reference, at every iteration, thresholds the working map at ``max / factor``, labels the *whole*
volume, builds one full-size mask per component, keeps the largest-confidence component of more than
``min_voxels_detection`` voxels and dilates *all* extracted lesions to test adjacency. Here each iteration
costs a few full passes (arg-max, tie count) and local work:

* the winner is the component of the global maximum: it is grown by labelling a box around the peak,
  enlarged until the component touches no box face inside the volume (then it is the whole component);
* a component of ``<= min_voxels_detection`` voxels is hidden (set to 0) while the next peak is searched;
  hiding it cannot change the other components, since no voxel above the threshold touches it;
* while the threshold repeats (the maximum sits in a small component, which stays), each iteration removes
  one whole component at that threshold, so the hidden components and any full labelling stay valid and
  are kept: skipping many adjacent candidates at one threshold costs a few passes each;
* adjacency is tested by dilating the winner in its bounding box padded by one voxel (the cube is
  symmetric, so this equals the reference's dilation of the extracted lesions);
* the rare paths label the full volume once per threshold: ties of the maximum in another component and
  many small components at the top. The winner is then the largest peak, ties to the smallest label:
  SciPy numbers components in the raster order of their first voxels, the rule by which the reference
  keeps component 1 of ``hard_blobs == max``;
* version 1's bug (every component small) needs no labelling: the whole volume becomes a lesion of
  confidence 0 that takes a slot (unless it touches an extracted one), then the working map is all zero.

The threshold, the failsafe test and the comparisons use the same expressions on the same NumPy scalar
types as the reference, so NumPy's promotion rules give the same values.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.model.picai_unet.config import DynamicExtraction

logger = logging.getLogger(__name__)

__all__ = ["DynamicExtraction", "extract_dynamic"]

_CUBE = np.ones((3, 3, 3), dtype=bool)
# Half-size (z, y, x) of the first box around a peak; a box that cuts the component is doubled.
_FIRST_HALF_BOX = (2, 10, 10)
# Small components hidden per iteration before the search falls back to the full volume.
_MAX_HIDDEN = 16

_DEFAULT_SETTINGS = DynamicExtraction()

Box = tuple[slice, ...]
Map = NDArray[np.floating[Any]]
Found = tuple[Box, NDArray[np.bool_], np.floating[Any]]


def _above(values: Map, threshold: np.floating[Any]) -> NDArray[np.bool_]:
    """The voxels that the reference keeps: not below the threshold and not zero (finite values)."""
    if threshold > 0:
        return values >= threshold
    kept: NDArray[np.bool_] = ~(values < threshold) & (values != 0)
    return kept


def _bounding_box(mask: NDArray[np.bool_]) -> Box:
    box: Box = ndimage.find_objects(mask.astype(np.uint8), max_label=1)[0]
    return box


def _grow(work: Map, seed: int, threshold: np.floating[Any]) -> tuple[Box, NDArray[np.bool_]]:
    """The 26-connected component above the threshold that holds the flat index ``seed``, in its box."""
    shape = work.shape
    centre = np.unravel_index(seed, shape)
    lo = [max(0, int(c) - h) for c, h in zip(centre, _FIRST_HALF_BOX, strict=True)]
    hi = [min(n, int(c) + h + 1) for c, n, h in zip(centre, shape, _FIRST_HALF_BOX, strict=True)]
    while True:
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        labels, _ = ndimage.label(_above(work[box], threshold), structure=_CUBE)
        local = tuple(int(c) - a for c, a in zip(centre, lo, strict=True))
        component: NDArray[np.bool_] = labels == labels[local]
        cut = False
        for axis in range(3):
            extent = hi[axis] - lo[axis]
            if lo[axis] > 0 and component.take(0, axis=axis).any():
                lo[axis], cut = max(0, lo[axis] - extent), True
            if hi[axis] < shape[axis] and component.take(-1, axis=axis).any():
                hi[axis], cut = min(shape[axis], hi[axis] + extent), True
        if not cut:
            inner = _bounding_box(component)
            whole = tuple(slice(a + s.start, a + s.stop) for a, s in zip(lo, inner, strict=True))
            return whole, component[inner]


class _Search:
    """The component that the reference extracts, threshold after threshold, from the working map.

    While the threshold repeats (the maximum sits in a small component, which stays), the map has only lost
    whole components at that threshold: the hidden small components stay small and a full labelling stays
    valid, so both are kept until the threshold changes.
    """

    def __init__(self, work: Map, min_voxels: int) -> None:
        self.work, self.flat, self.min_voxels = work, work.reshape(-1), min_voxels
        self.threshold: np.floating[Any] | None = None
        self.hidden: list[tuple[NDArray[np.intp], Map]] = []
        self.hidden_max: np.floating[Any] | None = None
        self.seed = -1  # flat arg-max of the map with hidden components at 0; -1: unknown
        self.labelled: tuple[NDArray[np.int32], list[Box], NDArray[np.intp], Map] | None = None

    def maximum(self) -> np.floating[Any]:
        """The working map's maximum as ``np.max`` gives it (hidden voxels included)."""
        self.seed = int(np.argmax(self.flat))
        peak: np.floating[Any] = self.flat[self.seed]
        return self.hidden_max if self.hidden_max is not None and self.hidden_max > peak else peak

    def restore(self) -> None:
        """Put the hidden components back and forget the threshold's state."""
        for where, values in reversed(self.hidden):
            self.flat[where] = values
        if self.hidden:
            self.seed = -1
        self.hidden, self.hidden_max, self.labelled, self.threshold = [], None, None, None

    def find(self, threshold: np.floating[Any]) -> Found | None:
        """The winner at this threshold: the largest peak of a large component, ties to raster order first."""
        if self.threshold is None or threshold != self.threshold:
            self.restore()
            self.threshold = threshold
        if self.labelled is None:
            for _ in range(_MAX_HIDDEN):
                seed, self.seed = (self.seed if self.seed >= 0 else int(np.argmax(self.flat))), -1
                peak: np.floating[Any] = self.flat[seed]
                if not _above(np.asarray(peak), threshold):
                    return None  # every component is small
                box, component = _grow(self.work, seed, threshold)
                if np.count_nonzero(component) <= self.min_voxels:
                    self._hide(box, component)
                    continue
                ties = np.count_nonzero(self.flat == peak)
                if ties == 1 or np.count_nonzero(component & (self.work[box] == peak)) == ties:
                    return box, component, peak
                break
            logger.debug("candidate search on the full volume (ties or many small components)")
            self.labelled = self._label(threshold)
        return self._next_labelled()

    def _hide(self, box: Box, component: NDArray[np.bool_]) -> None:
        where = np.ravel_multi_index(
            tuple(idx + s.start for idx, s in zip(np.nonzero(component), box, strict=True)), self.work.shape
        )
        values = self.flat[where].copy()
        self.hidden.append((where, values))
        top: np.floating[Any] = values.max()
        if self.hidden_max is None or top > self.hidden_max:
            self.hidden_max = top
        self.flat[where] = 0

    def _label(
        self, threshold: np.floating[Any]
    ) -> tuple[NDArray[np.int32], list[Box], NDArray[np.intp], Map]:
        labels, count = ndimage.label(_above(self.work, threshold), structure=_CUBE)
        sizes = np.bincount(labels.reshape(-1), minlength=count + 1)
        large = np.flatnonzero(sizes[1:] > self.min_voxels) + 1
        peaks = np.asarray(
            ndimage.maximum(self.work, labels, large) if large.size else [], dtype=self.work.dtype
        )
        return labels, ndimage.find_objects(labels), large, peaks

    def _next_labelled(self) -> Found | None:
        assert self.labelled is not None
        labels, boxes, large, peaks = self.labelled
        if large.size == 0:
            return None
        best: np.floating[Any] = peaks.max()
        tied = np.flatnonzero(peaks == best)
        # SciPy numbers components in the raster order of their first voxels, so among tied components the
        # smallest label is the reference's "component 1 of hard_blobs == max" (labelled by the same rule).
        pick = int(tied[0])
        box = boxes[int(large[pick]) - 1]
        component: NDArray[np.bool_] = labels[box] == large[pick]
        self.labelled = (labels, boxes, np.delete(large, pick), np.delete(peaks, pick))
        return box, component, best


def _touches(extracted: Map, box: Box, component: NDArray[np.bool_]) -> bool:
    """Whether the component overlaps the 3x3x3 dilation of the extracted lesions (``extracted > 0``)."""
    padded = tuple(
        slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(box, extracted.shape, strict=True)
    )
    local = np.zeros(tuple(s.stop - s.start for s in padded), dtype=bool)
    local[tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(box, padded, strict=True))] = (
        component
    )
    grown = ndimage.binary_dilation(local, structure=_CUBE)
    return bool((grown & (extracted[padded] > 0)).any())


def _reference_input(softmax: Map) -> Map:
    """A C-ordered working copy, converted as the reference converts (float16 -> 32, longdouble -> 64)."""
    array = np.asarray(softmax)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"softmax must be a floating-point array, got dtype {array.dtype}")
    if array.ndim != 3 or array.size == 0:
        raise ValueError(f"softmax must be a non-empty 3-D array, got shape {array.shape}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype == np.longdouble and array.dtype != np.float64:
        array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError("softmax holds NaN or infinite values")
    return np.array(array, order="C", copy=True)


def extract_dynamic(
    softmax: Map, settings: DynamicExtraction = _DEFAULT_SETTINGS
) -> tuple[Map, list[tuple[int, float]], NDArray[np.int_]]:
    """Lesion candidates of a likelihood map by PI-CAI's dynamic threshold, bit for bit.

    Same three outputs as ``report_guided_annotation.extract_lesion_candidates(softmax, threshold='dynamic'``
    (or ``'dynamic-v2'`` for version 2), ``min_voxels_detection=..., num_lesions_to_extract=...,
    dynamic_threshold_factor=..., max_prob_round_decimals=None, remove_adjacent_lesion_candidates=...)``
    (package ``report_guided_annotation`` 0.3.4), with the failsafe threshold of
    ``extract_lesion_candidates_dynamic``.

    Parameters
    ----------
    softmax : NDArray[np.floating]
        3-D likelihood map (z, y, x), finite values; float16 is read as float32, longdouble as float64.
    settings : DynamicExtraction
        The extraction's settings.

    Returns
    -------
    hard_blobs : NDArray[np.floating]
        Each candidate's voxels hold its confidence, 0 elsewhere (dtype of the converted map).
    confidences : list[tuple[int, float]]
        ``(index, confidence)`` per candidate, in extraction order (index 1, 2, ...).
    indexed_blobs : NDArray[np.int_]
        Each candidate's voxels hold its index, 0 elsewhere (version 1's bug adds its index everywhere).

    Raises
    ------
    ValueError
        If the map is not a non-empty 3-D floating-point array of finite values.
    """
    work = _reference_input(softmax)
    hard_blobs = np.zeros_like(work)
    indexed_blobs: NDArray[np.int_] = np.zeros(work.shape, dtype=np.int_)
    confidences: list[tuple[int, float]] = []
    search = _Search(work, settings.min_voxels_detection)
    while len(confidences) < settings.num_lesions_to_extract:
        tumor_index = 1 + len(confidences)
        max_prob = search.maximum()
        if max_prob < settings.max_prob_failsafe_stopping_threshold:
            break
        threshold = max_prob / settings.dynamic_threshold_factor
        found = search.find(threshold)
        if found is None and settings.version >= 2:
            search.restore()
            removed = work > threshold
            if not removed.any():  # the reference would loop forever (a subnormal peak)
                raise RuntimeError(f"dynamic extraction makes no progress at threshold {threshold!r}")
            work[removed] = 0
            continue
        if found is None:
            # Version 1's bug: the whole volume (component 1 of hard_blobs == 0) is a lesion of confidence 0.
            if not (settings.remove_adjacent_lesion_candidates and bool((hard_blobs > 0).any())):
                confidences.append((tumor_index, 0.0))
                indexed_blobs += tumor_index
            break  # the working map is now all zero, below the (positive) failsafe threshold
        box, component, confidence = found
        if not (settings.remove_adjacent_lesion_candidates and _touches(hard_blobs, box, component)):
            hard_blobs[box][component] = confidence
            indexed_blobs[box][component] = tumor_index
            confidences.append((tumor_index, float(confidence)))
        work[box][component] = 0
    logger.debug("extracted %d lesion candidates: %s", len(confidences), confidences)
    return hard_blobs, confidences, indexed_blobs
