"""Attributes and value formatting shared by the classic and the enhanced DICOM writers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import format_number_as_ds

from training.synth.conventions import vendor_info
from training.synth.dicom.diffusion_tags import DiffusionImage, image_class
from training.synth.geometry import Grid
from training.synth.imaging import FrameInfo, SeriesImages
from training.synth.protocol import SeriesPlan, StudyPlan

__all__ = [
    "block_of",
    "code",
    "da_str",
    "diffusion_image",
    "ds_str",
    "file_meta",
    "frame_time",
    "image_pixel",
    "item",
    "mr_attrs",
    "study_attrs",
    "tm_str",
    "window",
]


def ds_str(value: float) -> str:
    """A Decimal String (at most 16 characters) for ``value``."""
    return format_number_as_ds(float(value) + 0.0)


def tm_str(seconds: float) -> str:
    """A TM value for ``seconds`` after midnight."""
    seconds = seconds % 86400.0
    h = int(seconds // 3600)
    m = int((seconds - 3600 * h) // 60)
    s = seconds - 3600 * h - 60 * m
    return f"{h:02d}{m:02d}{s:09.6f}"


def da_str(date: dt.date) -> str:
    """A DA value."""
    return date.strftime("%Y%m%d")


def code(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item."""
    out = Dataset()
    out.CodeValue = value
    out.CodingSchemeDesignator = scheme
    out.CodeMeaning = meaning
    return out


def item(**attrs: Any) -> Dataset:
    """A sequence item with the given attributes (keywords)."""
    out = Dataset()
    for key, value in attrs.items():
        setattr(out, key, value)
    return out


def window(images: SeriesImages) -> tuple[str, str]:
    """Window centre and width (DS strings) covering the real values of a series."""
    real = images.stored.astype(np.float64) * images.slope + images.intercept
    lo, hi = np.percentile(real, [1.0, 99.5])
    width = max(float(hi - lo), 1.0)
    return ds_str(round(float(lo + hi) / 2.0, 1)), ds_str(round(width, 1))


def study_attrs(study: StudyPlan, series: SeriesPlan) -> list[tuple[str, Any]]:
    """Patient, study, equipment and series attributes common to every object of a series."""
    plan = study.plan
    info = vendor_info(plan.vendor)
    series_date = da_str(study.study_date)
    return [
        ("SpecificCharacterSet", "ISO_IR 100"),
        ("InstanceCreationDate", series_date),
        ("InstanceCreationTime", tm_str(series.series_time)),
        ("StudyDate", series_date),
        ("SeriesDate", series_date),
        ("AcquisitionDate", series_date),
        ("ContentDate", series_date),
        ("StudyTime", tm_str(study.study_time)),
        ("SeriesTime", tm_str(series.series_time)),
        ("ContentTime", tm_str(series.series_time)),
        ("AccessionNumber", study.accession),
        ("Modality", "MR"),
        ("Manufacturer", info.manufacturer),
        ("InstitutionName", "Synthetic Imaging Centre"),
        ("ReferringPhysicianName", ""),
        ("StationName", info.station),
        ("StudyDescription", info.study_description),
        ("SeriesDescription", series.style.description),
        ("ManufacturerModelName", info.model),
        ("PatientName", study.patient_name),
        ("PatientID", plan.patient_id),
        ("PatientBirthDate", ""),
        ("PatientSex", "M"),
        ("PatientAge", f"{study.patient_age:03d}Y"),
        ("PatientSize", ds_str(study.patient_size)),
        ("PatientWeight", ds_str(study.patient_weight)),
        ("BodyPartExamined", "PROSTATE"),
        ("DeviceSerialNumber", "10001"),
        ("SoftwareVersions", info.software),
        ("StudyInstanceUID", study.study_uid),
        ("SeriesInstanceUID", series.uid),
        ("StudyID", plan.study_id),
        ("SeriesNumber", series.number),
    ]


def mr_attrs(study: StudyPlan, series: SeriesPlan, grid: Grid) -> list[tuple[str, Any]]:
    """Classic MR acquisition attributes of a series on ``grid``."""
    st = series.style
    info = vendor_info(study.plan.vendor)
    cols, rows, _ = grid.size
    attrs: list[tuple[str, Any]] = [
        ("ScanningSequence", list(st.scanning_sequence)),
        ("SequenceVariant", list(st.sequence_variant)),
        ("ScanOptions", list(st.scan_options) if st.scan_options else ""),
        ("MRAcquisitionType", st.acquisition_type),
        ("SequenceName", st.sequence_name),
        ("AngioFlag", "N"),
        ("SliceThickness", ds_str(grid.thickness)),
        ("RepetitionTime", ds_str(st.repetition_time)),
        ("EchoTime", ds_str(st.echo_time)),
        ("NumberOfAverages", ds_str(st.averages)),
        ("ImagingFrequency", ds_str(123.2424)),
        ("ImagedNucleus", "1H"),
        ("EchoNumbers", "1"),
        ("MagneticFieldStrength", ds_str(info.field_strength)),
        ("SpacingBetweenSlices", ds_str(grid.spacing[2])),
        ("EchoTrainLength", str(st.echo_train_length)),
        ("PercentSampling", ds_str(100)),
        ("PercentPhaseFieldOfView", ds_str(round(100.0 * cols / rows, 4))),
        ("PixelBandwidth", ds_str(st.pixel_bandwidth)),
        ("ProtocolName", st.protocol),
        ("TransmitCoilName", "Body"),
        ("AcquisitionMatrix", [0, rows, cols, 0]),
        ("InPlanePhaseEncodingDirection", "ROW"),
        ("FlipAngle", ds_str(st.flip_angle)),
        ("PatientPosition", "FFS"),
        ("FrameOfReferenceUID", study.frame_of_reference_uid),
        ("PositionReferenceIndicator", ""),
    ]
    return attrs


def file_meta(ds: Dataset) -> None:
    """Attach file meta information; the transfer syntax is set with the pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "LESION_AI_SYNTH"
    ds.file_meta = meta


def image_pixel(ds: Dataset, images: SeriesImages, rows: int, cols: int) -> None:
    """Set the Image Pixel module attributes (not the pixel data)."""
    ds.SamplesPerPixel = 3 if images.rgb else 1
    ds.PhotometricInterpretation = "RGB" if images.rgb else "MONOCHROME2"
    if images.rgb:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8 if images.rgb else 16
    ds.BitsStored = images.bits_stored
    ds.HighBit = images.bits_stored - 1
    ds.PixelRepresentation = 0


def frame_time(series: SeriesPlan, frame: FrameInfo, n_blocks: int, n_slices: int, block: int) -> float:
    """Acquisition time (seconds after midnight) of one frame: interleaved slices, blocks one after another."""
    if frame.temporal_index is not None:
        return series.acquisition_time + frame.time_offset_s + 0.05 * frame.slice_index
    interleave = (frame.slice_index % 2) * (n_slices // 2 + 1) + frame.slice_index // 2
    return series.acquisition_time + series.duration_s * (block + interleave / max(n_slices, 1)) / max(
        n_blocks, 1
    )


def block_of(frame: FrameInfo, series: SeriesPlan) -> int:
    """Index of the frame's block: its b-value (and gradient direction in a DTI series), time point or stack."""
    if frame.b_value is not None and series.b_values:
        position = series.b_values.index(frame.b_value)
        if not series.directions:
            return position
        # b-major: one block per b = 0, one per direction of each b > 0
        n = len(series.directions)
        return sum(1 if b == 0 else n for b in series.b_values[:position]) + (frame.direction_index or 0)
    if frame.temporal_index is not None:
        return frame.temporal_index
    return frame.grid_index


def diffusion_image(series: SeriesPlan, frame: FrameInfo) -> DiffusionImage | None:
    """What ``frame`` of ``series`` is as far as diffusion goes (None for a screenshot).

    ADC maps carry the largest fitted b-value: Siemens and GE keep it on the map too (a trap for naive
    readers); the other vendors write nothing about diffusion on maps.
    """
    directional = frame.direction_index is not None
    image = image_class(series.kind, directional)
    if image is None:
        return None
    if image == "adc_map":
        b = max(series.b_values)
    else:
        b = frame.b_value if frame.b_value is not None and image != "fa_map" else 0
    return DiffusionImage(
        image,
        b,
        direction=series.directions[frame.direction_index] if frame.direction_index is not None else None,
        dti=series.acquisition == "dti",
        flagged_directional=series.flagged_directional,
    )
