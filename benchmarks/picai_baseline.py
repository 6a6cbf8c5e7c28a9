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
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["CHANNELS", "INPUT_SHAPE", "STRIDES", "BaselineUNet", "predict"]

CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
STRIDES: tuple[tuple[int, int, int], ...] = ((2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
INPUT_SHAPE: tuple[int, int, int, int] = (3, 20, 256, 256)
FOLDS = 5


def _conv(in_ch: int, out_ch: int, stride: tuple[int, int, int]) -> nn.Sequential:
    """3x3x3 convolution, instance norm, PReLU."""
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1),
        nn.InstanceNorm3d(out_ch),
        nn.PReLU(),
    )


def _up(in_ch: int, out_ch: int, stride: tuple[int, int, int], conv_only: bool) -> nn.Module:
    """Transposed 3x3x3 convolution that undoes ``stride`` (followed by norm and PReLU unless on top)."""
    conv = nn.ConvTranspose3d(
        in_ch,
        out_ch,
        3,
        stride=stride,
        padding=1,
        output_padding=(stride[0] - 1, stride[1] - 1, stride[2] - 1),
    )
    if conv_only:
        return conv
    return nn.Sequential(conv, nn.InstanceNorm3d(out_ch), nn.PReLU())


class _Level(nn.Module):
    """down -> [down output, deeper(down output)] -> up."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        channels: tuple[int, ...],
        strides: tuple[tuple[int, int, int], ...],
        is_top: bool,
    ) -> None:
        super().__init__()
        c = channels[0]
        self.down = _conv(in_ch, c, strides[0])
        self.deeper: nn.Module
        if len(channels) > 2:
            self.deeper = _Level(c, c, channels[1:], strides[1:], False)
            up_in = 2 * c
        else:
            self.deeper = _conv(c, channels[1], (1, 1, 1))  # the bottom
            up_in = c + channels[1]
        self.up = _up(up_in, out_ch, strides[0], conv_only=is_top)

    def forward(self, x: Tensor) -> Tensor:
        down = self.down(x)
        out: Tensor = self.up(torch.cat([down, self.deeper(down)], dim=1))
        return out


class BaselineUNet(nn.Module):
    """The PI-CAI baseline 3D U-Net (see the module docstring)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        channels: tuple[int, ...] = CHANNELS,
        strides: tuple[tuple[int, int, int], ...] = STRIDES,
    ) -> None:
        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ValueError("need one stride per level transition")
        self.model = _Level(in_channels, out_channels, channels, strides, True)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, out_channels, Z, Y, X)."""
        out: Tensor = self.model(x)
        return out


def predict(models: list[BaselineUNet], images: Tensor, flips: bool = True) -> Tensor:
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
