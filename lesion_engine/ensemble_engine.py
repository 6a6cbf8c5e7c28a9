"""What the engines of imported fold ensembles share: the folds on their device, the card, the optional gate.

:class:`~lesion_engine.picai_unet.engine.DetectionEngine` (a PI-CAI U-Net) and
:class:`~lesion_engine.picai_nnunet.engine.NnunetDetectionEngine` (a PI-CAI nnU-Net) are detection-map models:
they differ in their networks and pipelines, not in how they are loaded and set up.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Generic, Protocol, Self, TypeVar

import torch

from lesion_engine.devices import configure_cpu_threads, resolve_device
from lesion_engine.gland import GlandModel, GlandSettings, load_gland_model

logger = logging.getLogger(__name__)

__all__ = ["EnsembleEngine"]


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
    def model_info(self) -> dict[str, str]:
        """``name``, ``version`` and ``sha256`` of the model."""
        return {"name": self.card.name, "version": self.card.version, "sha256": self.card.weights_sha256}
