"""Writing what each image says about diffusion: b-values, directionality and gradient directions.

Which vendor writes what, classic and Enhanced, is documented in :mod:`training.synth.conventions`. An
image is described by a :class:`DiffusionImage`: its class (not diffusion-weighted, trace, directional,
ADC or FA map), its b-value and, for a directional image, the gradient direction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from training.synth.conventions import (
    DIFFUSION_KINDS,
    GE_CREATOR,
    NON_DIFFUSION_KINDS,
    PHILIPS_CREATOR,
    SIEMENS_CREATOR,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ENHANCED_SHARED_B0_VENDORS",
    "IMAGE_CLASSES",
    "DiffusionImage",
    "add_classic_diffusion",
    "add_enhanced_frame_private",
    "enhanced_diffusion_item",
    "image_class",
]

IMAGE_CLASSES: tuple[str, ...] = ("none", "trace", "directional", "adc_map", "fa_map")
"""``none``: not diffusion-weighted; ``trace``: an isotropic (or b = 0) diffusion image; ``directional``: a
DTI image at b > 0 along one gradient direction; ``adc_map`` / ``fa_map``: derived parametric maps."""

ENHANCED_SHARED_B0_VENDORS = frozenset({"ge", "standard"})
"""Vendors whose Enhanced objects put the b = 0 diffusion group of non-diffusion series in the shared
functional groups (the others repeat it in every frame's group)."""

GE_ACQU_CREATOR = "GEMS_ACQU_01"
GE_B_BIAS = 1_000_000_000
# GE (0043,xx30) "Vas collapse flag": the kind of a DTI image.
_GE_IMAGE_KIND = {"b0": 14, "directional": 16, "fa_map": 18, "trace": 19}


@dataclass(frozen=True)
class DiffusionImage:
    """What one image (or frame) is, as far as diffusion goes.

    Attributes
    ----------
    image
        One of :data:`IMAGE_CLASSES`.
    b_value
        b-value in s/mm2 (the largest fitted one for an ADC map; 0 when not diffusion-weighted).
    direction
        Unit gradient direction (LPS) of a directional image.
    dti
        Whether the image belongs to a multi-direction (DTI) acquisition (GE writes those without the 10^9
        bias and with an image kind).
    flagged_directional
        A trace image or map that Siemens flags DIRECTIONAL in (0019,xx0D) nevertheless (an MDDW output).
    """

    image: str
    b_value: int = 0
    direction: tuple[float, float, float] | None = None
    dti: bool = False
    flagged_directional: bool = False

    def __post_init__(self) -> None:
        if self.image not in IMAGE_CLASSES:
            raise ValueError(
                f"unknown image class {self.image!r}: expected one of {', '.join(IMAGE_CLASSES)}"
            )
        if (self.image == "directional") != (self.direction is not None):
            raise ValueError("a directional image needs a gradient direction, and only it has one")


def image_class(kind: str, directional: bool = False) -> str | None:
    """The :data:`IMAGE_CLASSES` value of an image of a series of ``kind`` (None: not an MR image)."""
    if kind in NON_DIFFUSION_KINDS:
        return "none"
    if kind in DIFFUSION_KINDS:
        return "directional" if directional else "trace"
    if kind == "adc":
        return "adc_map"
    if kind == "fa":
        return "fa_map"
    return None


def _siemens(ds: Dataset, img: DiffusionImage, as_ob: bool) -> None:
    if img.image in ("none", "fa_map"):
        return
    block = ds.private_block(0x0019, SIEMENS_CREATOR, create=True)
    text = str(img.b_value)
    if as_ob:
        raw = text.encode("ascii")
        block.add_new(0x0C, "OB", raw + b" " if len(raw) % 2 else raw)
    else:
        block.add_new(0x0C, "IS", text)
    if img.image == "directional" or img.flagged_directional:
        directionality = "DIRECTIONAL"
    else:
        directionality = "ISOTROPIC" if img.b_value > 0 or img.image == "adc_map" else "NONE"
    raw_dir = directionality.encode("ascii")
    block.add_new(
        0x0D,
        "OB" if as_ob else "CS",
        (raw_dir + b" " if len(raw_dir) % 2 else raw_dir) if as_ob else directionality,
    )
    if img.direction is not None:
        block.add_new(0x0E, "FD", [float(v) for v in img.direction])


def _ge(ds: Dataset, img: DiffusionImage) -> None:
    block = ds.private_block(0x0043, GE_CREATOR, create=True)
    if img.image in ("none", "fa_map"):
        block.add_new(0x39, "IS", ["0", "0", "0", "0"])
    else:
        bias = 0 if img.dti else GE_B_BIAS
        block.add_new(0x39, "IS", [str(bias + img.b_value), "8", "0", "0"])
    if not img.dti:
        return
    kind = "b0" if img.image == "trace" and img.b_value == 0 else img.image
    if kind in _GE_IMAGE_KIND:
        block.add_new(0x30, "SS", _GE_IMAGE_KIND[kind])
    if img.image in ("trace", "directional") and img.b_value > 0:
        ds.DiffusionBValue = float(img.b_value)
    if kind in ("b0", "directional"):
        # The scan's own images carry their gradient vector (zero at b = 0); derived series do not.
        gradient = img.direction if img.direction is not None else (0.0, 0.0, 0.0)
        acqu = ds.private_block(0x0019, GE_ACQU_CREATOR, create=True)
        for offset, value in zip((0xBB, 0xBC, 0xBD), gradient, strict=True):
            acqu.add_new(offset, "DS", f"{value:.6f}".rstrip("0").rstrip(".") or "0")


def _philips(ds: Dataset, img: DiffusionImage) -> None:
    if img.image in ("adc_map", "fa_map"):
        return
    if img.image == "none":
        ds.DiffusionBValue = 0.0
        ds.DiffusionDirectionality = "NONE"
    block = ds.private_block(0x2001, PHILIPS_CREATOR, create=True)
    block.add_new(0x03, "FL", float(img.b_value))
    if img.image == "directional":
        block.add_new(0x04, "CS", "O")
    elif img.image == "trace" and img.b_value > 0:
        block.add_new(0x04, "CS", "I")


def _standard(ds: Dataset, img: DiffusionImage) -> None:
    if img.image == "trace" and img.b_value > 0:
        ds.DiffusionBValue = float(img.b_value)
        ds.DiffusionDirectionality = "ISOTROPIC"


def add_classic_diffusion(ds: Dataset, vendor: str, img: DiffusionImage, siemens_as_ob: bool = True) -> None:
    """Write what ``vendor`` writes about diffusion into a classic (single-frame) MR image.

    Parameters
    ----------
    ds
        The dataset of one image.
    vendor
        ``siemens``, ``ge``, ``philips`` or ``standard``.
    img
        What the image is.
    siemens_as_ob
        For Siemens, write (0019,xx0C) and (0019,xx0D) as OB bytes (as archived data often has them) rather
        than as IS and CS.
    """
    if vendor == "siemens":
        _siemens(ds, img, siemens_as_ob)
    elif vendor == "ge":
        _ge(ds, img)
    elif vendor == "philips":
        _philips(ds, img)
    elif vendor == "standard":
        _standard(ds, img)
    else:
        raise ValueError(f"unknown vendor {vendor!r}")
    if img.direction is not None:
        # Every vendor marks the DTI images it writes with the standard attributes too.
        ds.DiffusionDirectionality = "DIRECTIONAL"
        ds.DiffusionGradientOrientation = [float(v) for v in img.direction]
        if vendor == "standard":
            ds.DiffusionBValue = float(img.b_value)


def enhanced_diffusion_item(vendor: str, img: DiffusionImage) -> Dataset | None:
    """The MRDiffusionSequence item of an Enhanced MR frame (None for ADC and FA maps, which carry none).

    Parameters
    ----------
    vendor
        ``siemens``, ``ge``, ``philips`` or ``standard``: Siemens writes directional frames as ``BMATRIX``
        with the b-matrix, the others as ``DIRECTIONAL``.
    img
        What the frame is.
    """
    if img.image in ("adc_map", "fa_map"):
        return None
    out = Dataset()
    out.DiffusionBValue = float(img.b_value)
    if img.direction is None:
        out.DiffusionDirectionality = "ISOTROPIC" if img.image == "trace" and img.b_value > 0 else "NONE"
        return out
    gradient = Dataset()
    gradient.DiffusionGradientOrientation = [float(v) for v in img.direction]
    out.DiffusionDirectionality = "BMATRIX" if vendor == "siemens" else "DIRECTIONAL"
    out.DiffusionGradientDirectionSequence = Sequence([gradient])
    if vendor == "siemens":
        g = img.direction
        matrix = Dataset()
        for keyword, (i, j) in (
            ("DiffusionBValueXX", (0, 0)),
            ("DiffusionBValueXY", (0, 1)),
            ("DiffusionBValueXZ", (0, 2)),
            ("DiffusionBValueYY", (1, 1)),
            ("DiffusionBValueYZ", (1, 2)),
            ("DiffusionBValueZZ", (2, 2)),
        ):
            setattr(matrix, keyword, round(float(img.b_value * g[i] * g[j]), 3))
        out.DiffusionBMatrixSequence = Sequence([matrix])
    return out


def add_enhanced_frame_private(group: Dataset, vendor: str, img: DiffusionImage) -> None:
    """Vendor-private per-frame elements: Philips' (2001,xx03) b-value in the frame's functional group item."""
    if vendor == "philips" and img.image in ("none", "trace", "directional"):
        block = group.private_block(0x2001, PHILIPS_CREATOR, create=True)
        block.add_new(0x03, "FL", float(img.b_value))
