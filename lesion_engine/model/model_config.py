"""The settings a model card records: network architectures, preprocessing and candidate extraction.

Plain frozen dataclasses, validated on construction, with ``to_dict`` / ``from_dict`` for ``model.json``.
They import neither torch nor numpy, so that a model card can be read where the engine is not loaded
(:mod:`lesion_engine.model.model_card`). The modules that use them re-export them:
:mod:`lesion_engine.model.networks`, :mod:`lesion_engine.model.model_input` and :mod:`lesion_engine.model.candidates`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from lesion_engine.model.picai_unet.config import PicaiPipeline

logger = logging.getLogger(__name__)

__all__ = [
    "LOCALIZATION_NETWORKS",
    "MODEL_GRID",
    "OUR_UNET",
    "PICAI_CROP",
    "PICAI_UNET",
    "PICAI_UNET_FIXED",
    "PREPROCESS_KINDS",
    "CandidateConfig",
    "ClassificationNetConfig",
    "LocalizationNetConfig",
    "PreprocessConfig",
]

Triple = tuple[int, int, int]

_HBV_SOURCES = ("b1400", "native")
_CONNECTIVITIES = (6, 26)

OUR_UNET = "lesion-ai-unet"
"""Our own 3D U-Net with a zonal head (:class:`lesion_engine.model.networks.LocalizationNet`): the default."""
PICAI_UNET = "picai-unet"
"""The PI-CAI baseline U-Net (:class:`lesion_engine.model.picai_unet.network.PicaiUNet`), e.g. started from an
imported detection-map model's fold."""
LOCALIZATION_NETWORKS = (OUR_UNET, PICAI_UNET)
PICAI_UNET_FIXED: dict[str, Any] = {
    "kernel_size": 3,
    "up_kernel_size": 3,
    "num_res_units": 0,
    "act": "PRELU",
    "norm": "INSTANCE",
    "dropout": 0.0,
}
"""MONAI ``UNet`` arguments that the PI-CAI baseline U-Net fixes (as its card states them)."""

MODEL_GRID = "model-grid"
"""Preprocessing onto our model grid (linear resampling, z-score over the T2W's coverage): the default."""
PICAI_CROP = "picai"
"""Preprocessing as the PI-CAI U-Net's pipeline: B-spline resampling to its spacing, its centre crop or pad,
its percentile-clipped z-score (:func:`lesion_engine.model.picai_unet.pipeline.network_input`)."""
PREPROCESS_KINDS = (MODEL_GRID, PICAI_CROP)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive(name: str, values: tuple[int, ...]) -> None:
    if not values or any(int(v) < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {values!r}")


@dataclass(frozen=True)
class LocalizationNetConfig:
    """Architecture arguments of the localization network (:func:`lesion_engine.model.networks.localization_net`).

    Attributes
    ----------
    in_channels : int
        Image channels (3: T2W, ADC, HBV).
    channels : tuple of int
        Feature channels per resolution level, finest first.
    strides : tuple of (z, y, x)
        Down-sampling stride between consecutive levels; ``len(strides) == len(channels) - 1``.
    num_zones : int
        Classes of the optional zonal head (3: background, peripheral zone, transition zone; 0: no head).
    network : str
        :data:`OUR_UNET` (:class:`~lesion_engine.model.networks.LocalizationNet`, the default) or
        :data:`PICAI_UNET` (the PI-CAI baseline U-Net: strides of 1 or 2, no zonal head, so ``num_zones``
        must be 0; build it with :meth:`picai_unet`).
    out_channels : int or None
        PI-CAI U-Net only: its output channels (default 2: background, csPCa); None for our U-Net.
    lesion_channel : int or None
        PI-CAI U-Net only: the output whose logit is the lesion logit (default 1, csPCa); None for our U-Net.
    """

    in_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[Triple, ...] = ((1, 2, 2), (2, 2, 2), (1, 2, 2))
    num_zones: int = 3
    network: str = OUR_UNET
    out_channels: int | None = None
    lesion_channel: int | None = None

    @classmethod
    def picai_unet(
        cls,
        channels: tuple[int, ...],
        strides: tuple[Triple, ...],
        *,
        in_channels: int = 3,
        out_channels: int = 2,
        lesion_channel: int = 1,
    ) -> LocalizationNetConfig:
        """The configuration of a PI-CAI baseline U-Net as the localization network (no zonal head)."""
        return cls(
            in_channels=in_channels,
            channels=channels,
            strides=strides,
            num_zones=0,
            network=PICAI_UNET,
            out_channels=out_channels,
            lesion_channel=lesion_channel,
        )

    def __post_init__(self) -> None:
        if self.network not in LOCALIZATION_NETWORKS:
            raise ValueError(f"network must be one of {LOCALIZATION_NETWORKS}, got {self.network!r}")
        if self.network == PICAI_UNET:
            self._check_picai_unet()
        elif self.out_channels is not None or self.lesion_channel is not None:
            raise ValueError(
                f"out_channels and lesion_channel apply to the {PICAI_UNET!r} network only; our U-Net's "
                "channel 0 is the lesion logit and its zonal logits follow (set num_zones)"
            )
        _check_positive("channels", self.channels)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.num_zones == 1 or self.num_zones < 0:
            raise ValueError(f"num_zones must be 0 (no zonal head) or >= 2, got {self.num_zones}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"need one stride per level transition: {len(self.channels) - 1} for channels {self.channels}, "
                f"got {len(self.strides)}"
            )
        for stride in self.strides:
            if len(stride) != 3:
                raise ValueError(f"each stride is (z, y, x), got {stride!r}")
            _check_positive("stride", tuple(stride))

    def _check_picai_unet(self) -> None:
        if self.num_zones != 0:
            raise ValueError(
                f"the {PICAI_UNET!r} localization network has no zonal head: num_zones must be 0, "
                f"got {self.num_zones}"
            )
        out = 2 if self.out_channels is None else self.out_channels
        lesion = 1 if self.lesion_channel is None else self.lesion_channel
        if not _is_int(out) or out < 1:
            raise ValueError(f"out_channels must be a positive integer, got {out!r}")
        if not _is_int(lesion) or not 0 <= lesion < out:
            raise ValueError(
                f"lesion_channel must be one of the {out} output channels (0..{out - 1}), got {lesion!r}"
            )
        object.__setattr__(self, "out_channels", out)
        object.__setattr__(self, "lesion_channel", lesion)
        if len(self.channels) < 2:
            raise ValueError(
                f"the {PICAI_UNET!r} network needs at least two levels, got channels {self.channels!r}"
            )
        for stride in self.strides:
            if len(stride) != 3 or any(s not in (1, 2) for s in stride):
                raise ValueError(
                    f"each stride of the {PICAI_UNET!r} network is three values of 1 or 2, got {stride!r}"
                )

    @property
    def divisor(self) -> Triple:
        """Input sizes (z, y, x) must be multiples of this."""
        out = [1, 1, 1]
        for stride in self.strides:
            out = [o * s for o, s in zip(out, stride, strict=True)]
        return (out[0], out[1], out[2])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card); our U-Net's has no ``network`` key (as before there was a
        choice), the PI-CAI U-Net's names it with MONAI's fixed arguments, as its detection-map card does."""
        if self.network == PICAI_UNET:
            return {
                "network": PICAI_UNET,
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "channels": list(self.channels),
                "strides": [list(s) for s in self.strides],
                **PICAI_UNET_FIXED,
                "lesion_channel": self.lesion_channel,
                "num_zones": 0,
            }
        return {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "strides": [list(s) for s in self.strides],
            "num_zones": self.num_zones,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalizationNetConfig:
        """Inverse of :meth:`to_dict`."""
        network = data.get("network", OUR_UNET)
        if network == PICAI_UNET:
            return cls._picai_from_dict(data)
        if network != OUR_UNET:
            raise ValueError(f"network must be one of {LOCALIZATION_NETWORKS}, got {network!r}")
        return cls(
            in_channels=int(data["in_channels"]),
            channels=tuple(int(c) for c in data["channels"]),
            strides=tuple((int(s[0]), int(s[1]), int(s[2])) for s in data["strides"]),
            num_zones=int(data.get("num_zones", 0)),
        )

    @classmethod
    def _picai_from_dict(cls, data: dict[str, Any]) -> LocalizationNetConfig:
        for key, value in PICAI_UNET_FIXED.items():
            if data.get(key) != value:
                raise ValueError(
                    f"{key} must be {value!r} (the PI-CAI baseline U-Net), got {data.get(key)!r}"
                )
        known = {
            "network",
            "in_channels",
            "out_channels",
            "channels",
            "strides",
            "lesion_channel",
            "num_zones",
        }
        unknown = sorted(set(data) - known - set(PICAI_UNET_FIXED))
        if unknown:
            raise ValueError(f"unknown architecture arguments: {', '.join(unknown)}")
        return cls(
            in_channels=int(data["in_channels"]),
            channels=tuple(int(c) for c in data["channels"]),
            strides=tuple((int(s[0]), int(s[1]), int(s[2])) for s in data["strides"]),
            num_zones=int(data.get("num_zones", 0)),
            network=PICAI_UNET,
            out_channels=int(data["out_channels"]),
            lesion_channel=int(data["lesion_channel"]),
        )


@dataclass(frozen=True)
class ClassificationNetConfig:
    """Architecture arguments of :class:`lesion_engine.model.networks.ClassificationNet`.

    Attributes
    ----------
    in_channels : int
        Image channels plus the localization map (4).
    channels : tuple of int
        Feature channels of the convolution stages.
    patch_size : (z, y, x)
        Patch around each candidate, in model-grid voxels.
    num_categories : int
        Number of suspicion categories (4: PI-RADS-like 2, 3, 4, 5).
    """

    in_channels: int = 4
    channels: tuple[int, ...] = (16, 32, 64)
    patch_size: Triple = (8, 32, 32)
    num_categories: int = 4

    def __post_init__(self) -> None:
        _check_positive("channels", self.channels)
        _check_positive("patch_size", tuple(self.patch_size))
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size is (z, y, x), got {self.patch_size!r}")
        if self.in_channels < 2:
            raise ValueError(f"in_channels must be >= 2 (images + map), got {self.in_channels}")
        if self.num_categories < 2:
            raise ValueError(f"num_categories must be >= 2, got {self.num_categories}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card)."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassificationNetConfig:
        """Inverse of :meth:`to_dict`."""
        patch = data["patch_size"]
        return cls(
            in_channels=int(data["in_channels"]),
            channels=tuple(int(c) for c in data["channels"]),
            patch_size=(int(patch[0]), int(patch[1]), int(patch[2])),
            num_categories=int(data["num_categories"]),
        )


@dataclass(frozen=True)
class PreprocessConfig:
    """How a study becomes the networks' input (stored in the model card).

    Attributes
    ----------
    spacing_zyx : (z, y, x) mm
        Voxel spacing of the model grid.
    size_zyx : (z, y, x)
        Voxels of the model grid; must suit the localization network's divisor.
    adc_scale : float
        ADC (10^-6 mm^2/s) is divided by this (model grid only).
    hbv_source : str
        ``b1400``: the computed b1400 image when the study has no b >= 1400, else the study's HBV;
        ``native``: always the study's chosen HBV (model grid only; the PI-CAI crop reads the study's HBV,
        else the computed one, as its pipeline does).
    kind : str
        :data:`MODEL_GRID` (our grid centred on the T2W, linear resampling, z-score over the T2W's coverage;
        the default) or :data:`PICAI_CROP` (the PI-CAI U-Net's pipeline: the T2W resampled to
        ``spacing_zyx`` with B-spline, centre cropped or padded to ``size_zyx``, ADC and HBV onto that
        crop, each channel clipped at ``normalization_percentile`` and z-scored; see
        :func:`lesion_engine.model.picai_unet.pipeline.network_input`).
    normalization_percentile, diffusion_resampling, input_pixel_type
        PI-CAI crop only (None on the model grid; for the crop None means the pipeline's default):
        as :class:`~lesion_engine.model.picai_unet.config.PicaiPipeline`.
    """

    spacing_zyx: tuple[float, float, float] = (3.0, 1.0, 1.0)
    size_zyx: tuple[int, int, int] = (20, 128, 128)
    adc_scale: float = 1000.0
    hbv_source: str = "b1400"
    kind: str = MODEL_GRID
    normalization_percentile: float | None = None
    diffusion_resampling: str | None = None
    input_pixel_type: str | None = None

    def __post_init__(self) -> None:
        if len(self.spacing_zyx) != 3 or any(not s > 0 for s in self.spacing_zyx):
            raise ValueError(f"spacing_zyx must be three positive numbers (mm), got {self.spacing_zyx!r}")
        if len(self.size_zyx) != 3 or any(int(s) < 1 for s in self.size_zyx):
            raise ValueError(f"size_zyx must be three positive integers, got {self.size_zyx!r}")
        if not self.adc_scale > 0:
            raise ValueError(f"adc_scale must be positive, got {self.adc_scale}")
        if self.hbv_source not in _HBV_SOURCES:
            raise ValueError(f"hbv_source must be one of {_HBV_SOURCES}, got {self.hbv_source!r}")
        if self.kind not in PREPROCESS_KINDS:
            raise ValueError(f"kind must be one of {PREPROCESS_KINDS}, got {self.kind!r}")
        picai_only = ("normalization_percentile", "diffusion_resampling", "input_pixel_type")
        if self.kind == MODEL_GRID:
            given = [name for name in picai_only if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} apply to the {PICAI_CROP!r} preprocessing only")
            return
        if (self.adc_scale, self.hbv_source) != (1000.0, "b1400"):
            raise ValueError(
                f"adc_scale and hbv_source apply to the {MODEL_GRID!r} preprocessing only (the PI-CAI crop "
                "z-scores the ADC and reads the study's HBV, else the computed one)"
            )
        defaults = PicaiPipeline()
        for name in picai_only:
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(defaults, name))
        self.picai_pipeline()  # validates the PI-CAI settings (spacing, matrix, percentile, ...)

    @classmethod
    def picai_crop(cls, pipeline: PicaiPipeline) -> PreprocessConfig:
        """The PI-CAI crop of a detection-map model's pipeline (its spacing, matrix and normalisation)."""
        return cls(
            spacing_zyx=pipeline.spacing_zyx,
            size_zyx=pipeline.matrix_zyx,
            kind=PICAI_CROP,
            normalization_percentile=pipeline.normalization_percentile,
            diffusion_resampling=pipeline.diffusion_resampling,
            input_pixel_type=pipeline.input_pixel_type,
        )

    def picai_pipeline(self) -> PicaiPipeline:
        """The PI-CAI pipeline whose network input this preprocessing is (PI-CAI crop only).

        Raises
        ------
        ValueError
            On the model grid, or when a PI-CAI setting is out of range.
        """
        if self.kind != PICAI_CROP:
            raise ValueError(f"the {self.kind!r} preprocessing is not the PI-CAI crop")
        return PicaiPipeline(
            spacing_zyx=self.spacing_zyx,
            matrix_zyx=self.size_zyx,
            diffusion_resampling=str(self.diffusion_resampling),
            input_pixel_type=str(self.input_pixel_type),
            normalization_percentile=float(self.normalization_percentile or 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card); the model grid's has no ``kind`` key (as before there was
        a choice)."""
        if self.kind == PICAI_CROP:
            return {
                "kind": PICAI_CROP,
                "spacing_zyx": list(self.spacing_zyx),
                "size_zyx": list(self.size_zyx),
                "interpolation": "bspline",
                "normalization_percentile": self.normalization_percentile,
                "diffusion_resampling": self.diffusion_resampling,
                "input_pixel_type": self.input_pixel_type,
                "channels": ["t2w", "adc", "hbv"],
            }
        return {
            "spacing_zyx": list(self.spacing_zyx),
            "size_zyx": list(self.size_zyx),
            "adc_scale": self.adc_scale,
            "hbv_source": self.hbv_source,
            "channels": ["t2w", "adc", "hbv"],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`."""
        sp, sz = data["spacing_zyx"], data["size_zyx"]
        spacing = (float(sp[0]), float(sp[1]), float(sp[2]))
        size = (int(sz[0]), int(sz[1]), int(sz[2]))
        kind = data.get("kind", MODEL_GRID)
        if kind == PICAI_CROP:
            if data.get("interpolation", "bspline") != "bspline":
                raise ValueError(
                    f"interpolation of the PI-CAI crop is 'bspline', got {data['interpolation']!r}"
                )
            known = {
                "kind",
                "spacing_zyx",
                "size_zyx",
                "interpolation",
                "normalization_percentile",
                "diffusion_resampling",
                "input_pixel_type",
                "channels",
            }
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(f"unknown PI-CAI crop settings: {', '.join(unknown)}")
            return cls(
                spacing_zyx=spacing,
                size_zyx=size,
                kind=PICAI_CROP,
                normalization_percentile=float(data["normalization_percentile"]),
                diffusion_resampling=str(data["diffusion_resampling"]),
                input_pixel_type=str(data["input_pixel_type"]),
            )
        if kind != MODEL_GRID:
            raise ValueError(f"kind must be one of {PREPROCESS_KINDS}, got {kind!r}")
        return cls(
            spacing_zyx=spacing,
            size_zyx=size,
            adc_scale=float(data["adc_scale"]),
            hbv_source=str(data["hbv_source"]),
        )


@dataclass(frozen=True)
class CandidateConfig:
    """Settings of the dynamic-threshold candidate extraction (stored in the model card).

    Attributes
    ----------
    min_peak : float
        Stop when the highest remaining map value is below this (0..1).
    dynamic_fraction : float
        A candidate holds the voxels at or above ``peak * dynamic_fraction`` (0 < f <= 1; PI-CAI uses
        1 / 2.5 = 0.4).
    floor : float
        Lowest threshold whatever the peak (0..1).
    max_lesions : int
        At most this many candidates per study.
    min_voxels : int
        Regions with fewer voxels (on the model grid) are dropped.
    connectivity : int
        6 (faces) or 26 (faces, edges and corners) connectivity of a region.
    """

    min_peak: float = 0.1
    dynamic_fraction: float = 0.4
    floor: float = 0.05
    max_lesions: int = 5
    min_voxels: int = 10
    connectivity: int = 26

    def __post_init__(self) -> None:
        if not 0.0 < self.min_peak <= 1.0:
            raise ValueError(f"min_peak must be in (0, 1], got {self.min_peak!r}")
        if not 0.0 < self.dynamic_fraction <= 1.0:
            raise ValueError(f"dynamic_fraction must be in (0, 1], got {self.dynamic_fraction!r}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {self.floor!r}")
        if (
            isinstance(self.max_lesions, bool)
            or int(self.max_lesions) != self.max_lesions
            or self.max_lesions < 1
        ):
            raise ValueError(f"max_lesions must be a positive integer, got {self.max_lesions!r}")
        if (
            isinstance(self.min_voxels, bool)
            or int(self.min_voxels) != self.min_voxels
            or self.min_voxels < 1
        ):
            raise ValueError(f"min_voxels must be a positive integer, got {self.min_voxels!r}")
        if self.connectivity not in _CONNECTIVITIES:
            raise ValueError(f"connectivity must be 6 or 26, got {self.connectivity!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card)."""
        return {
            "min_peak": self.min_peak,
            "dynamic_fraction": self.dynamic_fraction,
            "floor": self.floor,
            "max_lesions": self.max_lesions,
            "min_voxels": self.min_voxels,
            "connectivity": self.connectivity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateConfig:
        """Inverse of :meth:`to_dict`; ``connectivity`` defaults to 26 when absent."""
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown candidate settings: {', '.join(sorted(unknown))}")
        return cls(
            min_peak=float(data["min_peak"]),
            dynamic_fraction=float(data["dynamic_fraction"]),
            floor=float(data["floor"]),
            max_lesions=int(data["max_lesions"]),
            min_voxels=int(data["min_voxels"]),
            connectivity=int(data.get("connectivity", 26)),
        )
