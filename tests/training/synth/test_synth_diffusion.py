"""Synthetic studies with a second diffusion acquisition (separate high b, DTI) and Enhanced diffusion groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.support.synth_support import (
    CREATORS,
    NON_DIFFUSION,
    PHILIPS_B,
    SMALL_STUDY,
    VENDORS,
    classic_b_value,
    read_volume,
    series_folder,
    truth_of,
)
from training.synth import SynthConfig, generate_case


@pytest.fixture(scope="module", params=VENDORS)
def enhanced_small(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SynthConfig(vendor=request.param, enhanced=True, **{**SMALL_STUDY, "calc_bvalue": True})
    return generate_case(tmp_path_factory.mktemp(f"enh-small-{request.param}"), 0, 8, config)


def test_enhanced_series_carry_diffusion_groups_on_every_frame(enhanced_small: Path) -> None:
    """b = 0 / NONE on every frame of series that are not diffusion-weighted; Philips' per-frame private b."""
    truth = truth_of(enhanced_small)
    vendor = truth["vendor"]
    shared_b0 = vendor in ("ge", "standard")
    checked = set()
    for entry in truth["series"]:
        if entry["kind"] == "screenshot":
            continue
        ds = pydicom.dcmread(next((enhanced_small / entry["folder"]).glob("*.dcm")), stop_before_pixels=True)
        shared = ds.SharedFunctionalGroupsSequence[0]
        groups = ds.PerFrameFunctionalGroupsSequence
        if entry["kind"] in NON_DIFFUSION:
            checked.add(entry["kind"])
            assert ("MRDiffusionSequence" in shared) == shared_b0
            for group in groups:
                assert ("MRDiffusionSequence" in group) != shared_b0
                item = (shared if shared_b0 else group).MRDiffusionSequence[0]
                assert item.DiffusionBValue == 0.0 and item.DiffusionDirectionality == "NONE"
        elif entry["kind"] == "adc":
            assert "MRDiffusionSequence" not in shared
            assert all("MRDiffusionSequence" not in group for group in groups)
        else:
            b_values = {float(g.MRDiffusionSequence[0].DiffusionBValue) for g in groups}
            assert b_values == {float(b) for b in truth["b_values"][str(entry["series_number"])]}
        philips_private = [
            group.get(group.private_block(0x2001, CREATORS["philips"]).get_tag(0x03))
            for group in groups
            if vendor == "philips" and entry["kind"] != "adc"
        ]
        for group, element in zip(groups, philips_private, strict=False):
            assert element is not None and element.VR == "FL"
            assert element.value == float(group.MRDiffusionSequence[0].DiffusionBValue)
        if vendor != "philips":
            assert all(PHILIPS_B not in group for group in groups)
    assert {"localizer", "t2_sag", "t2_cor", "t2w"} <= checked


# ----------------------------------------------------------------------------------------------- extra diffusion
EXTRA_STUDY: dict[str, Any] = {
    **SMALL_STUDY,
    "screenshot": False,
    "calc_bvalue": True,
    "lesion_kinds": ("cspca",),
}


@pytest.fixture(scope="module", params=VENDORS)
def high_b_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SynthConfig(vendor=request.param, extra_dwi="high_b", **EXTRA_STUDY)
    return generate_case(tmp_path_factory.mktemp(f"high-b-{request.param}"), 0, 7, config)


@pytest.fixture(
    scope="module",
    params=[(vendor, enhanced) for vendor in VENDORS for enhanced in (False, True)],
    ids=lambda p: f"{p[0]}-{'enhanced' if p[1] else 'classic'}",
)
def dti_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    vendor, enhanced = request.param
    config = SynthConfig(vendor=vendor, enhanced=enhanced, extra_dwi="dti", **EXTRA_STUDY)
    return generate_case(tmp_path_factory.mktemp(f"dti-{vendor}"), 0, 7, config)


DiffusionFrame = tuple[float, str, tuple[float, ...] | None]


def diffusion_frames(folder: Path) -> list[DiffusionFrame]:
    """(b-value, directionality, gradient direction) of every image or frame of a series (untagged: b = 0)."""
    out: list[DiffusionFrame] = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "PerFrameFunctionalGroupsSequence" not in ds:
            grad = ds.get("DiffusionGradientOrientation")
            b = classic_b_value(ds)
            direction = str(ds.get("DiffusionDirectionality", ""))
            out.append((b or 0.0, direction, tuple(float(v) for v in grad) if grad is not None else None))
            continue
        shared = ds.SharedFunctionalGroupsSequence[0]
        for group in ds.PerFrameFunctionalGroupsSequence:
            seq = group.get("MRDiffusionSequence") or shared.get("MRDiffusionSequence")
            assert seq, f"frame without MR Diffusion group in {folder.name}"
            item = seq[0]
            gradient = None
            if "DiffusionGradientDirectionSequence" in item:
                orientation = item.DiffusionGradientDirectionSequence[0].DiffusionGradientOrientation
                gradient = tuple(float(v) for v in orientation)
            out.append((float(item.DiffusionBValue), str(item.DiffusionDirectionality), gradient))
    return out


def _acquisitions(truth: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["type"]: a for a in truth["diffusion_acquisitions"]}


def _acquisition_times(folder: Path) -> list[float]:
    times = []
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        times.append(
            float(ds.AcquisitionTime) if "AcquisitionTime" in ds else float(ds.AcquisitionDateTime[8:])
        )
    return times


def test_high_b_acquisition_is_a_separate_scan_above_every_other_b_value(high_b_case: Path) -> None:
    truth = truth_of(high_b_case)
    vendor = truth["vendor"]
    acq = _acquisitions(truth)
    assert set(acq) == {"standard", "high_b"} and truth["extra_dwi"] == "high_b"
    std, high = acq["standard"], acq["high_b"]
    low_b, top_b = high["b_values"]
    assert low_b in (0, 50) and top_b in (1500, 2000)
    every_b = [b for bs in truth["b_values"].values() for b in bs]
    assert top_b == max(every_b) and top_b > std["top_b_value"] and every_b.count(top_b) == 1
    # Expected roles: HBV and ADC of the high-b acquisition.
    roles = truth["roles"]
    assert (roles["hbv"]["series_number"], roles["hbv"]["b_value"]) == (high["series"]["dwi"], top_b)
    assert roles["adc"]["series_number"] == high["series"]["adc"]
    assert roles["dwi"]["series_number"] == high["series"]["dwi"]
    assert roles["b1400_computed"] is False and high["chosen"] and not std["chosen"]
    assert truth["fa_series"] == [] and truth["directional_series"] == []
    # Acquired after the standard diffusion block, numbered after it as the vendor numbers.
    order = [s["series_number"] for s in truth["series"]]
    assert max(order.index(n) for n in std["series"].values()) < min(
        order.index(n) for n in high["series"].values()
    )
    if vendor == "ge":
        assert (
            high["series"]["adc"] == 100 * high["series"]["dwi"]
            and high["series"]["dwi"] > std["series"]["dwi"]
        )
    elif vendor == "philips":
        assert high["series"]["adc"] == high["series"]["dwi"] + 1
        assert high["series"]["dwi"] > max(std["series"].values())
    else:
        assert min(high["series"].values()) > max(std["series"].values())
    std_folder = series_folder(high_b_case, truth, std["series"]["dwi"])
    high_folder = series_folder(high_b_case, truth, high["series"]["dwi"])
    assert min(_acquisition_times(high_folder)) > max(_acquisition_times(std_folder))
    # Headers: the vendor's naming with the high b in it, its b-values, the standard DWI's grid.
    ds = pydicom.dcmread(next(high_folder.glob("*.dcm")), stop_before_pixels=True)
    assert str(top_b) in ds.SeriesDescription
    assert sorted({f[0] for f in diffusion_frames(high_folder)}) == [float(low_b), float(top_b)]
    a = read_volume(std_folder, float(max(std["b_values"])))
    b = read_volume(high_folder, float(top_b))
    assert a.array.shape == b.array.shape
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-4)
    adc = pydicom.dcmread(
        next(series_folder(high_b_case, truth, high["series"]["adc"]).glob("*.dcm")), stop_before_pixels=True
    )
    assert "ADC" in adc.ImageType or adc.SeriesDescription.startswith("Apparent Diffusion")


def _check_enhanced_dti(ds: Dataset, vendor: str) -> None:
    """Frames of an Enhanced DTI object: unique dimension indices, Siemens' b-matrix."""
    labels = [d.DimensionDescriptionLabel for d in ds.DimensionIndexSequence]
    assert labels[-1] == "Diffusion Gradient Orientation"
    values = [
        tuple(g.FrameContentSequence[0].DimensionIndexValues) for g in ds.PerFrameFunctionalGroupsSequence
    ]
    assert len(set(values)) == len(values) == int(ds.NumberOfFrames)
    if vendor == "siemens":  # as syngo MR XA writes it
        items = [g.MRDiffusionSequence[0] for g in ds.PerFrameFunctionalGroupsSequence]
        assert {i.DiffusionDirectionality for i in items} == {"NONE", "BMATRIX"}
        assert all("DiffusionBMatrixSequence" in i for i in items if i.DiffusionDirectionality == "BMATRIX")


def test_dti_acquisition_has_directional_trace_adc_and_fa_series(dti_case: Path) -> None:
    truth = truth_of(dti_case)
    vendor = truth["vendor"]
    acq = _acquisitions(truth)
    assert set(acq) == {"standard", "dti"} and truth["extra_dwi"] == "dti"
    std, dti = acq["standard"], acq["dti"]
    assert set(dti["series"]) == {"dti", "trace", "adc", "fa"} and dti["directions"] >= 6
    b0, b = dti["b_values"]
    assert b0 == 0 and 0 < b < std["top_b_value"]
    assert truth["directional_series"] == [dti["series"]["dti"]]
    assert truth["fa_series"] == [dti["series"]["fa"]]
    # Expected roles: the standard acquisition, whose highest b-value is higher.
    roles = truth["roles"]
    assert roles["adc"]["series_number"] == std["series"]["adc"]
    assert roles["dwi"]["series_number"] == std["series"]["dwi"]
    assert roles["hbv"]["series_number"] in (std["series"]["dwi"], std["series"].get("calc"))
    assert roles["hbv"]["b_value"] == std["top_b_value"] and std["chosen"] and not dti["chosen"]
    # The DTI series: b = 0 images, then DIRECTIONAL images along every direction.
    dti_folder = series_folder(dti_case, truth, dti["series"]["dti"])
    frames = diffusion_frames(dti_folder)
    if truth["enhanced"]:
        _check_enhanced_dti(pydicom.dcmread(next(dti_folder.glob("*.dcm")), stop_before_pixels=True), vendor)
    zero = [f for f in frames if f[0] == 0]
    directional = [f for f in frames if f[0] > 0]
    assert zero and len(directional) == dti["directions"] * len(zero)
    assert {f[0] for f in directional} == {float(b)}
    assert all(f[1] not in ("DIRECTIONAL", "BMATRIX") and f[2] is None for f in zero)
    assert all(f[1] in ("DIRECTIONAL", "BMATRIX") and f[2] is not None for f in directional)
    assert all(abs(float(np.linalg.norm(f[2])) - 1.0) < 1e-6 for f in directional if f[2] is not None)
    assert len({tuple(np.round(f[2], 6)) for f in directional if f[2] is not None}) == dti["directions"]
    # TRACEW: isotropic images at the DTI's b-value.
    trace_folder = series_folder(dti_case, truth, dti["series"]["trace"])
    trace = diffusion_frames(trace_folder)
    assert {f[0] for f in trace} == {float(b)} and len(trace) == len(zero)
    assert all(f[1] in ("", "ISOTROPIC") and f[2] is None for f in trace)
    trace_ds = pydicom.dcmread(next(trace_folder.glob("*.dcm")), stop_before_pixels=True)
    fa_folder = series_folder(dti_case, truth, dti["series"]["fa"])
    fa_ds = pydicom.dcmread(next(fa_folder.glob("*.dcm")), stop_before_pixels=True)
    assert "FA" in fa_ds.SeriesDescription
    if truth["enhanced"]:
        assert fa_ds.ImageType[3] == "FA" and trace_ds.ImageType[3] == "TRACE"
        groups = [*fa_ds.SharedFunctionalGroupsSequence, *fa_ds.PerFrameFunctionalGroupsSequence]
        assert all("MRDiffusionSequence" not in g for g in groups)
    else:
        if vendor == "siemens":
            assert list(fa_ds.ImageType[:4]) == ["DERIVED", "PRIMARY", "DIFFUSION", "FA"]
            assert "TRACEW" in trace_ds.ImageType
        assert classic_b_value(fa_ds) == (0.0 if vendor == "ge" else None)
        assert "DiffusionDirectionality" not in fa_ds
    fa = read_volume(fa_folder).array
    assert fa.max() <= 1000 and 50 < float(np.median(fa[fa > 0])) < 700
