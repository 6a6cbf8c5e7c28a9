"""Radiologists' SEGs for tests: a highdicom Segmentation on a study's T2W grid, as OHIF would store it."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from lesion_engine.intake.preprocess import prepare_study
from lesion_engine.results.common import t2w_grid


def t2w_datasets(dicom: Path) -> list[pydicom.Dataset]:
    """The instances of the T2W series that the node selects in a folder of DICOM files."""
    uid = prepare_study(dicom).roles["t2w"].series_instance_uid
    datasets = [pydicom.dcmread(p) for p in sorted(dicom.rglob("*.dcm"))]
    return [ds for ds in datasets if ds.SeriesInstanceUID == uid]


def radiologist_seg(
    dicom: Path,
    segments: list[tuple[str, np.ndarray]],
    manufacturer: str,
    number: int,
    gland: np.ndarray | None = None,
) -> pydicom.Dataset:
    """A SEG of ``segments`` (label text, mask on the T2W grid, (Z, Y, X)) drawn manually on the T2W series
    of the study in ``dicom``; a ``Prostate`` segment when ``gland`` is given."""
    grid = t2w_grid(t2w_datasets(dicom))
    masks = [m for _, m in segments] + ([gland] if gland is not None else [])
    descriptions = []
    for n, (label, _) in enumerate(segments, start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=label,
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    if gland is not None:
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=len(segments) + 1,
                segment_label="Prostate",
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.Prostate,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    stacked = np.stack([m.astype(bool) for m in masks], axis=-1)[np.asarray(grid.frame_slices)]
    return hd.seg.Segmentation(
        source_images=grid.datasets,
        pixel_array=stacked.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
