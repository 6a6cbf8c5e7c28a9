"""Cases for the DICOM result writers: the fixture's T2W series with crafted lesions and fake results."""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from scipy import ndimage

from lesion_engine.intake.preprocess import prepare_study

#: SeriesNumber of the axial T2W series the engine chooses in the fixture.
T2W_SERIES_NUMBER = 10
MODEL = {"name": "lesion-net", "version": "0.3.1", "sha256": "5f" * 32}
GLAND_MODEL = {"name": "gland-net", "version": "1.0", "sha256": "6a" * 32, "licence": "MIT"}


@dataclass(frozen=True)
class FakeLesion:
    """A lesion as the engine reports it."""

    id: int
    center_lps_mm: tuple[float, float, float]
    mask: NDArray[np.bool_]
    volume_ml: float
    max_diameter_mm: float
    probability: float
    category: int | None
    zone: str | None


@dataclass(frozen=True)
class FakeResult:
    """An analysis result as the engine reports it (with the prostate gland of the anatomical gate, or
    without: the gland fields None)."""

    lesions: list[FakeLesion]
    patient_score: float
    localization_map: Any
    study_instance_uid: str
    model: dict[str, str] = field(default_factory=lambda: dict(MODEL))
    gland_volume_ml: float | None = None
    gland_mask: NDArray[np.bool_] | None = None
    gland_model: dict[str, str] | None = None
    warnings: list[str] = field(default_factory=list)


#: The warning of a gate whose gland model failed (as :func:`lesion_engine.anatomy.gland_gate.find_gland` words it).
GATE_WARNING = (
    "the gland model's prostate is implausible (its volume is 0.03 ml, outside the plausible 10 to 300 ml): "
    "the model failed on this study, lesions are not gated by the prostate gland"
)


def with_gland(
    result: FakeResult, mask: NDArray[np.bool_], spacing: tuple[float, float, float]
) -> FakeResult:
    """``result`` with a prostate gland (its volume from the mask and the (dz, dy, dx) spacing)."""
    volume = round(float(mask.sum()) * float(np.prod(spacing)) / 1000.0, 3)
    return dataclasses.replace(
        result, gland_volume_ml=volume, gland_mask=np.asarray(mask, dtype=bool), gland_model=dict(GLAND_MODEL)
    )


def read_series(folder: Path) -> list[Dataset]:
    """Every instance of one series folder, with pixel data."""
    return [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]


def renamed(datasets: Sequence[Dataset], name: str) -> list[Dataset]:
    """Copies of the datasets with a patient name in UTF-8 (ISO_IR 192)."""
    out = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        new.SpecificCharacterSet = "ISO_IR 192"
        new.PatientName = name
        out.append(new)
    return out


def _ordered(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Single-frame instances along the slice normal (the order of the engine's volume)."""
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(
        datasets, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal))
    )


def grid_info(datasets: Sequence[Dataset]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(Z, Y, X) shape and (dz, dy, dx) spacing of a single-frame series."""
    ordered = _ordered(datasets)
    iop = np.asarray(ordered[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    heights = [float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)) for ds in ordered]
    dz = float(np.median(np.diff(heights)))
    dy, dx = (float(v) for v in ordered[0].PixelSpacing)
    return (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns)), (dz, dy, dx)


def ellipsoid(
    shape: tuple[int, int, int], centre: tuple[int, int, int], radii: tuple[float, float, float]
) -> NDArray[np.bool_]:
    """Boolean ellipsoid with radii in voxels."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = (
        ((zz - centre[0]) / radii[0]) ** 2
        + ((yy - centre[1]) / radii[1]) ** 2
        + ((xx - centre[2]) / radii[2]) ** 2
    )
    return np.asarray(d <= 1.0)


def make_lesion(
    lesion_id: int,
    mask: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    probability: float,
    category: int | None,
    zone: str | None,
) -> FakeLesion:
    """A lesion whose volume and diameter follow from its mask."""
    indices = np.argwhere(mask)
    mm = indices * np.asarray(spacing)
    extent = float(np.linalg.norm(mm.max(axis=0) - mm.min(axis=0)))
    return FakeLesion(
        id=lesion_id,
        center_lps_mm=(0.0, 0.0, 0.0),
        mask=mask,
        volume_ml=round(float(mask.sum()) * float(np.prod(spacing)) / 1000.0, 4),
        max_diameter_mm=round(extent, 2),
        probability=probability,
        category=category,
        zone=zone,
    )


def likelihood_map(lesions: Sequence[FakeLesion], shape: tuple[int, int, int]) -> Any:
    """A float32 map: each lesion's probability inside its mask, 0.02 elsewhere."""
    values = np.full(shape, 0.02, dtype=np.float32)
    for lesion in lesions:
        values[lesion.mask] = np.float32(lesion.probability)
    return sitk.GetImageFromArray(values)


def positive_result(datasets: Sequence[Dataset]) -> FakeResult:
    """Two crafted lesions on the fixture's T2W grid: one in the peripheral zone, one of unknown zone."""
    shape, spacing = grid_info(datasets)
    first = ellipsoid(shape, (9, 250, 200), (1.6, 14, 18))
    second = ellipsoid(shape, (6, 205, 165), (1.2, 8, 8))
    lesions = [
        make_lesion(1, first, spacing, 0.81, 4, "pz"),
        make_lesion(2, second, spacing, 0.34, 3, None),
    ]
    return FakeResult(lesions, 0.81, likelihood_map(lesions, shape), str(datasets[0].StudyInstanceUID))


def detection_map_result(datasets: Sequence[Dataset]) -> FakeResult:
    """The lesions of :func:`positive_result` as a detection-map model (an imported PI-CAI U-Net) reports
    them: a likelihood each, no suspicion category, no zone."""
    shape, spacing = grid_info(datasets)
    lesions = [
        make_lesion(1, ellipsoid(shape, (9, 250, 200), (1.6, 14, 18)), spacing, 0.62, None, None),
        make_lesion(2, ellipsoid(shape, (6, 205, 165), (1.2, 8, 8)), spacing, 0.21, None, None),
    ]
    return FakeResult(lesions, 0.62, likelihood_map(lesions, shape), str(datasets[0].StudyInstanceUID))


def negative_result(datasets: Sequence[Dataset]) -> FakeResult:
    """No lesion."""
    shape, _ = grid_info(datasets)
    return FakeResult([], 0.04, likelihood_map([], shape), str(datasets[0].StudyInstanceUID))


@dataclass
class FixtureCase:
    """The real fixture as the node sees it: prepared study, chosen T2W instances, input series."""

    t2w_datasets: list[Dataset]
    input_series_uids: list[str]
    result: FakeResult


def _zone_lesion(
    zones: NDArray[np.uint8], label: int, radius_vox: tuple[float, float, float]
) -> NDArray[np.bool_]:
    """A blob inside one zone: a ball around the zone's most central voxel on its largest slice, clipped."""
    zone = zones == label
    k = int(np.argmax(zone.reshape(zone.shape[0], -1).sum(axis=1)))
    distance = ndimage.distance_transform_edt(zone[k])
    r, c = np.unravel_index(int(np.argmax(distance)), distance.shape)
    blob = ellipsoid(zones.shape, (k, int(r), int(c)), radius_vox) & zone
    labels, n = ndimage.label(blob)
    sizes = ndimage.sum_labels(blob, labels, index=np.arange(1, n + 1))
    return np.asarray(labels == int(np.argmax(sizes)) + 1)


def fixture_case(prostatex: Path) -> FixtureCase:
    """Prepare the real study, put one lesion in each zone of its PI-CAI zone mask, and give the result
    the PI-CAI gland mask as its prostate gland."""
    prepared = prepare_study(prostatex / "dicom")
    t2w_uid = prepared.roles["t2w"].series_instance_uid
    datasets = [instance.dataset for instance in prepared.loaded.series_by_uid(t2w_uid).instances]
    zones_image = sitk.ReadImage(str(prostatex / "picai_labels" / "10795_1000811_zones_HeviAI23.nii.gz"))
    zones_image = sitk.Resample(zones_image, prepared.t2w, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    zones = sitk.GetArrayFromImage(zones_image).astype(np.uint8)
    # The peripheral zone is the posterior one (larger row index: the column direction points posterior).
    mean_rows = {label: float(np.argwhere(zones == label)[:, 1].mean()) for label in (1, 2)}
    pz_label = max(mean_rows, key=lambda label: mean_rows[label])
    tz_label = 3 - pz_label
    dz, dy, dx = (float(v) for v in reversed(prepared.t2w.GetSpacing()))
    spacing = (dz, dy, dx)
    lesions = [
        make_lesion(1, _zone_lesion(zones, pz_label, (1.5, 12, 12)), spacing, 0.73, 4, "pz"),
        make_lesion(2, _zone_lesion(zones, tz_label, (1.2, 10, 10)), spacing, 0.41, 3, "tz"),
    ]
    localization = likelihood_map(lesions, zones.shape)
    localization.CopyInformation(prepared.t2w)
    gland_image = sitk.ReadImage(str(prostatex / "picai_labels" / "10795_1000811_gland.nii.gz"))
    gland_image = sitk.Resample(gland_image, prepared.t2w, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    gland = sitk.GetArrayFromImage(gland_image) > 0
    result = with_gland(FakeResult(lesions, 0.73, localization, prepared.study_instance_uid), gland, spacing)
    inputs = [choice.series_instance_uid for choice in prepared.roles.values()]
    return FixtureCase(datasets, inputs, result)


def save_all(objects: Sequence[Dataset], folder: Path, stem: str) -> list[Path]:
    """Write objects as Part 10 files ``<stem>_<n>_<modality>.dcm``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(objects):
        path = folder / f"{stem}_{i:02d}_{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def synthetic_case(folder: Path) -> FixtureCase:
    """A generated study (Philips conventions, one csPCa lesion), its lesion taken from the ground truth.

    One lesion means one segment: highdicom then writes the segment identification into the SEG's shared
    functional groups, a layout that the SR's Referenced Segment must handle too.
    """
    from training.synth import SynthConfig, generate_case

    case = generate_case(folder, 0, 31, SynthConfig(vendor="philips", lesion_kinds=("cspca",), noise=0.5))
    prepared = prepare_study(case / "dicom")
    t2w_uid = prepared.roles["t2w"].series_instance_uid
    datasets = _ordered([instance.dataset for instance in prepared.loaded.series_by_uid(t2w_uid).instances])
    label = sitk.ReadImage(str(next((case / "labels").glob("*_lesion.nii.gz"))))
    mask = sitk.GetArrayFromImage(label) > 0
    dz, dy, dx = (float(v) for v in reversed(prepared.t2w.GetSpacing()))
    lesions = [make_lesion(1, mask, (dz, dy, dx), 0.88, 5, "pz")]
    localization = likelihood_map(lesions, mask.shape)
    localization.CopyInformation(prepared.t2w)
    result = FakeResult(lesions, 0.88, localization, prepared.study_instance_uid)
    inputs = [choice.series_instance_uid for choice in prepared.roles.values()]
    return FixtureCase(datasets, inputs, result)


def roundtrip(ds: Dataset) -> Dataset:
    """Write as a Part 10 file and read it back."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def kos_references(kos: Dataset) -> set[str]:
    """The SOP Instance UIDs a Key Object Selection's evidence lists."""
    return {
        str(instance.ReferencedSOPInstanceUID)
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
