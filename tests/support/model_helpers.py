"""Small models and artifacts for the engine tests (random weights; only shapes and plumbing matter)."""

from __future__ import annotations

from pathlib import Path

import torch

from lesion_engine.model.artifact import save_artifact
from lesion_engine.model.candidates import CandidateConfig
from lesion_engine.model.model_input import PreprocessConfig
from lesion_engine.model.networks import ClassificationNetConfig, JointModel, LocalizationNetConfig

TINY_LOC = LocalizationNetConfig(channels=(4, 8, 16), strides=((1, 2, 2), (2, 2, 2)), num_zones=3)
TINY_CLS = ClassificationNetConfig(channels=(4, 8), patch_size=(4, 16, 16))
PREPROCESS = PreprocessConfig()


def tiny_model(seed: int = 0, *, num_zones: int = 3) -> JointModel:
    """A small joint model with reproducible random weights."""
    torch.manual_seed(seed)
    loc = LocalizationNetConfig(TINY_LOC.in_channels, TINY_LOC.channels, TINY_LOC.strides, num_zones)
    return JointModel(loc, TINY_CLS).eval()


def write_tiny_artifact(folder: Path, seed: int = 0, *, num_zones: int = 3) -> Path:
    """Write a random-weight artifact of :func:`tiny_model` into ``folder``."""
    return save_artifact(
        tiny_model(seed, num_zones=num_zones),
        folder,
        name="tiny-random",
        version="0.0.1",
        preprocessing=PREPROCESS,
        candidates=CandidateConfig(),
        training={"data": "none (random weights)", "seed": seed},
        metrics={},
    )
