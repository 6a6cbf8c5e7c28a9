"""Settings of the PI-CAI nnU-Net pipeline, as the model card records them (no numpy, no torch: the Orthanc
plugin reads model cards)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lesion_engine.model.picai_unet.config import DynamicExtraction

__all__ = ["NnunetPipeline"]

_REFERENCE = (
    "process.py of DIAGNijmegen/picai_nnunet_semi_supervised_gc_algorithm (nnUNet_predict, nnunet 1.7.0)"
)


@dataclass(frozen=True)
class NnunetPipeline:
    """Settings of the PI-CAI nnU-Net pipeline; defaults are the reference's.

    Attributes
    ----------
    step_size : float
        Sliding-window step as a fraction of the patch (``nnUNet_predict``'s 0.5).
    mirroring : bool
        Test-time mirroring along the three axes (on in ``nnUNet_predict``).
    mixed_precision : bool
        ``autocast`` on CUDA (``nnUNet_predict``'s default); nothing changes on the CPU.
    central_crop_zyx : (z, y, x)
        The map is 0 outside this centre region of the T2W grid.
    extraction : DynamicExtraction
        The candidate extraction's settings (report_guided_annotation's defaults).
    """

    step_size: float = 0.5
    mirroring: bool = True
    mixed_precision: bool = True
    central_crop_zyx: tuple[int, int, int] = (20, 384, 384)
    extraction: DynamicExtraction = field(default_factory=DynamicExtraction)

    def __post_init__(self) -> None:
        if isinstance(self.step_size, bool) or not isinstance(self.step_size, int | float):
            raise ValueError(f"step_size must be a number, got {self.step_size!r}")
        if not (math.isfinite(float(self.step_size)) and 0 < self.step_size <= 1):
            raise ValueError(f"step_size must be in (0, 1], got {self.step_size!r}")
        for name in ("mirroring", "mixed_precision"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        crop = tuple(self.central_crop_zyx)
        if len(crop) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in crop):
            raise ValueError(
                f"central_crop_zyx must be three positive integers, got {self.central_crop_zyx!r}"
            )
        object.__setattr__(self, "central_crop_zyx", (crop[0], crop[1], crop[2]))
        if not isinstance(self.extraction, DynamicExtraction):
            raise ValueError(f"extraction must be a DynamicExtraction, got {type(self.extraction).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card), with the steps in words."""
        return {
            "reference": _REFERENCE,
            "step_size": self.step_size,
            "mirroring": self.mirroring,
            "mixed_precision": self.mixed_precision,
            "central_crop_zyx": list(self.central_crop_zyx),
            "extraction": self.extraction.to_dict(),
            "case_level": "max",
            "steps": [
                "picai_prep Sample.preprocess (defaults): ADC and HBV resampled onto the T2W (B-spline)",
                "nnU-Net GenericPreprocessor: crop to nonzero, resample to the plans' spacing, normalise per plans",
                "nnU-Net predict_3D: sliding windows, Gaussian weighting"
                + (", mirroring along 3 axes" if self.mirroring else ""),
                "mean of the folds' softmax; resampled back, float16 (npz), into the T2W's extent",
                f"0 outside the central {' x '.join(str(v) for v in self.central_crop_zyx)} voxels",
                "report_guided_annotation.extract_lesion_candidates(threshold='dynamic')",
                "case-level likelihood: the maximum of the detection map",
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NnunetPipeline:
        """Inverse of :meth:`to_dict` (the descriptive fields are checked, not stored)."""
        known = {"reference", "steps", "case_level", "step_size", "mirroring", "mixed_precision"}
        known |= {"central_crop_zyx", "extraction"}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown pipeline settings: {', '.join(unknown)}")
        if data.get("case_level", "max") != "max":
            raise ValueError(f"case_level must be 'max', got {data['case_level']!r}")
        defaults = cls()
        crop = data.get("central_crop_zyx", list(defaults.central_crop_zyx))
        if not isinstance(crop, list | tuple) or len(crop) != 3:
            raise ValueError(f"central_crop_zyx must be [z, y, x], got {crop!r}")
        extraction = data.get("extraction", {})
        if not isinstance(extraction, Mapping):
            raise ValueError("extraction must be an object")
        return cls(
            step_size=data.get("step_size", defaults.step_size),
            mirroring=data.get("mirroring", defaults.mirroring),
            mixed_precision=data.get("mixed_precision", defaults.mixed_precision),
            central_crop_zyx=(crop[0], crop[1], crop[2]),
            extraction=DynamicExtraction.from_dict(extraction),
        )
