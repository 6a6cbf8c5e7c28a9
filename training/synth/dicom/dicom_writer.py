"""Writing series as DICOM files: classic MR (one object per slice), Enhanced MR (one multi-frame object per
series, see :mod:`training.synth.dicom.enhanced`) and Secondary Capture screenshots, uncompressed or with a
lossless encoding.

Classic files are named in an order unrelated to slice position, and Instance Numbers follow one of several
habits (ascending, descending, interleaved or shuffled), so that a reader has to sort by geometry.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, SecondaryCaptureImageStorage

from training.synth.config import case_rng
from training.synth.conventions import siemens_sequence_name, vendor_info
from training.synth.dicom.dicom_common import (
    block_of,
    da_str,
    diffusion_image,
    ds_str,
    file_meta,
    frame_time,
    image_pixel,
    mr_attrs,
    study_attrs,
    tm_str,
    window,
)
from training.synth.dicom.diffusion_tags import add_classic_diffusion
from training.synth.dicom.encoding import encode_frames_dcmtk, set_pixel_data
from training.synth.dicom.enhanced import enhanced_dataset
from training.synth.imaging import SeriesImages
from training.synth.protocol import SeriesPlan, StudyPlan, uid_for

logger = logging.getLogger(__name__)

__all__ = ["sanitize", "series_folder_name", "write_series"]


def sanitize(text: str) -> str:
    """A file-name-safe version of a series description (runs of other characters become ``_``)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")
    return out or "series"


def series_folder_name(series: SeriesPlan) -> str:
    """Folder name of a series: ``<NNN>_<sanitized description>``."""
    return f"{series.number:03d}_{sanitize(series.style.description)}"


def _instance_numbers(n_blocks: int, n_slices: int, rng: np.random.Generator) -> list[int]:
    """Instance Number (1-based) of frame ``block * n_slices + k``, by one of several habits."""
    habit = str(rng.choice(["descending", "ascending", "interleaved", "shuffled"], p=[0.4, 0.3, 0.15, 0.15]))
    if habit == "ascending":
        within = list(range(n_slices))
    elif habit == "descending":
        within = list(range(n_slices - 1, -1, -1))
    else:
        within = [*range(0, n_slices, 2), *range(1, n_slices, 2)]
    rank = {k: i for i, k in enumerate(within)}
    numbers = [b * n_slices + rank[k] + 1 for b in range(n_blocks) for k in range(n_slices)]
    if habit == "shuffled":
        perm = rng.permutation(len(numbers))
        numbers = [int(p) + 1 for p in perm]
    return numbers


def _write(ds: Dataset, path: Path) -> None:
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_series(study: StudyPlan, series: SeriesPlan, images: SeriesImages, folder: Path) -> list[Path]:
    """Write one series into ``folder`` (created) and return the files written.

    Parameters
    ----------
    study
        The study (patient, UIDs, vendor, compression, classic or enhanced).
    series
        The series.
    images
        Its pixel data.
    folder
        Target folder, normally ``<case>/dicom/<NNN>_<description>``.

    Returns
    -------
    list of pathlib.Path
        The files, in the order written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if series.kind == "screenshot":
        return [_write_screenshot(study, series, images, folder)]
    if study.plan.enhanced:
        ds = enhanced_dataset(study, series, images)
        path = folder / "1-1.dcm"
        _write(ds, path)
        return [path]
    return _write_classic(study, series, images, folder)


def _write_classic(study: StudyPlan, series: SeriesPlan, images: SeriesImages, folder: Path) -> list[Path]:
    plan = study.plan
    rng = case_rng(plan.seed, plan.case_index, 5000 + series.number)
    n = len(images.frames)
    n_slices = max(f.slice_index for f in images.frames) + 1
    n_blocks = n // n_slices
    numbers = _instance_numbers(n_blocks, n_slices, rng)
    names = rng.permutation(n) + 1
    common = study_attrs(study, series)
    wc, ww = window(images)
    rescaled = images.slope != 1.0 or images.intercept != 0.0
    encoded = (
        encode_frames_dcmtk(images.stored, images.bits_stored) if plan.compress == "jpeg-lossless" else None
    )
    paths: list[Path] = []
    for i, frame in enumerate(images.frames):
        grid = series.grids[frame.grid_index]
        ds = Dataset()
        for key, value in common:
            setattr(ds, key, value)
        for key, value in mr_attrs(study, series, grid):
            setattr(ds, key, value)
        ds.ImageType = list(series.style.image_type)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = uid_for(plan, "instance", series.key, i)
        ds.AcquisitionTime = tm_str(frame_time(series, frame, n_blocks, n_slices, block_of(frame, series)))
        ds.ContentTime = tm_str(series.series_time + 0.01 * i)
        ds.AcquisitionNumber = (frame.temporal_index + 1) if frame.temporal_index is not None else 1
        ds.InstanceNumber = numbers[i]
        pos = grid.slice_position(frame.slice_index)
        ds.ImagePositionPatient = [ds_str(v) for v in pos]
        ds.ImageOrientationPatient = [ds_str(v) for v in grid.image_orientation]
        ds.SliceLocation = ds_str(round(float(np.asarray(pos) @ grid.normal), 4))
        diffusion = diffusion_image(series, frame)
        if diffusion is not None:
            add_classic_diffusion(ds, plan.vendor, diffusion, plan.siemens_private_as_ob)
        if plan.vendor == "siemens" and series.kind in ("dwi", "dti") and frame.b_value is not None:
            direction = None if frame.direction_index is None else frame.direction_index + 1
            if series.kind == "dti" and direction is None:
                direction = 0  # the b = 0 image of a DTI scan: *ep_b0
            ds.SequenceName = siemens_sequence_name(frame.b_value, direction)
        if frame.temporal_index is not None:
            ds.TemporalPositionIdentifier = frame.temporal_index + 1
            ds.NumberOfTemporalPositions = len(series.times_s)
            ds.ContrastBolusAgent = "Gadoterate meglumine"
        image_pixel(ds, images, int(images.stored.shape[1]), int(images.stored.shape[2]))
        ds.PixelSpacing = [ds_str(v) for v in grid.pixel_spacing]
        ds.WindowCenter = wc
        ds.WindowWidth = ww
        if rescaled:
            ds.RescaleIntercept = ds_str(images.intercept)
            ds.RescaleSlope = ds_str(images.slope)
            ds.RescaleType = "US"
        file_meta(ds)
        set_pixel_data(ds, images.stored[i], plan.compress, [encoded[i]] if encoded is not None else None)
        path = folder / f"1-{int(names[i]):02d}.dcm"
        _write(ds, path)
        paths.append(path)
    logger.debug("wrote %d classic files of series %d", len(paths), series.number)
    return paths


def _write_screenshot(study: StudyPlan, series: SeriesPlan, images: SeriesImages, folder: Path) -> Path:
    plan = study.plan
    ds = Dataset()
    for key, value in study_attrs(study, series):
        setattr(ds, key, value)
    del ds.AcquisitionDate
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid_for(plan, "instance", series.key, 0)
    ds.ImageType = list(series.style.image_type)
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "YES"
    ds.DateOfSecondaryCapture = da_str(study.study_date)
    ds.TimeOfSecondaryCapture = tm_str(series.series_time)
    ds.SecondaryCaptureDeviceManufacturer = vendor_info(plan.vendor).manufacturer
    image_pixel(ds, images, int(images.stored.shape[1]), int(images.stored.shape[2]))
    file_meta(ds)
    set_pixel_data(ds, images.stored[0], plan.compress)
    path = folder / "1-1.dcm"
    _write(ds, path)
    return path
