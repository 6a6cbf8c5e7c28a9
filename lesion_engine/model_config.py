"""The settings a model card records: network architectures, preprocessing and candidate extraction.

Plain frozen dataclasses, validated on construction, with ``to_dict`` / ``from_dict`` for ``model.json``.
They import neither torch nor numpy, so that a model card can be read where the engine is not loaded
(:mod:`lesion_engine.model_card`). The modules that use them re-export them:
:mod:`lesion_engine.networks`, :mod:`lesion_engine.model_input` and :mod:`lesion_engine.candidates`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "CandidateConfig",
    "ClassificationNetConfig",
    "LocalizationNetConfig",
    "PreprocessConfig",
]

Triple = tuple[int, int, int]

_HBV_SOURCES = ("b1400", "native")
_CONNECTIVITIES = (6, 26)


def _check_positive(name: str, values: tuple[int, ...]) -> None:
    if not values or any(int(v) < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {values!r}")


@dataclass(frozen=True)
class LocalizationNetConfig:
    """Architecture arguments of :class:`lesion_engine.networks.LocalizationNet`.

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
    """

    in_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[Triple, ...] = ((1, 2, 2), (2, 2, 2), (1, 2, 2))
    num_zones: int = 3

    def __post_init__(self) -> None:
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

    @property
    def divisor(self) -> Triple:
        """Input sizes (z, y, x) must be multiples of this."""
        out = [1, 1, 1]
        for stride in self.strides:
            out = [o * s for o, s in zip(out, stride, strict=True)]
        return (out[0], out[1], out[2])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card)."""
        return {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "strides": [list(s) for s in self.strides],
            "num_zones": self.num_zones,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalizationNetConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            in_channels=int(data["in_channels"]),
            channels=tuple(int(c) for c in data["channels"]),
            strides=tuple((int(s[0]), int(s[1]), int(s[2])) for s in data["strides"]),
            num_zones=int(data.get("num_zones", 0)),
        )


@dataclass(frozen=True)
class ClassificationNetConfig:
    """Architecture arguments of :class:`lesion_engine.networks.ClassificationNet`.

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
        ADC (10^-6 mm^2/s) is divided by this.
    hbv_source : str
        ``b1400``: the computed b1400 image when the study has no b >= 1400, else the study's HBV;
        ``native``: always the study's chosen HBV.
    """

    spacing_zyx: tuple[float, float, float] = (3.0, 1.0, 1.0)
    size_zyx: tuple[int, int, int] = (20, 128, 128)
    adc_scale: float = 1000.0
    hbv_source: str = "b1400"

    def __post_init__(self) -> None:
        if len(self.spacing_zyx) != 3 or any(not s > 0 for s in self.spacing_zyx):
            raise ValueError(f"spacing_zyx must be three positive numbers (mm), got {self.spacing_zyx!r}")
        if len(self.size_zyx) != 3 or any(int(s) < 1 for s in self.size_zyx):
            raise ValueError(f"size_zyx must be three positive integers, got {self.size_zyx!r}")
        if not self.adc_scale > 0:
            raise ValueError(f"adc_scale must be positive, got {self.adc_scale}")
        if self.hbv_source not in _HBV_SOURCES:
            raise ValueError(f"hbv_source must be one of {_HBV_SOURCES}, got {self.hbv_source!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card)."""
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
        return cls(
            spacing_zyx=(float(sp[0]), float(sp[1]), float(sp[2])),
            size_zyx=(int(sz[0]), int(sz[1]), int(sz[2])),
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
