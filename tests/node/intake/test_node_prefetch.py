"""Which series a worker may skip after their first instance: never a possible diffusion series."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from orthanc_plugin.intake.prefetch import skippable_series


def _first_instance(description: str, orientation: list[float], philips_b0: bool = False) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.SeriesDescription = description
    ds.SeriesNumber = 5
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"]
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((4, 4), dtype=np.uint16).tobytes()
    if philips_b0:
        ds.DiffusionBValue = 0.0
        ds.DiffusionDirectionality = "NONE"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
OBLIQUE_40 = [1.0, 0.0, 0.0, 0.0, float(np.cos(np.radians(40))), float(np.sin(np.radians(40)))]


def test_dce_and_sagittal_t2_are_skipped_from_their_first_header() -> None:
    assert skippable_series(_first_instance("DCE_tra", AXIAL)) == "dce"
    assert skippable_series(_first_instance("T2 sag", SAGITTAL, philips_b0=True)) == "t2_sagittal"


def test_usable_and_possibly_diffusion_series_are_fetched_whole() -> None:
    assert skippable_series(_first_instance("T2W_TSE_ax", AXIAL, philips_b0=True)) is None
    assert skippable_series(_first_instance("DWI_b0_1000", AXIAL, philips_b0=True)) is None
    assert skippable_series(_first_instance("T2 oblique", OBLIQUE_40)) == "t2_oblique"
    # One b = 0 image cannot tell an oblique series from a diffusion series whose b > 0 images follow.
    assert skippable_series(_first_instance("T2 oblique", OBLIQUE_40, philips_b0=True)) is None


def test_unreadable_first_instance_is_fetched_whole() -> None:
    assert skippable_series(b"not dicom at all") is None
