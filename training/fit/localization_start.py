"""The localization network started from an imported detection-map model (``--localization-from``).

The patent's method on a real localization network: one fold of an imported PI-CAI U-Net ensemble
(:mod:`lesion_engine.model.picai_unet`, ``lesion-ai models import picai-unet``) becomes the localization network
of a :class:`~lesion_engine.model.networks.JointModel`, and our classification network is trained on top of it,
reading the images and its map:

* ``fine-tune``: the joint loss (localization + lambda x classification) trains both networks, the
  classification gradients reaching the U-Net through the map (unless ``detach_map``); the U-Net's learning
  rate is the run's times ``lr_scale`` (it starts trained, the classifier does not);
* ``frozen``: the U-Net is frozen (no gradient, eval mode); only the classifier learns, on the imported map.

The model's input is the U-Net's own (the PI-CAI crop of the imported pipeline: its spacing, matrix and
normalisation; ``PreprocessConfig.kind == "picai"``), and the exported model is a regular joint model
artifact that :class:`~lesion_engine.engine.Engine` runs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesion_engine.errors import ModelArtifactError
from lesion_engine.model.model_card import artifact_folder, read_any_card
from lesion_engine.model.model_config import ClassificationNetConfig, LocalizationNetConfig, PreprocessConfig
from lesion_engine.model.networks import JointModel, PicaiLocalizationNet
from lesion_engine.model.picai_unet.card import DETECTION_KIND, DetectionModelCard

logger = logging.getLogger(__name__)

__all__ = [
    "LOCALIZATION_MODES",
    "LocalizationStart",
    "classifier_patch",
    "default_crop",
]

LOCALIZATION_MODES: tuple[str, ...] = ("fine-tune", "frozen")
DEFAULT_LR_SCALE = 0.1
"""The imported U-Net's learning rate, as a fraction of the run's, when it is fine-tuned."""


def _physical(size: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[float]:
    return [n * s for n, s in zip(size, spacing, strict=True)]


def classifier_patch(preprocess: PreprocessConfig) -> tuple[int, int, int]:
    """The classifier's patch on ``preprocess``'s grid that covers what the default patch covers on the
    default grid (24 x 32 x 32 mm): (8, 64, 64) voxels on the PI-CAI crop's 3 x 0.5 x 0.5 mm."""
    millimetres = _physical(ClassificationNetConfig().patch_size, PreprocessConfig().spacing_zyx)
    out = [max(1, round(mm / s)) for mm, s in zip(millimetres, preprocess.spacing_zyx, strict=True)]
    return (out[0], out[1], out[2])


def default_crop(
    preprocess: PreprocessConfig, divisor: tuple[int, int, int], reference: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The training crop on ``preprocess``'s grid that covers what ``reference`` (voxels of the default
    grid) covers, rounded to a multiple of the network's ``divisor`` and at most the grid: (16, 192, 192)
    on the PI-CAI crop for the default (16, 96, 96)."""
    millimetres = _physical(reference, PreprocessConfig().spacing_zyx)
    out = []
    for mm, spacing, d, size in zip(
        millimetres, preprocess.spacing_zyx, divisor, preprocess.size_zyx, strict=True
    ):
        voxels = max(d, round(mm / spacing / d) * d)
        out.append(min(voxels, size - size % d))
    return (out[0], out[1], out[2])


@dataclass(frozen=True)
class LocalizationStart:
    """One fold of an imported detection-map model as the starting localization network.

    Build it with :meth:`from_artifact`, which reads and checks the artifact's card.

    Attributes
    ----------
    artifact : Path
        The detection-map model artifact folder.
    fold : int
        The fold whose weights start the localization network.
    mode : str
        ``fine-tune`` or ``frozen`` (see the module docstring).
    lr_scale : float
        Fine-tune: the U-Net's learning rate as a fraction of the run's (0 < lr_scale <= 1).
    name, version, weights_sha256 : str
        The imported model's identity (its card), recorded in the trained model's card.
    origin : str or None
        Where the imported weights came from (its card's ``source.origin``).
    network : LocalizationNetConfig
        The U-Net's architecture (``picai-unet``; the lesion logit is the pipeline's output channel).
    preprocess : PreprocessConfig
        The PI-CAI crop of the imported pipeline: the trained model's input.
    """

    artifact: Path
    fold: int
    mode: str
    lr_scale: float
    name: str
    version: str
    weights_sha256: str
    origin: str | None
    network: LocalizationNetConfig
    preprocess: PreprocessConfig

    def __post_init__(self) -> None:
        if self.mode not in LOCALIZATION_MODES:
            raise ValueError(f"the localization mode must be one of {LOCALIZATION_MODES}, got {self.mode!r}")
        if isinstance(self.fold, bool) or not isinstance(self.fold, int) or self.fold < 0:
            raise ValueError(f"the localization fold must be an integer >= 0, got {self.fold!r}")
        if not (
            isinstance(self.lr_scale, int | float) and math.isfinite(self.lr_scale) and 0 < self.lr_scale <= 1
        ):
            raise ValueError(f"the localization learning-rate scale must be in (0, 1], got {self.lr_scale!r}")

    @property
    def frozen(self) -> bool:
        """Whether the localization network stays as imported."""
        return self.mode == "frozen"

    @classmethod
    def from_artifact(
        cls,
        artifact: Path | str,
        *,
        fold: int = 0,
        mode: str = "fine-tune",
        lr_scale: float = DEFAULT_LR_SCALE,
    ) -> LocalizationStart:
        """Read a detection-map model's card and take its fold ``fold``.

        Raises
        ------
        ValueError
            The artifact is not a detection-map model, does not hold the fold, or its architecture or
            pipeline cannot be used; or ``mode`` or ``lr_scale`` is invalid.
        """
        try:
            folder = artifact_folder(artifact)
            card = read_any_card(folder)
        except ModelArtifactError as exc:
            raise ValueError(f"--localization-from {artifact}: {exc}") from None
        if not isinstance(card, DetectionModelCard):
            raise ValueError(
                f"--localization-from {folder}: {card.name} {card.version} is a jointly trained model (kind "
                f"'joint'), not a {DETECTION_KIND} model; it takes an imported PI-CAI U-Net "
                "(`lesion-ai models import picai-unet`)"
            )
        folds = card.architecture.folds
        if isinstance(fold, bool) or not isinstance(fold, int) or fold not in folds:
            raise ValueError(
                f"--localization-from {folder}: {card.name} {card.version} holds fold(s) "
                f"{', '.join(map(str, folds))}; fold {fold!r} is not one of them"
            )
        unet = dict(card.architecture.unet)
        try:
            network = LocalizationNetConfig.from_dict(
                {**unet, "lesion_channel": card.pipeline.output_channel, "num_zones": 0}
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"--localization-from {folder}: its architecture cannot be used: {exc}"
            ) from None
        source = card.source.get("origin")
        return cls(
            artifact=folder,
            fold=fold,
            mode=mode,
            lr_scale=lr_scale,
            name=card.name,
            version=card.version,
            weights_sha256=card.weights_sha256,
            origin=source if isinstance(source, str) else None,
            network=network,
            preprocess=PreprocessConfig.picai_crop(card.pipeline),
        )

    def record(self) -> dict[str, Any]:
        """What the trained model's card records (``training.localization_from``)."""
        return {
            "name": self.name,
            "version": self.version,
            "weights_sha256": self.weights_sha256,
            "fold": self.fold,
            "mode": self.mode,
            "lr_scale": self.lr_scale if not self.frozen else None,
            "network": self.network.network,
            "origin": self.origin,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the run's ``config.json``): :meth:`record` and the artifact folder."""
        return {**self.record(), "artifact": str(self.artifact)}

    def load_into(self, model: JointModel) -> None:
        """Copy the fold's weights into ``model``'s localization network (and freeze it in frozen mode).

        Raises
        ------
        ModelArtifactError
            The artifact's weights changed since this start was read, or do not fit.
        """
        from lesion_engine.model.picai_unet.engine import load_detection_artifact

        if not isinstance(model.loc, PicaiLocalizationNet) or model.loc.config != self.network:
            raise ValueError(f"the model's localization network is not the imported {self.network.network}")
        folds, card = load_detection_artifact(self.artifact)
        if card.weights_sha256 != self.weights_sha256:
            raise ModelArtifactError(
                f"{self.artifact} changed since the run was set up: its weights' sha256 is now "
                f"{card.weights_sha256}, the run's {self.weights_sha256}"
            )
        unet = folds[list(card.architecture.folds).index(self.fold)]
        model.loc.unet.load_state_dict(unet.state_dict(), strict=True)
        if self.frozen:
            model.freeze_localization()
        logger.info(
            "localization network: fold %d of %s %s (%s)", self.fold, self.name, self.version, self.mode
        )
