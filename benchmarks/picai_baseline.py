"""The PI-CAI baseline U-Net recipe, for speed comparison only (random weights; never trained here).

The PI-CAI challenge's baseline (``picai_baseline``, U-Net track) runs a plain 3D U-Net in the layout of
MONAI's ``UNet`` without residual units: every encoder level is one strided 3x3x3 convolution with instance
norm and PReLU, every decoder level one transposed 3x3x3 convolution; the skip connection concatenates the
encoder output with the upsampled deeper result. Channels (32, 64, 128, 256, 512, 1024), strides
[(2,2,2), (1,2,2), (1,2,2), (1,2,2), (2,2,2)], input 3 x 20 x 256 x 256, two output classes. Inference is an
ensemble of 5 folds, each with and without a left-right flip: 10 forward passes per study.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from lesion_engine.model.picai_unet.network import PicaiUNet, PicaiUNetConfig

logger = logging.getLogger(__name__)

__all__ = ["CHANNELS", "INPUT_SHAPE", "STRIDES", "BaselineUNet", "predict"]

CHANNELS: tuple[int, ...] = PicaiUNetConfig().channels
STRIDES: tuple[tuple[int, int, int], ...] = PicaiUNetConfig().strides
INPUT_SHAPE: tuple[int, int, int, int] = (3, 20, 256, 256)
FOLDS = 5


BaselineUNet = PicaiUNet
"""The PI-CAI baseline U-Net: the engine's own :class:`~lesion_engine.model.picai_unet.network.PicaiUNet` (the
network an imported PI-CAI model runs), with picai_baseline's default architecture."""


def predict(models: list[PicaiUNet], images: Tensor, flips: bool = True) -> Tensor:
    """Ensemble softmax of csPCa over ``models``, each also on the left-right flipped input."""
    total = torch.zeros_like(images[:, :1])
    count = 0
    with torch.inference_mode():
        for model in models:
            total += torch.softmax(model(images), dim=1)[:, 1:]
            count += 1
            if flips:
                flipped = torch.softmax(model(torch.flip(images, dims=[4])), dim=1)[:, 1:]
                total += torch.flip(flipped, dims=[4])
                count += 1
    return total / count
