"""Generated studies of every vendor convention, classic and Enhanced, each compression: roles as the truth says.

The generator always writes the vendors' real b-value habits (Philips and GE b = 0 tags on series that are
not diffusion-weighted, Enhanced b = 0 diffusion groups on every frame, untagged b = 0 images in the
standard convention), so every case here exercises them. Studies with a second diffusion acquisition (a
separate high-b scan, or a DTI scan with TRACEW, ADC and FA) check that ADC and HBV come from one
acquisition and that FA maps and directional images get no role.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.intake.volumes import geometry_of
from training.synth import SynthConfig, generate_case

ALL_SERIES: dict[str, Any] = {
    "repeat_t2": True,
    "calc_bvalue": True,
    "dce": True,
    "coil_reference": True,
    "screenshot": True,
    "n_localizers": 2,
}

# Light studies for the extra-acquisition cases (they are many): no DCE, coil reference or screenshot.
EXTRA_SERIES: dict[str, Any] = {
    "repeat_t2": False,
    "dce": False,
    "coil_reference": False,
    "screenshot": False,
    "n_localizers": 1,
}
EXTRA_CASES = [
    (vendor, enhanced, extra)
    for vendor in ("siemens", "ge", "philips", "standard")
    for enhanced in (False, True)
    for extra in ("high_b", "dti")
]

CASES = [
    *[
        (vendor, enhanced, None)
        for vendor in ("siemens", "ge", "philips", "standard")
        for enhanced in (False, True)
    ],
    *[
        (vendor, enhanced, compress)
        for (vendor, compress) in (
            ("siemens", "rle"),
            ("ge", "jpegls"),
            ("philips", "jpeg2000"),
            ("standard", "jpeg-lossless"),
        )
        for enhanced in (False, True)
    ],
]


def _check_roles(prepared: PreparedStudy, truth: dict[str, Any]) -> None:
    roles = truth["roles"]
    for role in ("t2w", "adc", "hbv"):
        assert prepared.roles[role].series_instance_uid == roles[role]["series_instance_uid"], role
        assert prepared.roles[role].series_number == roles[role]["series_number"], role
    assert prepared.roles["hbv"].b_value == roles["hbv"]["b_value"]
    assert prepared.roles["hbv"].computed is roles["hbv"]["computed"]
    assert (prepared.computed is not None) is roles["b1400_computed"]
    alternatives = " ".join(prepared.roles["t2w"].alternatives)
    for number in truth["t2w_alternatives"]:
        assert f"series {number} " in alternatives
    by_number = {s.series_number: prepared.verdicts[s.series_instance_uid] for s in prepared.loaded.series}
    for ignored in truth["ignored_series"]:
        verdict = by_number.get(ignored["series_number"])
        if verdict is not None:  # a screenshot is an image of another SOP class; still listed
            assert verdict.role is None, ignored
            assert verdict.ignored is not None, ignored
    # FA maps and directional (DTI) series never get a role.
    for number in [*truth["fa_series"], *truth["directional_series"]]:
        assert by_number[number].role is None, number
    # Roles go to the chosen series only: T2W, and ADC, HBV and low-b image of one diffusion acquisition.
    allowed = {roles[role]["series_number"] for role in ("t2w", "adc", "hbv", "dwi")}
    chosen = [a for a in truth["diffusion_acquisitions"] if a["chosen"]]
    assert len(chosen) == 1 and roles["adc"]["series_number"] == chosen[0]["series"]["adc"]
    assert {n for n, v in by_number.items() if v.role is not None} <= allowed


@pytest.mark.parametrize(("vendor", "enhanced", "compress"), CASES)
def test_roles_as_truth_says(tmp_path: Path, vendor: str, enhanced: bool, compress: str | None) -> None:
    config = SynthConfig(vendor=vendor, enhanced=enhanced, compress=compress, **ALL_SERIES)
    case = generate_case(tmp_path, 0, seed=11, config=config)
    truth = json.loads((case / "truth.json").read_text())
    prepared = prepare_study(case / "dicom")
    _check_roles(prepared, truth)
    if compress is not None:
        syntaxes = {
            str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for p in (case / "dicom").rglob("*.dcm")
        }
        assert len(syntaxes - {pydicom.uid.ExplicitVRLittleEndian}) >= 1


@pytest.mark.parametrize(("vendor", "enhanced", "extra"), EXTRA_CASES)
def test_roles_with_two_diffusion_acquisitions(
    tmp_path: Path, vendor: str, enhanced: bool, extra: str
) -> None:
    """A separate high-b scan gives both HBV and ADC; a DTI scan gives neither (its b-value is lower)."""
    # Classic cases with a calculated high-b series, Enhanced ones without (then a b1400 is computed
    # beside the DTI case, from the standard acquisition).
    config = SynthConfig(
        vendor=vendor, enhanced=enhanced, extra_dwi=extra, calc_bvalue=not enhanced, **EXTRA_SERIES
    )
    case = generate_case(tmp_path, 0, seed=11, config=config)
    truth = json.loads((case / "truth.json").read_text())
    acquisitions = {a["type"]: a for a in truth["diffusion_acquisitions"]}
    expected = acquisitions["high_b" if extra == "high_b" else "standard"]
    assert expected["chosen"]
    prepared = prepare_study(case / "dicom")
    _check_roles(prepared, truth)
    assert prepared.roles["adc"].series_number == expected["series"]["adc"]
    assert prepared.roles["hbv"].series_number in (expected["series"]["dwi"], expected["series"].get("calc"))
    if extra == "dti":
        assert truth["fa_series"] == [acquisitions["dti"]["series"]["fa"]]
        assert truth["directional_series"] == [acquisitions["dti"]["series"]["dti"]]


def test_labels_lie_on_the_chosen_t2w_grid(tmp_path: Path) -> None:
    case = generate_case(
        tmp_path, 3, seed=5, config=SynthConfig(vendor="philips", tilt_deg=7.0, **ALL_SERIES)
    )
    truth = json.loads((case / "truth.json").read_text())
    prepared = prepare_study(case / "dicom")
    label = sitk.ReadImage(str(next((case / "labels").glob("*_lesion.nii.gz"))))
    assert geometry_of(label).close_to(geometry_of(prepared.t2w), 1e-3)
    gland = sitk.GetArrayFromImage(sitk.ReadImage(str(next((case / "labels").glob("*_gland.nii.gz"))))) > 0
    adc = sitk.GetArrayFromImage(prepared.adc)
    # The resampled ADC of the gland is tissue ADC, not background: the grids line up in physical space.
    assert 900 < float(np.median(adc[gland])) < 2200
    assert truth["roles"]["t2w"]["series_number"] == prepared.roles["t2w"].series_number


@pytest.mark.parametrize("enhanced", [False, True])
def test_lesion_contrast_survives_the_pipeline(tmp_path: Path, enhanced: bool) -> None:
    config = SynthConfig(vendor="siemens", enhanced=enhanced, lesion_kinds=("cspca",), noise=0.5)
    case = generate_case(tmp_path, 0, seed=21, config=config)
    prepared = prepare_study(case / "dicom")
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(next((case / "labels").glob("*_lesion.nii.gz"))))) > 0
    zones = sitk.GetArrayFromImage(sitk.ReadImage(str(next((case / "labels").glob("*_zones.nii.gz")))))
    normal_pz = (zones == 1) & ~lesion
    adc = sitk.GetArrayFromImage(prepared.adc)
    hbv = sitk.GetArrayFromImage(prepared.high_b if prepared.high_b is not None else prepared.hbv)
    assert lesion.any()
    assert float(adc[lesion].mean()) < float(adc[normal_pz].mean())
    assert float(hbv[lesion].mean()) > float(hbv[normal_pz].mean())


def test_multi_b_dwi_split_into_one_volume_per_b_value(tmp_path: Path) -> None:
    config = SynthConfig(vendor="standard", enhanced=True, b_values=(50, 400, 800), calc_bvalue=False)
    case = generate_case(tmp_path, 0, seed=2, config=config)
    prepared = prepare_study(case / "dicom")
    dwi = [s for s in prepared.loaded.series if s.b_values == [50.0, 400.0, 800.0]]
    assert len(dwi) == 1
    assert prepared.roles["hbv"].series_instance_uid == dwi[0].series_instance_uid
    assert prepared.roles["hbv"].b_value == 800
    assert prepared.computed is not None
    assert prepared.computed.low_b_value == 50
    assert prepared.native["hbv"].GetSize()[2] * 3 == len(dwi[0].frames)
