"""nnU-Net v1's ``Generic_UNet`` as ``nnUNetTrainerV2`` builds it, for inference (no deep supervision).

``nnUNetTrainerV2.initialize_network`` builds ``Generic_UNet`` with: 3D convolutions (bias), instance
normalisation (eps 1e-5, affine), dropout p=0 (no module), LeakyReLU (negative slope 1e-2), ``conv_per_stage``
convolutions per stage, strided convolutions for pooling (the first convolution of stage d strides by pool
d-1), transposed convolutions (no bias) for upsampling, features doubled per stage up to 320, and one 1x1x1
segmentation head (no bias) per decoder stage. At inference ``do_ds`` is off: the output is the last head's
logits, and nnU-Net applies the softmax over classes.

:class:`GenericUNet` has the same modules under the same names, so a fold's ``state_dict`` loads as it is
(``conv_blocks_context.<d>.blocks.<j>.conv.weight`` ...); its forward computes only the last head (the others
do not change the output). The arithmetic is the same PyTorch operations in the same order.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lesion_engine.model.picai_nnunet.plans import NnunetPlans

logger = logging.getLogger(__name__)

__all__ = ["GenericUNet"]


class _ConvNormNonlin(nn.Module):
    """``ConvDropoutNormNonlin`` without dropout: conv, instance norm, LeakyReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]
    ):
        super().__init__()
        padding = (1 if kernel[0] == 3 else 0, 1 if kernel[1] == 3 else 0, 1 if kernel[2] == 3 else 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=True)
        self.instnorm = nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True)
        self.lrelu = nn.LeakyReLU(negative_slope=1e-2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lrelu(self.instnorm(self.conv(x)))
        return out


class _Stacked(nn.Module):
    """``StackedConvLayers``: ``count`` blocks, the first with ``first_stride``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        count: int,
        kernel: tuple[int, int, int],
        first_stride: tuple[int, int, int] = (1, 1, 1),
    ):
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                _ConvNormNonlin(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel,
                    first_stride if i == 0 else (1, 1, 1),
                )
                for i in range(count)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.blocks(x)
        return out


class GenericUNet(nn.Module):
    """``Generic_UNet`` of ``nnUNetTrainerV2`` for the given plans (see the module docstring).

    Parameters
    ----------
    plans : NnunetPlans
        The model's plans (kernel and pooling sizes, features, channels, classes).
    """

    def __init__(self, plans: NnunetPlans):
        super().__init__()
        self.plans = plans
        pools = plans.pool_op_kernel_sizes
        kernels = plans.conv_kernel_sizes
        features = plans.features
        count = plans.conv_per_stage
        self.conv_blocks_context = nn.ModuleList()
        in_channels = len(plans.modalities)
        for d in range(len(pools)):
            stride = pools[d - 1] if d != 0 else (1, 1, 1)
            self.conv_blocks_context.append(_Stacked(in_channels, features[d], count, kernels[d], stride))
            in_channels = features[d]
        bottleneck = features[len(pools)]
        self.conv_blocks_context.append(
            nn.Sequential(
                _Stacked(in_channels, bottleneck, count - 1, kernels[len(pools)], pools[-1]),
                _Stacked(bottleneck, bottleneck, 1, kernels[len(pools)]),
            )
        )
        self.tu = nn.ModuleList()
        self.conv_blocks_localization = nn.ModuleList()
        down = bottleneck
        for u in range(len(pools)):
            skip = features[len(pools) - 1 - u]
            pool = pools[-(u + 1)]
            self.tu.append(nn.ConvTranspose3d(down, skip, pool, pool, bias=False))
            kernel = kernels[-(u + 1)]
            self.conv_blocks_localization.append(
                nn.Sequential(_Stacked(2 * skip, skip, count - 1, kernel), _Stacked(skip, skip, 1, kernel))
            )
            down = skip
        self.seg_outputs = nn.ModuleList(
            nn.Conv3d(features[len(pools) - 1 - u], plans.num_classes, 1, 1, 0, 1, 1, False)
            for u in range(len(pools))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes, Z, Y, X) of the last segmentation head."""
        skips = []
        for block in self.conv_blocks_context[:-1]:
            x = block(x)
            skips.append(x)
        x = self.conv_blocks_context[-1](x)
        for u, (up, block) in enumerate(zip(self.tu, self.conv_blocks_localization, strict=True)):
            x = up(x)
            x = torch.cat((x, skips[-(u + 1)]), dim=1)
            x = block(x)
        out: torch.Tensor = self.seg_outputs[-1](x)
        return out
