"""Tests of the synthetic bpMRI study generator (``training.synth``)."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from lesion_engine.cli.main import main
from tests.support.synth_support import (
    B_TAGS,
    CREATORS,
    FULL_OPTIONS,
    GE_B,
    NON_DIFFUSION,
    SMALL_STUDY,
    STANDARD_B,
    Volume,
    all_datasets,
    classic_b_value,
    labels_of,
    read_volume,
    series_folder,
    truth_of,
)
from training.synth import SynthConfig, generate, generate_case
from training.synth.config import resolve_case
from training.synth.dicom import encoding as synth_encoding
from training.synth.truth import MARKSHEET_COLUMNS


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def siemens_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SynthConfig(
        vendor="siemens", tilt_deg=6.3, lesion_kinds=("cspca", "bph", "prostatitis"), **FULL_OPTIONS
    )
    return generate_case(tmp_path_factory.mktemp("siemens"), 0, 11, config)


@pytest.fixture(scope="module", params=["siemens", "ge", "philips", "standard"])
def vendor_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SynthConfig(vendor=request.param, calc_bvalue=True, lesion_kinds=("cspca",), tilt_deg=-4.0)
    return generate_case(tmp_path_factory.mktemp(request.param), 1, 5, config)


@pytest.fixture(scope="module", params=["siemens", "philips"])
def enhanced_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SynthConfig(vendor=request.param, enhanced=True, lesion_kinds=("cspca",), **FULL_OPTIONS)
    return generate_case(tmp_path_factory.mktemp(f"enh-{request.param}"), 2, 3, config)


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vendor", "agfa"),
        ("compress", "jpeg"),
        ("profile", "huge"),
        ("tilt_deg", 45.0),
        ("tilt_deg", float("nan")),
        ("repeat_t2", "yes"),
        ("n_localizers", 3),
        ("b_values", (800, 50)),
        ("b_values", (50, 400)),
        ("calc_b_values", (100,)),
        ("lesion_kinds", ("tumour",)),
        ("noise", -1.0),
        ("extra_dwi", "tensor"),
        ("extra_dwi", True),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        SynthConfig(**{field: value})


def test_config_accepts_none_as_random() -> None:
    config = SynthConfig(vendor=None, tilt_deg=None, repeat_t2=None, dce=None, extra_dwi=None)
    assert config.vendor is None and config.extra_dwi is None


def test_extra_dwi_is_none_by_default_and_drawn_by_seed_when_none() -> None:
    assert SynthConfig().extra_dwi == "none"
    assert resolve_case(SynthConfig(), 3, 0).extra_dwi == "none"
    drawn = [resolve_case(SynthConfig(extra_dwi=None), seed, 0) for seed in range(30)]
    assert {p.extra_dwi for p in drawn} == {"none", "high_b", "dti"}
    assert drawn == [resolve_case(SynthConfig(extra_dwi=None), seed, 0) for seed in range(30)]
    for plan in drawn:
        assert bool(plan.extra_b_values) == (plan.extra_dwi != "none")
        # Fixing the option leaves every other choice of the case as it was.
        fixed = resolve_case(SynthConfig(extra_dwi="none"), plan.seed, 0)
        assert replace(fixed, extra_dwi=plan.extra_dwi, extra_b_values=plan.extra_b_values) == plan


@pytest.mark.parametrize(
    ("options", "extra", "expected"),
    [
        ({"b_values": (50, 400, 800), "calc_bvalue": False}, "dti", (0, 600)),
        ({"b_values": (0, 500, 1000), "calc_bvalue": False}, "dti", (0, 800)),
        ({"b_values": (50, 400, 800), "calc_b_values": (1500,), "calc_bvalue": True}, "dti", (0, 1000)),
        (
            {"b_values": (50, 400, 1000), "calc_b_values": (2000,), "calc_bvalue": True},
            "high_b",
            (None, 2500),
        ),
        ({"b_values": (50, 800, 1400), "calc_bvalue": False}, "high_b", (None, None)),
    ],
)
def test_extra_b_values_keep_the_expected_roles_unambiguous(
    options: dict[str, Any], extra: str, expected: tuple[int | None, int | None]
) -> None:
    for seed in range(6):
        plan = resolve_case(SynthConfig(extra_dwi=extra, **options), seed, 0)
        low, high = plan.extra_b_values
        top = max((*plan.b_values, *plan.calc_b_values))
        if extra == "dti":
            assert (low, high) == expected and high < top
        else:
            assert low in (0, 50) and high > top and (high in (1500, 2000) or high == expected[1])
            if expected[1] is not None:
                assert high == expected[1]


def test_standard_convention_acquires_b0_in_most_drawn_cases() -> None:
    plans = [resolve_case(SynthConfig(vendor="standard"), seed, 0) for seed in range(20)]
    with_b0 = [p for p in plans if p.b_values[0] == 0]
    assert len(with_b0) >= 10
    # Given b-values and the other vendors are left as they are.
    assert resolve_case(SynthConfig(vendor="standard", b_values=(50, 400, 800)), 1, 0).b_values == (
        50,
        400,
        800,
    )
    siemens = [resolve_case(SynthConfig(vendor="siemens"), seed, 0).b_values for seed in range(20)]
    assert {b[0] for b in siemens} <= {0, 50} and any(b[0] == 50 for b in siemens)


# ----------------------------------------------------------------------------------------------- determinism
def _tree_bytes(case: Path) -> dict[str, bytes]:
    return {str(p.relative_to(case)): p.read_bytes() for p in sorted(case.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    config = SynthConfig(vendor="ge", extra_dwi="dti", **FULL_OPTIONS)
    a = generate_case(tmp_path / "a", 4, 21, config)
    b = generate_case(tmp_path / "b", 4, 21, config)
    files_a, files_b = _tree_bytes(a), _tree_bytes(b)
    assert files_a.keys() == files_b.keys()
    dicom = [name for name in files_a if name.endswith(".dcm")]
    assert len(dicom) > 50
    for name in files_a:
        if name.endswith(".nii.gz"):
            arr_a = sitk.GetArrayFromImage(sitk.ReadImage(str(a / name)))
            arr_b = sitk.GetArrayFromImage(sitk.ReadImage(str(b / name)))
            np.testing.assert_array_equal(arr_a, arr_b)
        else:
            assert files_a[name] == files_b[name], name


def test_different_seed_gives_different_study(tmp_path: Path) -> None:
    config = SynthConfig(vendor="standard", **SMALL_STUDY)
    a = generate_case(tmp_path / "a", 0, 1, config)
    b = generate_case(tmp_path / "b", 0, 2, config)
    ta, tb = truth_of(a), truth_of(b)
    assert ta["study_instance_uid"] != tb["study_instance_uid"]
    assert ta["roles"]["t2w"]["series_instance_uid"] != tb["roles"]["t2w"]["series_instance_uid"]
    assert a.name != b.name
    va = read_volume(series_folder(a, ta, ta["roles"]["t2w"]["series_number"]))
    vb = read_volume(series_folder(b, tb, tb["roles"]["t2w"]["series_number"]))
    assert va.array.shape != vb.array.shape or not np.array_equal(va.array, vb.array)
    sops_a = {ds.SOPInstanceUID for ds in all_datasets(a)}
    sops_b = {ds.SOPInstanceUID for ds in all_datasets(b)}
    assert not sops_a & sops_b


# ----------------------------------------------------------------------------------------------- truth
def test_truth_json_has_the_documented_keys(siemens_case: Path) -> None:
    truth = truth_of(siemens_case)
    for key in (
        "patient_id",
        "study_id",
        "study_instance_uid",
        "seed",
        "vendor",
        "enhanced",
        "compress",
        "roles",
        "t2w_alternatives",
        "ignored_series",
        "b_values",
        "lesions",
        "profile",
        "extra_dwi",
        "diffusion_acquisitions",
        "fa_series",
        "directional_series",
    ):
        assert key in truth, key
    assert truth["patient_id"].isdigit() and truth["study_id"].isdigit()
    assert siemens_case.name == f"{truth['patient_id']}_{truth['study_id']}"
    assert (truth["seed"], truth["vendor"], truth["enhanced"], truth["compress"]) == (
        11,
        "siemens",
        False,
        None,
    )
    assert truth["profile"] == "small"
    roles = truth["roles"]
    assert set(roles) >= {"t2w", "adc", "hbv", "b1400_computed"}
    for role in ("t2w", "adc", "hbv"):
        assert set(roles[role]) >= {"series_instance_uid", "series_number"}
    assert set(roles["hbv"]) >= {"b_value", "computed"}
    assert roles["hbv"]["computed"] is False
    for lesion in truth["lesions"]:
        assert set(lesion) >= {
            "id",
            "kind",
            "isup",
            "zone",
            "center_lps_mm",
            "radii_mm",
            "volume_ml",
            "label_value",
        }
    kinds = {entry["kind"] for entry in truth["ignored_series"]}
    assert kinds == {"localizer", "t2_sag", "t2_cor", "coil_reference", "dce", "screenshot"}
    assert truth["extra_dwi"] == "none" and truth["fa_series"] == [] and truth["directional_series"] == []
    (acquisition,) = truth["diffusion_acquisitions"]
    assert acquisition["type"] == "standard" and acquisition["chosen"] is True
    assert acquisition["series"]["dwi"] == roles["dwi"]["series_number"]
    assert acquisition["series"]["adc"] == roles["adc"]["series_number"]
    assert acquisition["top_b_value"] == roles["hbv"]["b_value"]


def test_roles_match_the_dicom_headers(siemens_case: Path) -> None:
    truth = truth_of(siemens_case)
    by_number: dict[int, list[Dataset]] = {}
    for ds in all_datasets(siemens_case):
        by_number.setdefault(int(ds.SeriesNumber), []).append(ds)
    for role in ("t2w", "adc", "hbv"):
        entry = truth["roles"][role]
        assert {ds.SeriesInstanceUID for ds in by_number[entry["series_number"]]} == {
            entry["series_instance_uid"]
        }
    assert len({ds.StudyInstanceUID for group in by_number.values() for ds in group}) == 1
    assert {ds.PatientID for group in by_number.values() for ds in group} == {truth["patient_id"]}
    axial = [truth["roles"][r]["series_number"] for r in ("t2w", "adc", "hbv")]
    assert len({ds.FrameOfReferenceUID for n in axial for ds in by_number[n]}) == 1
    # HBV: the highest b-value >= 800 among DWI and calculated series; here the calculated one.
    highest = max((b, int(n)) for n, bs in truth["b_values"].items() for b in bs)
    assert (truth["roles"]["hbv"]["b_value"], truth["roles"]["hbv"]["series_number"]) == highest
    assert truth["roles"]["b1400_computed"] == (highest[0] < 1400)
    hbv = by_number[truth["roles"]["hbv"]["series_number"]]
    assert hbv[0].ImageType[0] == "DERIVED"
    assert "CALC_BVAL" in hbv[0].SeriesDescription
    adc = by_number[truth["roles"]["adc"]["series_number"]][0]
    assert list(adc.ImageType[:4]) == ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]
    for entry in truth["ignored_series"]:
        assert by_number[entry["series_number"]][0].SeriesDescription == entry["description"]
    shot = by_number[next(e["series_number"] for e in truth["ignored_series"] if e["kind"] == "screenshot")][
        0
    ]
    assert shot.SOPClassUID == SecondaryCaptureImageStorage
    assert list(shot.ImageType) == ["DERIVED", "SECONDARY"]


def test_repeated_t2_chooses_the_later_acquisition(siemens_case: Path) -> None:
    truth = truth_of(siemens_case)
    assert len(truth["t2w_alternatives"]) == 1
    chosen = series_folder(siemens_case, truth, truth["roles"]["t2w"]["series_number"])
    other = series_folder(siemens_case, truth, truth["t2w_alternatives"][0])
    ds_c = pydicom.dcmread(next(chosen.glob("*.dcm")), stop_before_pixels=True)
    ds_o = pydicom.dcmread(next(other.glob("*.dcm")), stop_before_pixels=True)
    assert ds_c.SeriesDescription == ds_o.SeriesDescription
    assert int(ds_c.SeriesNumber) > int(ds_o.SeriesNumber)
    assert float(ds_c.SeriesTime) > float(ds_o.SeriesTime)
    assert min(float(pydicom.dcmread(p).AcquisitionTime) for p in chosen.glob("*.dcm")) > max(
        float(pydicom.dcmread(p).AcquisitionTime) for p in other.glob("*.dcm")
    )
    vc, vo = read_volume(chosen), read_volume(other)
    np.testing.assert_allclose(vc.origin, vo.origin)
    np.testing.assert_allclose(vc.direction, vo.direction)
    assert vc.array.shape == vo.array.shape
    assert not np.array_equal(vc.array, vo.array)  # new noise


def _monotonic(values: list[float]) -> bool:
    return values == sorted(values) or values == sorted(values, reverse=True)


def test_files_and_instance_numbers_are_not_in_position_order(siemens_case: Path) -> None:
    truth = truth_of(siemens_case)
    unordered_names = unordered_numbers = 0
    for entry in truth["series"]:
        if entry["kind"] == "screenshot":
            continue
        files = sorted((siemens_case / entry["folder"]).glob("*.dcm"))
        # Blocks of one stack: same b-value, time point and orientation.
        blocks: dict[tuple[Any, ...], list[Dataset]] = {}
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            key = (classic_b_value(ds), int(ds.AcquisitionNumber), tuple(ds.ImageOrientationPatient))
            blocks.setdefault(key, []).append(ds)
        names_ok = numbers_ok = True
        for datasets in blocks.values():
            iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
            normal = np.cross(iop[:3], iop[3:])
            by_name = [float(np.array(ds.ImagePositionPatient, dtype=float) @ normal) for ds in datasets]
            by_number = [
                float(np.array(ds.ImagePositionPatient, dtype=float) @ normal)
                for ds in sorted(datasets, key=lambda d: int(d.InstanceNumber))
            ]
            names_ok &= _monotonic(by_name)
            numbers_ok &= _monotonic(by_number)
        unordered_names += not names_ok
        unordered_numbers += not numbers_ok
    assert unordered_names >= 5
    assert unordered_numbers >= 2


def test_localizer_has_three_planes(siemens_case: Path) -> None:
    truth = truth_of(siemens_case)
    loc = next(e for e in truth["series"] if e["key"] == "localizer")
    orientations = {
        tuple(np.round(np.array(pydicom.dcmread(p).ImageOrientationPatient, dtype=float), 3))
        for p in (siemens_case / loc["folder"]).glob("*.dcm")
    }
    assert len(orientations) == 3


# ----------------------------------------------------------------------------------------------- vendors
def test_vendor_keeps_b_value_where_its_convention_says(vendor_case: Path) -> None:
    truth = truth_of(vendor_case)
    vendor = truth["vendor"]
    kinds = {s["series_number"]: s["kind"] for s in truth["series"]}
    dwi_number = truth["roles"]["dwi"]["series_number"]
    seen: dict[int, set[float]] = {}
    untagged = 0
    for ds in all_datasets(vendor_case):
        number = int(ds.SeriesNumber)
        kind = kinds[number]
        for other, tag in B_TAGS.items():
            # Philips writes the standard DiffusionBValue = 0 on series that are not diffusion-weighted.
            if other != vendor and not (
                vendor == "philips" and other == "standard" and kind in NON_DIFFUSION
            ):
                assert tag not in ds, f"{vendor} study has {other}'s b-value tag in series {number}"
        for other, creator in CREATORS.items():
            if other != vendor:
                with pytest.raises(KeyError):
                    ds.private_block(B_TAGS[other][0], creator)
        b = classic_b_value(ds)
        if str(number) in truth["b_values"]:
            if b is None:  # the standard convention writes no b-value tag on b = 0 images
                assert vendor == "standard"
                untagged += 1
                b = 0.0
            else:
                assert B_TAGS[vendor] in ds
            seen.setdefault(number, set()).add(b)
            if vendor == "siemens" and number == dwi_number:
                assert ds.SequenceName == f"*ep_b{round(b)}t"
        elif kind in NON_DIFFUSION:
            assert b == (0.0 if vendor in ("ge", "philips") else None), (number, kind)
    assert {n: sorted(v) for n, v in seen.items()} == {
        int(n): [float(b) for b in bs] for n, bs in truth["b_values"].items()
    }
    assert (untagged > 0) == (vendor == "standard" and 0 in truth["b_values"][str(dwi_number)])
    manufacturer = {ds.Manufacturer for ds in all_datasets(vendor_case)}
    expected = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}
    assert manufacturer == {expected.get(vendor, "ACME")}


def test_vendor_b_value_elements_have_the_vendor_encoding(vendor_case: Path) -> None:
    truth = truth_of(vendor_case)
    vendor = truth["vendor"]
    folder = series_folder(vendor_case, truth, truth["roles"]["dwi"]["series_number"])
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    ds = next(d for d in datasets if classic_b_value(d))  # an image with b > 0
    if vendor == "standard":
        assert ds[STANDARD_B].VR == "FD"
        assert ds.DiffusionDirectionality == "ISOTROPIC"
        assert not any(elem.tag.is_private for d in datasets for elem in d)
        return
    block = ds.private_block(B_TAGS[vendor][0], CREATORS[vendor])
    element = block[B_TAGS[vendor][1] & 0xFF]
    if vendor == "ge":
        # Multi-b DWI: b + 10^9, the bias added to b = 0 too.
        values = [[int(v) for v in d[GE_B].value] for d in datasets]
        assert element.VR == "IS" and all(len(v) == 4 and v[0] >= 1_000_000_000 for v in values)
    elif vendor == "philips":
        assert element.VR == "FL"
        assert block[0x04].value == "I"  # isotropic
        assert "DiffusionBValue" not in ds
    else:
        assert element.VR in ("OB", "IS")


def test_non_diffusion_series_carry_the_vendors_b0_tags(vendor_case: Path) -> None:
    """Philips: DiffusionBValue 0 / NONE and (2001,xx03) 0; GE: (0043,xx39) first value 0; others: none."""
    truth = truth_of(vendor_case)
    vendor = truth["vendor"]
    kinds = {s["series_number"]: s["kind"] for s in truth["series"]}
    checked = set()
    for ds in all_datasets(vendor_case):
        kind = kinds[int(ds.SeriesNumber)]
        if ds.SOPClassUID != MRImageStorage:
            continue
        if vendor == "ge":  # on every MR series
            element = ds[ds.private_block(0x0043, CREATORS["ge"]).get_tag(0x39)]
            assert element.VR == "IS" and len(element.value) == 4
            if kind in NON_DIFFUSION:
                assert [int(v) for v in element.value] == [0, 0, 0, 0]
        if kind not in NON_DIFFUSION:
            continue
        checked.add(kind)
        if vendor == "philips":
            assert ds[STANDARD_B].VR == "FD" and ds.DiffusionBValue == 0.0
            assert ds.DiffusionDirectionality == "NONE"
            element = ds[ds.private_block(0x2001, CREATORS["philips"]).get_tag(0x03)]
            assert element.VR == "FL" and element.value == 0.0
        elif vendor in ("siemens", "standard"):
            assert STANDARD_B not in ds and "DiffusionDirectionality" not in ds
            assert classic_b_value(ds) is None
    assert {"localizer", "t2_sag", "t2_cor", "t2w"} <= checked


def test_standard_b0_images_carry_no_b_value_tag(tmp_path: Path) -> None:
    config = SynthConfig(vendor="standard", b_values=(0, 500, 1000), **SMALL_STUDY)
    case = generate_case(tmp_path, 0, 6, config)
    truth = truth_of(case)
    folder = series_folder(case, truth, truth["roles"]["dwi"]["series_number"])
    by_b: dict[float | None, int] = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        b = float(ds.DiffusionBValue) if STANDARD_B in ds else None
        by_b[b] = by_b.get(b, 0) + 1
        if b is None:
            assert "DiffusionDirectionality" not in ds and not any(e.tag.is_private for e in ds)
        else:
            assert ds.DiffusionDirectionality == "ISOTROPIC"
    assert set(by_b) == {None, 500.0, 1000.0}
    assert len(set(by_b.values())) == 1  # as many b = 0 images as of every other b-value
    assert truth["b_values"][str(truth["roles"]["dwi"]["series_number"])] == [0, 500, 1000]


def test_adc_descriptions_and_rescale(vendor_case: Path) -> None:
    truth = truth_of(vendor_case)
    vendor = truth["vendor"]
    adc = pydicom.dcmread(
        next(series_folder(vendor_case, truth, truth["roles"]["adc"]["series_number"]).glob("*.dcm")),
        stop_before_pixels=True,
    )
    if vendor == "ge":
        assert adc.SeriesDescription == "Apparent Diffusion Coefficient (mm2/s)"
    if vendor == "philips":
        assert adc.SeriesDescription == "dADC"
        t2 = pydicom.dcmread(
            next(series_folder(vendor_case, truth, truth["roles"]["t2w"]["series_number"]).glob("*.dcm")),
            stop_before_pixels=True,
        )
        assert float(t2.RescaleSlope) != 1.0
    else:
        assert "RescaleSlope" not in adc


def test_lesion_contrast_on_the_diffusion_grid(vendor_case: Path) -> None:
    truth = truth_of(vendor_case)
    assert [les["kind"] for les in truth["lesions"]] == ["cspca"]
    adc = read_volume(series_folder(vendor_case, truth, truth["roles"]["adc"]["series_number"]))
    hbv = read_volume(
        series_folder(vendor_case, truth, truth["roles"]["hbv"]["series_number"]),
        truth["roles"]["hbv"]["b_value"],
    )
    ref = adc.sitk_image()
    lesion = sitk.GetArrayFromImage(
        sitk.Resample(
            labels_of(vendor_case, truth, "lesion"), ref, sitk.Transform(), sitk.sitkNearestNeighbor
        )
    )
    zones = sitk.GetArrayFromImage(
        sitk.Resample(labels_of(vendor_case, truth, "zones"), ref, sitk.Transform(), sitk.sitkNearestNeighbor)
    )
    in_lesion = lesion > 0
    normal_pz = (zones == 1) & ~in_lesion
    assert in_lesion.sum() >= 2 and normal_pz.sum() >= 20
    assert adc.array[in_lesion].mean() < 1100 < 1400 < adc.array[normal_pz].mean()
    assert hbv.array[in_lesion].mean() > 1.5 * hbv.array[normal_pz].mean()


# ----------------------------------------------------------------------------------------------- labels
def _expected_grid(case: Path, truth: dict[str, Any]) -> Volume:
    return read_volume(series_folder(case, truth, truth["roles"]["t2w"]["series_number"]))


def _check_labels_on_t2w_grid(case: Path) -> None:
    truth = truth_of(case)
    t2 = _expected_grid(case, truth)
    for name in ("lesion", "gland", "zones"):
        img = labels_of(case, truth, name)
        assert img.GetSize() == (t2.array.shape[2], t2.array.shape[1], t2.array.shape[0])
        np.testing.assert_allclose(img.GetOrigin(), t2.origin, atol=1e-3)
        np.testing.assert_allclose(img.GetSpacing(), t2.spacing, atol=1e-4)
        np.testing.assert_allclose(np.array(img.GetDirection()).reshape(3, 3), t2.direction, atol=1e-5)
    lesion = sitk.GetArrayFromImage(labels_of(case, truth, "lesion"))
    gland = sitk.GetArrayFromImage(labels_of(case, truth, "gland"))
    zones = sitk.GetArrayFromImage(labels_of(case, truth, "zones"))
    assert set(np.unique(gland)) == {0, 1}
    assert set(np.unique(zones)) == {0, 1, 2}
    np.testing.assert_array_equal(gland > 0, zones > 0)
    assert np.all(gland[lesion > 0] == 1)
    expected_values = {les["label_value"] for les in truth["lesions"] if les["isup"] >= 2}
    assert set(np.unique(lesion)) - {0} == expected_values
    # The gland is covered with margin: no gland voxel on the first or last slice.
    assert gland[0].sum() == 0 and gland[-1].sum() == 0


def test_labels_lie_on_the_t2w_grid_tilted_and_repeated(siemens_case: Path) -> None:
    _check_labels_on_t2w_grid(siemens_case)


def test_labels_lie_on_the_t2w_grid_of_each_vendor(vendor_case: Path) -> None:
    _check_labels_on_t2w_grid(vendor_case)


def test_labels_lie_on_the_t2w_grid_of_enhanced_studies(enhanced_case: Path) -> None:
    _check_labels_on_t2w_grid(enhanced_case)


def test_t2w_shows_the_gland_brighter_in_pz_than_tz(siemens_case: Path) -> None:
    truth = truth_of(siemens_case)
    t2 = _expected_grid(siemens_case, truth)
    zones = sitk.GetArrayFromImage(labels_of(siemens_case, truth, "zones"))
    lesion = sitk.GetArrayFromImage(labels_of(siemens_case, truth, "lesion"))
    pz = (zones == 1) & (lesion == 0)
    assert t2.array[lesion > 0].mean() < t2.array[pz].mean()
    assert t2.array[zones == 2].mean() < t2.array[pz].mean()


def test_zero_lesion_case(tmp_path: Path) -> None:
    case = generate_case(tmp_path, 0, 9, SynthConfig(lesion_kinds=(), **SMALL_STUDY))
    truth = truth_of(case)
    assert truth["lesions"] == []
    assert sitk.GetArrayFromImage(labels_of(case, truth, "lesion")).max() == 0
    assert truth["marksheet"]["case_csPCa"] == "NO"


# ----------------------------------------------------------------------------------------------- enhanced
def test_enhanced_objects_have_functional_groups(enhanced_case: Path) -> None:
    truth = truth_of(enhanced_case)
    vendor = truth["vendor"]
    assert truth["enhanced"] is True
    for entry in truth["series"]:
        files = sorted((enhanced_case / entry["folder"]).glob("*.dcm"))
        assert len(files) == 1
        ds = pydicom.dcmread(files[0])
        if entry["kind"] == "screenshot":
            assert ds.SOPClassUID == SecondaryCaptureImageStorage
            continue
        assert ds.SOPClassUID == EnhancedMRImageStorage
        assert len(ds.ImageType) == 4
        n = int(ds.NumberOfFrames)
        assert len(ds.PerFrameFunctionalGroupsSequence) == n
        assert ds.pixel_array.shape[0] == n
        shared = ds.SharedFunctionalGroupsSequence[0]
        assert "PixelMeasuresSequence" in shared
        assert "MRImageFrameTypeSequence" in shared
        assert "PixelValueTransformationSequence" in shared
        if entry["kind"] != "localizer":
            assert "PlaneOrientationSequence" in shared
        for group in ds.PerFrameFunctionalGroupsSequence:
            assert "PlanePositionSequence" in group
            assert "FrameContentSequence" in group
        for tag in B_TAGS.values():
            if tag != STANDARD_B:
                assert tag not in ds
        assert STANDARD_B not in ds
        number = str(entry["series_number"])
        if number in truth["b_values"]:
            bs = sorted(
                {float(g.MRDiffusionSequence[0].DiffusionBValue) for g in ds.PerFrameFunctionalGroupsSequence}
            )
            assert bs == [float(b) for b in truth["b_values"][number]]
            assert n == len(bs) * int(
                max(
                    g.FrameContentSequence[0].InStackPositionNumber
                    for g in ds.PerFrameFunctionalGroupsSequence
                )
            )
        if vendor == "philips" and entry["kind"] in ("t2w", "dwi", "adc"):
            assert float(shared.PixelValueTransformationSequence[0].RescaleSlope) != 1.0
            assert "RescaleSlope" not in ds


def test_enhanced_and_classic_give_the_same_volumes(enhanced_case: Path, tmp_path: Path) -> None:
    truth = truth_of(enhanced_case)
    classic = generate_case(
        tmp_path,
        truth["case_index"],
        truth["seed"],
        SynthConfig(vendor=truth["vendor"], lesion_kinds=("cspca",), **FULL_OPTIONS),
    )
    ct = truth_of(classic)
    for role in ("t2w", "adc"):
        ve = read_volume(series_folder(enhanced_case, truth, truth["roles"][role]["series_number"]))
        vc = read_volume(series_folder(classic, ct, ct["roles"][role]["series_number"]))
        np.testing.assert_allclose(ve.array, vc.array)
        np.testing.assert_allclose(ve.origin, vc.origin)


# ----------------------------------------------------------------------------------------------- compression
COMPRESSION_SYNTAX = {
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg-lossless": JPEGLosslessSV1,
}


@pytest.fixture(scope="module", params=[False, True], ids=["classic", "enhanced"])
def uncompressed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[bool, Path]:
    enhanced = bool(request.param)
    config = SynthConfig(vendor="philips", enhanced=enhanced, **SMALL_STUDY)
    return enhanced, generate_case(tmp_path_factory.mktemp("plain"), 0, 4, config)


@pytest.mark.parametrize("compress", sorted(COMPRESSION_SYNTAX))
def test_compression_is_lossless(compress: str, uncompressed: tuple[bool, Path], tmp_path: Path) -> None:
    enhanced, plain = uncompressed
    if compress == "jpeg-lossless" and shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmcjpeg (DCMTK) is not installed")
    case = generate_case(
        tmp_path, 0, 4, SynthConfig(vendor="philips", enhanced=enhanced, compress=compress, **SMALL_STUDY)
    )
    assert truth_of(case)["compress"] == compress
    files = sorted((case / "dicom").rglob("*.dcm"))
    assert files
    for path in files:
        ds = pydicom.dcmread(path)
        ref = pydicom.dcmread(plain / path.relative_to(case))
        assert ref.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.TransferSyntaxUID == COMPRESSION_SYNTAX[compress]
        np.testing.assert_array_equal(ds.pixel_array, ref.pixel_array)
        assert ds.SOPInstanceUID == ref.SOPInstanceUID


def test_jpeg_lossless_without_dcmtk_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(synth_encoding.DcmtkMissingError, match="dcmcjpeg"):
        synth_encoding.encode_frames_dcmtk(np.zeros((1, 4, 4), dtype=np.uint16), 12)


# ----------------------------------------------------------------------------------------------- data sets and CLI
def test_generate_writes_marksheet_and_mixed_vendors(tmp_path: Path) -> None:
    folders = generate(tmp_path, 4, 2, SynthConfig(vendor="mixed", **SMALL_STUDY))
    vendors = [truth_of(f)["vendor"] for f in folders]
    assert vendors == ["siemens", "ge", "philips", "standard"]
    with (tmp_path / "marksheet.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == MARKSHEET_COLUMNS
        rows = list(reader)
    assert [(r["patient_id"], r["study_id"]) for r in rows] == [tuple(f.name.split("_")) for f in folders]
    for row, folder in zip(rows, folders, strict=True):
        truth = truth_of(folder)
        assert row == truth["marksheet"]
        isup = max((les["isup"] for les in truth["lesions"]), default=0)
        assert row["case_ISUP"] == str(isup)
        assert row["case_csPCa"] == ("YES" if isup >= 2 else "NO")


def test_cli_generates_a_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    args = ["--cases", "1", "--seed", "3", "--vendor", "ge", "--compress", "rle", "--extra-dwi", "high_b"]
    status = main(["synth", "--out", str(out), *args])
    assert status == 0
    assert "generated 1 case(s)" in capsys.readouterr().out
    cases = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(cases) == 1
    truth = truth_of(cases[0])
    assert (truth["vendor"], truth["compress"], truth["seed"], truth["extra_dwi"]) == (
        "ge",
        "rle",
        3,
        "high_b",
    )
    assert (out / "marksheet.csv").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--cases", "0"], "--cases"), (["--seed", "-1"], "--seed"), (["--tilt", "40"], "--tilt")],
)
def test_cli_rejects_bad_arguments(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_unknown_vendor(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["synth", "--out", str(tmp_path), "--vendor", "agfa"])
    assert info.value.code == 2


# ----------------------------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_full_profile_has_fixture_sizes(tmp_path: Path) -> None:
    case = generate_case(tmp_path, 0, 1, SynthConfig(profile="full", tilt_deg=6.3, **SMALL_STUDY))
    truth = truth_of(case)
    t2 = _expected_grid(case, truth)
    assert t2.array.shape[1:] == (384, 384) and t2.array.shape[0] >= 19
    np.testing.assert_allclose(t2.spacing, [0.5, 0.5, 3.0], atol=1e-4)
    adc = pydicom.dcmread(
        next(series_folder(case, truth, truth["roles"]["adc"]["series_number"]).glob("*.dcm")),
        stop_before_pixels=True,
    )
    assert (int(adc.Rows), int(adc.Columns)) == (128, 84)
    assert [float(v) for v in adc.PixelSpacing] == [2.0, 2.0]
    assert adc.SOPClassUID == MRImageStorage
    iop = [round(float(v), 2) for v in adc.ImageOrientationPatient]
    assert iop == [1.0, 0.0, 0.0, 0.0, 0.99, -0.11]
