"""What the engines of imported fold ensembles share: the folds on their device, the card, the optional gate.

:class:`~lesion_engine.model.picai_unet.engine.DetectionEngine` (a PI-CAI U-Net) and
:class:`~lesion_engine.model.picai_nnunet.engine.NnunetDetectionEngine` (a PI-CAI nnU-Net) are detection-map models:
they differ in their networks and pipelines, not in how they are loaded and set up.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Generic, Protocol, Self, TypeVar

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from lesion_engine.anatomy.gland import GlandModel, GlandSettings, load_gland_model
from lesion_engine.intake.preprocess import PreparedStudy
from lesion_engine.model.candidates import Box
from lesion_engine.model.devices import configure_cpu_threads, resolve_device
from lesion_engine.model.measurements import axial_diameter_mm, max_diameter_mm, volume_ml
from lesion_engine.model.result_types import Lesion, ModelInfo

logger = logging.getLogger(__name__)

__all__ = ["Blob", "EnsembleEngine", "blob_lesions", "detection_of", "on_t2w"]


class _Card(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def weights_sha256(self) -> str: ...


FoldT = TypeVar("FoldT", bound=torch.nn.Module)
CardT = TypeVar("CardT", bound=_Card)


class EnsembleEngine(ABC, Generic[FoldT, CardT]):
    """An imported fold ensemble (a detection-map model), ready to run on prepared studies.

    Parameters
    ----------
    folds : sequence of torch.nn.Module
        The ensemble's networks, in the card's fold order (moved to ``device``, eval mode).
    card
        The model's card (its pipeline).
    device : str or torch.device, optional
        ``cuda`` when available, else ``cpu``, when None.
    threads : int, optional
        CPU intra-op threads; all CPUs this process may use when None.
    gland : GlandModel, optional
        The whole-gland model of the anatomical gate; no gate when None.
    gland_settings : GlandSettings, optional
        The gate's margin and whether the gland model is required (off by default: the imported
        pipelines have no gate).
    gland_warning : str, optional
        Why the gate is off although it was asked for (added to every result's warnings).
    """

    kind = "detection-map"

    def __init__(
        self,
        folds: Sequence[FoldT],
        card: CardT,
        device: str | torch.device | None = None,
        *,
        threads: int | None = None,
        gland: GlandModel | None = None,
        gland_settings: GlandSettings | None = None,
        gland_warning: str | None = None,
    ) -> None:
        if not folds:
            raise ValueError(f"{type(self).__name__} needs at least one fold")
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            configure_cpu_threads(threads)
        self.folds: list[FoldT] = [fold.to(self.device).eval() for fold in folds]
        self.card = card
        self.gland = gland
        self.gland_settings = gland_settings or GlandSettings(enabled=False)
        self.gland_warning = gland_warning

    @staticmethod
    @abstractmethod
    def load_artifact(path: Path | str) -> tuple[Sequence[FoldT], CardT]:
        """The artifact's folds and card (checked against its sha256)."""

    @classmethod
    def from_artifact(
        cls,
        path: Path | str,
        device: str | torch.device | None = None,
        *,
        threads: int | None = None,
        gland: GlandSettings | None = None,
    ) -> Self:
        """Load an imported model artifact; the gate is off unless ``gland`` turns it on."""
        gland = gland or GlandSettings(enabled=False)
        folds, card = cls.load_artifact(path)
        resolved = resolve_device(device)
        gland_model, warning = load_gland_model(gland, use_cuda=resolved.type == "cuda", threads=threads)
        return cls(
            folds,
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


#: One blob of a detection map: (likelihood, blob label, mask on the T2W grid, its box, centre LPS mm).
Blob = tuple[float, int, NDArray[np.bool_], Box, tuple[float, float, float]]


def blob_lesions(found: Sequence[Blob], t2w: sitk.Image) -> list[Lesion]:
    """The lesions of a detection map's blobs, by decreasing likelihood (ties: by blob label), measured on the
    T2W grid; a lesion's probability is its blob's likelihood, with no category and no zone."""
    ranked = sorted(found, key=lambda item: (-item[0], item[1]))
    return [
        Lesion(
            id=rank,
            center_lps_mm=center,
            mask=mask,
            volume_ml=volume_ml(mask, t2w, box),
            max_diameter_mm=max_diameter_mm(mask, t2w, box),
            axial_diameter_mm=axial_diameter_mm(mask, t2w, box),
            probability=likelihood,
            category=None,
            zone=None,
            peak=likelihood,
        )
        for rank, (likelihood, _, mask, box, center) in enumerate(ranked, start=1)
    ]


def detection_of(lesions: Sequence[Lesion], shape: tuple[int, ...]) -> NDArray[np.float32]:
    """The detection map of the reported lesions (each blob holds its likelihood)."""
    out = np.zeros(shape, dtype=np.float32)
    for lesion in lesions:
        out[lesion.mask] = np.float32(lesion.probability)
    return out


def on_t2w(values: NDArray[np.float32], prepared: PreparedStudy) -> sitk.Image:
    """A (Z, Y, X) float32 map as an image on the study's T2W grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32))
    image.CopyInformation(prepared.t2w)
    return image
