"""The two networks and their joint model.

* :class:`LocalizationNet`: a 3D encoder-decoder (U-Net) with anisotropic strides, suited to ~3 mm slices
  and ~1 mm pixels. Input: the co-registered image channels (T2W, ADC, HBV) on the model grid; output: one
  logit per voxel, whose sigmoid is the *localization map*.
* :class:`PicaiLocalizationNet`: the PI-CAI baseline U-Net (:class:`~lesion_engine.model.picai_unet.network.PicaiUNet`)
  in the localization network's place, e.g. started from a fold of an imported detection-map model; its
  csPCa output is the lesion logit, and it has no zonal head. :func:`localization_net` builds the network a
  :class:`LocalizationNetConfig` names.
* :class:`ClassificationNet`: a small 3D CNN that reads a patch around one lesion candidate holding the
  image channels **and the localization map** as an extra channel, and outputs the logit of clinically
  significant cancer (ISUP >= 2) and logits of a suspicion category 2..5.
* :class:`JointModel`: both, wired so that the classification loss reaches the localization network through
  the map (unless ``detach_map`` is set, which trains the ablation in which it does not).

Tensor layout is (batch, channel, z, y, x) throughout; voxel coordinates are (z, y, x).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lesion_engine.model.model_config import PICAI_UNET, ClassificationNetConfig, LocalizationNetConfig
from lesion_engine.model.picai_unet.network import PicaiUNet, PicaiUNetConfig

logger = logging.getLogger(__name__)

__all__ = [
    "AnyLocalizationNet",
    "ClassificationNet",
    "ClassificationNetConfig",
    "JointModel",
    "JointOutput",
    "LocalizationNet",
    "LocalizationNetConfig",
    "PicaiLocalizationNet",
    "extract_patches",
    "localization_net",
    "picai_unet_config",
]

Triple = tuple[int, int, int]


def _block(in_channels: int, out_channels: int, stride: Triple = (1, 1, 1)) -> nn.Sequential:
    """Two 3x3x3 convolutions with instance norm and leaky ReLU; the first may be strided."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class LocalizationNet(nn.Module):
    """3D U-Net: image channels in; per voxel one lesion logit, then ``num_zones`` zonal logits, out."""

    def __init__(self, config: LocalizationNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or LocalizationNetConfig()
        if self.config.network == PICAI_UNET:
            raise ValueError(
                f"LocalizationNet is our U-Net; a {PICAI_UNET!r} configuration is built by PicaiLocalizationNet "
                "(localization_net() picks the right one)"
            )
        ch = self.config.channels
        self.encoders = nn.ModuleList([_block(self.config.in_channels, ch[0])])
        for i, stride in enumerate(self.config.strides):
            self.encoders.append(_block(ch[i], ch[i + 1], stride))
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(len(self.config.strides))):
            stride = self.config.strides[i]
            self.upsamplers.append(nn.ConvTranspose3d(ch[i + 1], ch[i], kernel_size=stride, stride=stride))
            self.decoders.append(_block(2 * ch[i], ch[i]))
        self.head = nn.Conv3d(ch[0], 1 + self.config.num_zones, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, 1 + num_zones, Z, Y, X) for images (B, C, Z, Y, X).

        Channel 0 is the lesion logit (its sigmoid is the localization map); channels 1.. are zonal logits.
        Z, Y, X must be multiples of ``config.divisor``.
        """
        if images.ndim != 5 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.config.in_channels}, Z, Y, X), got {tuple(images.shape)}"
            )
        divisor = self.config.divisor
        if any(int(s) % d for s, d in zip(images.shape[2:], divisor, strict=True)):
            raise ValueError(f"spatial size {tuple(images.shape[2:])} must be a multiple of {divisor}")
        skips = []
        x = images
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for upsample, decoder in zip(self.upsamplers, self.decoders, strict=True):
            x = upsample(x)
            x = decoder(torch.cat([x, skips.pop()], dim=1))
        logits: Tensor = self.head(x)
        return logits


def picai_unet_config(config: LocalizationNetConfig) -> PicaiUNetConfig:
    """The :class:`~lesion_engine.model.picai_unet.network.PicaiUNetConfig` of a ``picai-unet`` configuration."""
    if config.network != PICAI_UNET or config.out_channels is None:
        raise ValueError(f"not a {PICAI_UNET!r} configuration: {config.network!r}")
    return PicaiUNetConfig(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        channels=tuple(config.channels),
        strides=tuple(config.strides),
    )


class PicaiLocalizationNet(nn.Module):
    """The PI-CAI baseline U-Net as the localization network: logits (B, 1, Z, Y, X), channel 0 being the
    U-Net's output ``config.lesion_channel`` (its csPCa logit); no zonal logits.

    Its parameters are the U-Net's under ``unet.`` (``unet.model.down.conv.weight``, ...), so one fold of an
    imported detection-map model loads into ``net.unet`` as it is.
    """

    def __init__(self, config: LocalizationNetConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = PicaiUNet(picai_unet_config(config))

    def forward(self, images: Tensor) -> Tensor:
        """Lesion logits (B, 1, Z, Y, X) for images (B, C, Z, Y, X); Z, Y, X multiples of the divisor."""
        channel = int(self.config.lesion_channel or 0)
        logits: Tensor = self.unet(images)
        return logits[:, channel : channel + 1]


AnyLocalizationNet = LocalizationNet | PicaiLocalizationNet
"""A localization network of either kind: both have ``config`` and return (B, 1 + num_zones, Z, Y, X)."""


def localization_net(config: LocalizationNetConfig | None = None) -> AnyLocalizationNet:
    """The localization network a configuration names (our U-Net by default)."""
    if config is not None and config.network == PICAI_UNET:
        return PicaiLocalizationNet(config)
    return LocalizationNet(config)


class ClassificationNet(nn.Module):
    """Patch classifier: (N, C, pz, py, px) -> cancer logit (N,) and category logits (N, K)."""

    def __init__(self, config: ClassificationNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassificationNetConfig()
        ch = self.config.channels
        stages: list[nn.Module] = [_block(self.config.in_channels, ch[0])]
        for i in range(1, len(ch)):
            stages.append(_block(ch[i - 1], ch[i], (1, 2, 2)))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.max_pool = nn.AdaptiveMaxPool3d(1)
        self.hidden = nn.Sequential(
            nn.Linear(2 * ch[-1], ch[-1]), nn.LeakyReLU(0.01, inplace=True), nn.Dropout(0.1)
        )
        self.cancer_head = nn.Linear(ch[-1], 1)
        self.category_head = nn.Linear(ch[-1], self.config.num_categories)

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """Cancer logits (N,) and category logits (N, K) for candidate patches."""
        expected = (self.config.in_channels, *self.config.patch_size)
        if patches.ndim != 5 or tuple(patches.shape[1:]) != expected:
            raise ValueError(
                f"expected patches of shape (N, {', '.join(map(str, expected))}), got {tuple(patches.shape)}"
            )
        x = self.features(patches)
        x = torch.cat([self.pool(x).flatten(1), self.max_pool(x).flatten(1)], dim=1)
        x = self.hidden(x)
        return self.cancer_head(x).squeeze(1), self.category_head(x)


def extract_patches(volume: Tensor, centers: Tensor, batch_index: Tensor, patch_size: Triple) -> Tensor:
    """Cut patches of ``patch_size`` centred on voxel ``centers`` out of ``volume``, zero-padded at borders.

    Differentiable with respect to ``volume`` (slicing only), so gradients reach whatever produced it.

    Parameters
    ----------
    volume : Tensor
        (B, C, Z, Y, X).
    centers : Tensor
        (N, 3) integer voxel coordinates (z, y, x).
    batch_index : Tensor
        (N,) index into the batch for each centre.
    patch_size : (z, y, x)
        Patch size in voxels.

    Returns
    -------
    Tensor
        (N, C, pz, py, px).
    """
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise ValueError(f"centers must have shape (N, 3), got {tuple(centers.shape)}")
    if batch_index.shape != centers.shape[:1]:
        raise ValueError("batch_index must have one entry per centre")
    pz, py, px = patch_size
    padded = F.pad(volume, (px // 2, px - px // 2, py // 2, py - py // 2, pz // 2, pz - pz // 2))
    patches = []
    for (z, y, x), b in zip(centers.tolist(), batch_index.tolist(), strict=True):
        z = min(max(int(z), 0), volume.shape[2] - 1)
        y = min(max(int(y), 0), volume.shape[3] - 1)
        x = min(max(int(x), 0), volume.shape[4] - 1)
        patches.append(padded[int(b), :, z : z + pz, y : y + py, x : x + px])
    if not patches:
        return volume.new_zeros((0, volume.shape[1], pz, py, px))
    return torch.stack(patches)


@dataclass
class JointOutput:
    """Outputs of :meth:`JointModel.forward`.

    Attributes
    ----------
    loc_logits : Tensor
        (B, 1, Z, Y, X) localization logits.
    zone_logits : Tensor or None
        (B, num_zones, Z, Y, X) zonal logits, when the localization network has a zonal head.
    localization_map : Tensor
        sigmoid of ``loc_logits`` (what the classifier read, detached or not).
    cancer_logits : Tensor
        (N,) one per candidate centre.
    category_logits : Tensor
        (N, K).
    """

    loc_logits: Tensor
    zone_logits: Tensor | None
    localization_map: Tensor
    cancer_logits: Tensor
    category_logits: Tensor


class JointModel(nn.Module):
    """Localization and classification networks, trained together (see the module docstring).

    Parameters
    ----------
    loc_config, cls_config
        Architecture arguments.
    detach_map : bool
        When True the classifier reads a detached map: classification gradients stop at the map (ablation).

    :meth:`freeze_localization` freezes the localization network (no gradients, always in eval mode): then
    only the classifier learns, on the map as it is.
    """

    def __init__(
        self,
        loc_config: LocalizationNetConfig | None = None,
        cls_config: ClassificationNetConfig | None = None,
        *,
        detach_map: bool = False,
    ) -> None:
        super().__init__()
        self.loc: AnyLocalizationNet = localization_net(loc_config)
        self.cls = ClassificationNet(cls_config)
        if self.cls.config.in_channels != self.loc.config.in_channels + 1:
            raise ValueError(
                f"the classifier reads the {self.loc.config.in_channels} image channels plus the map: its "
                f"in_channels must be {self.loc.config.in_channels + 1}, got {self.cls.config.in_channels}"
            )
        self.detach_map = detach_map
        self.localization_frozen = False

    def freeze_localization(self) -> None:
        """Freeze the localization network: its parameters get no gradient and it stays in eval mode."""
        for parameter in self.loc.parameters():
            parameter.requires_grad_(False)
        self.localization_frozen = True
        self.loc.eval()

    def train(self, mode: bool = True) -> JointModel:
        """As :meth:`torch.nn.Module.train`; a frozen localization network stays in eval mode."""
        super().train(mode)
        if self.localization_frozen:
            self.loc.eval()
        return self

    def classify(
        self, images: Tensor, localization_map: Tensor, centers: Tensor, batch_index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Classify candidates at ``centers`` from the images and the localization map."""
        stacked = torch.cat([images, localization_map.to(images.dtype)], dim=1)
        patches = extract_patches(stacked, centers, batch_index, self.cls.config.patch_size)
        if patches.shape[0] == 0:
            k = self.cls.config.num_categories
            return images.new_zeros((0,)), images.new_zeros((0, k))
        cancer, category = self.cls(patches)
        return cancer, category

    def forward(self, images: Tensor, centers: Tensor, batch_index: Tensor) -> JointOutput:
        """Localize, then classify the candidates at ``centers`` (N, 3) of batch items ``batch_index`` (N,)."""
        logits = self.loc(images)
        loc_logits = logits[:, :1]
        zone_logits = logits[:, 1:] if self.loc.config.num_zones else None
        localization_map = torch.sigmoid(loc_logits)
        seen = localization_map.detach() if self.detach_map else localization_map
        cancer, category = self.classify(images, seen, centers, batch_index)
        return JointOutput(loc_logits, zone_logits, localization_map, cancer, category)
