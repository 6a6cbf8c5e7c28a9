"""Series and frames: the geometry, b-value and pixel access of every 2D image in a series.

Classic single-frame objects give one :class:`Frame` per instance; Enhanced (multi-frame) objects give one
per frame, with geometry, rescale and diffusion read from the per-frame and shared functional groups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from lesion_engine.bvalues import b_value_of
from lesion_engine.diffusion import NO_B_VALUE_TAG, DiffusionEvidence, assess_diffusion, is_directional
from lesion_engine.errors import CorruptInstanceError

logger = logging.getLogger(__name__)

__all__ = ["Frame", "Instance", "Series", "build_series"]

Vector3 = tuple[float, float, float]


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
        Whether the series is diffusion-weighted, and why (see :mod:`lesion_engine.diffusion`).
    """

    series_instance_uid: str
    instances: list[Instance]
    frames: list[Frame]
    diffusion: DiffusionEvidence = field(default_factory=lambda: DiffusionEvidence(False))

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


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return items if len(items) == n and all(np.isfinite(items)) else None


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


def _frames_of_enhanced(index: int, ds: Dataset) -> list[Frame]:
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
        frames.append(
            Frame(
                instance=index,
                frame=k,
                position=_floats(position.get("ImagePositionPatient") if position else None, 3),  # type: ignore[arg-type]
                orientation=_floats(orientation.get("ImageOrientationPatient") if orientation else None, 6),  # type: ignore[arg-type]
                pixel_spacing=_floats(measures.get("PixelSpacing") if measures else None, 2),  # type: ignore[arg-type]
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                slope=float(transform.get("RescaleSlope", 1.0) or 1.0) if transform else 1.0,
                intercept=float(transform.get("RescaleIntercept", 0.0) or 0.0) if transform else 0.0,
                b_value=b[0] if b else None,
                b_value_source=b[1] if b else None,
                temporal_index=int(temporal) if temporal not in (None, "") else None,
                directional=is_directional(ds, diffusion, b[0] if b else None),
                derived_map=_is_derived_map(_frame_type(group, shared) or ds.get("ImageType")),
            )
        )
    return frames


def _frame_of_classic(index: int, ds: Dataset) -> Frame:
    b = b_value_of(ds)
    temporal = ds.get("TemporalPositionIdentifier")
    return Frame(
        instance=index,
        frame=None,
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
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
        Instances left out, with the reason.
    """
    instances: list[Instance] = []
    frames: list[Frame] = []
    bad: list[tuple[str, str]] = []
    for source, ds in items:
        index = len(instances)
        try:
            if "PerFrameFunctionalGroupsSequence" in ds:
                new = _frames_of_enhanced(index, ds)
            else:
                new = [_frame_of_classic(index, ds)]
        except CorruptInstanceError as exc:
            bad.append((source, str(exc)))
            continue
        except Exception as exc:  # malformed header values (e.g. non-numeric Rows)
            bad.append((source, f"malformed image header ({type(exc).__name__}: {exc})"))
            continue
        instances.append(Instance(source, ds))
        frames.extend(new)
    if not instances:
        return None, bad
    evidence = assess_diffusion([i.dataset for i in instances], frames)
    frames, evidence = apply_evidence(frames, evidence)
    return Series(series_instance_uid, instances, frames, evidence), bad


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
