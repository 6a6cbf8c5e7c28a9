"""The PI-CAI baseline U-Net: MONAI's ``UNet`` as ``picai_baseline`` builds it, in our own module.

``picai_baseline`` (U-Net track) builds ``monai.networks.nets.UNet(spatial_dims=3, in_channels=3,
out_channels=2, channels=(32, 64, 128, 256, 512, 1024), strides=[(2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2),
(2, 2, 2)])`` with MONAI's other defaults: no residual units, kernel 3, instance norm without affine
parameters, dropout 0, PReLU with one parameter, bias on, order norm-dropout-activation. Every encoder
level is one strided 3x3x3 convolution; the bottom one unstrided convolution; every decoder level one
transposed 3x3x3 convolution (``output_padding = stride - 1``) whose input is the encoder output
concatenated with the deeper level's output; the top decoder is a bare transposed convolution.

:class:`PicaiUNet` computes the same function without importing MONAI. Its parameters are named by
concept (``down``, ``inner``, ``up``, ``bottom``); :func:`monai_key_map` gives, for a configuration, the
name of each of our tensors in MONAI's layout (``model.0.conv.weight``, ``model.1.submodule.0.adn.A.weight``,
...), which is how a ``picai_baseline`` checkpoint is mapped onto it (:mod:`lesion_engine.model.picai_unet.checkpoint`).

PyTorch chooses the convolution kernels as it does for MONAI's module, so that the outputs are the
reference's bit for bit (measured: sending every convolution to oneDNN, or the input and its flip through
one batch, changes the likelihoods by about 4e-7 and gained nothing on 2 CPU cores).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["PicaiUNet", "PicaiUNetConfig", "monai_key_map"]

Triple = tuple[int, int, int]

_EPS = 1e-5  # torch's InstanceNorm3d default, as MONAI's Norm.INSTANCE uses it


@dataclass(frozen=True)
class PicaiUNetConfig:
    """Architecture arguments of the PI-CAI baseline U-Net (picai_baseline's defaults).

    Attributes
    ----------
    in_channels : int
        Image channels (T2W, ADC, HBV).
    out_channels : int
        Output classes (background, csPCa).
    channels : tuple of int
        Feature channels per level, top first.
    strides : tuple of (z, y, x)
        Stride of each level's down convolution (one fewer than ``channels``).
    """

    in_channels: int = 3
    out_channels: int = 2
    channels: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    strides: tuple[Triple, ...] = ((2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if len(self.channels) < 2 or any(isinstance(c, bool) or int(c) != c or c < 1 for c in self.channels):
            raise ValueError(f"channels must be at least two positive integers, got {self.channels!r}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides must have one (z, y, x) per level transition ({len(self.channels) - 1}), "
                f"got {len(self.strides)}"
            )
        for stride in self.strides:
            if len(stride) != 3 or any(s not in (1, 2) for s in stride):
                raise ValueError(f"each stride must be three values of 1 or 2, got {stride!r}")

    @property
    def divisor(self) -> Triple:
        """The input size must be a multiple of this along (z, y, x)."""
        out = [1, 1, 1]
        for stride in self.strides:
            for axis in range(3):
                out[axis] *= stride[axis]
        return (out[0], out[1], out[2])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card)."""
        return {
            "network": "picai-unet",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "channels": list(self.channels),
            "strides": [list(s) for s in self.strides],
            "kernel_size": 3,
            "up_kernel_size": 3,
            "num_res_units": 0,
            "act": "PRELU",
            "norm": "INSTANCE",
            "dropout": 0.0,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PicaiUNetConfig:
        """Inverse of :meth:`to_dict`; the fixed MONAI arguments must have their picai_baseline values."""
        fixed = {
            "network": "picai-unet",
            "kernel_size": 3,
            "up_kernel_size": 3,
            "num_res_units": 0,
            "act": "PRELU",
            "norm": "INSTANCE",
            "dropout": 0.0,
        }
        for key, value in fixed.items():
            if data.get(key) != value:
                raise ValueError(
                    f"{key} must be {value!r} (the PI-CAI baseline U-Net), got {data.get(key)!r}"
                )
        unknown = set(data) - set(fixed) - {"in_channels", "out_channels", "channels", "strides"}
        if unknown:
            raise ValueError(f"unknown architecture arguments: {', '.join(sorted(unknown))}")
        strides = []
        for stride in data["strides"]:
            if not isinstance(stride, list | tuple) or len(stride) != 3:
                raise ValueError(f"each stride must be [z, y, x], got {stride!r}")
            strides.append((int(stride[0]), int(stride[1]), int(stride[2])))
        return cls(
            in_channels=int(data["in_channels"]),
            out_channels=int(data["out_channels"]),
            channels=tuple(int(c) for c in data["channels"]),
            strides=tuple(strides),
        )


class _ConvNormAct(nn.Module):
    """3x3x3 convolution (transposed when ``transposed``), instance norm, PReLU; the bare convolution
    when ``conv_only``."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: Triple, *, transposed: bool = False, conv_only: bool = False
    ) -> None:
        super().__init__()
        self.conv: nn.Conv3d | nn.ConvTranspose3d
        if transposed:
            self.conv = nn.ConvTranspose3d(
                in_ch,
                out_ch,
                3,
                stride=stride,
                padding=1,
                output_padding=(stride[0] - 1, stride[1] - 1, stride[2] - 1),
            )
        else:
            self.conv = nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.act: nn.PReLU | None = None if conv_only else nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.act is None:
            return x
        out: Tensor = self.act(F.instance_norm(x, eps=_EPS))
        return out


class _Level(nn.Module):
    """down -> concatenate [down output, deeper(down output)] -> up."""

    def __init__(
        self, in_ch: int, out_ch: int, channels: tuple[int, ...], strides: tuple[Triple, ...], is_top: bool
    ) -> None:
        super().__init__()
        c = channels[0]
        self.down = _ConvNormAct(in_ch, c, strides[0])
        self.inner: nn.Module
        if len(channels) > 2:
            self.inner = _Level(c, c, channels[1:], strides[1:], False)
            up_in = 2 * c
        else:
            self.inner = _ConvNormAct(c, channels[1], (1, 1, 1))  # the bottom
            up_in = c + channels[1]
        self.up = _ConvNormAct(up_in, out_ch, strides[0], transposed=True, conv_only=is_top)

    def forward(self, x: Tensor) -> Tensor:
        down = self.down(x)
        out: Tensor = self.up(torch.cat([down, self.inner(down)], dim=1))
        return out


class PicaiUNet(nn.Module):
    """The PI-CAI baseline 3D U-Net (see the module docstring); one fold of the ensemble.

    Parameters
    ----------
    config : PicaiUNetConfig, optional
        Architecture arguments (picai_baseline's defaults when None).
    """

    def __init__(self, config: PicaiUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or PicaiUNetConfig()
        cfg = self.config
        self.model = _Level(cfg.in_channels, cfg.out_channels, cfg.channels, cfg.strides, True)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, out_channels, Z, Y, X) for images (B, in_channels, Z, Y, X)."""
        cfg = self.config
        if images.ndim != 5 or images.shape[1] != cfg.in_channels:
            raise ValueError(
                f"expected images of shape (B, {cfg.in_channels}, Z, Y, X), got {tuple(images.shape)}"
            )
        if any(int(s) % d for s, d in zip(images.shape[2:], cfg.divisor, strict=True)):
            raise ValueError(f"spatial size {tuple(images.shape[2:])} must be a multiple of {cfg.divisor}")
        out: Tensor = self.model(images)
        return out


def monai_key_map(config: PicaiUNetConfig | None = None) -> dict[str, str]:
    """Our parameter name -> its name in MONAI's ``UNet`` layout (as in a picai_baseline checkpoint).

    MONAI nests each level as ``Sequential(down, SkipConnection(deeper), up)``: ``model.0`` is the level's
    down convolution, ``model.1.submodule`` the deeper level (or, at the last level, the bottom
    convolution), ``model.2`` its up convolution; a convolution's weight and bias are ``conv.weight`` and
    ``conv.bias``, its PReLU parameter ``adn.A.weight``. The top up convolution has no PReLU.
    """
    cfg = config or PicaiUNetConfig()
    levels = len(cfg.channels) - 1
    out: dict[str, str] = {}

    def block(ours: str, theirs: str, act: bool) -> None:
        out[f"{ours}.conv.weight"] = f"{theirs}.conv.weight"
        out[f"{ours}.conv.bias"] = f"{theirs}.conv.bias"
        if act:
            out[f"{ours}.act.weight"] = f"{theirs}.adn.A.weight"

    ours, theirs = "model", "model"
    for level in range(levels):
        block(f"{ours}.down", f"{theirs}.0", act=True)
        block(f"{ours}.up", f"{theirs}.2", act=level > 0)
        if level == levels - 1:
            block(f"{ours}.inner", f"{theirs}.1.submodule", act=True)
        ours, theirs = f"{ours}.inner", f"{theirs}.1.submodule"
    return out
