"""Is a series diffusion-weighted? Evidence from what really says so, never from a b-value of 0 alone.

Real scanners write b-value tags on series that are not diffusion-weighted: Philips puts DiffusionBValue
(0018,9087) = 0 with DiffusionDirectionality (0018,9075) = NONE and its private (2001,xx03) = 0 on T1, T2 and
localizer series; GE writes its private (0043,xx39) group on every MR series, first value 0 outside
diffusion; Enhanced MR objects of several vendors carry an MR Diffusion functional group with b = 0 / NONE
on every frame, whatever the sequence. A b-value of 0 is no evidence of diffusion weighting.

A series is diffusion-weighted when any of these holds (the reasons are kept for ``lesion-ai inspect``):

- its frames carry more than one distinct b-value, or any b-value above 0;
- a frame's DiffusionDirectionality is ISOTROPIC, DIRECTIONAL or BMATRIX (standard, in the MR Diffusion
  functional group, or Siemens' private (0019,xx0D)), or Philips' private diffusion direction
  (2001,xx04) names a direction (``I`` isotropic, ``O``/``P``/``S``/``M`` ...) on an image with b > 0;
- ImageType (or an Enhanced frame type) holds a diffusion value: DIFFUSION, TRACEW, TRACE, ISOTROPIC, ADC,
  EADC, FA, ...;
- AcquisitionContrast (0008,9209) is DIFFUSION (Enhanced MR);
- the Siemens SequenceName is that of a diffusion EPI (``*ep_b800t``, ``ep_b1000#3``, ``*ep_b50_800``).

In a diffusion-weighted series, images without any b-value tag next to images with b > 0 are the series'
b = 0 images (some vendors tag only the b > 0 images; dcm2niix reads them the same way). In a series that
is not diffusion-weighted the b-value tags are ignored, and the evidence says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset


class FrameHeader(Protocol):
    """What the evidence reads of one image (:class:`lesion_engine.intake.series.Frame` is one)."""

    @property
    def b_value(self) -> float | None:
        """Diffusion b-value from the headers, or None."""
        ...

    @property
    def b_value_source(self) -> str | None:
        """Where the b-value was found."""
        ...


logger = logging.getLogger(__name__)

__all__ = [
    "DIFFUSION_IMAGE_TYPES",
    "NO_B_VALUE_TAG",
    "DiffusionEvidence",
    "assess_diffusion",
    "is_directional",
]

#: ImageType / FrameType values that mark a diffusion-weighted image or a map derived from one.
DIFFUSION_IMAGE_TYPES = frozenset(
    {
        "DIFFUSION",
        "DWI",
        "TRACEW",
        "TRACE",
        "ISOTROPIC",
        "ADC",
        "EADC",
        "EXP",
        "FA",
        "DTI",
        "TENSOR",
        "COLFA",
    }
)
#: ``Frame.b_value_source`` of a b = 0 image that carried no b-value tag in a diffusion series.
NO_B_VALUE_TAG = "no b-value tag (a b = 0 image of the series)"

_WEIGHTED_DIRECTIONALITY = frozenset({"ISOTROPIC", "DIRECTIONAL", "BMATRIX"})
#: ImageType values of a trace image (the mean over the gradient directions).
_TRACE_IMAGE_TYPES = frozenset({"TRACEW", "TRACE"})
_SIEMENS_DIFFUSION_SEQUENCE = re.compile(r"(^|[*_])ep_b\d", re.IGNORECASE)


@dataclass(frozen=True)
class DiffusionEvidence:
    """What a series' headers say about diffusion weighting.

    Attributes
    ----------
    weighted : bool
        True when the series is diffusion-weighted (or a map derived from diffusion images).
    reasons : tuple of str
        Why it is, in words (empty when it is not).
    ignored_b_values : str or None
        For a series that is not diffusion-weighted but carries b-value tags: what was ignored and why.
    untagged_b0_frames : int
        Frames of a diffusion series that carried no b-value tag and were taken as b = 0.
    """

    weighted: bool
    reasons: tuple[str, ...] = ()
    ignored_b_values: str | None = None
    untagged_b0_frames: int = 0

    def describe(self) -> str:
        """One line for the series table: the evidence, or why the b-value tags were ignored."""
        if self.weighted:
            return "; ".join(self.reasons)
        return self.ignored_b_values or "no diffusion weighting in the headers"


def _upper_values(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items: Iterable[Any] = value.split("\\")
    else:
        try:
            items = list(value)
        except TypeError:
            items = [value]
    return tuple(str(v).strip().upper() for v in items)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1", errors="replace").strip("\x00 ").upper()
    return str(value).strip().upper()


def _private(ds: Dataset, group: int, creator: str, offset: int) -> Any:
    try:
        block = ds.private_block(group, creator)
    except KeyError:
        return None
    tag = block.get_tag(offset)
    return ds[tag].value if tag in ds else None


def _frame_types(ds: Dataset) -> set[str]:
    """ImageType values plus the FrameType values of an Enhanced object's frame-type groups."""
    values = set(_upper_values(ds.get("ImageType")))
    for container in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(container) or []
        for group in groups[:1] if container == "SharedFunctionalGroupsSequence" else groups:
            for seq_name in ("MRImageFrameTypeSequence", "FrameTypeSequence"):
                seq = group.get(seq_name)
                if seq:
                    values.update(_upper_values(seq[0].get("FrameType")))
    return values


def _acquisition_contrasts(ds: Dataset) -> set[str]:
    values = {_text(ds.get("AcquisitionContrast"))}
    for container in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(container) or []:
            seq = group.get("MRImageFrameTypeSequence")
            if seq:
                values.add(_text(seq[0].get("AcquisitionContrast")))
    values.discard("")
    return values


def _directionalities(ds: Dataset) -> set[str]:
    """DiffusionDirectionality values wherever a vendor wrote them (standard, functional groups, Siemens)."""
    values = {_text(ds.get("DiffusionDirectionality"))}
    values.add(_text(_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0D)))
    for container in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(container) or []:
            seq = group.get("MRDiffusionSequence")
            if seq:
                values.add(_text(seq[0].get("DiffusionDirectionality")))
    values.discard("")
    return values


def _philips_direction(ds: Dataset) -> str:
    return _text(_private(ds, 0x2001, "Philips Imaging DD 001", 0x04))


def _vector(value: Any) -> tuple[float, ...]:
    if value is None:
        return ()
    if isinstance(value, bytes | bytearray):
        return ()
    items = value.split("\\") if isinstance(value, str) else value
    try:
        return tuple(float(v) for v in (items if not isinstance(items, int | float) else [items]))
    except (TypeError, ValueError):
        return ()


def _gradient_vectors(ds: Dataset, diffusion: Dataset | None) -> list[tuple[float, ...]]:
    """Diffusion gradient directions wherever a vendor wrote them (standard, Siemens, GE, Philips, UIH)."""
    found: list[tuple[float, ...]] = []
    for item in (diffusion, ds):
        if item is None:
            continue
        found.append(_vector(item.get("DiffusionGradientOrientation")))
        for direction in item.get("DiffusionGradientDirectionSequence") or []:
            found.append(_vector(direction.get("DiffusionGradientOrientation")))
    found.append(_vector(_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0E)))
    found.append(_vector(_private(ds, 0x0065, "Image Private Header", 0x37)))
    found.append(
        tuple(v for k in (0xBB, 0xBC, 0xBD) for v in _vector(_private(ds, 0x0019, "GEMS_ACQU_01", k))[:1])
    )
    found.append(
        tuple(
            v
            for k in (0xB0, 0xB1, 0xB2)
            for v in _vector(_private(ds, 0x2005, "Philips MR Imaging DD 001", k))[:1]
        )
    )
    comment = re.match(r"\s*b=\d+\(([^)]*)\)", str(ds.get("ImageComments", "") or ""))
    if comment:  # Canon/Toshiba: "b=1500(0.445,0.000,0.895)"
        found.append(_vector(comment.group(1).split(",")))
    return [v for v in found if len(v) == 3]


def is_directional(ds: Dataset, diffusion: Dataset | None, b_value: float | None) -> bool:
    """True for a diffusion image along one gradient direction (not a trace, isotropic or b = 0 image).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance.
    diffusion : pydicom.dataset.Dataset or None
        The frame's MR Diffusion functional group item (Enhanced MR), if any.
    b_value : float or None
        The image's b-value.

    Returns
    -------
    bool
        An image whose ImageType says it is a trace (``TRACEW``, ``TRACE``) and whose gradient vector is absent
        or zero is a trace image, whatever its DiffusionDirectionality says: Siemens' multi-direction scans
        (MDDW) flag their TRACEW, ADC and calculated-b outputs DIRECTIONAL in (0019,xx0D), and dcm2niix reads
        them as trace images (vector 0 0 0). Otherwise from DiffusionDirectionality when a vendor states it
        (standard or Siemens' private (0019,xx0D)), else, for b > 0, from Philips' direction letter
        (2001,xx04) (``I`` is isotropic) or from a non-zero gradient vector (standard, Siemens, GE, Philips,
        UIH, Canon's ImageComments).
    """
    vectors = _gradient_vectors(ds, diffusion)
    oriented = any(sum(c * c for c in v) > 1e-6 for v in vectors)
    if _TRACE_IMAGE_TYPES & set(_upper_values(ds.get("ImageType"))) and not oriented:
        return False
    for item in (diffusion, ds):
        if item is None:
            continue
        stated = _text(item.get("DiffusionDirectionality"))
        if stated in ("DIRECTIONAL", "BMATRIX"):
            return True
        if stated in ("ISOTROPIC", "NONE"):
            return False
    siemens = _text(_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0D))
    if siemens in ("DIRECTIONAL", "BMATRIX", "ISOTROPIC", "NONE"):
        return siemens in ("DIRECTIONAL", "BMATRIX")
    if not b_value:
        return False
    philips = _philips_direction(ds)
    if philips:
        return philips not in ("I", "N")
    return oriented


def _fmt(values: Iterable[float]) -> str:
    return ", ".join(f"{v:g}" for v in sorted(values))


def assess_diffusion(headers: Sequence[Dataset], frames: Sequence[FrameHeader]) -> DiffusionEvidence:
    """Decide from the headers whether a series is diffusion-weighted (see the module docstring).

    Parameters
    ----------
    headers : sequence of pydicom.dataset.Dataset
        The series' instances (all of them: evidence may sit on a few images only).
    frames : sequence of Frame
        The series' frames, with the b-values read by :func:`lesion_engine.intake.bvalues.b_value_of`.

    Returns
    -------
    DiffusionEvidence
        The verdict with its reasons.
    """
    reasons: list[str] = []
    b_values = {f.b_value for f in frames if f.b_value is not None}
    if len(b_values) > 1:
        reasons.append(f"b-values {_fmt(b_values)} in one series")
    elif any(b > 0 for b in b_values):
        reasons.append(f"b = {_fmt(b_values)}")
    image_types: set[str] = set()
    contrasts: set[str] = set()
    directionalities: set[str] = set()
    sequence_names: set[str] = set()
    philips_directions: set[str] = set()
    # Series-level facts repeat on every instance; reading a few distinct headers is enough for most of
    # them, but directionality and Philips directions may differ per image, so every header is read.
    for ds in headers:
        image_types |= _frame_types(ds)
        contrasts |= _acquisition_contrasts(ds)
        directionalities |= _directionalities(ds)
        name = str(ds.get("SequenceName", "") or "").strip()
        if name:
            sequence_names.add(name)
        direction = _philips_direction(ds)
        if direction and any(f.b_value for f in frames):
            philips_directions.add(direction)
    marked = sorted(image_types & DIFFUSION_IMAGE_TYPES)
    if marked:
        reasons.append(f"ImageType {'/'.join(marked)}")
    if "DIFFUSION" in contrasts:
        reasons.append("AcquisitionContrast DIFFUSION")
    weighted_dirs = sorted(directionalities & _WEIGHTED_DIRECTIONALITY)
    if weighted_dirs:
        reasons.append(f"DiffusionDirectionality {'/'.join(weighted_dirs)}")
    if philips_directions - {"", "N"} and any((b or 0) > 0 for b in b_values):
        reasons.append(f"Philips diffusion direction (2001,xx04) {'/'.join(sorted(philips_directions))}")
    epi = sorted(n for n in sequence_names if _SIEMENS_DIFFUSION_SEQUENCE.search(n))
    if epi:
        reasons.append(f"diffusion EPI sequence {epi[0]!r}")
    if reasons:
        return DiffusionEvidence(True, tuple(reasons))
    if b_values:
        sources = sorted({f.b_value_source for f in frames if f.b_value_source})
        dirs = f", DiffusionDirectionality {'/'.join(sorted(directionalities))}" if directionalities else ""
        return DiffusionEvidence(
            False,
            ignored_b_values=(
                f"header b = {_fmt(b_values)} ({', '.join(sources)}{dirs}) ignored: a b-value of 0 alone is "
                "no diffusion weighting"
            ),
        )
    return DiffusionEvidence(False)
