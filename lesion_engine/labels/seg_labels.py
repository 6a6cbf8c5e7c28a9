"""Training labels from a radiologist's DICOM Segmentation (SEG), mapped onto the T2W grid.

Convention (``lesion-ai dataset build``): each lesion segment states its grade in its SegmentLabel or
SegmentDescription (0062,0006), case-insensitive:

* ``ISUP 3`` (also ``ISUP grade 3``, ``ISUP=3``, ``GG 3``): the histopathological ISUP grade group 0..5;
* ``PI-RADS 4`` (also ``PIRADS 4``, ``PI-RADS v2.1 4``): the radiologist's PI-RADS category 1..5.

When both are stated, ISUP wins. In the PI-CAI lesion label a segment becomes its ISUP grade when ISUP >= 2
(csPCa), and ``0`` when ISUP is 0 or 1 (not clinically significant). A PI-RADS-only segment becomes ``1``
("csPCa, grade unknown", as PI-CAI's AI-derived labels; left out of the category loss) when its category is
at least :attr:`SegLabelOptions.pirads_cspca`, else ``0``. A segment whose SegmentedPropertyType is the
prostate (SCT 41216001) or whose label is ``prostate``/``gland`` (without a grade) is the gland mask; segments
of the peripheral or transition zone are ignored. Any other segment without a grade is an error: the case is
skipped with a message that says which segment and how to name it.

The node's own SEGs (Manufacturer, or a processing Contributing Equipment without any manual segment, naming
the node) are never used as labels: :func:`node_made`. The grade convention and :func:`node_made` live in
:mod:`lesion_engine.labels.seg_convention`, shared with the node (which records the SEGs radiologists send back).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from lesion_engine.errors import LesionAIError
from lesion_engine.labels.seg_convention import node_made, parse_grade
from lesion_engine.results.settings import PRODUCT_NAME

logger = logging.getLogger(__name__)

__all__ = [
    "SEG_SOP_CLASS_UID",
    "LabelError",
    "SegLabelOptions",
    "SegLabels",
    "SegmentGrade",
    "node_made",
    "parse_grade",
    "read_seg_labels",
]

SEG_SOP_CLASS_UID = str(SegmentationStorage)
_PROSTATE_CODE = "41216001"
_ZONE_CODES = frozenset({"279706003", "399384005"})
_GLAND = re.compile(r"\b(?:prostate|gland|whole[ _-]?gland)\b", re.IGNORECASE)
# Frame positions must fall on T2W voxel centres within this fraction of a voxel.
_POSITION_TOLERANCE = 0.1


class LabelError(LesionAIError, ValueError):
    """A label input (label file or SEG) cannot be used; the message says which and how to fix it."""


@dataclass(frozen=True)
class SegLabelOptions:
    """How SEG segments become PI-CAI label values.

    Attributes
    ----------
    pirads_cspca : int or None
        A PI-RADS-only segment at or above this category is csPCa with unknown grade (label value 1);
        None: PI-RADS-only segments are never csPCa.
    node_manufacturers : tuple of str
        Manufacturer names of this product's own results (``ResultSettings.manufacturer``; by default the
        product's name, :data:`lesion_engine.results.settings.PRODUCT_NAME`).
    """

    pirads_cspca: int | None = 4
    node_manufacturers: tuple[str, ...] = (PRODUCT_NAME,)

    def __post_init__(self) -> None:
        if self.pirads_cspca is not None and self.pirads_cspca not in (1, 2, 3, 4, 5):
            raise ValueError(
                f"pirads_cspca must be a PI-RADS category 1..5 or None, got {self.pirads_cspca!r}"
            )
        if not self.node_manufacturers or any(not n.strip() for n in self.node_manufacturers):
            raise ValueError("node_manufacturers must name at least one non-empty Manufacturer")


@dataclass(frozen=True)
class SegmentGrade:
    """What one segment states and what it became.

    Attributes
    ----------
    segment_number : int
    label : str
        SegmentLabel.
    isup, pirads : int or None
        The stated grade group and PI-RADS category.
    value : int
        Its value in the PI-CAI lesion label (0: not csPCa, 1: csPCa of unknown grade, 2..5: ISUP).
    voxels : int
        Voxels on the T2W grid.
    """

    segment_number: int
    label: str
    isup: int | None
    pirads: int | None
    value: int
    voxels: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "segment_number": self.segment_number,
            "label": self.label,
            "isup": self.isup,
            "pirads": self.pirads,
            "value": self.value,
            "voxels": self.voxels,
        }


@dataclass
class SegLabels:
    """A SEG's labels on the T2W grid.

    Attributes
    ----------
    lesion : ndarray
        int16 (Z, Y, X) PI-CAI lesion label (see the module docstring).
    gland : ndarray or None
        uint8 (Z, Y, X) gland mask, when the SEG has a prostate segment.
    segments : list of SegmentGrade
        The lesion segments.
    ignored : list of str
        Segments that were left out, and why.
    """

    lesion: NDArray[np.int16]
    gland: NDArray[np.uint8] | None
    segments: list[SegmentGrade] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _codes(item: Dataset) -> set[str]:
    return {str(code.get("CodeValue", "")) for code in item.get("SegmentedPropertyTypeCodeSequence", [])}


def _classify(
    seg: Dataset, options: SegLabelOptions, where: str
) -> tuple[dict[int, SegmentGrade], set[int], list[str]]:
    lesions: dict[int, SegmentGrade] = {}
    gland: set[int] = set()
    ignored: list[str] = []
    for item in seg.get("SegmentSequence", []):
        number = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", "") or "")
        text = f"{label} {item.get('SegmentDescription', '') or ''}"
        isup, pirads = parse_grade(text)
        codes = _codes(item)
        if isup is None and pirads is None:
            if _PROSTATE_CODE in codes or _GLAND.search(text):
                gland.add(number)
                continue
            if codes & _ZONE_CODES:
                ignored.append(f"segment {number} {label!r}: a prostate zone (zones are not read from SEGs)")
                continue
            raise LabelError(
                f"{where}: segment {number} {label!r} states no grade; name it e.g. 'ISUP 3' or 'PI-RADS 4' "
                "(SegmentLabel or SegmentDescription), or 'prostate' for the gland"
            )
        if isup is not None:
            value = isup if isup >= 2 else 0
        else:
            value = (
                1
                if options.pirads_cspca is not None and pirads is not None and pirads >= options.pirads_cspca
                else 0
            )
        lesions[number] = SegmentGrade(number, label, isup, pirads, value)
    if not lesions and not gland:
        raise LabelError(f"{where}: the SEG has no lesion or gland segment")
    return lesions, gland, ignored


def _item(seg: Dataset, frame: Dataset | None, name: str) -> Dataset | None:
    for group in (frame, seg.get("SharedFunctionalGroupsSequence", [None])[0]):
        if group is not None and name in group:
            seq = group.get(name)
            if seq:
                return seq[0]  # type: ignore[no-any-return]
    return None


def _frame_slices(seg: Dataset, t2w: sitk.Image, where: str) -> list[tuple[int, int]]:
    """(segment number, T2W slice index) of each frame; LabelError when a frame is not on the T2W grid."""
    direction = np.asarray(t2w.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = t2w.GetSpacing()
    size = t2w.GetSize()
    rows, columns = int(seg.Rows), int(seg.Columns)
    if (columns, rows) != (size[0], size[1]):
        raise LabelError(
            f"{where}: the SEG is on another grid ({columns}x{rows} pixels, the T2W has {size[0]}x{size[1]}); "
            "draw the segmentation on the T2W series that the node selects"
        )
    frames = seg.get("PerFrameFunctionalGroupsSequence", [])
    count = int(seg.get("NumberOfFrames", 1) or 1)
    if len(frames) != count:
        raise LabelError(f"{where}: {count} frame(s) but {len(frames)} per-frame functional group(s)")
    out: list[tuple[int, int]] = []
    for index, frame in enumerate(frames):
        ident = _item(seg, frame, "SegmentIdentificationSequence")
        position = _item(seg, frame, "PlanePositionSequence")
        orientation = _item(seg, frame, "PlaneOrientationSequence")
        measures = _item(seg, frame, "PixelMeasuresSequence")
        if ident is None or position is None or orientation is None:
            raise LabelError(
                f"{where}: frame {index + 1} lacks its segment number, position or orientation; "
                "only segmentations of image planes (not of a total pixel matrix) can be read"
            )
        iop = np.asarray([float(v) for v in orientation.ImageOrientationPatient])
        if not (
            np.allclose(iop[:3], direction[:, 0], atol=1e-3)
            and np.allclose(iop[3:], direction[:, 1], atol=1e-3)
        ):
            raise LabelError(
                f"{where}: frame {index + 1} is on another grid (orientation differs from the T2W's)"
            )
        if measures is not None and "PixelSpacing" in measures:
            row_spacing, column_spacing = (float(v) for v in measures.PixelSpacing)
            if not np.allclose((column_spacing, row_spacing), spacing[:2], rtol=1e-3):
                raise LabelError(
                    f"{where}: frame {index + 1} is on another grid (pixel spacing {row_spacing}/{column_spacing} "
                    f"mm, the T2W has {spacing[1]}/{spacing[0]} mm)"
                )
        point = tuple(float(v) for v in position.ImagePositionPatient)
        x, y, z = t2w.TransformPhysicalPointToContinuousIndex(point)
        k = round(z)
        if abs(x) > _POSITION_TOLERANCE or abs(y) > _POSITION_TOLERANCE or abs(z - k) > _POSITION_TOLERANCE:
            raise LabelError(
                f"{where}: frame {index + 1} at {point} does not lie on a T2W slice (index {x:.2f}, {y:.2f}, "
                f"{z:.2f}); the SEG is on another grid"
            )
        if not 0 <= k < size[2]:
            raise LabelError(
                f"{where}: frame {index + 1} lies outside the T2W volume (slice {k} of {size[2]})"
            )
        out.append((int(ident.ReferencedSegmentNumber), k))
    return out


def read_seg_labels(path: Path, t2w: sitk.Image, options: SegLabelOptions) -> SegLabels:
    """Read a radiologist's SEG and put its segments on the T2W grid.

    Parameters
    ----------
    path : Path
        The SEG file.
    t2w : SimpleITK.Image
        The T2W volume the images are written on (the grid of the labels).
    options : SegLabelOptions
        Grade conventions.

    Returns
    -------
    SegLabels

    Raises
    ------
    LabelError
        Unreadable or corrupt SEG, a segment without grade, frames on another grid.
    """
    where = f"SEG {path.name}"
    try:
        seg = hd.seg.segread(path)
        pixels = np.asarray(seg.pixel_array)
    except Exception as exc:  # pydicom and highdicom raise many kinds on a damaged file
        raise LabelError(f"{where} cannot be read ({type(exc).__name__}: {exc}); export it again") from exc
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if str(seg.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        maximum = float(seg.get("MaximumFractionalValue", 255) or 255)
        masks = pixels >= maximum / 2.0
    else:
        masks = pixels > 0
    lesions, gland_segments, ignored = _classify(seg, options, where)
    placement = _frame_slices(seg, t2w, where)
    if len(placement) != masks.shape[0]:
        raise LabelError(f"{where}: {len(placement)} frame description(s) for {masks.shape[0]} frame(s)")
    size = t2w.GetSize()
    shape = (size[2], size[1], size[0])
    lesion = np.zeros(shape, dtype=np.int16)
    gland = np.zeros(shape, dtype=np.uint8) if gland_segments else None
    counts: dict[int, int] = {}
    for (number, k), mask in zip(placement, masks, strict=True):
        if number in lesions:
            value = lesions[number].value
            lesion[k][mask] = np.maximum(lesion[k][mask], value)
            counts[number] = counts.get(number, 0) + int(mask.sum())
        elif number in gland_segments and gland is not None:
            gland[k][mask] = 1
        elif (
            number not in lesions
            and number not in gland_segments
            and not any(s.startswith(f"segment {number} ") for s in ignored)
        ):
            raise LabelError(
                f"{where}: frame of segment {number}, which the SegmentSequence does not describe"
            )
    segments = []
    for number, grade in sorted(lesions.items()):
        if counts.get(number, 0) == 0:
            ignored.append(f"segment {number} {grade.label!r}: empty")
        segments.append(
            SegmentGrade(
                grade.segment_number,
                grade.label,
                grade.isup,
                grade.pirads,
                grade.value,
                counts.get(number, 0),
            )
        )
    return SegLabels(lesion=lesion, gland=gland, segments=segments, ignored=ignored)
