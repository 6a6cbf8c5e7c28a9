"""Run a model on prepared studies: localization map, candidates, classification, results on the T2W grid.

:meth:`Engine.run` takes a :class:`~lesion_engine.preprocess.PreparedStudy` through these stages (their
seconds are in :attr:`EngineResult.timings_s`):

``model_input``
    resample and normalize onto the model grid: with SimpleITK on the CPU
    (:func:`lesion_engine.model_input.to_model_input`), with torch on the device on a GPU
    (:func:`~lesion_engine.model_input.to_model_input_tensor`; same values within float rounding);
``localization``
    the localization network: map = sigmoid of the lesion logit; zones = argmax of the zonal logits;
``candidates``
    dynamic-threshold candidates on the map, inside the T2W's coverage (:mod:`lesion_engine.candidates`);
``classification``
    the classification network on a patch of images + map around each candidate: probability of
    csPCa = sigmoid of the cancer logit; category = the card's category of the argmax output;
``outputs``
    lesion masks, measurements, localization and detection maps on the T2W grid (on a GPU the
    localization map is resampled there);
``total``
    all of the above.

In :meth:`Engine.run_batch`, ``localization`` and ``classification`` run once for the whole batch and each
result reports the batch's time for them.

Lesions are numbered 1..n by decreasing probability. A lesion's mask is its blob of the detection map: the
candidate's region resampled (nearest neighbour) onto the T2W grid, with blobs kept non-touching (a more
probable lesion keeps its voxels where two would touch).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from lesion_engine.artifact import ModelCard, load_artifact
from lesion_engine.candidates import (
    Box,
    Candidate,
    extract_candidates,
    label_map,
    separate_labels,
    shift_box,
)
from lesion_engine.contour import index_slice, long_axis
from lesion_engine.errors import ConfigError, ModelArtifactError
from lesion_engine.grid_resample import (
    coverage_mask,
    grid_map,
    resample_affine_linear,
    resample_linear,
    resample_nearest,
)
from lesion_engine.model_input import from_model_grid, to_model_input, to_model_input_tensor
from lesion_engine.networks import JointModel
from lesion_engine.preprocess import PreparedStudy, role_report

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ARTIFACT",
    "SCHEMA_VERSION",
    "Engine",
    "EngineResult",
    "Lesion",
    "axial_diameter_mm",
    "configure_cpu_threads",
    "max_diameter_mm",
    "resolve_device",
]

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "data" / "models" / "default"
"""Where the packaged default model artifact lives."""

SCHEMA_VERSION = "1.1"
"""Version of the ``lesions.json`` document (:meth:`EngineResult.to_json`)."""

_ZONE_CODES = {"peripheral zone": "pz", "pz": "pz", "transition zone": "tz", "tz": "tz"}
_DIRECT_PAIRS_MAX = 4000


@dataclass(frozen=True)
class Lesion:
    """One detected lesion, on the T2W grid.

    Attributes
    ----------
    id : int
        1..n by decreasing probability.
    center_lps_mm : (x, y, z)
        Centre of mass of the mask in patient coordinates (DICOM LPS), mm.
    mask : ndarray of bool
        (Z, Y, X) on the T2W grid; the lesion's blob of the detection map.
    volume_ml : float
        Mask volume.
    max_diameter_mm : float
        Largest distance between the centres of two mask voxels.
    axial_diameter_mm : float
        Largest in-plane diameter on the index slice (the T2W slice where the lesion is largest), across
        the outer pixel edges: the lesion size PI-RADS reports, and the SR's "Long axis".
    probability : float
        Probability of clinically significant cancer (ISUP >= 2).
    category : int
        Suspicion category (PI-RADS-like, 2..5).
    zone : str or None
        ``pz`` or ``tz`` by majority of the zonal prediction under the lesion; None without a zonal head or
        when no voxel under the lesion is predicted in either zone.
    peak : float
        Highest localization-map value of the candidate.
    """

    id: int
    center_lps_mm: tuple[float, float, float]
    mask: NDArray[np.bool_]
    volume_ml: float
    max_diameter_mm: float
    axial_diameter_mm: float
    probability: float
    category: int
    zone: str | None
    peak: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the mask), as in ``lesions.json``."""
        return {
            "id": self.id,
            "center_lps_mm": [round(v, 3) for v in self.center_lps_mm],
            "volume_ml": round(self.volume_ml, 5),
            "max_diameter_mm": round(self.max_diameter_mm, 3),
            "axial_diameter_mm": round(self.axial_diameter_mm, 3),
            "probability": round(self.probability, 6),
            "category": self.category,
            "zone": self.zone,
        }


@dataclass
class EngineResult:
    """What the engine found in one study.

    Attributes
    ----------
    study_instance_uid : str
        The study.
    lesions : list of Lesion
        By decreasing probability.
    patient_score : float
        Highest lesion probability; 0 when there is no lesion.
    localization_map : SimpleITK.Image
        float32 lesion likelihood on the T2W grid (0 outside the model's field of view).
    detection_map : SimpleITK.Image
        float32 on the T2W grid: each lesion's blob holds its probability, 0 elsewhere; blobs do not touch
        (PI-CAI detection map).
    timings_s : dict of str to float
        Seconds per stage (see the module docstring).
    model : dict of str to str
        ``name``, ``version`` and ``sha256`` of the model's weights.
    series : dict of str to str
        SeriesInstanceUID read for ``t2w``, ``adc`` and ``hbv``.
    roles : dict
        The role choices with their reasons (as ``lesion-ai inspect`` reports them).
    warnings : list of str
        Things a user should know (from preparing the study and from the engine).
    """

    study_instance_uid: str
    lesions: list[Lesion]
    patient_score: float
    localization_map: sitk.Image
    detection_map: sitk.Image
    timings_s: dict[str, float]
    model: dict[str, str]
    series: dict[str, str]
    roles: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``lesions.json`` document (schema in ``lesion_engine/data/lesions.schema.json``)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "study_instance_uid": self.study_instance_uid,
            "model": dict(self.model),
            "series": dict(self.series),
            "patient_score": round(self.patient_score, 6),
            "lesions": [lesion.to_dict() for lesion in self.lesions],
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "roles": self.roles,
            "warnings": list(self.warnings),
        }


@functools.cache
def configure_cpu_threads(threads: int | None = None) -> int:
    """Use the CPUs this process may run on for intra-op work and one inter-op thread (once per value).

    Parameters
    ----------
    threads : int, optional
        Intra-op threads; all CPUs of the process's affinity mask when None.

    Returns
    -------
    int
        The number of intra-op threads set.
    """
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
            threads = os.cpu_count() or 1
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started: keep what is there
        logger.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    return threads


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``cuda`` when available (or asked for), else ``cpu``.

    Raises
    ------
    ConfigError
        When CUDA is asked for and not available, or the device is unknown.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but CUDA is not available here; use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    return resolved


def _physical_points(indices_zyx: NDArray[Any], image: sitk.Image) -> NDArray[np.float64]:
    """Physical (LPS) coordinates of voxel indices (N, 3) given as (z, y, x)."""
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    xyz = np.asarray(indices_zyx, dtype=np.float64)[:, ::-1]
    points: NDArray[np.float64] = origin + (xyz * spacing) @ direction.T
    return points


def _bounding_box(mask: NDArray[np.bool_], image: sitk.Image, box: Box | None) -> Box | None:
    if mask.shape != image.GetSize()[::-1]:
        raise ValueError(
            f"mask shape {mask.shape} differs from the image's (z, y, x) size {image.GetSize()[::-1]}"
        )
    if box is not None:
        return box
    found = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    return found[0] if found and found[0] is not None else None


def max_diameter_mm(mask: NDArray[np.bool_], image: sitk.Image, box: Box | None = None) -> float:
    """Largest distance (mm) between the centres of two voxels of ``mask`` on ``image``'s grid.

    Only boundary voxels can be the ends of the longest chord, and only the vertices of their convex hull,
    so the pairwise search runs on those. ``box``, when given, is a bounding box of the mask (it saves a
    search of the whole grid).
    """
    box = _bounding_box(mask, image, box)
    if box is None:
        return 0.0
    padded = np.pad(mask[box], 1)
    boundary = padded & ~ndimage.binary_erosion(padded)
    points = _physical_points(np.argwhere(boundary[1:-1, 1:-1, 1:-1]) + [b.start for b in box], image)
    if len(points) < 2:
        return 0.0
    if len(points) > 4:
        for options in (None, "QJ"):
            try:
                points = points[ConvexHull(points, qhull_options=options).vertices]
                break
            except (QhullError, ValueError):
                continue
    if len(points) <= _DIRECT_PAIRS_MAX:
        return float(pdist(points).max())
    best = 0.0  # very large hulls: pairwise in chunks, to bound memory
    for start in range(0, len(points), 512):
        chunk = points[start : start + 512]
        best = max(best, float(np.sqrt(((chunk[:, None, :] - points[None, :, :]) ** 2).sum(-1)).max()))
    return best


def axial_diameter_mm(mask: NDArray[np.bool_], image: sitk.Image, box: Box | None = None) -> float:
    """Largest in-plane diameter of a (Z, Y, X) mask on its index slice, across the outer pixel edges, mm.

    The slice of largest area is the index slice; on it, the longest chord of the largest region's outline
    (:func:`lesion_engine.contour.long_axis`). 0 for an empty mask. ``box`` as for :func:`max_diameter_mm`.
    """
    box = _bounding_box(mask, image, box)
    if box is None:
        return 0.0
    part = mask[box]
    if not part.any():
        return 0.0
    column_mm, row_mm = (float(v) for v in image.GetSpacing()[:2])
    _, length = long_axis(part[index_slice(part)], (row_mm, column_mm))
    return length


@dataclass
class _Study:
    """Intermediate state of one study in a batch."""

    prepared: PreparedStudy
    grid: sitk.Image
    images: torch.Tensor
    coverage: torch.Tensor
    timings: dict[str, float]
    candidates: list[Candidate] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    categories: list[int] = field(default_factory=list)


class Engine:
    """A loaded model, ready to run on prepared studies.

    Parameters
    ----------
    model : JointModel
        The networks (moved to ``device`` and put in eval mode).
    card : ModelCard
        The model's card (preprocessing, candidate settings, label map).
    device : str or torch.device, optional
        ``cuda`` when available, else ``cpu``, when None.
    threads : int, optional
        CPU intra-op threads; all CPUs this process may use when None.
    resample_on_device : bool, optional
        Build the network input and the localization map on the T2W grid with torch on ``device`` rather
        than with SimpleITK on the CPU (same values within float rounding). Default: on CUDA only (on a
        CPU, SimpleITK is the faster of the two).
    """

    def __init__(
        self,
        model: JointModel,
        card: ModelCard,
        device: str | torch.device | None = None,
        *,
        threads: int | None = None,
        resample_on_device: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            configure_cpu_threads(threads)
        self.model = model.to(self.device).eval()
        self.card = card
        self.resample_on_device = (
            self.device.type == "cuda" if resample_on_device is None else resample_on_device
        )
        self.amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @classmethod
    def from_artifact(
        cls,
        path: Path | str | None = None,
        device: str | torch.device | None = None,
        *,
        threads: int | None = None,
    ) -> Engine:
        """Load a model artifact (the packaged default when ``path`` is None).

        Raises
        ------
        ModelArtifactError
            When the artifact is missing or invalid; for the default, the message says how to get one.
        ConfigError
            When the device cannot be used.
        """
        if path is None:
            if not (DEFAULT_ARTIFACT / "model.json").is_file():
                raise ModelArtifactError(
                    "no default model is installed (expected an artifact in lesion_engine/data/models/default/). "
                    "Train and install one with `make train-default`, or pass a model artifact with --model"
                )
            path = DEFAULT_ARTIFACT
        model, card = load_artifact(path)
        return cls(model, card, device, threads=threads)

    @property
    def model_info(self) -> dict[str, str]:
        """``name``, ``version`` and ``sha256`` of the model."""
        return {"name": self.card.name, "version": self.card.version, "sha256": self.card.weights_sha256}

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                    yield
            else:
                yield

    def warm_up(self) -> float:
        """Run both networks once on zeros (and, when resampling on the device, the resampling kernels on a
        small grid), so that the first study does not pay one-off set-up costs.

        Returns
        -------
        float
            Seconds taken.
        """
        start = time.perf_counter()
        size = self.card.preprocessing.size_zyx
        images = torch.zeros((1, self.card.localization.in_channels, *size), device=self.device)
        centre = torch.tensor([[s // 2 for s in size]], dtype=torch.long, device=self.device)
        with self._inference():
            loc_map = torch.sigmoid(self.model.loc(images)[:, :1].float())
            self.model.classify(images, loc_map, centre, torch.zeros(1, dtype=torch.long, device=self.device))
        if self.resample_on_device:
            target = sitk.Image([8, 8, 4], sitk.sitkUInt8)
            source = sitk.Image([6, 6, 3], sitk.sitkUInt8)
            source.SetDirection((1.0, 0.0, 0.0, 0.0, 0.8, -0.6, 0.0, 0.6, 0.8))
            on_target = resample_affine_linear(torch.zeros((3, 6, 6), device=self.device), source, target)
            mapping = grid_map(target, target)
            resample_linear(on_target, mapping) * coverage_mask(mapping, self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def run(self, prepared: PreparedStudy) -> EngineResult:
        """Find and classify the lesions of one prepared study (see the module docstring)."""
        return self.run_batch([prepared])[0]

    def run_batch(self, studies: Sequence[PreparedStudy]) -> list[EngineResult]:
        """Run several prepared studies through the networks as one batch; one result per study, in order."""
        if not studies:
            return []
        for item in studies:
            if not isinstance(item, PreparedStudy):
                raise TypeError(f"expected PreparedStudy objects, got {type(item).__name__}")
        work = [self._model_input(prepared) for prepared in studies]

        start = time.perf_counter()
        images = torch.stack([s.images for s in work]).to(self.device)
        coverage = torch.stack([s.coverage for s in work]).to(self.device)
        num_zones = self.card.localization.num_zones
        with self._inference():
            logits = self.model.loc(images)
            loc_map = torch.sigmoid(logits[:, :1].float())
            zones = logits[:, 1 : 1 + num_zones].float() if num_zones else None
        # A new tensor (the classifier reads the unmasked map): 0 outside the T2W's coverage.
        masked = loc_map[:, 0] * coverage
        maps = masked.cpu().numpy()
        # Zonal logits stay logits: the argmax is taken only under the lesions (cheaper than everywhere).
        zone_maps = zones.cpu().numpy() if zones is not None else None
        localization_s = time.perf_counter() - start

        for i, study in enumerate(work):
            start = time.perf_counter()
            study.candidates = extract_candidates(maps[i], self.card.candidates)
            study.timings["candidates"] = time.perf_counter() - start

        start = time.perf_counter()
        self._classify(work, images, loc_map)
        classification_s = time.perf_counter() - start

        results = []
        for i, study in enumerate(work):
            study.timings["localization"] = localization_s
            study.timings["classification"] = classification_s
            zone_logits = zone_maps[i] if zone_maps is not None else None
            # On a GPU the map goes onto the T2W grid there (the map is already on the device).
            on_device = masked[i] if self.resample_on_device else None
            results.append(self._result(study, maps[i], zone_logits, on_device))
        return results

    def _model_input(self, prepared: PreparedStudy) -> _Study:
        start = time.perf_counter()
        if self.resample_on_device:
            tensors = to_model_input_tensor(prepared, self.card.preprocessing, self.device)
            study = _Study(prepared, tensors.grid, tensors.images, tensors.coverage, {})
        else:
            arrays = to_model_input(prepared, self.card.preprocessing)
            coverage = torch.from_numpy(sitk.GetArrayFromImage(arrays.grid).astype(bool))
            study = _Study(prepared, arrays.grid, torch.from_numpy(arrays.images), coverage, {})
        study.timings["model_input"] = time.perf_counter() - start
        return study

    def _classify(self, work: list[_Study], images: torch.Tensor, loc_map: torch.Tensor) -> None:
        centers = [c.center_zyx for s in work for c in s.candidates]
        if not centers:
            return
        batch_index = [i for i, s in enumerate(work) for _ in s.candidates]
        with self._inference():
            cancer, category = self.model.classify(
                images,
                loc_map,
                torch.tensor(centers, dtype=torch.long, device=self.device),
                torch.tensor(batch_index, dtype=torch.long, device=self.device),
            )
            probabilities = torch.sigmoid(cancer.float()).cpu().numpy()
            chosen = category.float().argmax(dim=1).cpu().numpy()
        categories = self.card.categories
        position = 0
        for study in work:
            n = len(study.candidates)
            study.probabilities = [float(p) for p in probabilities[position : position + n]]
            study.categories = [categories[int(k)] for k in chosen[position : position + n]]
            position += n

    def _zone(self, zone_logits: NDArray[np.float32] | None, mask: NDArray[np.bool_]) -> str | None:
        if zone_logits is None:
            return None
        chosen = zone_logits[:, mask].argmax(axis=0)
        counts = np.bincount(chosen, minlength=len(self.card.label_map["zones"]))
        best: tuple[int, str] | None = None
        for index, name in enumerate(self.card.label_map["zones"]):
            code = _ZONE_CODES.get(str(name).strip().lower())
            if code is not None and counts[index] > 0 and (best is None or counts[index] > best[0]):
                best = (int(counts[index]), code)
        return best[1] if best else None

    def _result(
        self,
        study: _Study,
        loc_map: NDArray[np.float32],
        zone_logits: NDArray[np.float32] | None,
        loc_map_on_device: torch.Tensor | None = None,
    ) -> EngineResult:
        start = time.perf_counter()
        prepared, grid = study.prepared, study.grid
        t2w = prepared.t2w
        warnings = list(prepared.warnings)
        mapping = grid_map(grid, t2w)
        if loc_map_on_device is not None:
            values = resample_linear(loc_map_on_device, mapping)
            localization = sitk.GetImageFromArray(values.cpu().numpy())
            localization.CopyInformation(t2w)
        else:
            localization = from_model_grid(loc_map.astype(np.float32), grid, t2w)

        # Rank by probability; label = rank on the T2W grid, so that a more probable blob wins where two touch.
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

        spacing = np.asarray(t2w.GetSpacing(), dtype=np.float64)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        lesions: list[Lesion] = []
        fill = np.zeros(len(order) + 1, dtype=np.float32)
        for rank, k in enumerate(order, start=1):
            candidate = study.candidates[k]
            box = boxes[rank - 1]
            if box is None:
                warnings.append(
                    f"a candidate (peak {candidate.peak:.3f}) vanished when resampled to the T2W grid and is not reported"
                )
                continue
            mask = np.zeros(labels.shape, dtype=bool)
            mask[box] = labels[box] == rank
            indices = np.argwhere(mask[box]) + [b.start for b in box]
            centre = t2w.TransformContinuousIndexToPhysicalPoint(
                [float(v) for v in indices.mean(axis=0)[::-1]]
            )
            probability = study.probabilities[k]
            fill[rank] = probability
            lesions.append(
                Lesion(
                    id=len(lesions) + 1,
                    center_lps_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
                    mask=mask,
                    volume_ml=len(indices) * voxel_ml,
                    max_diameter_mm=max_diameter_mm(mask, t2w, box),
                    axial_diameter_mm=axial_diameter_mm(mask, t2w, box),
                    probability=probability,
                    category=study.categories[k],
                    zone=self._zone(zone_logits, candidate.mask),
                    peak=candidate.peak,
                )
            )
        detection_values = np.zeros(labels.shape, dtype=np.float32)
        if blob_box is not None:
            detection_values[blob_box] = fill[labels[blob_box]]
        detection = sitk.GetImageFromArray(detection_values)
        detection.CopyInformation(t2w)
        study.timings["outputs"] = time.perf_counter() - start
        timings = {
            key: study.timings[key]
            for key in ("model_input", "localization", "candidates", "classification", "outputs")
        }
        timings["total"] = sum(timings.values())
        roles = role_report(prepared.roles, prepared.computed)
        return EngineResult(
            study_instance_uid=prepared.study_instance_uid,
            lesions=lesions,
            patient_score=max((lesion.probability for lesion in lesions), default=0.0),
            localization_map=localization,
            detection_map=detection,
            timings_s=timings,
            model=self.model_info,
            series={role: prepared.roles[role].series_instance_uid for role in ("t2w", "adc", "hbv")},
            roles=roles,
            warnings=warnings,
        )
