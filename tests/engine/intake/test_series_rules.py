"""Series rules: defaults, site overrides, and errors that name the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from lesion_engine.errors import ConfigError
from lesion_engine.intake.series_rules import load_series_rules
from tests.conftest import REPO


def _ds(description: str, image_type: str = "ORIGINAL\\PRIMARY\\M\\NORM") -> Dataset:
    ds = Dataset()
    ds.SeriesDescription = description
    ds.ImageType = image_type.split("\\")
    ds.ScanningSequence = "SE"
    return ds


def test_defaults_load() -> None:
    rules = load_series_rules()
    assert rules.hbv_min_b_value == 800
    assert rules.computed_b_value == 1400
    assert {e.kind for e in rules.exclude} >= {"localizer", "coil_reference", "dce", "screenshot"}


@pytest.mark.parametrize(
    ("description", "kind"),
    [
        ("t2_localizer", "localizer"),
        ("3-Plane Loc", "localizer"),
        ("Survey_SHC", "localizer"),
        ("tfl_3d PD ref_tra_1.5x1.5_t3", "coil_reference"),
        ("ASSET cal", "coil_reference"),
        ("t1_vibe_tra_dyn", "dce"),
        ("DCE_tra", "dce"),
    ],
)
def test_default_exclusions(description: str, kind: str) -> None:
    rules = load_series_rules()
    matched = [e.kind for e in rules.exclude if e.match.matches(_ds(description))]
    assert matched[:1] == [kind]


@pytest.mark.parametrize(
    "description",
    ["t2_tse_tra", "ep2d_diff_tra_DYNDIST_MIX", "ep2d_diff_tra_DYNDIST_MIX_ADC", "Ax DWI b1400"],
)
def test_default_exclusions_leave_bpmri_series_alone(description: str) -> None:
    rules = load_series_rules()
    assert not [e.kind for e in rules.exclude if e.match.matches(_ds(description))]


def test_t2w_rule_accepts_vendor_names_and_refuses_diffusion() -> None:
    rules = load_series_rules()
    for name in ("t2_tse_tra", "T2W_TSE_ax", "Ax T2 FRFSE"):
        assert rules.t2w.included_by(_ds(name)) is not None
    assert rules.t2w.excluded_by(_ds("t2_diff_calc")) is not None


def test_shipped_site_example_overrides_t2w(tmp_path: Path) -> None:
    rules = load_series_rules(REPO / "config" / "series_rules.yaml")
    site_t2 = _ds("TSE_AX_PROSTATE")
    assert rules.t2w.included_by(site_t2) is not None
    assert load_series_rules().t2w.included_by(site_t2) is None
    assert rules.adc == load_series_rules().adc


def test_diffusion_source_default_and_override(tmp_path: Path) -> None:
    assert load_series_rules().diffusion_source == "same_acquisition"
    path = tmp_path / "rules.yaml"
    path.write_text("diffusion_source: independent\n")
    assert load_series_rules(path).diffusion_source == "independent"


def test_numeric_override(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("computed_b_value: 2000\n")
    assert load_series_rules(path).computed_b_value == 2000


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("version: 1\nmin_slices: three\n", 2, "min_slices", "must be an integer"),
        ("version: 1\n\nbogus: 1\n", 3, "bogus", "unknown field"),
        (
            "roles:\n  t2w:\n    include:\n      - {SeriesDescriptio: 't2'}\n",
            4,
            "roles.t2w.include[0].SeriesDescriptio",
            "not a DICOM keyword",
        ),
        (
            "roles:\n  t2w:\n    include:\n      - {SeriesDescription: '(t2'}\n",
            4,
            "roles.t2w.include[0].SeriesDescription",
            "invalid regular expression",
        ),
        ("roles:\n  flair: {include: []}\n", 2, "roles.flair", "unknown role"),
        ("exclude:\n  - kind: x\n", 2, "exclude[0]", "needs exactly 'kind'"),
        ("hbv_min_b_value: 2000\n", 1, "(top level)", "hbv_min_b_value <= computed_b_value"),
        (
            "version: 1\ndiffusion_source: same_scan\n",
            2,
            "diffusion_source",
            "must be one of same_acquisition",
        ),
        ("diffusion_source: [independent]\n", 1, "diffusion_source", "must be one of"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_series_rules(path)
    text_of_error = str(info.value)
    assert str(path) in text_of_error
    assert f"field {field}" in text_of_error
    assert message in text_of_error
    if field != "(top level)":
        assert f"line {line}" in text_of_error


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("roles: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_series_rules(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_series_rules(tmp_path / "absent.yaml")
