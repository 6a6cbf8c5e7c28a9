"""Shared helpers of the synthetic-study tests: reading back what ``training.synth`` wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset

SIEMENS_B = (0x0019, 0x100C)
GE_B = (0x0043, 0x1039)
PHILIPS_B = (0x2001, 0x1003)
STANDARD_B = (0x0018, 0x9087)
B_TAGS = {"siemens": SIEMENS_B, "ge": GE_B, "philips": PHILIPS_B, "standard": STANDARD_B}
CREATORS = {"siemens": "SIEMENS MR HEADER", "ge": "GEMS_PARM_01", "philips": "Philips Imaging DD 001"}
VENDORS = ("siemens", "ge", "philips", "standard")
NON_DIFFUSION = ("localizer", "t2_sag", "t2_cor", "t2w", "coil_reference", "dce")

FULL_OPTIONS: dict[str, Any] = {
    "repeat_t2": True,
    "calc_bvalue": True,
    "dce": True,
    "coil_reference": True,
    "screenshot": True,
    "n_localizers": 2,
}
SMALL_STUDY: dict[str, Any] = {
    "repeat_t2": False,
    "calc_bvalue": False,
    "dce": False,
    "coil_reference": False,
    "screenshot": True,
    "n_localizers": 1,
}


# ----------------------------------------------------------------------------------------------- helpers
@dataclass
class Frame:
    """One image plane read back from DICOM, in real-world values."""

    position: NDArray[np.float64]
    orientation: NDArray[np.float64]
    pixels: NDArray[np.float64]
    b_value: float | None


@dataclass
class Volume:
    """A series (or one b-value of it) as a volume sorted along the slice normal."""

    array: NDArray[np.float64]  # (slices, rows, columns)
    origin: NDArray[np.float64]
    spacing: NDArray[np.float64]  # column, row, slice spacing
    direction: NDArray[np.float64]  # 3x3, columns = row dir, column dir, normal

    def sitk_image(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array.astype(np.float32))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return img


def classic_b_value(ds: Dataset) -> float | None:
    """b-value of a classic object, wherever a vendor keeps it."""
    if SIEMENS_B in ds:
        value = ds[SIEMENS_B].value
        return float(value.decode().strip() if isinstance(value, bytes) else value)
    if GE_B in ds:
        return float(int(ds[GE_B].value[0]) % 1_000_000_000)
    if PHILIPS_B in ds:
        return float(ds[PHILIPS_B].value)
    if STANDARD_B in ds:
        return float(ds[STANDARD_B].value)
    return None


def read_frames(folder: Path) -> list[Frame]:
    frames: list[Frame] = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = ds.SharedFunctionalGroupsSequence[0]
            pvt = shared.PixelValueTransformationSequence[0]
            arr = ds.pixel_array.astype(np.float64) * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
            for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
                orient = group if "PlaneOrientationSequence" in group else shared
                iop = np.array(orient.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
                ipp = np.array(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
                b = (
                    float(group.MRDiffusionSequence[0].DiffusionBValue)
                    if "MRDiffusionSequence" in group
                    else None
                )
                frames.append(Frame(ipp, iop, arr[i], b))
            continue
        real = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0)
        )
        frames.append(
            Frame(
                np.array(ds.ImagePositionPatient, dtype=float),
                np.array(ds.ImageOrientationPatient, dtype=float),
                real,
                classic_b_value(ds),
            )
        )
    return frames


def spacing_of(folder: Path) -> tuple[float, float]:
    ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    if "SharedFunctionalGroupsSequence" in ds:
        ps = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    else:
        ps = ds.PixelSpacing
    return float(ps[1]), float(ps[0])


def read_volume(folder: Path, b_value: float | None = None) -> Volume:
    """Read a series as a volume, sorted by position along the normal (never by file name)."""
    frames = [f for f in read_frames(folder) if b_value is None or f.b_value == b_value]
    assert frames, f"no frame with b={b_value} in {folder}"
    iop = frames[0].orientation
    normal = np.cross(iop[:3], iop[3:])
    frames.sort(key=lambda f: float(f.position @ normal))
    proj = np.array([f.position @ normal for f in frames])
    dz = float(np.median(np.diff(proj))) if len(frames) > 1 else 1.0
    col_spacing, row_spacing = spacing_of(folder)
    return Volume(
        np.stack([f.pixels for f in frames]),
        frames[0].position,
        np.array([col_spacing, row_spacing, dz]),
        np.stack([iop[:3], iop[3:], normal], axis=1),
    )


def truth_of(case: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((case / "truth.json").read_text())
    return data


def series_folder(case: Path, truth: dict[str, Any], number: int) -> Path:
    for s in truth["series"]:
        if s["series_number"] == number:
            return case / str(s["folder"])
    raise KeyError(number)


def all_datasets(case: Path) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((case / "dicom").rglob("*.dcm"))]


def labels_of(case: Path, truth: dict[str, Any], name: str) -> sitk.Image:
    return sitk.ReadImage(str(case / truth["labels"][name]))
