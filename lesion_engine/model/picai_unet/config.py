"""The PI-CAI U-Net's inference pipeline as data (stored in the model card), with the reference as default.

The steps of the authors' ``process.py`` (grand-challenge algorithm
``DIAGNijmegen/picai_unet_semi_supervised_gc_algorithm``), in order, and the field of
:class:`PicaiPipeline` that holds each one's parameters:

1. picai_prep ``Sample.preprocess()``: each scan resampled to ``spacing_zyx`` (B-spline), centre cropped or
   padded to ``matrix_zyx``, ADC and HBV then resampled onto the cropped T2W (B-spline);
   ``diffusion_resampling`` ``reference`` does exactly that, ``direct`` resamples ADC and HBV from their
   own grids straight onto the cropped T2W (one interpolation instead of two: a deliberate difference, off
   by default). ``input_pixel_type`` ``dicom`` takes a series as SimpleITK reads it from DICOM (picai_prep's
   ``dcm2mha`` conversion): in its integer pixel type (SimpleITK's resampling keeps it, truncating) and
   with SimpleITK's slice spacing; ``float32``: our volumes as they are;
2. z-score normalisation per sequence after clipping at the ``normalization_percentile`` and its mirror;
3. ``flip_tta``: the left-right flipped input too;
4. the sigmoid of ``output_channel``, then a Gaussian blur of ``blur_sigma`` voxels (0: none);
5. the mean over the folds (and flips);
6. the centre crop and the resampling undone, back to the T2W grid (B-spline);
7. dynamic lesion candidates (``extraction``, report_guided_annotation's ``threshold='dynamic'``);
8. candidates below the map's maximum / ``weak_candidate_divisor`` removed (the reference's max / 5);
9. the case-level likelihood: the detection map's maximum.

This module imports neither torch nor numpy (the Orthanc plugin reads model cards).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "CROP_RESAMPLING",
    "DIFFUSION_RESAMPLING",
    "INPUT_PIXEL_TYPES",
    "DynamicExtraction",
    "PicaiPipeline",
]

DIFFUSION_RESAMPLING = ("reference", "direct")
CROP_RESAMPLING = ("whole", "crop")
_EXTRACTION_METHOD = (
    "report_guided_annotation 0.3.4 extract_lesion_candidates (version 1: threshold='dynamic')"
)
INPUT_PIXEL_TYPES = ("dicom", "float32")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (low < value if low_open else low <= value) or not value <= high:
        bound = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bound}{low}, {high}], got {value!r}")


def _unknown(kind: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {kind} settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def _is_int(value: object) -> bool:
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and type(value).__name__ != "bool_"
    )


def _is_real(value: object) -> bool:
    return _is_int(value) or (isinstance(value, numbers.Real) and not isinstance(value, bool))


@dataclass(frozen=True)
class DynamicExtraction:
    """Settings of the dynamic extraction, named as ``extract_lesion_candidates_dynamic`` names them.

    Attributes
    ----------
    min_voxels_detection : int
        Components of this many voxels or fewer are dropped (``>= 0``).
    num_lesions_to_extract : int
        Most lesion candidates returned (``>= 1``).
    dynamic_threshold_factor : float
        A candidate holds the voxels of at least its peak divided by this factor (finite, ``> 1``).
    remove_adjacent_lesion_candidates : bool
        Drop a candidate that touches (26-connectivity) one already extracted.
    max_prob_failsafe_stopping_threshold : float
        Stop when the working map's maximum is below this (finite, ``> 0``).
    version : int
        1: ``threshold='dynamic'``, with its bug; 2: ``threshold='dynamic-v2'``.
    """

    min_voxels_detection: int = 10
    num_lesions_to_extract: int = 5
    dynamic_threshold_factor: float = 2.5
    remove_adjacent_lesion_candidates: bool = True
    max_prob_failsafe_stopping_threshold: float = 0.01
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("min_voxels_detection", "num_lesions_to_extract", "version"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("dynamic_threshold_factor", "max_prob_failsafe_stopping_threshold"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(float(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.remove_adjacent_lesion_candidates, bool):
            raise ValueError(
                f"remove_adjacent_lesion_candidates must be a bool, got {self.remove_adjacent_lesion_candidates!r}"
            )
        if self.min_voxels_detection < 0:
            raise ValueError(f"min_voxels_detection must be >= 0, got {self.min_voxels_detection}")
        if self.num_lesions_to_extract < 1:
            raise ValueError(f"num_lesions_to_extract must be >= 1, got {self.num_lesions_to_extract}")
        if self.dynamic_threshold_factor <= 1.0:
            raise ValueError(
                f"dynamic_threshold_factor must be > 1 (else the threshold is not below the peak), "
                f"got {self.dynamic_threshold_factor}"
            )
        if self.max_prob_failsafe_stopping_threshold <= 0.0:
            raise ValueError(
                f"max_prob_failsafe_stopping_threshold must be > 0 (else the extraction may never stop), "
                f"got {self.max_prob_failsafe_stopping_threshold}"
            )
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 ('dynamic') or 2 ('dynamic-v2'), got {self.version}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dictionary (the keys of :meth:`from_dict`)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DynamicExtraction:
        """Settings from a mapping; missing keys take their defaults.

        Raises
        ------
        ValueError
            On unknown keys (all named) or invalid values.
        """
        known = {field.name for field in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(
                f"unknown DynamicExtraction settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**dict(data))


@dataclass(frozen=True)
class PicaiPipeline:
    """The PI-CAI U-Net's inference pipeline (see the module docstring); defaults are the reference's.

    Attributes
    ----------
    spacing_zyx : (z, y, x) mm
        Spacing the scans are resampled to.
    matrix_zyx : (z, y, x)
        Size of the centre crop (or pad) fed to the networks.
    crop_resampling : str
        ``whole`` (each scan resampled whole, then cropped, as the reference) or ``crop`` (only the crop
        computed: faster, equal but for the last bits of ITK's arithmetic, which the reference's truncation
        of integer series can turn into a difference of 1 at a few voxels).
    diffusion_resampling : str
        ``reference`` (own grid, crop, then onto the T2W crop) or ``direct`` (straight onto the T2W crop).
    input_pixel_type : str
        ``dicom`` (a series as SimpleITK reads it from DICOM: its integer pixel type and slice spacing, as the
        reference sees it) or ``float32`` (our volumes as they are).
    normalization_percentile : float
        Intensities are clipped at this percentile and at 100 minus it before the z-score (50 to 100).
    flip_tta : bool
        Average with the prediction on the left-right flipped input.
    output_channel : int
        The network output whose sigmoid is the csPCa likelihood.
    blur_sigma : float
        Gaussian blur of each prediction, in voxels of the crop (0: none).
    extraction : DynamicExtraction
        Lesion-candidate extraction on the map on the T2W grid.
    weak_candidate_divisor : float
        Candidates below the map's maximum divided by this are removed (0: none; the reference: 5).
    """

    spacing_zyx: tuple[float, float, float] = (3.0, 0.5, 0.5)
    matrix_zyx: tuple[int, int, int] = (20, 256, 256)
    crop_resampling: str = "whole"
    diffusion_resampling: str = "reference"
    input_pixel_type: str = "dicom"
    normalization_percentile: float = 99.5
    flip_tta: bool = True
    output_channel: int = 1
    blur_sigma: float = 1.5
    extraction: DynamicExtraction = field(default_factory=DynamicExtraction)
    weak_candidate_divisor: float = 5.0

    def __post_init__(self) -> None:
        if len(self.spacing_zyx) != 3:
            raise ValueError(f"spacing_zyx must be three numbers (mm), got {self.spacing_zyx!r}")
        for value in self.spacing_zyx:
            _number("spacing_zyx", value, 0.0, 100.0, low_open=True)
        object.__setattr__(self, "spacing_zyx", tuple(float(v) for v in self.spacing_zyx))
        if len(self.matrix_zyx) != 3:
            raise ValueError(f"matrix_zyx must be three integers, got {self.matrix_zyx!r}")
        for value in self.matrix_zyx:
            _positive_int("matrix_zyx", value)
            if value > 4096:
                raise ValueError(f"matrix_zyx values must be at most 4096, got {value}")
        if self.crop_resampling not in CROP_RESAMPLING:
            raise ValueError(
                f"crop_resampling must be one of {CROP_RESAMPLING}, got {self.crop_resampling!r}"
            )
        if self.diffusion_resampling not in DIFFUSION_RESAMPLING:
            raise ValueError(
                f"diffusion_resampling must be one of {DIFFUSION_RESAMPLING}, got {self.diffusion_resampling!r}"
            )
        if self.input_pixel_type not in INPUT_PIXEL_TYPES:
            raise ValueError(
                f"input_pixel_type must be one of {INPUT_PIXEL_TYPES}, got {self.input_pixel_type!r}"
            )
        _number("normalization_percentile", self.normalization_percentile, 50.0, 100.0)
        if not isinstance(self.flip_tta, bool):
            raise ValueError(f"flip_tta must be true or false, got {self.flip_tta!r}")
        if isinstance(self.output_channel, bool) or not isinstance(self.output_channel, int):
            raise ValueError(f"output_channel must be an integer, got {self.output_channel!r}")
        if self.output_channel < 0:
            raise ValueError(f"output_channel must be >= 0, got {self.output_channel}")
        _number("blur_sigma", self.blur_sigma, 0.0, 20.0)
        if not isinstance(self.extraction, DynamicExtraction):
            raise ValueError(f"extraction must be a DynamicExtraction, got {type(self.extraction).__name__}")
        _number("weak_candidate_divisor", self.weak_candidate_divisor, 0.0, 1000.0)
        if 0 < self.weak_candidate_divisor < 1:
            raise ValueError(
                f"weak_candidate_divisor must be 0 (off) or at least 1, got {self.weak_candidate_divisor}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the steps in order, with their parameters (for the model card)."""
        return {
            "reference": "process.py of DIAGNijmegen/picai_unet_semi_supervised_gc_algorithm",
            "spacing_zyx": list(self.spacing_zyx),
            "matrix_zyx": list(self.matrix_zyx),
            "interpolation": "bspline",
            "crop_resampling": self.crop_resampling,
            "diffusion_resampling": self.diffusion_resampling,
            "input_pixel_type": self.input_pixel_type,
            "normalization_percentile": self.normalization_percentile,
            "flip_tta": self.flip_tta,
            "output_channel": self.output_channel,
            "blur_sigma": self.blur_sigma,
            "ensemble": "mean",
            "undo": "crop_or_pad, then bspline resampling to the T2W spacing",
            "extraction": {"method": _EXTRACTION_METHOD, **self.extraction.to_dict()},
            "weak_candidate_divisor": self.weak_candidate_divisor,
            "case_level": "max",
            "steps": [
                "picai_prep Sample.preprocess: resample to spacing_zyx, centre crop or pad to matrix_zyx, "
                "ADC and HBV onto the cropped T2W",
                "z-score normalisation per sequence, clipped at normalization_percentile",
                "left-right flip test-time augmentation" if self.flip_tta else "no test-time augmentation",
                f"sigmoid of output {self.output_channel}, Gaussian blur sigma {self.blur_sigma}",
                "mean over the folds",
                "crop and resampling undone, back to the T2W grid",
                "report_guided_annotation.extract_lesion_candidates(threshold='dynamic')",
                f"candidates below max / {self.weak_candidate_divisor} removed"
                if self.weak_candidate_divisor
                else "no removal of weak candidates",
                "case-level likelihood: the maximum of the detection map",
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PicaiPipeline:
        """Inverse of :meth:`to_dict` (the descriptive fields are checked, not stored)."""
        fixed = {
            "interpolation": "bspline",
            "ensemble": "mean",
            "case_level": "max",
        }
        for key, value in fixed.items():
            if key in data and data[key] != value:
                raise ValueError(f"{key} must be {value!r}, got {data[key]!r}")
        known = {
            *fixed,
            "reference",
            "undo",
            "steps",
            "spacing_zyx",
            "matrix_zyx",
            "crop_resampling",
            "diffusion_resampling",
            "input_pixel_type",
            "normalization_percentile",
            "flip_tta",
            "output_channel",
            "blur_sigma",
            "extraction",
            "weak_candidate_divisor",
        }
        _unknown("pipeline", data, known)
        defaults = cls()
        spacing = data.get("spacing_zyx", list(defaults.spacing_zyx))
        matrix = data.get("matrix_zyx", list(defaults.matrix_zyx))
        if not isinstance(spacing, list | tuple) or len(spacing) != 3:
            raise ValueError(f"spacing_zyx must be [z, y, x], got {spacing!r}")
        if not isinstance(matrix, list | tuple) or len(matrix) != 3:
            raise ValueError(f"matrix_zyx must be [z, y, x], got {matrix!r}")
        extraction = (
            dict(data.get("extraction", {})) if isinstance(data.get("extraction", {}), Mapping) else None
        )
        if extraction is None:
            raise ValueError(f"extraction must be an object, got {type(data['extraction']).__name__}")
        method = extraction.pop("method", _EXTRACTION_METHOD)
        if method != _EXTRACTION_METHOD:
            raise ValueError(f"extraction.method must be {_EXTRACTION_METHOD!r}, got {method!r}")
        return cls(
            spacing_zyx=(spacing[0], spacing[1], spacing[2]),
            matrix_zyx=(matrix[0], matrix[1], matrix[2]),
            crop_resampling=data.get("crop_resampling", defaults.crop_resampling),
            diffusion_resampling=data.get("diffusion_resampling", defaults.diffusion_resampling),
            input_pixel_type=data.get("input_pixel_type", defaults.input_pixel_type),
            normalization_percentile=data.get("normalization_percentile", defaults.normalization_percentile),
            flip_tta=data.get("flip_tta", defaults.flip_tta),
            output_channel=data.get("output_channel", defaults.output_channel),
            blur_sigma=data.get("blur_sigma", defaults.blur_sigma),
            extraction=DynamicExtraction.from_dict(extraction),
            weak_candidate_divisor=data.get("weak_candidate_divisor", defaults.weak_candidate_divisor),
        )

    def replace(self, **changes: Any) -> PicaiPipeline:
        """A copy with some fields changed (validated)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        unknown = sorted(set(changes) - set(values))
        if unknown:
            raise ValueError(f"unknown pipeline settings: {', '.join(unknown)}")
        values.update(changes)
        return PicaiPipeline(**values)
