"""Run an imported PI-CAI nnU-Net ensemble (a detection-map model) on prepared studies.

:class:`NnunetDetectionEngine` has the interface of :class:`lesion_engine.model.picai_unet.engine.DetectionEngine`
(``run``, ``run_batch``, ``warm_up``, ``model_info``, ``card``, ``kind``) and returns the same
:class:`~lesion_engine.model.result_types.EngineResult`. Stages (seconds in ``timings_s``): ``model_input`` (the
channels as nnU-Net reads them, then its preprocessing), ``gland`` (the anatomical gate, off by default),
``localization`` (every fold's sliding-window softmax, their mean, the export onto the T2W grid),
``candidates`` (the central crop and the dynamic extraction) and ``outputs`` (lesions measured on the T2W
grid). A lesion's probability is its candidate's likelihood; no category, no zone; the patient score is the
detection map's maximum.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
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
from lesion_engine.model.picai_nnunet.card import NnunetModelCard
from lesion_engine.model.picai_nnunet.inference import export_softmax, predict_softmax, preprocess
from lesion_engine.model.picai_nnunet.network import GenericUNet
from lesion_engine.model.picai_nnunet.pipeline import NnunetMaps, nnunet_channels, nnunet_maps
from lesion_engine.model.result_types import EngineResult, Lesion

logger = logging.getLogger(__name__)

__all__ = ["NnunetDetectionEngine", "load_nnunet_artifact", "read_nnunet_card"]

_STAGES = ("model_input", "gland", "localization", "candidates", "classification", "outputs")


def read_nnunet_card(path: Path | str) -> NnunetModelCard:
    """The validated card of an imported nnU-Net artifact (folder or its ``model.json``).

    Raises
    ------
    ModelArtifactError
        The card is missing, too large, invalid, or another kind of model's.
    """
    folder = artifact_folder(path)
    card = read_any_card(folder)
    if not isinstance(card, NnunetModelCard):
        raise ModelArtifactError(
            f"{folder / CARD_FILE} is not an imported PI-CAI nnU-Net's card (network 'picai-nnunet')"
        )
    return card


def load_nnunet_artifact(path: Path | str) -> tuple[list[GenericUNet], NnunetModelCard]:
    """Load an imported nnU-Net artifact: its card, the weights' sha256, then each fold's tensors.

    Raises
    ------
    ModelArtifactError
        Missing files, an invalid card, weights changed after import, tensors that do not fit.
    """
    folder = artifact_folder(path)
    card = read_nnunet_card(folder)
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
    except (SafetensorError, OSError) as exc:
        raise ModelArtifactError(f"{weights} is not a readable safetensors file: {exc}") from exc
    plans = card.architecture.plans
    folds = []
    for fold in card.architecture.folds:
        model = GenericUNet(plans)
        prefix = f"fold{fold}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
        if missing or wrong:
            raise ModelArtifactError(
                f"{weights}: fold {fold} does not fit the plans of the card: "
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
        "loaded nnU-Net detection-map model %s %s (%d folds) from %s",
        card.name,
        card.version,
        len(folds),
        folder,
    )
    return folds, card


class NnunetDetectionEngine(EnsembleEngine[GenericUNet, NnunetModelCard]):
    """An imported PI-CAI nnU-Net ensemble, ready to run on prepared studies (see the module docstring).

    Parameters
    ----------
    folds : list of GenericUNet
        The ensemble's networks, in the card's fold order (the reference sums them in that order).
    card : NnunetModelCard
    device : str or torch.device, optional
        ``cuda`` when available, else ``cpu``, when None.
    threads : int, optional
        CPU intra-op threads; all CPUs this process may use when None.
    gland, gland_settings, gland_warning
        The anatomical gate, as for :class:`~lesion_engine.model.picai_unet.engine.DetectionEngine` (off by default).
    """

    @staticmethod
    def load_artifact(path: Path | str) -> tuple[list[GenericUNet], NnunetModelCard]:
        """See :func:`load_nnunet_artifact`."""
        return load_nnunet_artifact(path)

    def warm_up(self) -> float:
        """Run one fold once on one patch (and the gland model when the gate is on); seconds taken."""
        start = time.perf_counter()
        plans = self.card.architecture.plans
        with torch.no_grad():
            self.folds[0](torch.zeros((1, len(plans.modalities), *plans.patch_size), device=self.device))
        if self.gland is not None:
            self.gland.warm_up()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def probability(self, data: NDArray[np.float32], spacing_zyx: Sequence[float]) -> NDArray[np.float32]:
        """The ensemble's foreground probability on the input's grid, from the channels as nnU-Net reads them."""
        plans = self.card.architecture.plans
        pipeline = self.card.pipeline
        network_input, crop = preprocess(data, spacing_zyx, plans)
        softmax: NDArray[np.float32] | None = None
        for fold in self.folds:
            predicted = predict_softmax(
                fold,
                network_input,
                plans,
                step_size=pipeline.step_size,
                do_mirroring=pipeline.mirroring,
                mixed_precision=pipeline.mixed_precision,
            )
            if softmax is None:
                softmax = predicted
            else:
                softmax += predicted
        assert softmax is not None
        if len(self.folds) > 1:
            softmax /= len(self.folds)
        return export_softmax(softmax, crop, plans)

    def run(self, prepared: PreparedStudy) -> EngineResult:
        """Find the lesions of one prepared study."""
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
        timings: dict[str, float] = {}
        warnings = list(prepared.warnings)
        start = time.perf_counter()
        data, spacing, _ = nnunet_channels(prepared)
        timings["model_input"] = time.perf_counter() - start

        start = time.perf_counter()
        if self.gland_warning is not None:
            warnings.append(self.gland_warning)
        region = find_gland(self.gland, self.gland_settings, prepared.t2w, warnings)
        timings["gland"] = time.perf_counter() - start

        start = time.perf_counter()
        probability = self.probability(data, spacing)
        timings["localization"] = time.perf_counter() - start

        start = time.perf_counter()
        maps = nnunet_maps(probability, self.card.pipeline, None if region is None else region.allowed)
        timings["candidates"] = time.perf_counter() - start

        start = time.perf_counter()
        lesions = _lesions(maps, prepared, region)
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


def _lesions(maps: NnunetMaps, prepared: PreparedStudy, region: GlandRegion | None) -> list[Lesion]:
    """One lesion per candidate blob (by decreasing likelihood), measured on the T2W grid."""
    t2w = prepared.t2w
    found: list[Blob] = []
    for index, box in enumerate(ndimage.find_objects(maps.blobs), start=1):
        if box is None:
            continue
        mask = np.zeros(maps.blobs.shape, dtype=bool)
        mask[box] = maps.blobs[box] == index
        if not mask[box].any():
            continue
        likelihood = float(maps.detection[box][mask[box]].max())
        if likelihood <= 0:
            continue
        center = center_lps_mm(mask, t2w, box)
        if region is not None and not region.contains(center):
            logger.info("a candidate (likelihood %.3f) centred outside the gland is not reported", likelihood)
            continue
        found.append((likelihood, index, mask, box, center))
    return blob_lesions(found, t2w)
