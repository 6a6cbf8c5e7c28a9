"""The settings of a training run: :class:`TrainConfig`, frozen and validated on construction."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesion_engine.model.model_config import (
    CandidateConfig,
    ClassificationNetConfig,
    LocalizationNetConfig,
    PreprocessConfig,
)
from training.datasets.candidate_sampling import SamplingConfig
from training.datasets.dataset import DataSpec
from training.fit.localization_start import LocalizationStart, classifier_patch
from training.fit.losses import LossConfig

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig"]

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (written to ``<out_dir>/config.json``).

    Attributes
    ----------
    data : DataSpec
        The training data.
    out_dir : Path
        Run folder: ``config.json``, ``checkpoints/``, ``steps.csv``, ``epochs.csv``, ``loss.png``,
        ``artifact/``.
    epochs : int
        Epochs (including the warm-up).
    samples_per_epoch : int or None
        Crops per epoch over all processes; the number of cases when None.
    batch_size : int
        Crops per step and process.
    lr, min_lr_fraction, lr_ramp_steps, weight_decay, grad_clip
        AdamW learning rate, the cosine floor as a fraction of ``lr``, steps of the linear ramp, weight
        decay, gradient-norm clip (0: none).
    lambda_cls : float
        Weight of the classification loss.
    zone_weight : float
        Weight of the zonal loss.
    detach_map : bool
        Train the ablation in which classification gradients stop at the map.
    warmup_epochs : int
        Localization-only epochs at the start (must be fewer than ``epochs``).
    seed : int
        Seed of weights, crops, augmentation and candidates.
    crop_size : (z, y, x)
        Training crop (multiple of the localization network's divisor, at most the model grid).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    workers : int
        DataLoader worker processes (0: in the training process).
    cache_dir : Path or None
        Case cache; ``<out_dir>/cache`` when None.
    cache_workers : int
        Processes that build the cache.
    augment : bool
        Use :class:`~training.datasets.augment.AugmentConfig` defaults (else no augmentation).
    foreground_prob : float
        Probability that a crop is centred on a lesion.
    preload : bool
        Keep every cached case in memory (about 4 MB each on the default grid); else read per sample.
    random_negatives, max_map_candidates : int
        Classifier candidates per item (see :mod:`training.datasets.candidate_sampling`).
    loc_channels, cls_channels : tuple of int
        Feature channels of the two networks.
    preprocess : PreprocessConfig
        The model grid.
    candidates : CandidateConfig
        Candidate extraction at inference (written into the model card).
    checkpoint_every_steps : int
        Also checkpoint every this many steps (0: at the end of every epoch only).
    max_steps : int or None
        Stop after this many optimizer steps in total.
    time_limit_s : float or None
        Stop (checkpoint and export) after the first step past this many seconds of training.
    threads : int or None
        CPU threads of torch (all when None).
    progress : bool
        Show a tqdm progress bar on rank 0.
    name, version : str
        Name and version of the exported model.
    localization_from : LocalizationStart or None
        Start the localization network from a fold of an imported detection-map model (its U-Net, frozen
        or fine-tuned; :mod:`training.fit.localization_start`): ``preprocess`` must then be its PI-CAI crop,
        ``loc_channels`` does not apply, the classifier's patch covers the default patch's millimetres
        (:func:`~training.fit.localization_start.classifier_patch`), and there is no zonal head. None: our U-Net,
        freshly initialized.
    """

    data: DataSpec
    out_dir: Path
    epochs: int = 20
    samples_per_epoch: int | None = None
    batch_size: int = 2
    lr: float = 2e-3
    min_lr_fraction: float = 0.05
    lr_ramp_steps: int = 20
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    lambda_cls: float = 1.0
    zone_weight: float = 0.5
    detach_map: bool = False
    warmup_epochs: int = 1
    seed: int = 0
    crop_size: Triple = (16, 96, 96)
    device: str = "auto"
    workers: int = 0
    cache_dir: Path | None = None
    cache_workers: int = 1
    augment: bool = True
    foreground_prob: float = 0.7
    preload: bool = True
    random_negatives: int = 2
    max_map_candidates: int = 3
    loc_channels: tuple[int, ...] = (16, 32, 64, 128)
    cls_channels: tuple[int, ...] = (16, 32, 64)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    checkpoint_every_steps: int = 0
    max_steps: int | None = None
    time_limit_s: float | None = None
    threads: int | None = None
    progress: bool = True
    name: str = "lesion-ai-joint"
    version: str = "0.1.0"
    localization_from: LocalizationStart | None = None

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")

        for name in ("epochs", "batch_size", "cache_workers"):
            positive(name)
        if self.samples_per_epoch is not None:
            positive("samples_per_epoch")
        if self.max_steps is not None:
            positive("max_steps")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"TrainConfig.warmup_epochs must be in [0, epochs - 1] so that the final model is trained jointly, "
                f"got {self.warmup_epochs} with epochs = {self.epochs}"
            )
        for name in ("lr", "lambda_cls", "zone_weight", "weight_decay", "grad_clip", "min_lr_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.workers < 0 or self.lr_ramp_steps < 0 or self.checkpoint_every_steps < 0:
            raise ValueError("TrainConfig.workers, lr_ramp_steps and checkpoint_every_steps must be >= 0")
        if self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be >= 0, got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be auto, cpu or cuda, got {self.device!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"TrainConfig.time_limit_s must be > 0, got {self.time_limit_s}")
        if self.localization_from is not None:
            self._check_localization_from(self.localization_from)
        divisor = self.loc_config().divisor
        if len(self.crop_size) != 3 or any(
            c < 1 or c % d or c > g
            for c, d, g in zip(self.crop_size, divisor, self.preprocess.size_zyx, strict=True)
        ):
            raise ValueError(
                f"TrainConfig.crop_size {self.crop_size} must be a multiple of the network's divisor {divisor} "
                f"and at most the model grid {self.preprocess.size_zyx}"
            )
        if any(s % d for s, d in zip(self.preprocess.size_zyx, divisor, strict=True)):
            raise ValueError(
                f"TrainConfig.preprocess.size_zyx {self.preprocess.size_zyx} must be a multiple of {divisor}"
            )

    def _check_localization_from(self, start: LocalizationStart) -> None:
        if not isinstance(start, LocalizationStart):
            raise ValueError(
                f"TrainConfig.localization_from must be a LocalizationStart, got {type(start).__name__}"
            )
        if self.preprocess != start.preprocess:
            raise ValueError(
                "TrainConfig.preprocess must be the imported model's PI-CAI crop when the localization network "
                f"starts from it ({start.preprocess.to_dict()}), got {self.preprocess.to_dict()}"
            )
        if tuple(self.loc_channels) != TrainConfig.loc_channels:
            raise ValueError(
                "TrainConfig.loc_channels does not apply when the localization network is the imported "
                f"{start.network.network} (its channels are {list(start.network.channels)})"
            )
        if start.frozen and self.warmup_epochs:
            raise ValueError(
                "TrainConfig.warmup_epochs must be 0 with a frozen localization network: a localization-only "
                "warm-up would train nothing"
            )
        if start.frozen and self.detach_map:
            raise ValueError(
                "TrainConfig.detach_map contradicts a frozen localization network: no gradient reaches it "
                "anyway; use detach_map with the fine-tune mode (the ablation)"
            )

    def loc_config(self) -> LocalizationNetConfig:
        """The localization network's architecture (the imported U-Net's with ``localization_from``)."""
        if self.localization_from is not None:
            return self.localization_from.network
        return LocalizationNetConfig(channels=tuple(self.loc_channels), num_zones=3)

    def cls_config(self) -> ClassificationNetConfig:
        """The classification network's architecture."""
        if self.localization_from is not None:
            return ClassificationNetConfig(
                channels=tuple(self.cls_channels), patch_size=classifier_patch(self.preprocess)
            )
        return ClassificationNetConfig(channels=tuple(self.cls_channels))

    def loss_config(self) -> LossConfig:
        """The loss weights."""
        return LossConfig(lambda_cls=self.lambda_cls, zone_weight=self.zone_weight)

    def sampling_config(self) -> SamplingConfig:
        """Candidate sampling settings."""
        return SamplingConfig(
            random_negatives=self.random_negatives, max_map_candidates=self.max_map_candidates
        )

    @property
    def cache_path(self) -> Path:
        """The case cache folder."""
        return self.cache_dir or self.out_dir / "cache"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if key == "localization_from" and value is None:
                continue  # written only when set, so that the records of other runs are as they were
            if isinstance(value, DataSpec | PreprocessConfig | CandidateConfig | LocalizationStart):
                out[key] = value.to_dict()
            elif isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        return out
