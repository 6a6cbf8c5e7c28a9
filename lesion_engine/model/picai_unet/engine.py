"""Run an imported PI-CAI U-Net ensemble (a detection-map model) on prepared studies.

:class:`DetectionEngine` has the interface of :class:`lesion_engine.engine.Engine` (``run``,
``run_batch``, ``warm_up``, ``model_info``, ``card``) and returns the same
:class:`~lesion_engine.model.result_types.EngineResult`, so everything after it (SEG, SR, Parametric Map, the
node, shadow runs) is unchanged. Its stages (seconds in ``timings_s``):

``model_input``
    the three scans resampled onto the crop and normalised (:func:`~lesion_engine.model.picai_unet.pipeline.network_input`);
``gland``
    the whole-gland model when the anatomical gate is on (off by default for an imported model: its
    reference pipeline has none): the map is 0 outside the gland dilated by the margin, and no lesion
    centred outside it is reported;
``localization``
    every fold on the input and its left-right flip in one batch, the sigmoid of the csPCa output, the mean
    over folds and flips, one Gaussian blur (the reference blurs each prediction, then averages: the same
    numbers, the blur being linear);
``candidates``
    the map back on the T2W grid, the dynamic candidates, the weak ones removed;
``outputs``
    lesions measured on the T2W grid.

A lesion's probability is its candidate's likelihood (the detection map's value); it has no suspicion
category and no zone (the model has neither head). The patient score is the detection map's maximum, the
reference's case-level likelihood.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.torch import load_file
from scipy import ndimage

from lesion_engine.anatomy.gland_gate import GlandRegion, find_gland
from lesion_engine.errors import ModelArtifactError
from lesion_engine.intake.preprocess import PreparedStudy
from lesion_engine.intake.study_report import role_report
from lesion_engine.model.artifact import file_sha256
from lesion_engine.model.ensemble_engine import Blob, EnsembleEngine, blob_lesions, detection_of, on_t2w
from lesion_engine.model.measurements import center_lps_mm
from lesion_engine.model.model_card import (
    CARD_FILE,
    WEIGHTS_FILE,
    artifact_folder,
    looks_like_pickle,
    read_any_card,
)
from lesion_engine.model.picai_unet.card import DetectionModelCard
from lesion_engine.model.picai_unet.network import PicaiUNet, PicaiUNetConfig
from lesion_engine.model.picai_unet.pipeline import DetectionMaps, detection_maps, network_input, role_images
from lesion_engine.model.result_types import EngineResult, Lesion

logger = logging.getLogger(__name__)

__all__ = ["DetectionEngine", "load_detection_artifact"]

_STAGES = ("model_input", "gland", "localization", "candidates", "classification", "outputs")


def load_detection_artifact(path: Path | str) -> tuple[list[PicaiUNet], DetectionModelCard]:
    """Load a detection-map model artifact: its card, the weights' sha256, then each fold's tensors.

    Raises
    ------
    ModelArtifactError
        Missing files, an invalid card, weights changed after import, or tensors that do not fit (naming
        the fold and the tensor).
    """
    folder = artifact_folder(path)
    card = read_any_card(folder)
    if not isinstance(card, DetectionModelCard):
        raise ModelArtifactError(f"{folder / CARD_FILE} is not a detection-map model's card")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelArtifactError(f"model weights not found: {weights}")
    if looks_like_pickle(weights):
        raise ModelArtifactError(
            f"{weights} is a pickle or zip file, not safetensors; import the checkpoints"
        )
    actual = file_sha256(weights)
    if actual != card.weights_sha256:
        raise ModelArtifactError(
            f"{weights} was changed or corrupted after import: its sha256 is {actual}, the model card says "
            f"{card.weights_sha256}. Import the checkpoints again"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
        config = PicaiUNetConfig.from_dict(dict(card.architecture.unet))
    except (SafetensorError, OSError) as exc:
        raise ModelArtifactError(f"{weights} is not a readable safetensors file: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(f"invalid model card {folder / CARD_FILE}: architecture: {exc}") from exc
    folds = []
    for fold in card.architecture.folds:
        model = PicaiUNet(config)
        prefix = f"fold{fold}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
        if missing or wrong:
            raise ModelArtifactError(
                f"{weights}: fold {fold} does not fit the architecture of the card: "
                + "; ".join(
                    [f"missing {', '.join(missing[:4])}"] * bool(missing)
                    + [f"wrong shape {', '.join(wrong[:4])}"] * bool(wrong)
                )
            )
        model.load_state_dict(state, strict=True)
        folds.append(model.eval())
    extra = sorted({k.split(".", 1)[0] for k in tensors} - {f"fold{f}" for f in card.architecture.folds})
    if extra:
        raise ModelArtifactError(
            f"{weights} holds tensors of folds the card does not list: {', '.join(extra)}"
        )
    logger.info(
        "loaded detection-map model %s %s (%d folds) from %s", card.name, card.version, len(folds), folder
    )
    return folds, card


class DetectionEngine(EnsembleEngine[PicaiUNet, DetectionModelCard]):
    """An imported PI-CAI U-Net ensemble, ready to run on prepared studies (see the module docstring).

    Parameters
    ----------
    folds : list of PicaiUNet
        The ensemble's networks (moved to ``device``, eval mode).
    card : DetectionModelCard
        The model's card (its pipeline).
    device : str or torch.device, optional
        ``cuda`` when available, else ``cpu``, when None.
    threads : int, optional
        CPU intra-op threads; all CPUs this process may use when None.
    gland : GlandModel, optional
        The whole-gland model of the anatomical gate; no gate when None.
    gland_settings : GlandSettings, optional
        The gate's margin and whether the gland model is required.
    gland_warning : str, optional
        Why the gate is off although it was asked for (added to every result's warnings).
    """

    @staticmethod
    def load_artifact(path: Path | str) -> tuple[list[PicaiUNet], DetectionModelCard]:
        """See :func:`load_detection_artifact`."""
        return load_detection_artifact(path)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """No autograd; on CUDA, full float32 (no TF32), so that the numbers are the reference's."""
        with torch.inference_mode():
            if self.device.type != "cuda":
                yield
                return
            saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                yield
            finally:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def warm_up(self) -> float:
        """Run one fold once on an input of the pipeline's size and batch (the kernels the folds share are
        set up then), and the gland model when the gate is on; seconds taken."""
        start = time.perf_counter()
        pipeline = self.card.pipeline
        batch = 2 if pipeline.flip_tta else 1
        shape = (batch, self.folds[0].config.in_channels, *pipeline.matrix_zyx)
        with self._inference():
            self.folds[0](torch.zeros(shape, device=self.device))
        if self.gland is not None:
            self.gland.warm_up()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def ensemble(self, images: NDArray[np.float32]) -> NDArray[np.float32]:
        """Steps 3 to 5: the mean over folds of the mean over flips of the blurred csPCa likelihood, (Z, Y, X).

        Each fold runs on the input, then on its flip, and the blur and the means are the reference's own
        NumPy operations, in its order: the numbers are the reference's to the last bit (one batch of both
        changes them by about 4e-7, and was not faster on 2 CPU cores). A fold's blur runs beside the next
        fold's networks.
        """
        pipeline = self.card.pipeline
        x = torch.from_numpy(images)[None].to(self.device)
        inputs = [x, torch.flip(x, dims=[4])] if pipeline.flip_tta else [x]

        def fold_mean(likelihood: NDArray[np.float32]) -> NDArray[np.float32]:
            predictions = [likelihood[0]]
            if pipeline.flip_tta:
                predictions.append(np.flip(likelihood[1], axis=2))
            if pipeline.blur_sigma > 0:
                predictions = [ndimage.gaussian_filter(p, sigma=pipeline.blur_sigma) for p in predictions]
            out: NDArray[np.float32] = np.mean(predictions, axis=0)
            return out

        # Each fold's blur and mean on a thread of their own while the next fold runs (SciPy lets go of the GIL).
        pending: list[Future[NDArray[np.float32]]] = []
        with self._inference(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="picai-blur") as pool:
            for fold in self.folds:
                likelihood = np.concatenate(
                    [
                        torch.sigmoid(fold(batch)[:, pipeline.output_channel].float()).cpu().numpy()
                        for batch in inputs
                    ]
                )
                pending.append(pool.submit(fold_mean, likelihood))
            outputs = [future.result() for future in pending]
        mean: NDArray[np.float32] = np.mean(outputs, axis=0).astype(np.float32)
        return mean

    def run(self, prepared: PreparedStudy) -> EngineResult:
        """Find the lesions of one prepared study (see the module docstring)."""
        return self.run_batch([prepared])[0]

    def run_batch(self, studies: Sequence[PreparedStudy]) -> list[EngineResult]:
        """Run several prepared studies, one after another; one result per study, in order."""
        results = []
        for prepared in studies:
            if not isinstance(prepared, PreparedStudy):
                raise TypeError(f"expected PreparedStudy objects, got {type(prepared).__name__}")
            results.append(self._run_one(prepared))
        return results

    def _run_one(self, prepared: PreparedStudy) -> EngineResult:
        pipeline = self.card.pipeline
        timings: dict[str, float] = {}
        warnings = list(prepared.warnings)
        start = time.perf_counter()
        read = role_images(prepared, pipeline)
        images, crop = network_input(read, pipeline)
        timings["model_input"] = time.perf_counter() - start

        start = time.perf_counter()
        if self.gland_warning is not None:
            warnings.append(self.gland_warning)
        region = find_gland(self.gland, self.gland_settings, prepared.t2w, warnings)
        timings["gland"] = time.perf_counter() - start

        start = time.perf_counter()
        mean = self.ensemble(images)
        timings["localization"] = time.perf_counter() - start

        start = time.perf_counter()
        # Back onto the T2W as the reference reads it (SimpleITK's slice spacing): the same voxels as ours.
        maps = detection_maps(mean, read[0], crop, pipeline, None if region is None else region.allowed)
        timings["candidates"] = time.perf_counter() - start

        start = time.perf_counter()
        lesions = self._lesions(maps, prepared, region)
        timings["outputs"] = time.perf_counter() - start
        timings = {key: timings.get(key, 0.0) for key in _STAGES}
        timings["total"] = sum(timings.values())
        return EngineResult(
            study_instance_uid=prepared.study_instance_uid,
            lesions=lesions,
            patient_score=max((lesion.probability for lesion in lesions), default=0.0),
            localization_map=on_t2w(maps.probability, prepared),
            detection_map=on_t2w(detection_of(lesions, maps.detection.shape), prepared),
            timings_s=timings,
            model=self.model_info.to_dict(),
            series={role: prepared.roles[role].series_instance_uid for role in ("t2w", "adc", "hbv")},
            roles=role_report(prepared.roles, prepared.computed),
            warnings=warnings,
            gland_volume_ml=region.volume_ml if region is not None else None,
            gland_mask=region.mask if region is not None else None,
            gland_model=dict(region.model) if region is not None else None,
            model_kind=self.kind,
        )

    def _lesions(
        self, maps: DetectionMaps, prepared: PreparedStudy, region: GlandRegion | None
    ) -> list[Lesion]:
        t2w = prepared.t2w
        found: list[Blob] = []
        boxes = ndimage.find_objects(maps.blobs)
        for index, box in enumerate(boxes, start=1):
            if box is None:
                continue
            mask = np.zeros(maps.blobs.shape, dtype=bool)
            mask[box] = maps.blobs[box] == index
            likelihood = float(maps.detection[box][mask[box]].max())
            center = center_lps_mm(mask, t2w, box)
            if region is not None and not region.contains(center):
                logger.info(
                    "a candidate (likelihood %.3f) centred outside the prostate gland (+%.1f mm) is not reported",
                    likelihood,
                    region.margin_mm,
                )
                continue
            found.append((likelihood, index, mask, box, center))
        return blob_lesions(found, t2w)
