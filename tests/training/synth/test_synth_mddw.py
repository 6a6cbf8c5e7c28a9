"""Siemens multi-direction diffusion (MDDW) as a study's only diffusion acquisition.

Siemens writes the TRACEW, ADC and calculated-b outputs of an MDDW scan with its private
DiffusionDirectionality (0019,xx0D) = DIRECTIONAL, though they are trace images and maps; dcm2niix reads the
TRACEW images as trace images of their b-value (gradient vector 0 0 0). The synth's ``mddw`` scheme writes
such studies; the node must choose the TRACEW (or calculated) series as the high b-value image and the ADC map
of the same scan, for every size profile and compression, and agree with dcm2niix on every series.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lesion_engine.intake.loading import load_study
from lesion_engine.intake.preprocess import prepare_study
from tests.engine.intake.test_vendor_fixtures import _check_against_dcm2niix, _run_dcm2niix
from tests.training.synth.test_synth_roles import EXTRA_SERIES, _check_roles
from training.synth import SynthConfig, generate_case
from training.synth.config import COMPRESSIONS, PROFILES

SIEMENS_HEADER = "SIEMENS MR HEADER"
CASES = [
    *[(profile, None, calc) for profile in PROFILES for calc in (False, True)],
    *[("small", compress, True) for compress in COMPRESSIONS],
]


def _flag(ds: pydicom.Dataset) -> str:
    block = ds.private_block(0x0019, SIEMENS_HEADER)
    value = ds[block.get_tag(0x0D)].value
    return (value.decode() if isinstance(value, bytes) else str(value)).strip()


def _mddw_case(tmp_path: Path, profile: str, compress: str | None, calc: bool) -> Path:
    config = SynthConfig(
        vendor="siemens",
        dwi_scheme="mddw",
        profile=profile,
        compress=compress,
        calc_bvalue=calc,
        **EXTRA_SERIES,
    )
    return generate_case(tmp_path, 0, seed=21, config=config)


@pytest.mark.slow
@pytest.mark.parametrize(("profile", "compress", "calc"), CASES)
def test_roles_of_an_mddw_only_study(tmp_path: Path, profile: str, compress: str | None, calc: bool) -> None:
    case = _mddw_case(tmp_path, profile, compress, calc)
    truth = json.loads((case / "truth.json").read_text())
    [acquisition] = truth["diffusion_acquisitions"]
    assert acquisition["type"] == "mddw" and acquisition["directions"] >= 6
    assert truth["directional_series"] == [acquisition["series"]["dti"]]
    prepared = prepare_study(case / "dicom")
    _check_roles(prepared, truth)
    hbv = prepared.roles["hbv"].series_number
    assert hbv == acquisition["series"]["calc" if calc else "dwi"]
    assert prepared.roles["adc"].series_number == acquisition["series"]["adc"]
    # What is written is what a real MDDW scan writes: the outputs flagged DIRECTIONAL.
    by_number: dict[int, list[pydicom.Dataset]] = {}
    for path in (case / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_number.setdefault(int(ds.SeriesNumber), []).append(ds)
    for kind in ("dwi", "adc", *(("calc",) if calc else ())):
        assert {_flag(ds) for ds in by_number[acquisition["series"][kind]]} == {"DIRECTIONAL"}, kind
    assert "TRACEW" in by_number[acquisition["series"]["dwi"]][0].ImageType
    assert {_flag(ds) for ds in by_number[acquisition["series"]["dti"]]} == {"DIRECTIONAL"}


@pytest.mark.slow
def test_every_mddw_series_agrees_with_dcm2niix(tmp_path: Path) -> None:
    case = _mddw_case(tmp_path / "study", "small", None, True)
    truth = json.loads((case / "truth.json").read_text())
    [acquisition] = truth["diffusion_acquisitions"]
    theirs = _run_dcm2niix(case / "dicom", tmp_path / "dcm2niix")
    series = load_study(case / "dicom").series
    assert _check_against_dcm2niix(series, theirs) >= 5
    trace_number, source_number = acquisition["series"]["dwi"], acquisition["series"]["dti"]
    assert theirs[trace_number] == [float(b) for b in acquisition["b_values"]]
    # dcm2niix's gradient vectors: 0 0 0 on the TRACEW images, unit vectors on the directional ones.
    vectors = {}
    for bvec in (tmp_path / "dcm2niix").glob("*.bvec"):
        number = int(json.loads(bvec.with_suffix(".json").read_text())["SeriesNumber"])
        vectors[number] = np.array(
            [[float(v) for v in line.split()] for line in bvec.read_text().splitlines()]
        )
    assert np.allclose(vectors[trace_number], 0.0)
    norms = np.linalg.norm(vectors[source_number], axis=0)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-3) and (norms > 0).sum() >= 6
    ours = {s.series_number: s for s in series}
    assert not any(f.directional for f in ours[trace_number].frames)
    assert all(f.directional for f in ours[source_number].frames if f.b_value)


def test_the_mddw_scheme_says_what_it_needs() -> None:
    for wrong in ({"vendor": "ge"}, {"enhanced": True}, {"extra_dwi": "dti"}):
        with pytest.raises(ValueError, match="multi-direction diffusion scan"):
            SynthConfig(**{"vendor": "siemens", "dwi_scheme": "mddw", **wrong})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dwi_scheme"):
        SynthConfig(dwi_scheme="spiral")
