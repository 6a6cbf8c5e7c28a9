"""The real ProstateX-0001 study: roles, geometry against the PI-CAI labels, inputs as files and bytes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lesion_engine.cli.main import main
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.intake.volumes import geometry_of

pytestmark = pytest.mark.fixture


@pytest.fixture(scope="module")
def prepared(prostatex: Path) -> PreparedStudy:
    return prepare_study(prostatex / "dicom")


def test_roles_match_readme(prepared: PreparedStudy) -> None:
    roles = prepared.roles
    assert roles["t2w"].series_number == 10
    assert any(alt.startswith("series 6 ") for alt in roles["t2w"].alternatives)
    assert roles["adc"].series_number == 8
    assert roles["hbv"].series_number == 9
    assert roles["hbv"].b_value == 1000
    assert roles["hbv"].computed is False
    assert prepared.computed is not None
    assert prepared.computed.b_value == 1400
    assert prepared.computed.low_b_series_number == 7
    assert prepared.computed.low_b_value == 50


def test_other_series_ignored_with_reason(prepared: PreparedStudy) -> None:
    by_number = {s.series_number: prepared.verdicts[s.series_instance_uid] for s in prepared.loaded.series}
    assert {n: by_number[n].ignored for n in (1, 2, 3, 4, 5, 11)} == {
        1: "localizer",
        2: "localizer",
        3: "localizer",
        4: "t2_sagittal",
        5: "t2_coronal",
        11: "coil_reference",
    }
    for n in (1, 2, 3, 4, 5, 11):
        assert by_number[n].role is None
        assert by_number[n].reasons


def test_t2w_grid_equals_picai_label_grid(prepared: PreparedStudy, prostatex: Path) -> None:
    label = sitk.ReadImage(str(prostatex / "picai_labels" / "10795_1000811_lesion.nii.gz"))
    ours, theirs = geometry_of(prepared.t2w), geometry_of(label)
    assert ours.size == theirs.size
    np.testing.assert_allclose(ours.spacing, theirs.spacing, atol=1e-3)
    np.testing.assert_allclose(ours.origin, theirs.origin, atol=1e-3)
    np.testing.assert_allclose(ours.direction, theirs.direction, atol=1e-3)


def test_adc_and_hbv_resampled_onto_t2w_grid_with_plausible_values(
    prepared: PreparedStudy, prostatex: Path
) -> None:
    t2w = geometry_of(prepared.t2w)
    for image in (prepared.adc, prepared.hbv, prepared.high_b):
        assert image is not None
        assert geometry_of(image).close_to(t2w, 1e-6)
    gland = sitk.GetArrayFromImage(
        sitk.ReadImage(str(prostatex / "picai_labels" / "10795_1000811_gland.nii.gz"))
    )
    inside = gland > 0
    adc = sitk.GetArrayFromImage(prepared.adc)[inside]
    # Prostate ADC lies around 1000-1800 x10^-6 mm^2/s; a misplaced grid would sample background or air.
    assert 900 < float(np.median(adc)) < 2000
    b1000 = sitk.GetArrayFromImage(prepared.hbv)[inside]
    assert prepared.high_b is not None
    b1400 = sitk.GetArrayFromImage(prepared.high_b)[inside]
    # Mono-exponential decay: the computed b1400 is darker than the measured b1000 in tissue.
    assert 0 < float(np.mean(b1400)) < float(np.mean(b1000))


def test_same_roles_from_file_list_and_from_bytes(prostatex: Path, prepared: PreparedStudy) -> None:
    files = sorted((prostatex / "dicom").rglob("*.dcm"))
    from_files = prepare_study([str(f) for f in files])
    from_bytes = prepare_study([f.read_bytes() for f in files])
    for other in (from_files, from_bytes):
        assert {k: v.series_instance_uid for k, v in other.roles.items()} == {
            k: v.series_instance_uid for k, v in prepared.roles.items()
        }
        np.testing.assert_array_equal(sitk.GetArrayFromImage(other.t2w), sitk.GetArrayFromImage(prepared.t2w))


def test_inspect_json(prostatex: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["inspect", str(prostatex / "dicom"), "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is True
    assert report["roles"]["t2w"]["series_number"] == 10
    assert report["roles"]["adc"]["series_number"] == 8
    assert report["roles"]["hbv"] == report["roles"]["hbv"] | {"series_number": 9, "computed": False}
    assert report["roles"]["hbv_b1400"]["computed"] is True
    assert {r["series_number"] for r in report["series"]} == set(range(1, 12))


def test_inspect_table_in_a_subprocess(prostatex: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", "inspect", str(prostatex / "dicom")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "t2w: series 10" in result.stdout
    assert "series 6 't2_tse_tra'" in result.stdout
    assert "coil_reference" in result.stdout


def _tag_philips_b0(ds: pydicom.Dataset) -> None:
    """What Philips writes on every non-diffusion series: b = 0, directionality NONE, private b = 0."""
    ds.DiffusionBValue = 0.0
    ds.DiffusionDirectionality = "NONE"
    ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "FL", 0.0)


def _tag_ge_b0(ds: pydicom.Dataset) -> None:
    """What GE writes on every MR series: its private (0043,xx39) group, first value 0 outside diffusion."""
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", ["0", "0", "0", "0"])


@pytest.mark.parametrize("convention", ["philips", "ge", "both"])
def test_b0_tags_on_t2_series_keep_them_t2(
    prostatex: Path, tmp_path: Path, convention: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's reproduction: b = 0 tags on every T2 series (axial twice, sagittal, coronal)."""
    copy = tmp_path / "study"
    shutil.copytree(prostatex / "dicom", copy)
    tagged = 0
    for path in copy.rglob("*.dcm"):
        path.chmod(0o644)
        ds = pydicom.dcmread(path)
        if str(ds.SeriesDescription).startswith("t2_tse"):
            if convention in ("philips", "both"):
                _tag_philips_b0(ds)
            if convention in ("ge", "both"):
                _tag_ge_b0(ds)
            ds.save_as(path)
            tagged += 1
    assert tagged == 19 * 3 + 15
    status = main(["inspect", str(copy), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report.get("error")
    roles = report["roles"]
    assert (roles["t2w"]["series_number"], roles["adc"]["series_number"], roles["hbv"]["series_number"]) == (
        10,
        8,
        9,
    )
    rows = {r["series_number"]: r for r in report["series"]}
    assert (rows[4]["ignored"], rows[5]["ignored"]) == ("t2_sagittal", "t2_coronal")
    for number in (4, 5, 6, 10):
        assert rows[number]["b_values"] == []
        # GE's group is read as a b-value on EPI series only; Philips' b = 0 is read and said to be ignored.
        ignored = "ignored: a b-value of 0 alone is no diffusion weighting" in rows[number]["reason"]
        assert ignored is (convention != "ge")
    assert rows[7]["b_values"] == [50.0, 400.0, 800.0]
