"""Real scanner headers of several vendors: diffusion or not, and b-values, as the README and dcm2niix say.

``../shared/fixtures/vendor-mr`` holds real DICOM series of GE, Philips and Siemens (classic and Enhanced)
with the facts of its README in ``truth.json`` and dcm2niix's own output in ``ref/``. Two oracles:

- the README's facts (``truth.json``), series by series;
- dcm2niix itself, run now on every series folder of the vendor fixtures and on the real ProstateX study,
  so that a series added to the fixtures is checked without a hand-written expectation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lesion_engine.intake.loading import load_study
from lesion_engine.intake.roles import classify_series
from lesion_engine.intake.series import Series
from lesion_engine.intake.series_rules import load_series_rules
from tests.conftest import VENDOR_MR_ROOT

pytestmark = pytest.mark.fixture

B_TOLERANCE = 1.0


def _truth() -> dict[str, Any]:
    path = VENDOR_MR_ROOT / "truth.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _folders() -> list[str]:
    return sorted(_truth()) or ["vendor-mr fixtures missing"]


def _only_series(folder: Path) -> Series:
    study = load_study(folder)
    assert len(study.series) == 1, [s.description for s in study.series]
    assert not study.skipped, study.skipped
    return study.series[0]


def _same_b_values(ours: list[float], theirs: list[float]) -> bool:
    return len(ours) == len(theirs) and all(
        abs(a - b) <= B_TOLERANCE for a, b in zip(sorted(ours), sorted(theirs), strict=True)
    )


@pytest.mark.parametrize("name", _folders())
def test_series_classified_as_the_readme_says(vendor_mr: Path, name: str) -> None:
    facts = json.loads((vendor_mr / "truth.json").read_text())[name]
    series = _only_series(vendor_mr / name / "dicom")
    assert series.series_number == facts["series_number"]
    assert series.diffusion.weighted is facts["is_diffusion"], series.diffusion
    assert _same_b_values(series.b_values, facts["b_values"]), (series.b_values, facts["b_values"])
    verdict = classify_series(series, load_series_rules())
    # None of these series is an axial T2W (see expected_not_t2_reason).
    assert "t2w" not in verdict.candidate_for, (facts["expected_not_t2_reason"], verdict.reasons)
    if facts["carries_b0_tag_though_not_diffusion"]:
        assert series.diffusion.ignored_b_values is not None
        assert "ignored" in " ".join(verdict.reasons)
        assert "dwi" not in verdict.candidate_for
    if facts["is_diffusion"]:
        assert verdict.ignored is None or verdict.ignored.startswith("diffusion"), verdict
        assert "diffusion" in " ".join(verdict.reasons)


@pytest.mark.parametrize("name", _folders())
def test_b_values_equal_the_stored_dcm2niix_output(vendor_mr: Path, name: str) -> None:
    bval_files = sorted((vendor_mr / name / "ref").glob("*.bval"))
    theirs = sorted({float(v) for f in bval_files for v in f.read_text().split()})
    series = _only_series(vendor_mr / name / "dicom")
    assert bool(bval_files) is series.diffusion.weighted
    assert _same_b_values(series.b_values, theirs), (series.b_values, theirs)


def _dcm2niix() -> str:
    beside = Path(sys.executable).parent / "dcm2niix"
    found = str(beside) if beside.is_file() else shutil.which("dcm2niix")
    if found is None:
        pytest.fail("dcm2niix is missing: it is a test dependency (pip install -e '.[test]')")
    return found


def _run_dcm2niix(folder: Path, out: Path) -> dict[int, list[float] | None]:
    """SeriesNumber -> sorted distinct b-values of dcm2niix's .bval (None when it wrote none)."""
    out.mkdir(parents=True)
    result = subprocess.run(
        [_dcm2niix(), "-b", "y", "-z", "n", "-f", "%s_%j", "-o", str(out), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    found: dict[int, list[float] | None] = {}
    for sidecar in out.glob("*.json"):
        number = int(json.loads(sidecar.read_text())["SeriesNumber"])
        bval = sidecar.with_suffix(".bval")
        values = sorted({float(v) for v in bval.read_text().split()}) if bval.is_file() else None
        previous = found.get(number)
        if previous is not None and values is not None:
            values = sorted(set(previous) | set(values))
        found[number] = values if values is not None else previous
    return found


def _check_against_dcm2niix(series: list[Series], theirs: dict[int, list[float] | None]) -> int:
    checked = 0
    for s in series:
        assert s.series_number is not None
        if s.series_number not in theirs:
            continue  # dcm2niix converts image series only
        expected = theirs[s.series_number]
        if expected is not None:
            assert s.diffusion.weighted, (s.series_number, s.description, expected)
            assert _same_b_values(s.b_values, expected), (s.series_number, s.b_values, expected)
        else:
            # dcm2niix writes no .bval for series without diffusion weighting, and for single-b derived
            # maps (ADC, calculated trace); never for a series with two b-values.
            assert len(s.b_values) <= 1, (s.series_number, s.description, s.b_values)
            if s.b_values == [0.0]:
                pytest.fail(f"series {s.series_number} {s.description!r}: a b = 0 tag taken as diffusion")
        checked += 1
    return checked


def test_every_vendor_series_agrees_with_dcm2niix_run_now(vendor_mr: Path, tmp_path: Path) -> None:
    folders = sorted(p for p in vendor_mr.iterdir() if (p / "dicom").is_dir())
    assert folders
    checked = 0
    for folder in folders:
        theirs = _run_dcm2niix(folder / "dicom", tmp_path / folder.name)
        checked += _check_against_dcm2niix(load_study(folder / "dicom").series, theirs)
    assert checked == len(folders)


def test_prostatex_series_agree_with_dcm2niix_run_now(prostatex: Path, tmp_path: Path) -> None:
    theirs = _run_dcm2niix(prostatex / "dicom", tmp_path / "prostatex")
    study = load_study(prostatex / "dicom")
    assert _check_against_dcm2niix(study.series, theirs) >= 10
    # The multi-b DWI series is diffusion for both, with the same b-values.
    assert theirs[7] == [50.0, 400.0, 800.0]
