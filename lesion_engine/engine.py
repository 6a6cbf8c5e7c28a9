"""Run a model on prepared studies: localization map, candidates, classification, results on the T2W grid.

:meth:`Engine.run` takes a :class:`~lesion_engine.intake.preprocess.PreparedStudy` through these stages (their
seconds are in :attr:`EngineResult.timings_s`):

``model_input``
    resample and normalize onto the model grid: with SimpleITK on the CPU
    (:func:`lesion_engine.model.model_input.to_model_input`), with torch on the device on a GPU
    (:func:`~lesion_engine.model.model_input.to_model_input_tensor`; same values within float rounding); for a
    model whose localization network is the PI-CAI U-Net (card ``preprocessing.kind`` ``picai``), the PI-CAI
    crop, computed on the CPU (:func:`lesion_engine.model.picai_unet.pipeline.network_input`), the crop being the
    model grid;
``gland``
    the whole-gland model on the T2W (:mod:`lesion_engine.anatomy.gland`), when the anatomical gate is on: the
    localization map is set to 0 outside the gland dilated by the margin (so no candidate is sought
    there), and no lesion whose centre lies outside it is reported;
``localization``
    the localization network: map = sigmoid of the lesion logit; zones = argmax of the zonal logits;
``candidates``
    dynamic-threshold candidates on the map, inside the T2W's coverage (:mod:`lesion_engine.model.candidates`);
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

Lesions are numbered 1..n by decreasing probability; how their masks, measurements and maps are made on
the T2W grid is in :mod:`lesion_engine.model.result_assembly`. The result types live in
:mod:`lesion_engine.model.result_types`, the lesion measurements in :mod:`lesion_engine.model.measurements` and the
device and CPU thread set-up in :mod:`lesion_engine.model.devices`; their public names are importable from here
too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import SimpleITK as sitk
import torch

from lesion_engine.anatomy.gland import GlandModel, GlandSettings, load_gland_model
from lesion_engine.anatomy.gland_gate import find_gland
from lesion_engine.errors import ModelArtifactError
from lesion_engine.intake.preprocess import PreparedStudy
from lesion_engine.model.artifact import load_artifact
from lesion_engine.model.candidates import extract_candidates
from lesion_engine.model.devices import (
    configure_cpu_threads,
    limit_blas_threads,
    resolve_device,
    retain_freed_memory,
    use_fast_cpu_convolutions,
)
from lesion_engine.model.grid_resample import (
    coverage_mask,
    grid_map,
    resample_affine_linear,
    resample_linear,
)
from lesion_engine.model.measurements import axial_diameter_mm, max_diameter_mm
from lesion_engine.model.model_card import ModelCard, default_artifact, stored_card
from lesion_engine.model.model_input import to_model_input, to_model_input_tensor
from lesion_engine.model.networks import JointModel
from lesion_engine.model.picai_nnunet.card import NNUNET_NETWORK
from lesion_engine.model.picai_nnunet.engine import NnunetDetectionEngine
from lesion_engine.model.picai_unet.card import DETECTION_KIND
from lesion_engine.model.picai_unet.engine import DetectionEngine
from lesion_engine.model.result_assembly import StudyWork, assemble_result
from lesion_engine.model.result_types import SCHEMA_VERSION, EngineResult, Lesion, ModelInfo

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ARTIFACT",
    "SCHEMA_VERSION",
    "AnyEngine",
    "DetectionEngine",
    "Engine",
    "EngineResult",
    "GlandSettings",
    "Lesion",
    "ModelInfo",
    "NnunetDetectionEngine",
    "axial_diameter_mm",
    "configure_cpu_threads",
    "gate_on_by_default",
    "load_engine",
    "max_diameter_mm",
    "resolve_device",
]

DEFAULT_ARTIFACT = default_artifact()
"""Where the packaged default model artifact lives."""


def gate_on_by_default(path: Path | str | None) -> bool:
    """Whether the anatomical gate is on for a model artifact when nothing says otherwise: on for the
    packaged default model (``path`` None or its folder or card), which reads real studies; off for other
    artifacts (models trained and evaluated on synthetic phantoms, which have no real anatomy)."""
    return path is None or Path(path).resolve() in (
        DEFAULT_ARTIFACT.resolve(),
        (DEFAULT_ARTIFACT / "model.json").resolve(),
    )


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
    gland : GlandModel, optional
        The whole-gland model of the anatomical gate; no gate when None.
    gland_settings : GlandSettings, optional
        The gate's margin and whether the gland model is required (defaults when None).
    gland_warning : str, optional
        Why the gate is off although it was asked for (added to every result's warnings).
    """

    def __init__(
        self,
        model: JointModel,
        card: ModelCard,
        device: str | torch.device | None = None,
        *,
        threads: int | None = None,
        resample_on_device: bool | None = None,
        gland: GlandModel | None = None,
        gland_settings: GlandSettings | None = None,
        gland_warning: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.gland = gland
        self.gland_settings = gland_settings or GlandSettings()
        self.gland_warning = gland_warning
        if self.device.type == "cpu":
            configure_cpu_threads(threads)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            use_fast_cpu_convolutions(self.model)
            retain_freed_memory()
            limit_blas_threads()
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
        gland: GlandSettings | None = None,
    ) -> Engine:
        """Load a model artifact (the packaged default when ``path`` is None) and the gland model.

        ``gland`` says whether and how the anatomical gate is used; when None, it is on (with the default
        settings) for the packaged default model, which reads real studies, and off for another artifact
        (models trained and evaluated on synthetic phantoms, which have no real anatomy): see
        :func:`gate_on_by_default`.

        Raises
        ------
        ModelArtifactError
            When the artifact is missing or invalid; for the default, the message says how to get one.
        ConfigError
            When the device cannot be used.
        GlandModelError
            When the gland model cannot be loaded and ``gland.required`` is True.
        """
        if gland is None:
            gland = GlandSettings(enabled=gate_on_by_default(path))
        if path is None:
            if not (DEFAULT_ARTIFACT / "model.json").is_file():
                raise ModelArtifactError(
                    "no default model is installed (expected an artifact in lesion_engine/data/models/default/). "
                    "Train and install one with `make train-default`, or pass a model artifact with --model"
                )
            path = DEFAULT_ARTIFACT
        model, card = load_artifact(path)
        resolved = resolve_device(device)
        gland_model, warning = load_gland_model(gland, use_cuda=resolved.type == "cuda", threads=threads)
        return cls(
            model,
            card,
            resolved,
            threads=threads,
            gland=gland_model,
            gland_settings=gland,
            gland_warning=warning,
        )

    @property
    def model_info(self) -> ModelInfo:
        """Name, version and weight digest of the model."""
        return ModelInfo.of_card(self.card)

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
        small grid; and the gland model, when the gate is on), so that the first study does not pay one-off
        set-up costs.

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
        if self.gland is not None:
            self.gland.warm_up()
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
        for study in work:
            self._gland(study)

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
            results.append(
                assemble_result(
                    study,
                    maps[i],
                    zone_logits,
                    zone_names=self.card.label_map["zones"],
                    model=self.model_info.to_dict(),
                    loc_map_on_device=on_device,
                )
            )
        return results

    def _model_input(self, prepared: PreparedStudy) -> StudyWork:
        start = time.perf_counter()
        if self.resample_on_device:
            tensors = to_model_input_tensor(prepared, self.card.preprocessing, self.device)
            study = StudyWork(prepared, tensors.grid, tensors.images, tensors.coverage, {})
        else:
            arrays = to_model_input(prepared, self.card.preprocessing)
            coverage = torch.from_numpy(sitk.GetArrayFromImage(arrays.grid).astype(bool))
            study = StudyWork(prepared, arrays.grid, torch.from_numpy(arrays.images), coverage, {})
        study.timings["model_input"] = time.perf_counter() - start
        return study

    def _gland(self, study: StudyWork) -> None:
        """Segment the gland and narrow the study's coverage to it (the anatomical gate)."""
        start = time.perf_counter()
        if self.gland_warning is not None:
            study.warnings.append(self.gland_warning)
        region = find_gland(self.gland, self.gland_settings, study.prepared.t2w, study.warnings)
        if region is not None:
            on_grid = torch.from_numpy(region.on_grid(study.grid)).to(study.coverage.device)
            study.coverage = study.coverage & on_grid
            study.gland = region
        study.timings["gland"] = time.perf_counter() - start

    def _classify(self, work: list[StudyWork], images: torch.Tensor, loc_map: torch.Tensor) -> None:
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


AnyEngine = Engine | DetectionEngine | NnunetDetectionEngine
"""An engine of either kind of model: both have ``run``, ``run_batch``, ``warm_up``, ``model_info`` and
``card`` (with ``name`` and ``version``)."""


def load_engine(
    path: Path | str | None = None,
    device: str | torch.device | None = None,
    *,
    threads: int | None = None,
    gland: GlandSettings | None = None,
) -> AnyEngine:
    """Load the engine a model artifact needs, by the kind its card states.

    A jointly trained model (the packaged default when ``path`` is None) runs in :class:`Engine`; a
    detection-map model in :class:`~lesion_engine.model.picai_unet.engine.DetectionEngine` (an imported PI-CAI
    U-Net ensemble) or :class:`~lesion_engine.model.picai_nnunet.engine.NnunetDetectionEngine` (an imported PI-CAI
    nnU-Net ensemble), as its network says. ``gland`` as for
    :meth:`Engine.from_artifact`: when None, the gate is on for the packaged default model only.

    Raises
    ------
    ModelArtifactError, ConfigError, GlandModelError
        As :meth:`Engine.from_artifact`.
    """
    card = stored_card(path) if path is not None else None
    if card is not None and card.get("kind") == DETECTION_KIND:
        architecture = card.get("architecture")
        network = architecture.get("network") if isinstance(architecture, dict) else None
        engine_class = NnunetDetectionEngine if network == NNUNET_NETWORK else DetectionEngine
        return engine_class.from_artifact(
            path if path is not None else DEFAULT_ARTIFACT,
            device,
            threads=threads,
            gland=gland if gland is not None else GlandSettings(enabled=gate_on_by_default(path)),
        )
    return Engine.from_artifact(path, device, threads=threads, gland=gland)
