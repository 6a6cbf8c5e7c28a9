"""Every kind of unusable input gives its specific error, and nothing takes the process down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lesion_engine.errors import (
    DuplicateSlicesError,
    InconsistentSeriesError,
    InvalidValueError,
    MissingSlicesError,
    MixedPatientsError,
    MixedSeriesError,
    MultipleStudiesError,
    NoADCError,
    NoDWIError,
    NoImagesError,
    NonAxialError,
    NonUniformSpacingError,
    NoT2WError,
    StudyError,
    TooFewSlicesError,
    WrongModalityError,
)
from lesion_engine.intake.loading import load_study
from lesion_engine.intake.preprocess import prepare_study
from orthanc_plugin.worker.processing import EngineProcessor, ProcessingRequest, ProcessorSettings
from tests.conftest import copy_series
from training.synth import SynthConfig, generate_case

pytestmark = pytest.mark.fixture

CORE = [7, 8, 9, 10]  # DWI, ADC, calculated b1000, one axial T2W


def _sorted_files(folder: Path) -> list[Path]:
    """Files of a series sorted along the slice normal."""
    files = sorted(folder.glob("*.dcm"))
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    heights = [float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))) for d in datasets]
    return [files[i] for i in np.argsort(heights)]


def _edit(path: Path, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _set_stored(ds: pydicom.Dataset, keyword: str, stored: bytes) -> None:
    """Put ``stored`` as the bytes of ``keyword`` (as a broken modality would write them: pydicom refuses
    to set invalid values)."""
    tag = pydicom.tag.Tag(keyword)
    vr = pydicom.datadict.dictionary_VR(tag)
    ds._dict[tag] = pydicom.dataelem.RawDataElement(tag, vr, len(stored), stored, 0, False, True)


@pytest.fixture
def core(prostatex_series: dict[int, Path], tmp_path: Path) -> dict[int, Path]:
    return copy_series(prostatex_series, CORE, tmp_path / "study")


def test_core_copy_is_usable(core: dict[int, Path]) -> None:
    prepared = prepare_study(core[10].parent)
    assert prepared.roles["t2w"].series_number == 10


def test_missing_slice(core: dict[int, Path]) -> None:
    _sorted_files(core[10])[9].unlink()
    with pytest.raises(MissingSlicesError, match="1 slice\\(s\\) missing between"):
        prepare_study(core[10].parent)


def test_missing_slice_falls_back_to_the_repeated_t2(
    prostatex_series: dict[int, Path], tmp_path: Path
) -> None:
    copied = copy_series(prostatex_series, [*CORE, 6], tmp_path / "study")
    _sorted_files(copied[10])[5].unlink()
    prepared = prepare_study(tmp_path / "study")
    assert prepared.roles["t2w"].series_number == 6
    assert any("series 10" in alt and "rejected" in alt for alt in prepared.roles["t2w"].alternatives)
    verdict = prepared.verdicts[
        prepared.loaded.series_by_uid(prepared.roles["t2w"].series_instance_uid).series_instance_uid
    ]
    assert verdict.role == "t2w"


def test_duplicate_slice_with_other_content(core: dict[int, Path]) -> None:
    files = _sorted_files(core[10])
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(core[10] / "duplicate.dcm")
    with pytest.raises(DuplicateSlicesError, match="same slice position"):
        prepare_study(core[10].parent)


def test_exact_duplicate_file_is_dropped(core: dict[int, Path]) -> None:
    files = _sorted_files(core[10])
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(core[10] / "same-image-again.dcm")
    prepared = prepare_study(core[10].parent)
    assert prepared.t2w.GetSize()[2] == 19


def test_non_uniform_spacing(core: dict[int, Path]) -> None:
    path = _sorted_files(core[10])[6]
    ds = pydicom.dcmread(path)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    ds.ImagePositionPatient = [
        float(v) for v in np.array(ds.ImagePositionPatient, dtype=float) + 1.0 * normal
    ]
    ds.save_as(path)
    with pytest.raises(NonUniformSpacingError, match="differs from the series' regular spacing"):
        prepare_study(core[10].parent)


def test_mixed_rows_and_columns(core: dict[int, Path]) -> None:
    path = _sorted_files(core[10])[3]
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.pixel_array[:, :200].copy().tobytes()
    ds.Columns = 200
    ds.save_as(path)
    with pytest.raises(InconsistentSeriesError, match="mixed Rows x Columns"):
        prepare_study(core[10].parent)


def test_mixed_orientation(core: dict[int, Path]) -> None:
    path = _sorted_files(core[10])[3]
    _edit(path, ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    with pytest.raises(InconsistentSeriesError, match="mixed ImageOrientationPatient"):
        prepare_study(core[10].parent)


def test_too_few_slices(core: dict[int, Path]) -> None:
    for path in _sorted_files(core[10])[4:]:
        path.unlink()
    with pytest.raises(TooFewSlicesError, match="4 slice\\(s\\)"):
        prepare_study(core[10].parent)


def test_non_axial_t2(core: dict[int, Path]) -> None:
    angle = np.radians(40)
    for path in core[10].glob("*.dcm"):
        _edit(path, ImageOrientationPatient=[1, 0, 0, 0, float(np.cos(angle)), float(-np.sin(angle))])
    with pytest.raises(NonAxialError, match="tilted too far from axial"):
        prepare_study(core[10].parent)


def test_no_t2w(prostatex_series: dict[int, Path], tmp_path: Path) -> None:
    copy_series(prostatex_series, [4, 5, 7, 8, 9], tmp_path / "study")
    with pytest.raises(NoT2WError, match="T2 series seen only in other planes") as info:
        prepare_study(tmp_path / "study")
    assert info.value.report is not None
    assert len(info.value.report["series"]) == 5


def test_no_adc(prostatex_series: dict[int, Path], tmp_path: Path) -> None:
    copy_series(prostatex_series, [7, 9, 10], tmp_path / "study")
    with pytest.raises(NoADCError, match="no ADC map found"):
        prepare_study(tmp_path / "study")


def test_no_dwi(prostatex_series: dict[int, Path], tmp_path: Path) -> None:
    copy_series(prostatex_series, [8, 10], tmp_path / "study")
    with pytest.raises(NoDWIError, match="no usable diffusion image"):
        prepare_study(tmp_path / "study")


def test_computed_hbv_when_only_low_b_values(prostatex_series: dict[int, Path], tmp_path: Path) -> None:
    copied = copy_series(prostatex_series, [7, 8, 10], tmp_path / "study")
    for path in copied[7].glob("*.dcm"):
        if b"800" in pydicom.dcmread(path, stop_before_pixels=True)[0x0019100C].value:
            path.unlink()
    prepared = prepare_study(tmp_path / "study")
    assert prepared.roles["hbv"].computed is True
    assert prepared.roles["hbv"].b_value == 1400
    assert prepared.roles["hbv"].series_number == 7


def test_wrong_modality(core: dict[int, Path]) -> None:
    for folder in core.values():
        for path in folder.glob("*.dcm"):
            _edit(path, Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    with pytest.raises(WrongModalityError, match="not an MR study"):
        prepare_study(core[10].parent)


def test_two_studies(core: dict[int, Path]) -> None:
    for path in core[7].glob("*.dcm"):
        _edit(path, StudyInstanceUID="1.2.3.4")
    with pytest.raises(MultipleStudiesError, match="2 studies"):
        prepare_study(core[10].parent)


def test_two_patients_in_one_study_are_named_as_such(core: dict[int, Path]) -> None:
    for path in core[8].glob("*.dcm"):  # the ADC filed under another patient, same StudyInstanceUID
        _edit(path, PatientID="OTHER-PATIENT-0002", PatientName="Other^Patient")
    with pytest.raises(MixedPatientsError, match="2 different patients") as caught:
        prepare_study(core[10].parent)
    message = str(caught.value)
    assert "series 8" in message and "series 7" in message
    # Logs and job records carry no PHI: the identifiers are not in the message.
    assert "OTHER-PATIENT-0002" not in message and "ProstateX" not in message


def test_series_holding_images_of_two_studies_is_named(core: dict[int, Path]) -> None:
    for path in _sorted_files(core[10])[:5]:  # 5 of the T2W's 19 images filed under another study
        _edit(path, StudyInstanceUID="1.2.826.0.1.3680043.2.1125.99")
    with pytest.raises(MixedSeriesError, match="holds images of 2 studies") as caught:
        prepare_study(core[10].parent)
    message = str(caught.value)
    assert "series 10 't2_tse_tra'" in message
    assert "StudyInstanceUID 1.2.826.0.1.3680043.2.1125.99: 5 image(s)" in message


def test_series_holding_images_of_two_patients_is_named(core: dict[int, Path]) -> None:
    for path in _sorted_files(core[8])[:3]:
        _edit(path, PatientID="OTHER-PATIENT-0002")
    with pytest.raises(MixedSeriesError, match="holds images of 2 different patients") as caught:
        prepare_study(core[10].parent)
    message = str(caught.value)
    assert "series 8 " in message and "PatientID differs" in message
    assert "OTHER-PATIENT-0002" not in message and "ProstateX" not in message


@pytest.mark.parametrize(
    ("keyword", "stored", "problem"),
    [
        ("SliceThickness", b"abc ", "'abc' is not a decimal number"),
        ("PixelSpacing", b"0.5\\abc ", "'abc' is not a decimal number"),
        ("PixelSpacing", b"0.5\\0 ", "must be greater than 0"),
        ("ImagePositionPatient", b"1\\2 ", "2 value(s), 3 expected"),
        ("ImageOrientationPatient", b"1\\0\\0\\0\\1\\1e999 ", "not a finite number"),
        ("RescaleSlope", b"1,5 ", "'1,5' is not a decimal number"),
        ("RescaleIntercept", b"nan ", "not a finite number"),
    ],
)
def test_invalid_value_in_one_image_is_named_with_its_series(
    core: dict[int, Path], keyword: str, stored: bytes, problem: str
) -> None:
    path = _sorted_files(core[10])[9]
    ds = pydicom.dcmread(path)
    _set_stored(ds, keyword, stored)
    ds.save_as(path)
    with pytest.raises(InvalidValueError) as caught:
        prepare_study(core[10].parent)
    message = str(caught.value)
    shown = stored.decode().strip()
    assert (
        f"series 10 't2_tse_tra' (SeriesInstanceUID {ds.SeriesInstanceUID}): {keyword} '{shown}'" in message
    )
    assert problem in message
    assert f"1 of 19 image(s); first: SOPInstanceUID {ds.SOPInstanceUID}" in message


def test_invalid_value_in_an_enhanced_object_names_the_frame(tmp_path: Path) -> None:
    config = SynthConfig(vendor="siemens", enhanced=True, lesion_kinds=(), repeat_t2=False, n_localizers=1)
    case = generate_case(tmp_path, 0, 4, config)
    [t2w] = [
        p
        for p in case.rglob("*.dcm")
        if str(pydicom.dcmread(p, stop_before_pixels=True).get("SeriesDescription", "")).startswith(
            "t2_tse_tra"
        )
    ]
    ds = pydicom.dcmread(t2w)
    _set_stored(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0], "PixelSpacing", b"0.5\\x ")
    ds.save_as(t2w)
    with pytest.raises(InvalidValueError, match=r"PixelSpacing \(frame 1\) '0\.5\\x': 'x' is not a decimal"):
        prepare_study(case)


def test_invalid_value_gives_the_node_a_failure_report(core: dict[int, Path]) -> None:
    path = _sorted_files(core[10])[4]
    ds = pydicom.dcmread(path)
    _set_stored(ds, "ImagePositionPatient", b"12.5\\-3 ")
    ds.save_as(path)
    instances = [p.read_bytes() for p in sorted(core[10].parent.rglob("*.dcm"))]
    outcome = EngineProcessor(ProcessorSettings())(
        instances, ProcessingRequest(job_id=1, study_id="s", rule="r")
    )
    assert outcome.failed and outcome.reason is not None
    assert "ImagePositionPatient '12.5\\-3': 2 value(s), 3 expected" in outcome.reason
    assert outcome.reason.startswith(
        "no axial T2-weighted series found, because series were left out for invalid"
    )
    # The failure report stored in the study says what is wrong.
    assert any(b"ImagePositionPatient '12.5\\-3'" in report for report in outcome.report)


def test_an_invalid_value_in_a_series_the_engine_does_not_need_leaves_it_out_with_a_warning(
    prostatex_series: dict[int, Path], tmp_path: Path
) -> None:
    copied = copy_series(prostatex_series, [*CORE, 1], tmp_path / "study")
    for path in _sorted_files(copied[1]):
        ds = pydicom.dcmread(path)
        _set_stored(ds, "PixelSpacing", b"abc\\0.5")
        ds.save_as(path)
    prepared = prepare_study(tmp_path / "study")
    assert prepared.roles["t2w"].series_number == 10
    left_out = [w for w in prepared.warnings if w.startswith("left out for an invalid value: series 1 ")]
    assert len(left_out) == 1 and "PixelSpacing" in left_out[0]


def test_nothing_readable(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(NoImagesError, match="not a DICOM file"):
        prepare_study(tmp_path)


def test_truncated_and_garbage_files_are_skipped_and_reported(core: dict[int, Path]) -> None:
    (core[10].parent / "README.txt").write_text("not a DICOM file")
    (core[10].parent / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    victim = _sorted_files(core[9])[7]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    # The calculated b1000 series loses a slice; the engine falls back to the b800 image of the DWI series.
    prepared = prepare_study(core[10].parent)
    assert prepared.roles["hbv"].series_number == 7
    assert prepared.roles["hbv"].b_value == 800
    assert any("series 9" in alt and "rejected" in alt for alt in prepared.roles["hbv"].alternatives)
    sources = {Path(s.source).name for s in prepared.loaded.skipped}
    assert {"README.txt", "garbage.dcm"} <= sources
    assert any(victim.name in w and "cannot decode pixel data" in w for w in prepared.warnings)


def test_truncated_t2_fails_cleanly_in_the_cli(core: dict[int, Path]) -> None:
    victim = _sorted_files(core[10])[7]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 1000])
    result = subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", "inspect", str(core[10].parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "study not usable" in result.stderr
    assert "Traceback" not in result.stderr
    assert victim.name in result.stderr or victim.name in result.stdout


def test_slice_order_ignores_instance_number_and_file_names(core: dict[int, Path]) -> None:
    reference = sitk.GetArrayFromImage(prepare_study(core[10].parent).t2w)
    files = sorted(core[10].glob("*.dcm"))
    rng = np.random.default_rng(0)
    numbers = rng.permutation(len(files)) + 1
    for path, number in zip(files, numbers, strict=True):
        _edit(path, InstanceNumber=int(number))
        path.rename(path.with_name(f"x{rng.integers(1_000_000):07d}-{number}.dcm"))
    shuffled = sitk.GetArrayFromImage(prepare_study(core[10].parent).t2w)
    np.testing.assert_array_equal(shuffled, reference)


def test_rescale_slope_and_intercept_applied(core: dict[int, Path]) -> None:
    reference = sitk.GetArrayFromImage(prepare_study(core[10].parent).t2w)
    for path in core[10].glob("*.dcm"):
        _edit(path, RescaleSlope="2.5", RescaleIntercept="-10")
    rescaled = sitk.GetArrayFromImage(prepare_study(core[10].parent).t2w)
    np.testing.assert_allclose(rescaled, reference * 2.5 - 10, rtol=1e-6)


def test_non_image_objects_ignored_and_reported(core: dict[int, Path]) -> None:
    sr = pydicom.Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    sr.Modality = "SR"
    sr.StudyInstanceUID = "9.9.9"
    sr.SeriesInstanceUID = pydicom.uid.generate_uid()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.save_as(core[10].parent / "report.dcm", enforce_file_format=True)
    loaded = load_study(core[10].parent)
    assert [o.modality for o in loaded.ignored] == ["SR"]
    assert "Comprehensive SR" in loaded.ignored[0].sop_class_name


def test_every_study_error_is_a_study_error() -> None:
    for cls in (
        NoT2WError,
        NoADCError,
        NoDWIError,
        WrongModalityError,
        TooFewSlicesError,
        MissingSlicesError,
        MixedPatientsError,
        MixedSeriesError,
        InvalidValueError,
    ):
        assert issubclass(cls, StudyError)
