"""The anatomical gate: the gland, dilated by a margin, on the T2W grid and on the model grid.

No lesion whose centre lies outside the dilated gland is reported, and the localization map is 0 outside
it (:mod:`lesion_engine.model.result_assembly`, :mod:`lesion_engine.engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.anatomy.gland import GlandModel, GlandSettings, mask_box
from lesion_engine.anatomy.gland_card import GlandModelError

logger = logging.getLogger(__name__)

__all__ = [
    "GATE_WARNING_PREFIX",
    "GlandRegion",
    "dilate_mm",
    "find_gland",
    "gate_warnings",
    "gland_region",
    "judge_gland",
]

#: Every warning of the gate about itself (the model failed, found nothing, or found an implausible gland)
#: begins so; results show them where a radiologist looks (SR, overlay, admin page).
GATE_WARNING_PREFIX = "the gland model"
#: The largest connected part of a plausible gland holds at least this share of it.
MAIN_PART_SHARE = 0.9
#: A gland whose first or last slice holds at least this share of its largest slice is cut off there.
CUT_SLICE_SHARE = 0.25


def gate_warnings(warnings: Sequence[str]) -> list[str]:
    """The gate's warnings about itself among a result's warnings."""
    return [w for w in warnings if w.startswith(GATE_WARNING_PREFIX)]


def judge_gland(mask: NDArray[np.bool_], volume_ml: float, settings: GlandSettings) -> list[str]:
    """Why a gland found by the gland model is implausible (empty when it is plausible).

    A real prostate is several ml or more (``settings.min_volume_ml`` to ``max_volume_ml``), one organ
    (its largest connected part holds at least :data:`MAIN_PART_SHARE` of it) and, on a prostate MR, inside
    the field of view (not on the in-plane border, and not cut by the first or last slice: a slice there
    holding :data:`CUT_SLICE_SHARE` of its largest slice).
    """
    problems = []
    if not settings.min_volume_ml <= volume_ml <= settings.max_volume_ml:
        problems.append(
            f"its volume is {volume_ml:.2f} ml, outside the plausible {settings.min_volume_ml:g} to "
            f"{settings.max_volume_ml:g} ml"
        )
    box = mask_box(mask)
    if box is not None:
        labels, count = ndimage.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    if box is not None and count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        share = float(sizes.max()) / float(sizes.sum())
        if share < MAIN_PART_SHARE:
            problems.append(f"it is {count} separate parts, the largest {share:.0%} of it")
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    largest = float(areas.max()) if areas.size else 0.0
    edges = [
        f"the {name} slice"
        for name, k in (("first", 0), ("last", -1))
        if largest and areas[k] >= CUT_SLICE_SHARE * largest
    ]
    if mask[:, 0, :].any() or mask[:, -1, :].any() or mask[:, :, 0].any() or mask[:, :, -1].any():
        edges.append("the in-plane border")
    if edges:
        problems.append(f"it is cut off by the field of view (at {' and '.join(edges)})")
    return problems


@dataclass(frozen=True)
class GlandRegion:
    """The gland of one study, as the gate uses it.

    Attributes
    ----------
    mask : ndarray of bool
        (Z, Y, X) gland on the T2W grid.
    allowed : ndarray of bool
        (Z, Y, X) the gland dilated by ``margin_mm`` on the T2W grid.
    t2w : SimpleITK.Image
        The T2W grid (geometry only is used).
    volume_ml : float
        The gland's volume.
    margin_mm : float
        The margin.
    model : dict of str to str
        ``name``, ``version``, ``sha256`` and ``licence`` of the gland model that found it (empty when
        unknown).
    """

    mask: NDArray[np.bool_]
    allowed: NDArray[np.bool_]
    t2w: sitk.Image
    volume_ml: float
    margin_mm: float
    model: dict[str, str] = field(default_factory=dict)

    def contains(self, point_lps_mm: Sequence[float]) -> bool:
        """Whether a point (DICOM LPS, mm) lies inside the dilated gland (False outside the T2W grid)."""
        index = self.t2w.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps_mm])
        x, y, z = (round(v) for v in index)
        shape = self.allowed.shape
        if not (0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]):
            return False
        return bool(self.allowed[z, y, x])

    def in_gland(self, point_lps_mm: Sequence[float]) -> bool:
        """Whether a point (DICOM LPS, mm) lies inside the gland itself (not only within the margin)."""
        index = self.t2w.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps_mm])
        x, y, z = (round(v) for v in index)
        shape = self.mask.shape
        if not (0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]):
            return False
        return bool(self.mask[z, y, x])

    def on_grid(self, grid: sitk.Image) -> NDArray[np.bool_]:
        """The dilated gland on another grid (nearest neighbour), (Z, Y, X)."""
        allowed = sitk.GetImageFromArray(self.allowed.astype(np.uint8))
        allowed.CopyInformation(self.t2w)
        resampled = sitk.Resample(
            allowed, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )
        return sitk.GetArrayFromImage(resampled).astype(bool)


def dilate_mm(mask: NDArray[np.bool_], spacing_zyx: Sequence[float], margin_mm: float) -> NDArray[np.bool_]:
    """``mask`` grown by ``margin_mm`` (Euclidean, in mm on an anisotropic grid), computed in its bounding box.

    Parameters
    ----------
    mask : ndarray of bool
        (Z, Y, X).
    spacing_zyx : sequence of float
        Voxel spacing in mm, in array order.
    margin_mm : float
        >= 0.
    """
    if margin_mm < 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    out = np.zeros(mask.shape, dtype=bool)
    found = np.argwhere(mask)
    if found.size == 0:
        return out
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in spacing_zyx]
    low = [max(0, int(v) - p) for v, p in zip(found.min(axis=0), pad, strict=True)]
    high = [min(n, int(v) + p + 1) for v, p, n in zip(found.max(axis=0), pad, mask.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    distance = ndimage.distance_transform_edt(~mask[box], sampling=list(spacing_zyx))
    out[box] = distance <= margin_mm
    return out


def gland_region(
    mask: NDArray[np.bool_],
    t2w: sitk.Image,
    volume_ml: float,
    margin_mm: float,
    model: Mapping[str, str] | None = None,
) -> GlandRegion:
    """The :class:`GlandRegion` of a gland mask on the T2W grid (``model``: the gland model's identity)."""
    if mask.shape != sitk.GetArrayViewFromImage(t2w).shape:
        raise ValueError(f"the gland mask {mask.shape} is not on the T2W grid {t2w.GetSize()[::-1]}")
    spacing_zyx = tuple(float(s) for s in t2w.GetSpacing()[::-1])
    return GlandRegion(
        mask, dilate_mm(mask, spacing_zyx, margin_mm), t2w, volume_ml, float(margin_mm), dict(model or {})
    )


def find_gland(
    gland: GlandModel | None, settings: GlandSettings, t2w: sitk.Image, warnings: list[str]
) -> GlandRegion | None:
    """Segment the gland of a study for the anatomical gate.

    Parameters
    ----------
    gland : GlandModel or None
        The gland model; None without the gate.
    settings : GlandSettings
        The margin and whether the gland model is required.
    t2w : SimpleITK.Image
        The study's T2W.
    warnings : list of str
        What a user should know is appended here (the model failed, found no gland, or found an
        implausible one: :func:`judge_gland`).

    Returns
    -------
    GlandRegion or None
        None without the gate, or when the gland model failed, found nothing or found an implausible gland
        (then ungated).

    Raises
    ------
    GlandModelError
        When the gland model fails, finds nothing or finds an implausible gland and ``settings.required``
        is True.
    """
    if gland is None:
        return None
    try:
        found = gland.segment(t2w)
    except (GlandModelError, RuntimeError, ValueError) as exc:
        if settings.required:
            raise GlandModelError(f"the gland model failed on this study: {exc}") from exc
        message = f"the gland model failed, lesions are not gated by the prostate gland: {exc}"
        logger.warning("%s", message)
        warnings.append(message)
        return None
    if not found.mask.any():
        message = "the gland model found no prostate gland, lesions are not gated by it"
        if settings.required:
            raise GlandModelError(message)
        logger.warning("%s", message)
        warnings.append(message)
        return None
    problems = judge_gland(found.mask, found.volume_ml, settings)
    if problems:
        message = (
            f"the gland model's prostate is implausible ({'; '.join(problems)}): the model failed on this "
            "study, lesions are not gated by the prostate gland"
        )
        if settings.required:
            raise GlandModelError(message)
        logger.warning("%s", message)
        warnings.append(message)
        return None
    logger.info("gland %.1f ml (%.2f s, %d pass(es))", found.volume_ml, found.seconds, found.passes)
    return gland_region(found.mask, t2w, found.volume_ml, settings.margin_mm, gland.card.to_dict())
