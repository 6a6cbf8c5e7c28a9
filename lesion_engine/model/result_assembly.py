"""From the networks' outputs of one study to its :class:`~lesion_engine.model.result_types.EngineResult`.

The ``outputs`` stage of the engine: lesions are numbered 1..n by decreasing probability. A lesion's mask
is its blob of the detection map: the candidate's region resampled (nearest neighbour) onto the T2W grid,
with blobs kept non-touching (a more probable lesion keeps its voxels where two would touch). Each
lesion is measured on the T2W grid (:mod:`lesion_engine.model.measurements`) and given the zone most of its
voxels are predicted in.

With a gland (:class:`~lesion_engine.anatomy.gland_gate.GlandRegion`, the anatomical gate), a lesion whose centre
lies outside the gland dilated by its margin is not reported (the log says so), and the localization map
on the T2W grid is 0 outside the dilated gland.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.anatomy.gland_gate import GlandRegion
from lesion_engine.intake.preprocess import PreparedStudy
from lesion_engine.intake.study_report import role_report
from lesion_engine.model.candidates import Box, Candidate, label_map, separate_labels, shift_box
from lesion_engine.model.grid_resample import GridMap, grid_map, resample_linear, resample_nearest
from lesion_engine.model.measurements import axial_diameter_mm, center_lps_mm, max_diameter_mm, volume_ml
from lesion_engine.model.model_input import from_model_grid
from lesion_engine.model.result_types import OUTSIDE_PROSTATE, EngineResult, Lesion

logger = logging.getLogger(__name__)

__all__ = ["StudyWork", "anatomical_zone", "assemble_result", "zone_of"]

_ZONE_CODES = {"peripheral zone": "pz", "pz": "pz", "transition zone": "tz", "tz": "tz"}
_STAGES = ("model_input", "gland", "localization", "candidates", "classification", "outputs")


@dataclass
class StudyWork:
    """Intermediate state of one study in a batch run of the engine.

    Attributes
    ----------
    prepared : PreparedStudy
        The study.
    grid : SimpleITK.Image
        The model grid (its pixels: the T2W's coverage on that grid).
    images : torch.Tensor
        The network input (C, Z, Y, X).
    coverage : torch.Tensor
        bool (Z, Y, X): where the T2W covers the model grid.
    timings : dict of str to float
        Seconds per stage so far.
    candidates : list of Candidate
        Candidates found on the localization map.
    probabilities, categories : list
        The classification of each candidate, in the order of ``candidates``.
    gland : GlandRegion or None
        The gland (the anatomical gate); None without the gate.
    warnings : list of str
        What the engine has to say about this study (added after the preparation's warnings).
    """

    prepared: PreparedStudy
    grid: sitk.Image
    images: torch.Tensor
    coverage: torch.Tensor
    timings: dict[str, float]
    candidates: list[Candidate] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    categories: list[int] = field(default_factory=list)
    gland: GlandRegion | None = None
    warnings: list[str] = field(default_factory=list)


def anatomical_zone(
    gland: GlandRegion | None,
    center_lps_mm: Sequence[float],
    zone_logits: NDArray[np.float32] | None,
    mask: NDArray[np.bool_],
    zone_names: Sequence[str],
) -> str | None:
    """A lesion's zone where the anatomy supports one.

    The zonal output is an argmax over PZ and TZ with no "outside" answer: on a muscle beside the prostate it
    still says PZ. So a zone is given only with the gland of the anatomical gate: ``pz`` or ``tz``
    (:func:`zone_of`) for a lesion centred in the gland, ``outside`` for one centred beside it (within the
    gate's margin), and None (zone unknown) without a gland (gate off, or its gland model failed).
    """
    if gland is None:
        return None
    if not gland.in_gland(center_lps_mm):
        return OUTSIDE_PROSTATE
    return zone_of(zone_logits, mask, zone_names)


def zone_of(
    zone_logits: NDArray[np.float32] | None, mask: NDArray[np.bool_], zone_names: Sequence[str]
) -> str | None:
    """``pz`` or ``tz``: the zone most voxels under ``mask`` are predicted in.

    Parameters
    ----------
    zone_logits : ndarray or None
        (K, Z, Y, X) zonal logits on the model grid; None when the model has no zonal head.
    mask : ndarray of bool
        (Z, Y, X) on the model grid.
    zone_names : sequence of str
        The name of each zonal output (the model card's ``label_map["zones"]``).

    Returns
    -------
    str or None
        None without zonal logits, or when no voxel under the mask is predicted in a known zone.
    """
    if zone_logits is None:
        return None
    chosen = zone_logits[:, mask].argmax(axis=0)
    counts = np.bincount(chosen, minlength=len(zone_names))
    best: tuple[int, str] | None = None
    for index, name in enumerate(zone_names):
        code = _ZONE_CODES.get(str(name).strip().lower())
        if code is not None and counts[index] > 0 and (best is None or counts[index] > best[0]):
            best = (int(counts[index]), code)
    return best[1] if best else None


def _localization_on_t2w(
    loc_map: NDArray[np.float32],
    grid: sitk.Image,
    t2w: sitk.Image,
    mapping: GridMap,
    loc_map_on_device: torch.Tensor | None,
) -> sitk.Image:
    if loc_map_on_device is not None:
        values = resample_linear(loc_map_on_device, mapping)
        localization = sitk.GetImageFromArray(values.cpu().numpy())
        localization.CopyInformation(t2w)
        return localization
    return from_model_grid(loc_map.astype(np.float32), grid, t2w)


def _gate_localization(localization: sitk.Image, gland: GlandRegion | None, t2w: sitk.Image) -> sitk.Image:
    """The localization map on the T2W grid, 0 outside the dilated gland (unchanged without a gland).

    Parameters
    ----------
    localization : SimpleITK.Image
        The localization map on the T2W grid.
    gland : GlandRegion or None
        The gland of the anatomical gate; None without the gate.
    t2w : SimpleITK.Image
        The T2W image (its geometry is copied).

    Returns
    -------
    SimpleITK.Image
    """
    if gland is None:
        return localization
    gated = sitk.GetArrayFromImage(localization) * gland.allowed
    out = sitk.GetImageFromArray(gated.astype(np.float32))
    out.CopyInformation(t2w)
    return out


@dataclass(frozen=True)
class _RankedBlobs:
    """The candidates' blobs on the T2W grid, labelled by rank (1 = most probable).

    Attributes
    ----------
    order : list of int
        Index into the study's candidates of each rank (rank ``n`` is ``order[n - 1]``).
    labels : ndarray
        uint16 (Z, Y, X) on the T2W grid: the rank of the blob at each voxel, 0 elsewhere.
    blob_box : Box or None
        A box of the T2W grid holding every blob; None when no blob landed.
    boxes : list of Box or None
        The bounding box of each rank's blob; None for a blob that vanished.
    """

    order: list[int]
    labels: NDArray[np.uint16]
    blob_box: Box | None
    boxes: list[Box | None]


def _rank_blobs(study: StudyWork, mapping: GridMap) -> _RankedBlobs:
    """Rank the candidates by probability and resample their blobs onto the T2W grid, kept non-touching.

    The label is the rank, so that a more probable blob wins where two would touch.

    Parameters
    ----------
    study : StudyWork
        The study with its candidates and their probabilities.
    mapping : GridMap
        From the model grid to the T2W grid.

    Returns
    -------
    _RankedBlobs
    """
    order = sorted(range(len(study.candidates)), key=lambda k: -study.probabilities[k])
    ranked = np.zeros(len(study.candidates) + 1, dtype=np.uint16)
    for rank, k in enumerate(order, start=1):
        ranked[study.candidates[k].index] = rank
    shape_zyx = study.coverage.shape
    model_labels = ranked[label_map(study.candidates, (shape_zyx[0], shape_zyx[1], shape_zyx[2]))]
    # Nearest neighbour onto the T2W grid, computed only where the blobs can land (a small box).
    labels, blob_box = resample_nearest(model_labels, mapping)
    boxes: list[Box | None] = [None] * len(order)
    if blob_box is not None:
        labels[blob_box] = separate_labels(labels[blob_box])
        for n, found in enumerate(ndimage.find_objects(labels[blob_box], max_label=len(order))):
            if found is not None:
                boxes[n] = shift_box(found, blob_box)
    return _RankedBlobs(order=order, labels=labels, blob_box=blob_box, boxes=boxes)


def _lesions(
    study: StudyWork,
    blobs: _RankedBlobs,
    zone_logits: NDArray[np.float32] | None,
    zone_names: Sequence[str],
    warnings: list[str],
) -> tuple[list[Lesion], NDArray[np.float32]]:
    """The reported lesions, measured on the T2W grid, numbered 1..n by decreasing probability.

    A blob that vanished on the T2W grid is reported in ``warnings`` (appended to); one centred outside the
    dilated gland is logged and left out.

    Parameters
    ----------
    study : StudyWork
        The study with its candidates, their probabilities and categories, and its gland.
    blobs : _RankedBlobs
        The ranked blobs on the T2W grid.
    zone_logits : ndarray or None
        (K, Z, Y, X) zonal logits on the model grid, or None.
    zone_names : sequence of str
        The name of each zonal output.
    warnings : list of str
        The study's warnings, appended to.

    Returns
    -------
    lesions : list of Lesion
    fill : ndarray
        float32, indexed by rank: the probability of each reported lesion, 0 for the others.
    """
    t2w, gland, labels = study.prepared.t2w, study.gland, blobs.labels
    lesions: list[Lesion] = []
    fill = np.zeros(len(blobs.order) + 1, dtype=np.float32)
    for rank, k in enumerate(blobs.order, start=1):
        candidate = study.candidates[k]
        box = blobs.boxes[rank - 1]
        if box is None:
            warnings.append(
                f"a candidate (peak {candidate.peak:.3f}) vanished when resampled to the T2W grid and is not reported"
            )
            continue
        mask = np.zeros(labels.shape, dtype=bool)
        mask[box] = labels[box] == rank
        center = center_lps_mm(mask, t2w, box)
        if gland is not None and not gland.contains(center):
            logger.info(
                "a candidate (peak %.3f) centred outside the prostate gland (+%.1f mm) is not reported",
                candidate.peak,
                gland.margin_mm,
            )
            continue
        probability = study.probabilities[k]
        fill[rank] = probability
        lesions.append(
            Lesion(
                id=len(lesions) + 1,
                center_lps_mm=center,
                mask=mask,
                volume_ml=volume_ml(mask, t2w, box),
                max_diameter_mm=max_diameter_mm(mask, t2w, box),
                axial_diameter_mm=axial_diameter_mm(mask, t2w, box),
                probability=probability,
                category=study.categories[k],
                zone=anatomical_zone(gland, center, zone_logits, candidate.mask, zone_names),
                peak=candidate.peak,
            )
        )
    return lesions, fill


def _detection_map(blobs: _RankedBlobs, fill: NDArray[np.float32], t2w: sitk.Image) -> sitk.Image:
    """The detection map on the T2W grid: each reported lesion's blob filled with its probability.

    Parameters
    ----------
    blobs : _RankedBlobs
        The ranked blobs on the T2W grid.
    fill : ndarray
        float32, indexed by rank: the value of each blob (0 for one not reported).
    t2w : SimpleITK.Image
        The T2W image (its geometry is copied).

    Returns
    -------
    SimpleITK.Image
    """
    detection_values = np.zeros(blobs.labels.shape, dtype=np.float32)
    if blobs.blob_box is not None:
        detection_values[blobs.blob_box] = fill[blobs.labels[blobs.blob_box]]
    detection = sitk.GetImageFromArray(detection_values)
    detection.CopyInformation(t2w)
    return detection


def _stage_timings(timings: Mapping[str, float]) -> dict[str, float]:
    """Seconds per engine stage (0 for a stage not run) and their ``total``.

    Parameters
    ----------
    timings : mapping of str to float
        Seconds per stage as recorded.

    Returns
    -------
    dict of str to float
    """
    out = {key: timings.get(key, 0.0) for key in _STAGES}
    out["total"] = sum(out.values())
    return out


def assemble_result(
    study: StudyWork,
    loc_map: NDArray[np.float32],
    zone_logits: NDArray[np.float32] | None,
    *,
    zone_names: Sequence[str],
    model: Mapping[str, str],
    loc_map_on_device: torch.Tensor | None = None,
) -> EngineResult:
    """The result of one study whose candidates are classified.

    Parameters
    ----------
    study : StudyWork
        The study with its candidates, their probabilities and categories, and its timings so far (the
        ``outputs`` stage is added).
    loc_map : ndarray
        float32 (Z, Y, X) localization map on the model grid, 0 outside the T2W's coverage.
    zone_logits : ndarray or None
        (K, Z, Y, X) zonal logits on the model grid, or None.
    zone_names : sequence of str
        The name of each zonal output.
    model : mapping of str to str
        ``name``, ``version`` and ``sha256`` of the model.
    loc_map_on_device : torch.Tensor, optional
        The same map on the device: resampled onto the T2W grid there instead of with SimpleITK.

    Returns
    -------
    EngineResult
    """
    start = time.perf_counter()
    prepared, grid = study.prepared, study.grid
    t2w = prepared.t2w
    warnings = [*prepared.warnings, *study.warnings]
    mapping = grid_map(grid, t2w)
    localization = _localization_on_t2w(loc_map, grid, t2w, mapping, loc_map_on_device)
    gland = study.gland
    localization = _gate_localization(localization, gland, t2w)
    blobs = _rank_blobs(study, mapping)
    lesions, fill = _lesions(study, blobs, zone_logits, zone_names, warnings)
    detection = _detection_map(blobs, fill, t2w)
    study.timings["outputs"] = time.perf_counter() - start
    return EngineResult(
        study_instance_uid=prepared.study_instance_uid,
        lesions=lesions,
        patient_score=max((lesion.probability for lesion in lesions), default=0.0),
        localization_map=localization,
        detection_map=detection,
        timings_s=_stage_timings(study.timings),
        model=dict(model),
        series={role: prepared.roles[role].series_instance_uid for role in ("t2w", "adc", "hbv")},
        roles=role_report(prepared.roles, prepared.computed),
        warnings=warnings,
        gland_volume_ml=gland.volume_ml if gland is not None else None,
        gland_mask=gland.mask if gland is not None else None,
        gland_model=dict(gland.model) if gland is not None else None,
    )
