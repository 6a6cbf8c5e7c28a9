"""Diffusion weighting from real vendor conventions, and diffusion acquisitions (derived series linked).

Headers only (no pixel data): series are built from small datasets that carry each vendor's tags.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from lesion_engine.intake.acquisitions import group_acquisitions, same_grid
from lesion_engine.intake.diffusion import NO_B_VALUE_TAG, is_directional
from lesion_engine.intake.roles import classify_series
from lesion_engine.intake.series import Series, build_series
from lesion_engine.intake.series_rules import load_series_rules

FRAME_OF_REFERENCE = generate_uid()
MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"

Tagger = Callable[[Dataset, int, float | None], None]


def _image(
    description: str,
    number: int,
    z: float,
    *,
    uid: str,
    scanning: tuple[str, ...] = ("SE",),
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M"),
    time: str = "101500.000000",
    rows: int = 64,
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = uid
    ds.Modality = "MR"
    ds.Manufacturer = "TEST"
    ds.SeriesDescription = description
    ds.SeriesNumber = number
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.ImageType = list(image_type)
    ds.ScanningSequence = list(scanning)
    ds.AcquisitionTime = time
    ds.ImagePositionPatient = [-100.0, -100.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [2.0, 2.0]
    ds.Rows = rows
    ds.Columns = rows
    return ds


def _series(
    description: str,
    number: int,
    b_values: list[float | None],
    tag: Tagger,
    slices: int = 3,
    **kwargs: object,
) -> Series:
    uid = generate_uid()
    items = []
    for k, b in enumerate(b_values):
        for z in range(slices):
            ds = _image(description, number, z * 3.0, uid=uid, **kwargs)  # type: ignore[arg-type]
            tag(ds, k, b)
            items.append((f"{number}-{k}-{z}", ds))
    series, bad = build_series(uid, items)
    assert series is not None and not bad
    return series


def philips(ds: Dataset, _k: int, b: float | None) -> None:
    if b is not None:
        ds.DiffusionBValue = b
        ds.DiffusionDirectionality = "NONE" if b == 0 else "ISOTROPIC"
        ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "FL", b)


def ge(ds: Dataset, _k: int, b: float | None) -> None:
    if b is not None:
        first = str(int(b) + (1_000_000_000 if b > 0 else 0))
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", [first, "8", "0", "0"])


def standard(ds: Dataset, _k: int, b: float | None) -> None:
    if b is not None:
        ds.DiffusionBValue = b


def untouched(_ds: Dataset, _k: int, _b: float | None) -> None:
    return None


def test_philips_t2_with_b0_tags_is_no_diffusion_and_stays_a_t2_candidate() -> None:
    t2 = _series("T2W_TSE_ax", 401, [0.0], philips)
    assert not t2.diffusion.weighted
    assert t2.b_values == []
    assert t2.diffusion.ignored_b_values is not None
    assert "DiffusionDirectionality NONE" in t2.diffusion.ignored_b_values
    verdict = classify_series(t2, load_series_rules())
    assert verdict.candidate_for == {"t2w"}
    assert "ignored" in verdict.reasons[0]


def test_ge_group_on_a_spin_echo_series_is_not_a_b_value() -> None:
    t2 = _series("Ax T2 FRFSE", 6, [0.0], ge)
    assert not t2.diffusion.weighted and t2.b_values == []
    assert classify_series(t2, load_series_rules()).candidate_for == {"t2w"}
    # Even a non-zero first value on a non-EPI series is no b-value (GE reuses the field).
    odd = _series("Ax T2 FRFSE", 7, [1000.0], ge)
    assert not odd.diffusion.weighted


def test_ge_epi_with_b0_only_is_no_diffusion_and_multi_b_is() -> None:
    fmri = _series("Ax fMRI", 14, [0.0], ge, scanning=("EP", "GR"))
    assert not fmri.diffusion.weighted
    assert fmri.diffusion.ignored_b_values is not None
    dwi = _series("Ax DWI", 5, [0.0, 1000.0], ge, scanning=("EP", "SE"))
    assert dwi.diffusion.weighted
    assert dwi.b_values == [0.0, 1000.0]
    assert {f.b_value_source for f in dwi.frames} == {"ge-private(0043,xx39)"}


def test_untagged_b0_images_of_a_diffusion_series_are_its_b0_volume() -> None:
    """Canon/Toshiba (and others) tag only the b > 0 images; dcm2niix reads the others as b = 0."""
    dwi = _series("DWI", 3, [None, 1000.0, 1500.0], standard, scanning=("EP",))
    assert dwi.diffusion.weighted
    assert dwi.b_values == [0.0, 1000.0, 1500.0]
    assert dwi.diffusion.untagged_b0_frames == 3
    assert sum(f.b_value_source == NO_B_VALUE_TAG for f in dwi.frames) == 3
    verdict = classify_series(dwi, load_series_rules())
    assert verdict.candidate_for == {"dwi"}
    assert "without b-value tag taken as b = 0" in verdict.reasons[0]


def test_series_without_any_b_value_keeps_none() -> None:
    t2 = _series("t2_tse_tra", 10, [None], untouched)
    assert not t2.diffusion.weighted and t2.diffusion.ignored_b_values is None and t2.b_values == []


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda ds: setattr(ds, "ImageType", ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"]), "ImageType"),
        (lambda ds: setattr(ds, "SequenceName", "*ep_b0t"), "diffusion EPI sequence"),
        (lambda ds: setattr(ds, "DiffusionDirectionality", "ISOTROPIC"), "DiffusionDirectionality"),
        (lambda ds: setattr(ds, "AcquisitionContrast", "DIFFUSION"), "AcquisitionContrast"),
    ],
)
def test_other_evidence_makes_a_b0_series_diffusion(setup: Callable[[Dataset], None], reason: str) -> None:
    def tag(ds: Dataset, _k: int, b: float | None) -> None:
        standard(ds, _k, b)
        setup(ds)

    series = _series("b0 scan", 3, [0.0], tag)
    assert series.diffusion.weighted
    assert reason in series.diffusion.describe()


def test_single_positive_b_value_is_diffusion() -> None:
    calc = _series("CALC b1400", 9, [1400.0], standard)
    assert calc.diffusion.weighted and calc.b_values == [1400.0]


def _enhanced_t2(b_group: bool) -> Series:
    ds = _image("T2 axial", 301, 0.0, uid=generate_uid())
    ds.SOPClassUID = ENHANCED_MR
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
    ds.NumberOfFrames = 3
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    measures = Dataset()
    measures.PixelSpacing = [2.0, 2.0]
    measures.SliceThickness = 3.0
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in range(3):
        frame = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-100.0, -100.0, z * 3.0]
        frame.PlanePositionSequence = Sequence([position])
        if b_group:
            diffusion = Dataset()
            diffusion.DiffusionBValue = 0.0
            diffusion.DiffusionDirectionality = "NONE"
            frame.MRDiffusionSequence = Sequence([diffusion])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    series, bad = build_series(ds.SeriesInstanceUID, [("enh", ds)])
    assert series is not None and not bad
    return series


def test_enhanced_t2_with_a_b0_diffusion_group_on_every_frame() -> None:
    t2 = _enhanced_t2(b_group=True)
    assert not t2.diffusion.weighted
    assert t2.b_values == []
    assert "MRDiffusionSequence" in (t2.diffusion.ignored_b_values or "")
    assert classify_series(t2, load_series_rules()).candidate_for == {"t2w"}


def test_directional_images_by_vendor() -> None:
    item = Dataset()
    item.DiffusionDirectionality = "DIRECTIONAL"
    assert is_directional(Dataset(), item, 1000.0)
    item.DiffusionDirectionality = "ISOTROPIC"
    assert not is_directional(Dataset(), item, 1000.0)
    philips_ds = Dataset()
    philips_ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x04, "CS", "O")
    assert is_directional(philips_ds, None, 1000.0)
    assert not is_directional(philips_ds, None, 0.0)  # a b = 0 image has no direction
    philips_ds.private_block(0x2001, "Philips Imaging DD 001").add_new(0x04, "CS", "I")
    assert not is_directional(philips_ds, None, 1000.0)
    ge_ds = Dataset()
    block = ge_ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    for offset, value in ((0xBB, "0.6"), (0xBC, "0.8"), (0xBD, "0")):
        block.add_new(offset, "DS", value)
    assert is_directional(ge_ds, None, 1000.0)
    canon = Dataset()
    canon.ImageComments = "b=1500(0.445,0.000,0.895)"
    assert is_directional(canon, None, 1500.0)
    canon.ImageComments = "b=1500(0.000,0.000,0.000)"
    assert not is_directional(canon, None, 1500.0)


def test_a_trace_image_flagged_directional_is_a_trace_image() -> None:
    """Siemens MDDW outputs: TRACEW with DiffusionDirectionality DIRECTIONAL (private or standard) and no
    gradient vector is a trace image (as dcm2niix reads it); a vector makes it directional again."""
    for where in ("siemens", "standard"):
        ds = Dataset()
        ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"]
        if where == "siemens":
            ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0D, "CS", "DIRECTIONAL")
        else:
            ds.DiffusionDirectionality = "DIRECTIONAL"
        assert not is_directional(ds, None, 800.0), where
        ds.DiffusionGradientOrientation = [0.0, 0.0, 0.0]
        assert not is_directional(ds, None, 800.0), where
        ds.DiffusionGradientOrientation = [0.6, 0.8, 0.0]
        assert is_directional(ds, None, 800.0), where
    # Without TRACEW in ImageType the flag decides, as before.
    source = Dataset()
    source.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
    source.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0D, "CS", "DIRECTIONAL")
    assert is_directional(source, None, 800.0)

    def adc(ds: Dataset, _k: int, _b: float | None) -> None:
        ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0D, "CS", "DIRECTIONAL")

    verdict = classify_series(
        _series("ep2d_diff_mddw_12_ADC", 8, [None], adc, scanning=("EP",)), load_series_rules()
    )
    assert "adc" in verdict.candidate_for and verdict.ignored is None


def test_fa_map_and_directional_only_series_are_never_dwi_candidates() -> None:
    def fa(ds: Dataset, _k: int, b: float | None) -> None:
        ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "FA"]

    fa_map = _series("ep2d_diff_tra_FA", 12, [None], fa)
    verdict = classify_series(fa_map, load_series_rules())
    assert verdict.ignored == "diffusion_map" and not verdict.candidate_for

    def directional(ds: Dataset, _k: int, b: float | None) -> None:
        ds.DiffusionBValue = b
        ds.DiffusionDirectionality = "DIRECTIONAL"

    dti = _series("DTI", 13, [1000.0, 1000.0], directional)
    verdict = classify_series(dti, load_series_rules())
    assert verdict.ignored == "diffusion_directional" and not verdict.candidate_for


def _siemens_protocol() -> dict[str, Series]:
    """Standard multi-b scan (7) with ADC (8) and CALC (9); separate high-b scan (10) with ADC (11)."""

    def diffusion(ds: Dataset, _k: int, b: float | None) -> None:
        ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"]
        if b is not None:
            ds.DiffusionBValue = b

    def adc(ds: Dataset, _k: int, _b: float | None) -> None:
        ds.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]

    return {
        "dwi": _series("ep2d_diff_b50_800_tra", 7, [50.0, 800.0], diffusion, scanning=("EP",)),
        "adc": _series("ep2d_diff_b50_800_tra_ADC", 8, [None], adc, scanning=("EP",)),
        "calc": _series("ep2d_diff_b50_800_tra_CALC_BVAL", 9, [1400.0], diffusion, scanning=("EP",)),
        "high": _series(
            "ep2d_diff_b1500_tra", 10, [50.0, 1500.0], diffusion, scanning=("EP",), time="102000.000000"
        ),
        "high_adc": _series("ep2d_diff_b1500_tra_ADC", 11, [None], adc, scanning=("EP",)),
    }


def test_acquisitions_link_derived_series_to_their_scan() -> None:
    s = _siemens_protocol()
    assert same_grid(s["dwi"], s["high"])  # same prescription: grid alone cannot tell them apart
    groups = group_acquisitions([s["dwi"], s["calc"], s["high"]], [s["adc"], s["high_adc"]])
    by_root = {g.root.series_number: g for g in groups}
    assert set(by_root) == {7, 10}
    assert [x.series_number for x in by_root[7].dwi] == [7, 9]
    assert [x.series_number for x in by_root[7].adc] == [8]
    assert [x.series_number for x in by_root[10].dwi] == [10]
    assert [x.series_number for x in by_root[10].adc] == [11]
    assert "description contains" in by_root[7].links[s["adc"].series_instance_uid]
    assert by_root[7].trace_b_values() == [50.0, 800.0, 1400.0]


def test_ge_numbering_links_a_derived_adc() -> None:
    def dwi_tag(ds: Dataset, _k: int, b: float | None) -> None:
        ge(ds, _k, b)

    def adc_tag(ds: Dataset, _k: int, _b: float | None) -> None:
        ds.ImageType = ["DERIVED", "PRIMARY", "ADC"]

    dwi = _series("Ax DWI", 5, [0.0, 1000.0], dwi_tag, scanning=("EP", "SE"))
    other = _series("Ax DWI 2", 6, [0.0, 1400.0], dwi_tag, scanning=("EP", "SE"), time="103000")
    adc = _series("Apparent Diffusion Coefficient (mm2/s)", 500, [None], adc_tag, time="110000")
    groups = group_acquisitions([dwi, other], [adc])
    root = next(g for g in groups if g.adc)
    assert root.root is dwi
    assert "GE numbering" in root.links[adc.series_instance_uid]


def test_adc_on_another_grid_is_an_acquisition_of_its_own() -> None:
    def adc_tag(ds: Dataset, _k: int, _b: float | None) -> None:
        ds.ImageType = ["DERIVED", "PRIMARY", "ADC"]

    dwi = _series("DWI", 5, [0.0, 1000.0], standard, scanning=("EP",))
    adc = _series("ADC", 6, [None], adc_tag, rows=128)
    groups = group_acquisitions([dwi], [adc])
    assert len(groups) == 2
    assert next(g for g in groups if g.root is adc).dwi == ()


def test_adc_image_embedded_in_a_philips_dwi_series_is_not_a_trace_image() -> None:
    """Philips may put derived ADC/trace images into the DWI series; only trace images build volumes."""

    def tag(ds: Dataset, k: int, b: float | None) -> None:
        philips(ds, k, b)
        if k == 2:  # the third "volume" is the scanner's ADC map, carrying the top b-value
            ds.ImageType = ["DERIVED", "PRIMARY", "ADC", "ADC"]

    dwi = _series("DWI_b0_1000", 601, [0.0, 1000.0, 1000.0], tag, scanning=("SE",))
    assert dwi.diffusion.weighted
    assert sum(f.is_trace for f in dwi.frames) == 6
    assert sum(f.derived_map for f in dwi.frames) == 3
    verdict = classify_series(dwi, load_series_rules())
    assert verdict.candidate_for == {"dwi"}
    assert "3 derived map image(s)" in verdict.reasons[0]
