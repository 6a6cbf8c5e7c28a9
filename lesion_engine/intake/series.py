"""Series and frames: the geometry, b-value and pixel access of every 2D image in a series.

Classic single-frame objects give one :class:`Frame` per instance; Enhanced (multi-frame) objects give one
per frame, with geometry, rescale and diffusion read from the per-frame and shared functional groups.

The numbers that place and scale an image (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness, SpacingBetweenSlices, RescaleSlope, RescaleIntercept) are read strictly: a value that is
present but not what DICOM allows (a DS that is not a decimal number, a wrong number of values, a
non-finite number, a spacing that is not positive) is recorded as an :class:`InvalidValue` of the series,
never guessed; :func:`lesion_engine.intake.loading.load_study` refuses such a study with an
:class:`~lesion_engine.errors.InvalidValueError` that names the attribute and the series.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from lesion_engine.errors import CorruptInstanceError
from lesion_engine.intake.bvalues import b_value_of
from lesion_engine.intake.diffusion import NO_B_VALUE_TAG, DiffusionEvidence, assess_diffusion, is_directional

logger = logging.getLogger(__name__)

__all__ = ["Frame", "Instance", "InvalidValue", "Series", "build_series"]

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class InvalidValue:
    """A value present in an instance but not one that DICOM allows for its attribute.

    Attributes
    ----------
    source : str
        The instance (file name or input label).
    sop_instance_uid : str
        Its SOPInstanceUID.
    keyword : str
        The attribute's DICOM keyword (e.g. ``PixelSpacing``).
    value : str
        The value as stored (at most 64 characters).
    problem : str
        What is wrong with it (e.g. ``2 values, 3 expected``).
    frame : int or None
        The 1-based frame of a multi-frame instance whose functional group holds the value.
    """

    source: str
    sop_instance_uid: str
    keyword: str
    value: str
    problem: str
    frame: int | None = None

    def describe(self) -> str:
        """``PixelSpacing '0.5\\abc': 'abc' is not a decimal number`` (with the frame when there is one)."""
        where = f" (frame {self.frame})" if self.frame is not None else ""
        return f"{self.keyword}{where} {_quote(self.value)}: {self.problem}"


@dataclass(frozen=True)
class Frame:
    """One 2D image: a single-frame instance or one frame of a multi-frame instance.

    Attributes
    ----------
    instance : int
        Index of the instance in :attr:`Series.instances`.
    frame : int or None
        0-based frame index in a multi-frame instance, None for a single-frame one.
    position : tuple of 3 float or None
        ImagePositionPatient (LPS mm) of the first transmitted pixel; None when the object has none.
    orientation : tuple of 6 float or None
        ImageOrientationPatient (row then column direction cosines).
    pixel_spacing : tuple of 2 float or None
        PixelSpacing: (distance between rows, distance between columns) in mm.
    rows, columns : int
        Matrix size.
    slope, intercept : float
        Rescale slope and intercept, applied to stored values.
    b_value : float or None
        Diffusion b-value in s/mm^2, with ``b_value_source`` naming where it was found.
    temporal_index : int or None
        Temporal position, for dynamic series.
    directional : bool
        True for a diffusion image along one gradient direction (not a trace/isotropic image).
    derived_map : bool
        True for an ADC, exponential ADC or FA map image (ImageType or frame type), e.g. one that a Philips
        scanner embeds in its DWI series; never a trace image.
    """

    instance: int
    frame: int | None
    position: Vector3 | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    slope: float = 1.0
    intercept: float = 0.0
    b_value: float | None = None
    b_value_source: str | None = None
    temporal_index: int | None = None
    directional: bool = False
    derived_map: bool = False

    @property
    def is_trace(self) -> bool:
        """True for a trace (isotropic or b = 0) diffusion image with a b-value: what the model may read."""
        return self.b_value is not None and not self.directional and not self.derived_map

    @property
    def normal(self) -> NDArray[np.float64] | None:
        """Unit slice normal (row x column), or None without orientation."""
        if self.orientation is None:
            return None
        row = np.asarray(self.orientation[:3], dtype=np.float64)
        col = np.asarray(self.orientation[3:], dtype=np.float64)
        n = np.cross(row, col)
        norm = float(np.linalg.norm(n))
        return n / norm if norm > 0 else None


@dataclass
class Instance:
    """One DICOM instance of a series, with its pixel data decoded on first use."""

    source: str
    dataset: Dataset
    _pixels: NDArray[Any] | None = field(default=None, repr=False)

    def pixels(self) -> NDArray[Any]:
        """Stored pixel values, shape (frames, rows, columns) (frames = 1 for single-frame objects).

        Raises
        ------
        CorruptInstanceError
            The pixel data cannot be decoded (truncated, corrupt, or no decoder for its transfer syntax).
        """
        if self._pixels is None:
            try:
                array = self.dataset.pixel_array
            except Exception as exc:  # decoders raise many types; all mean the same to us
                syntax = getattr(getattr(self.dataset, "file_meta", None), "TransferSyntaxUID", None)
                raise CorruptInstanceError(
                    f"{self.source}: cannot decode pixel data"
                    + (f" ({syntax.name})" if syntax is not None else "")
                    + f": {type(exc).__name__}: {exc}"
                ) from exc
            frames = int(self.dataset.get("NumberOfFrames", 1) or 1)
            if frames == 1 and array.ndim == 2:
                array = array[np.newaxis]
            if array.ndim != 3:
                raise CorruptInstanceError(
                    f"{self.source}: unexpected pixel array shape {array.shape} "
                    "(colour or multi-sample images are not supported)"
                )
            self._pixels = array
        return self._pixels


@dataclass
class Series:
    """An image series: its instances, its frames, and the header attributes used to choose roles.

    Attributes
    ----------
    series_instance_uid : str
        The series' UID.
    instances : list of Instance
        Its instances.
    frames : list of Frame
        Its 2D images, with b-values as the diffusion evidence reads them (none outside diffusion series).
    diffusion : DiffusionEvidence
        Whether the series is diffusion-weighted, and why (see :mod:`lesion_engine.intake.diffusion`).
    invalid_values : list of InvalidValue
        Values that place or scale its images but are not what DICOM allows (the frames carry None, or the
        identity rescale, in their place: such a series is not to be used, see the module docstring).
    """

    series_instance_uid: str
    instances: list[Instance]
    frames: list[Frame]
    diffusion: DiffusionEvidence = field(default_factory=lambda: DiffusionEvidence(False))
    invalid_values: list[InvalidValue] = field(default_factory=list)

    @property
    def header(self) -> Dataset:
        """The dataset of the first instance (series-level attributes are read from it)."""
        return self.instances[0].dataset

    def _text(self, keyword: str) -> str:
        value = self.header.get(keyword, "")
        return "" if value is None else str(value).strip()

    @property
    def series_number(self) -> int | None:
        """SeriesNumber, or None when absent."""
        value = self.header.get("SeriesNumber")
        return int(value) if value not in (None, "") else None

    @property
    def description(self) -> str:
        """SeriesDescription (empty when absent)."""
        return self._text("SeriesDescription")

    @property
    def modality(self) -> str:
        """Modality."""
        return self._text("Modality")

    @property
    def manufacturer(self) -> str:
        """Manufacturer."""
        return self._text("Manufacturer")

    @property
    def sop_class_uid(self) -> str:
        """SOPClassUID of the first instance."""
        return self._text("SOPClassUID")

    @property
    def image_type(self) -> tuple[str, ...]:
        """ImageType values, upper case."""
        value = self.header.get("ImageType", [])
        if isinstance(value, str):
            value = value.split("\\")
        return tuple(str(v).upper() for v in value)

    @property
    def acquisition_key(self) -> str:
        """Sortable acquisition date-time: AcquisitionDateTime, else Acquisition/Series/Content date+time."""
        ds = self.header
        if ds.get("AcquisitionDateTime"):
            return str(ds.AcquisitionDateTime)
        for date_kw, time_kw in (
            ("AcquisitionDate", "AcquisitionTime"),
            ("SeriesDate", "SeriesTime"),
            ("ContentDate", "ContentTime"),
        ):
            if ds.get(time_kw):
                return f"{ds.get(date_kw, '') or ''}{ds.get(time_kw)}"
        return ""

    @property
    def b_values(self) -> list[float]:
        """Sorted distinct b-values of the series' frames (empty when the series is not diffusion-weighted)."""
        return sorted({f.b_value for f in self.frames if f.b_value is not None})

    @property
    def has_geometry(self) -> bool:
        """True when every frame has position, orientation and pixel spacing."""
        return all(
            f.position is not None and f.orientation is not None and f.pixel_spacing is not None
            for f in self.frames
        )

    def frame_pixels(self, frames: list[Frame]) -> NDArray[np.float32]:
        """Rescaled pixel values of the given frames, shape (len(frames), rows, columns), float32.

        Raises
        ------
        CorruptInstanceError
            An instance's pixel data cannot be decoded.
        """
        out: NDArray[np.float32] | None = None
        for i, frame in enumerate(frames):
            stored = self.instances[frame.instance].pixels()
            index = frame.frame if frame.frame is not None else 0
            if index >= stored.shape[0]:
                raise CorruptInstanceError(
                    f"{self.instances[frame.instance].source}: frame {index + 1} missing from pixel data "
                    f"({stored.shape[0]} frame(s) decoded)"
                )
            plane = stored[index]
            if out is None:
                out = np.empty((len(frames), *plane.shape), dtype=np.float32)
            if plane.shape != out.shape[1:]:
                raise CorruptInstanceError(
                    f"{self.instances[frame.instance].source}: pixel matrix {plane.shape} differs from "
                    f"{out.shape[1:]} of the other frames"
                )
            out[i] = plane
            if frame.slope != 1.0 or frame.intercept != 0.0:
                out[i] = out[i] * np.float32(frame.slope) + np.float32(frame.intercept)
        if out is None:
            return np.empty((0, 0, 0), dtype=np.float32)
        return out


#: A DS value (PS3.5 6.2): an optional sign, digits with an optional decimal point, an optional exponent.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_QUOTED = 64


class _Values:
    """Reads the numbers of one instance strictly, recording what is invalid (see the module docstring)."""

    def __init__(self, source: str, ds: Dataset) -> None:
        self.source = source
        self.sop_instance_uid = str(ds.get("SOPInstanceUID", "") or "")
        self.invalid: list[InvalidValue] = []

    def _record(self, ds: Dataset, keyword: str, problem: str, frame: int | None) -> None:
        self.invalid.append(
            InvalidValue(
                self.source, self.sop_instance_uid, keyword, _stored_text(ds, keyword), problem, frame
            )
        )

    def numbers(
        self,
        ds: Dataset | None,
        keyword: str,
        count: int,
        *,
        frame: int | None = None,
        positive: bool = False,
        not_negative: bool = False,
    ) -> tuple[float, ...] | None:
        """The ``count`` numbers of ``keyword`` in ``ds``; None when absent or empty, or when invalid (then
        recorded)."""
        if ds is None or keyword not in ds:
            return None
        try:
            value = ds.get(keyword)
        except Exception as exc:  # a value pydicom cannot convert at all
            self._record(ds, keyword, f"cannot be read ({type(exc).__name__})", frame)
            return None
        items = _items(value)
        if not items:
            return None
        numbers: list[float] = []
        for item in items:
            number = _number(item)
            if number is None:
                self._record(ds, keyword, f"{_quote(str(item).strip())} is not a decimal number", frame)
                return None
            numbers.append(number)
        if len(numbers) != count:
            self._record(ds, keyword, f"{len(numbers)} value(s), {count} expected", frame)
            return None
        if not all(math.isfinite(n) for n in numbers):
            self._record(ds, keyword, "not a finite number", frame)
            return None
        if positive and not all(n > 0 for n in numbers):
            self._record(ds, keyword, "must be greater than 0", frame)
            return None
        if not_negative and not all(n >= 0 for n in numbers):
            self._record(ds, keyword, "must not be negative", frame)
            return None
        return tuple(numbers)

    def number(self, ds: Dataset | None, keyword: str, default: float, *, frame: int | None = None) -> float:
        """One number of ``keyword`` (``default`` when absent or invalid: an invalid one is recorded)."""
        found = self.numbers(ds, keyword, 1, frame=frame)
        return found[0] if found is not None else default


def _items(value: Any) -> list[Any]:
    """The values of an element: none for an empty one; text (or bytes) split at backslashes."""
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return [] if not value.strip(" \x00") else value.split("\\")
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _number(item: Any) -> float | None:
    """A number (int or float, DSfloat included), or text that is a DS; None otherwise."""
    if isinstance(item, bool):
        return None
    if isinstance(item, int | float):
        return float(item)
    text = (item.decode("latin-1") if isinstance(item, bytes) else str(item)).strip(" \x00")
    return float(text) if _DECIMAL.fullmatch(text) else None


def _quote(text: str) -> str:
    """``'text'``, unprintable characters as ``?``, cut to 64 characters."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return "'" + (text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "...") + "'"


def _stored_text(ds: Dataset, keyword: str) -> str:
    """The value of ``keyword`` as stored in ``ds`` (multiple values joined with backslashes)."""
    try:
        element = ds.get_item(keyword)
    except Exception:  # the element itself is malformed
        return "?"
    value = element.value if element is not None else None
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value).strip()


def _item(group: Dataset | None, sequence: str) -> Dataset | None:
    if group is None:
        return None
    seq = group.get(sequence)
    return seq[0] if seq else None


def _from_groups(per_frame: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    return _item(per_frame, sequence) or _item(shared, sequence)


_DERIVED_MAP_TYPES = frozenset({"ADC", "EADC", "EXP", "FA", "COLFA"})


def _is_derived_map(image_type: Any) -> bool:
    if image_type is None:
        return False
    values = image_type.split("\\") if isinstance(image_type, str) else list(image_type)
    return any(str(v).strip().upper() in _DERIVED_MAP_TYPES for v in values)


def _frame_type(group: Dataset | None, shared: Dataset | None) -> Any:
    item = _from_groups(group, shared, "MRImageFrameTypeSequence")
    return item.get("FrameType") if item is not None else None


def _frames_of_enhanced(index: int, ds: Dataset, values: _Values) -> list[Frame]:
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if len(per_frame) != n_frames:
        raise CorruptInstanceError(
            f"NumberOfFrames is {n_frames} but PerFrameFunctionalGroupsSequence has {len(per_frame)} items"
        )
    frames = []
    for k, group in enumerate(per_frame):
        position = _from_groups(group, shared, "PlanePositionSequence")
        orientation = _from_groups(group, shared, "PlaneOrientationSequence")
        measures = _from_groups(group, shared, "PixelMeasuresSequence")
        transform = _from_groups(group, shared, "PixelValueTransformationSequence")
        content = _item(group, "FrameContentSequence")
        diffusion = _from_groups(group, shared, "MRDiffusionSequence")
        b = b_value_of(ds, group, shared)
        temporal = content.get("TemporalPositionIndex") if content is not None else None
        frame = k + 1
        values.numbers(measures, "SliceThickness", 1, frame=frame, not_negative=True)
        values.numbers(measures, "SpacingBetweenSlices", 1, frame=frame)
        frames.append(
            Frame(
                instance=index,
                frame=k,
                position=values.numbers(position, "ImagePositionPatient", 3, frame=frame),  # type: ignore[arg-type]
                orientation=values.numbers(orientation, "ImageOrientationPatient", 6, frame=frame),  # type: ignore[arg-type]
                pixel_spacing=values.numbers(measures, "PixelSpacing", 2, frame=frame, positive=True),  # type: ignore[arg-type]
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                slope=values.number(transform, "RescaleSlope", 1.0, frame=frame) or 1.0,
                intercept=values.number(transform, "RescaleIntercept", 0.0, frame=frame),
                b_value=b[0] if b else None,
                b_value_source=b[1] if b else None,
                temporal_index=int(temporal) if temporal not in (None, "") else None,
                directional=is_directional(ds, diffusion, b[0] if b else None),
                derived_map=_is_derived_map(_frame_type(group, shared) or ds.get("ImageType")),
            )
        )
    return frames


def _frame_of_classic(index: int, ds: Dataset, values: _Values) -> Frame:
    b = b_value_of(ds)
    temporal = ds.get("TemporalPositionIdentifier")
    values.numbers(ds, "SliceThickness", 1, not_negative=True)
    values.numbers(ds, "SpacingBetweenSlices", 1)
    return Frame(
        instance=index,
        frame=None,
        position=values.numbers(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=values.numbers(ds, "ImageOrientationPatient", 6),  # type: ignore[arg-type]
        pixel_spacing=values.numbers(ds, "PixelSpacing", 2, positive=True),  # type: ignore[arg-type]
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=values.number(ds, "RescaleSlope", 1.0) or 1.0,
        intercept=values.number(ds, "RescaleIntercept", 0.0),
        b_value=b[0] if b else None,
        b_value_source=b[1] if b else None,
        temporal_index=int(temporal) if temporal not in (None, "") else None,
        directional=is_directional(ds, None, b[0] if b else None),
        derived_map=_is_derived_map(ds.get("ImageType")),
    )


def build_series(
    series_instance_uid: str, items: list[tuple[str, Dataset]]
) -> tuple[Series | None, list[tuple[str, str]]]:
    """Build a :class:`Series` from its parsed instances.

    Parameters
    ----------
    series_instance_uid : str
        The series' UID.
    items : list of (source, dataset)
        The instances, in any order.

    Returns
    -------
    series : Series or None
        The series, or None when no instance could be used.
    bad : list of (source, reason)
        Instances left out, with the reason (values that are invalid but do not stop an instance from being
        read are the series' :attr:`Series.invalid_values` instead).
    """
    instances: list[Instance] = []
    frames: list[Frame] = []
    bad: list[tuple[str, str]] = []
    invalid: list[InvalidValue] = []
    for source, ds in items:
        index = len(instances)
        values = _Values(source, ds)
        try:
            if "PerFrameFunctionalGroupsSequence" in ds:
                new = _frames_of_enhanced(index, ds, values)
            else:
                new = [_frame_of_classic(index, ds, values)]
        except CorruptInstanceError as exc:
            bad.append((source, str(exc)))
            continue
        except Exception as exc:  # malformed header values (e.g. non-numeric Rows)
            bad.append((source, f"malformed image header ({type(exc).__name__}: {exc})"))
            continue
        instances.append(Instance(source, ds))
        frames.extend(new)
        invalid.extend(values.invalid)
    if not instances:
        return None, bad
    evidence = assess_diffusion([i.dataset for i in instances], frames)
    frames, evidence = apply_evidence(frames, evidence)
    return Series(series_instance_uid, instances, frames, evidence, invalid), bad


def apply_evidence(frames: list[Frame], evidence: DiffusionEvidence) -> tuple[list[Frame], DiffusionEvidence]:
    """Frames as the evidence reads them: b-values dropped outside diffusion, untagged b = 0 filled in.

    Parameters
    ----------
    frames : list of Frame
        The series' frames as read from the headers.
    evidence : DiffusionEvidence
        The verdict of :func:`assess_diffusion` on them.

    Returns
    -------
    frames : list of Frame
        The frames with their b-values as the engine uses them.
    evidence : DiffusionEvidence
        The evidence, with the count of untagged b = 0 frames.
    """
    if not evidence.weighted:
        if any(f.b_value is not None for f in frames):
            return [replace(f, b_value=None, b_value_source=None) for f in frames], evidence
        return frames, evidence
    tagged_positive = any(f.b_value is not None and f.b_value > 0 for f in frames)
    untagged = sum(1 for f in frames if f.b_value is None)
    if not tagged_positive or untagged == 0 or untagged == len(frames):
        return frames, evidence
    filled = [
        replace(f, b_value=0.0, b_value_source=NO_B_VALUE_TAG) if f.b_value is None else f for f in frames
    ]
    logger.debug("%d untagged frame(s) of a diffusion series taken as b = 0", untagged)
    return filled, replace(
        evidence,
        reasons=(*evidence.reasons, f"{untagged} image(s) without b-value tag taken as b = 0"),
        untagged_b0_frames=untagged,
    )
