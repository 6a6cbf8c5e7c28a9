"""DICOM result writers: content of SEG, SR, Parametric Map, overlays and failure objects, read back with
highdicom and pydicom (the external validators are in test_results_validators.py)."""

from __future__ import annotations

import datetime
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from lesion_engine.errors import ConfigError
from lesion_engine.model.contour import enclosed_area, index_slice, long_axis, outline
from lesion_engine.results.common import ASSESSMENT_CATEGORY, CATEGORY_CODES, PROBABILITY_OF_CANCER, t2w_grid
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr import NO_LESION_TEXT, patient_score_text
from lesion_engine.results.structured.sr_lesion import LONG_AXIS
from lesion_engine.results.writer import ResultObjects, write_failure, write_results
from tests.support.results_cases import (
    T2W_SERIES_NUMBER,
    FakeResult,
    negative_result,
    positive_result,
    read_series,
    renamed,
    roundtrip,
)

pytestmark = pytest.mark.fixture

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
ALL_OUTPUTS = ResultSettings(write_pmap=True, write_sc=True)


@pytest.fixture(scope="module")
def t2w(prostatex_series: dict[int, Path]) -> list[Dataset]:
    return read_series(prostatex_series[T2W_SERIES_NUMBER])


@pytest.fixture(scope="module")
def positive(t2w: list[Dataset]) -> tuple[FakeResult, ResultObjects]:
    result = positive_result(t2w)
    return result, write_results(result, t2w, ALL_OUTPUTS, analysis_time=WHEN)


def report_of(sr: Dataset) -> hd.sr.MeasurementReport:
    """The TID 1500 content of an SR, read back after a round trip through a file."""
    return cast(hd.sr.MeasurementReport, hd.sr.Comprehensive3DSR.from_dataset(roundtrip(sr)).content)


def walk(items: Iterator[Dataset] | list[Dataset]) -> Iterator[Dataset]:
    """Every content item of an SR content tree."""
    for item in items:
        yield item
        yield from walk(list(item.get("ContentSequence", [])))


def test_seg_describes_each_lesion(t2w: list[Dataset], positive: tuple[FakeResult, ResultObjects]) -> None:
    result, objects = positive
    seg = objects.seg
    assert seg is not None
    assert seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t2w[0].SeriesInstanceUID
    assert len(seg.SegmentSequence) == len(result.lesions)
    first, second = seg.SegmentSequence
    for segment in (first, second):
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "lesion-net"
        assert algorithm.AlgorithmVersion == "0.3.1"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert len(segment.RecommendedDisplayCIELabValue) == 3
        assert segment.AnatomicRegionSequence[0].CodeValue == "41216001"
        assert segment.TrackingUID
    assert first.TrackingID == "Lesion 1"
    assert first.PrimaryAnatomicStructureSequence[0].CodeValue == "279706003"
    assert "PrimaryAnatomicStructureSequence" not in second
    # Frames only where a lesion is.
    expected = sum(
        int(np.asarray(lesion.mask).reshape(19, -1).any(axis=1).sum()) for lesion in result.lesions
    )
    assert int(seg.NumberOfFrames) == expected


def test_seg_reads_back_to_the_masks(t2w: list[Dataset], positive: tuple[FakeResult, ResultObjects]) -> None:
    result, objects = positive
    assert objects.seg is not None
    seg = hd.seg.Segmentation.from_dataset(roundtrip(objects.seg))
    ordered = t2w_grid(t2w).datasets
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in ordered],
        segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True,
    )
    for number, lesion in enumerate(result.lesions, start=1):
        assert np.array_equal(pixels[..., number - 1].astype(bool), lesion.mask)


def test_sr_measurements_and_tracking_links_read_back(positive: tuple[FakeResult, ResultObjects]) -> None:
    result, objects = positive
    assert objects.seg is not None
    report = report_of(objects.sr)
    segments = {int(s.SegmentNumber): s for s in objects.seg.SegmentSequence}
    volumetric = report.get_volumetric_roi_measurement_groups()
    planar = report.get_planar_roi_measurement_groups()
    assert len(volumetric) == len(result.lesions) and len(planar) == 2 * len(result.lesions)
    planar_uids = {group.tracking_uid for group in planar}
    assert len(planar_uids) == len(planar)  # one annotation per group in OHIF: no shared UID
    for n, (lesion, group) in enumerate(zip(result.lesions, volumetric, strict=True)):
        outline_group, axis_group = planar[2 * n], planar[2 * n + 1]
        assert outline_group.tracking_identifier == "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
        assert axis_group.tracking_identifier == "Cornerstone3DTools@^0.1.0:Length"
        reference = group.referenced_segment
        assert reference is not None and reference.referenced_segment_numbers is not None
        segment = segments[reference.referenced_segment_numbers[0]]
        assert reference.referenced_sop_instance_uid == objects.seg.SOPInstanceUID
        assert group.tracking_uid == segment.TrackingUID not in planar_uids
        assert group.tracking_identifier == segment.TrackingID == f"Lesion {lesion.id}"
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        assert values["Volume"] == pytest.approx(lesion.volume_ml, abs=1e-4)
        assert values["Diameter"] == pytest.approx(lesion.max_diameter_mm, abs=0.01)
        assert values["Probability of cancer"] == pytest.approx(100 * lesion.probability, abs=0.005)
        (probability,) = group.get_measurements(name=PROBABILITY_OF_CANCER)
        assert probability.unit.value == "%"
        (category,) = group.get_qualitative_evaluations(name=ASSESSMENT_CATEGORY)
        assert lesion.category is not None
        assert category.value == CATEGORY_CODES[lesion.category]
        for any_group in (group, outline_group, axis_group):
            site = any_group.finding_sites[0].value
            assert site.value == ("279706003" if lesion.zone == "pz" else "41216001")
        (area,) = outline_group.get_measurements()
        assert area.name.meaning == "Area" and area.unit.value == "mm2"


def test_sr_outline_is_a_closed_polyline_on_the_index_slice(
    t2w: list[Dataset], positive: tuple[FakeResult, ResultObjects]
) -> None:
    result, objects = positive
    grid = t2w_grid(t2w)
    report = report_of(objects.sr)
    outlines = report.get_planar_roi_measurement_groups()[::2]
    for lesion, group in zip(result.lesions, outlines, strict=True):
        roi = group.roi
        assert roi is not None
        assert roi.GraphicType == "POLYLINE"
        k = index_slice(lesion.mask)
        image = roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == grid.datasets[k].SOPInstanceUID
        points = np.asarray(roi.GraphicData, dtype=float).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1])
        rows, cols = np.nonzero(lesion.mask[k])
        assert points[:, 0].min() == cols.min() and points[:, 0].max() == cols.max() + 1
        assert points[:, 1].min() == rows.min() and points[:, 1].max() == rows.max() + 1


def test_sr_long_axis_is_the_longest_in_plane_chord_on_the_index_slice(
    t2w: list[Dataset], positive: tuple[FakeResult, ResultObjects]
) -> None:
    result, objects = positive
    grid = t2w_grid(t2w)
    row_mm, col_mm = grid.spacing
    axes = report_of(objects.sr).get_planar_roi_measurement_groups()[1::2]
    for lesion, group in zip(result.lesions, axes, strict=True):
        roi = group.roi
        assert roi is not None and roi.GraphicType == "POLYLINE"
        k = index_slice(lesion.mask)
        image = roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == grid.datasets[k].SOPInstanceUID
        points = np.asarray(roi.GraphicData, dtype=float).reshape(-1, 2)  # (column, row)
        assert points.shape == (2, 2)
        length = float(np.hypot(*((points[1] - points[0]) * (col_mm, row_mm))))
        (axis,) = group.get_measurements()
        assert axis.name == LONG_AXIS and axis.unit.value == "mm"
        assert axis.value == pytest.approx(length, abs=0.01)
        # brute force over the pixel corners of the lesion on that slice: no chord is longer
        rows, cols = np.nonzero(lesion.mask[k])
        corners = np.concatenate([np.stack([rows + dr, cols + dc], axis=1) for dr in (0, 1) for dc in (0, 1)])
        mm = corners * (row_mm, col_mm)
        longest = np.sqrt(((mm[:, None, :] - mm[None, :, :]) ** 2).sum(-1)).max()
        assert axis.value == pytest.approx(longest, abs=0.01)
        assert axis.value <= lesion.max_diameter_mm + 2 * max(row_mm, col_mm)


def test_every_num_item_has_children(positive: tuple[FakeResult, ResultObjects], t2w: list[Dataset]) -> None:
    negative = write_results(negative_result(t2w), t2w, analysis_time=WHEN)
    for sr in (positive[1].sr, negative.sr):
        nums = [item for item in walk(list(sr.ContentSequence)) if item.ValueType == "NUM"]
        assert nums
        for item in nums:
            assert len(item.get("ContentSequence", [])) > 0, item.ConceptNameCodeSequence[0].CodeMeaning


def test_sr_header_names_product_model_and_observer(positive: tuple[FakeResult, ResultObjects]) -> None:
    _, objects = positive
    for ds in objects.all():
        assert ds.Manufacturer == "Lesion AI"
        assert str(ds.ContentDate) == "20240506"
        models = [item.get("ManufacturerModelName") for item in ds.ContributingEquipmentSequence]
        assert "lesion-net" in models
    sr = objects.sr
    assert sr.SeriesDescription == "AI lesion report (research)"
    assert sr.ManufacturerModelName == "Lesion AI prostate bpMRI"
    assert sr.SoftwareVersions
    items = list(walk(list(sr.ContentSequence)))
    names = {item.ConceptNameCodeSequence[0].CodeMeaning for item in items}
    assert {"Device Observer UID", "Device Observer Name", "Device Observer Manufacturer"} <= names
    assert {"Device Observer Model Name", "Image Library", "Procedure reported"} <= names
    procedure = next(i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported")
    assert procedure.ConceptCodeSequence[0].CodeValue == "126020"
    texts = [str(i.TextValue) for i in items if i.ValueType == "TEXT"]
    assert patient_score_text(0.81) in texts


def test_negative_study_gets_an_sr_saying_no_lesion(t2w: list[Dataset]) -> None:
    objects = write_results(negative_result(t2w), t2w, ALL_OUTPUTS, analysis_time=WHEN)
    assert objects.seg is None
    assert objects.sc == []
    assert objects.pmap is not None
    items = list(walk(list(objects.sr.ContentSequence)))
    assert NO_LESION_TEXT in [str(i.TextValue) for i in items if i.ValueType == "TEXT"]
    summary = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "111017"]
    assert summary[0].ConceptCodeSequence[0].CodeValue == "111241"
    report = report_of(objects.sr)
    (group,) = report.get_image_measurement_groups()
    (score,) = group.get_measurements(name=PROBABILITY_OF_CANCER)
    assert score.value == pytest.approx(4.0) and score.unit.value == "%"


def test_failure_objects_say_why(t2w: list[Dataset]) -> None:
    sr, sc = write_failure(t2w, "no ADC series found", analysis_time=WHEN)
    texts = [str(i.TextValue) for i in walk(list(sr.ContentSequence)) if i.ValueType == "TEXT"]
    assert any("no ADC series found" in text and "NOT performed" in text for text in texts)
    assert sr.SeriesDescription == "AI analysis FAILED (research)"
    assert sc.SeriesDescription.startswith("AI analysis FAILED")
    pixels = roundtrip(sc).pixel_array
    assert pixels.dtype == np.uint8 and (pixels > 128).mean() > 0.01  # text burned in
    again = write_failure(t2w, "no ADC series found", analysis_time=WHEN)
    assert [d.SOPInstanceUID for d in again] == [sr.SOPInstanceUID, sc.SOPInstanceUID]
    other = write_failure(t2w, "no T2W series found", analysis_time=WHEN)
    assert other[0].SOPInstanceUID != sr.SOPInstanceUID
    only_sr = write_failure(t2w, "x", ResultSettings(write_failure_sc=False))
    assert len(only_sr) == 1
    with pytest.raises(ValueError, match="reason"):
        write_failure(t2w, "  ")
    with pytest.raises(ValueError, match="at least one"):
        write_failure([], "no ADC series found")


def test_reprocessing_gives_the_same_uids(
    t2w: list[Dataset], positive: tuple[FakeResult, ResultObjects]
) -> None:
    result, first = positive
    second = write_results(result, t2w, ALL_OUTPUTS, analysis_time=WHEN + datetime.timedelta(hours=1))

    def uids(objects: ResultObjects) -> list[str]:
        out = [str(d.SOPInstanceUID) for d in objects.all()] + [
            str(d.SeriesInstanceUID) for d in objects.all()
        ]
        assert objects.seg is not None
        return out + [str(s.TrackingUID) for s in objects.seg.SegmentSequence]

    assert uids(first) == uids(second)
    other_model = FakeResult(
        result.lesions, result.patient_score, result.localization_map, result.study_instance_uid,
        {**result.model, "sha256": "00" * 32},
    )  # fmt: skip
    third = write_results(other_model, t2w, ALL_OUTPUTS, analysis_time=WHEN)
    assert set(uids(third)).isdisjoint(uids(first))
    more_inputs = write_results(result, t2w, input_series_uids=["1.2.3"], analysis_time=WHEN)
    assert more_inputs.sr.SOPInstanceUID != first.sr.SOPInstanceUID
    rooted = write_results(
        result, t2w, ResultSettings(uid_root="1.2.826.0.1.3680043.10.1."), analysis_time=WHEN
    )
    assert rooted.sr.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.1.")


@pytest.mark.parametrize("name", ["Müller^Jürgen", "山田^太郎"])
def test_non_ascii_patient_name_survives_in_every_object(t2w: list[Dataset], name: str) -> None:
    sources = renamed(t2w, name)
    objects = write_results(positive_result(sources), sources, ALL_OUTPUTS).all()
    objects += write_failure(sources, "no ADC series found")
    for ds in objects:
        back = roundtrip(ds)
        assert back.SpecificCharacterSet == "ISO_IR 192"
        assert str(back.PatientName) == name


def test_parametric_map_holds_the_localization_map(
    t2w: list[Dataset], positive: tuple[FakeResult, ResultObjects]
) -> None:
    result, objects = positive
    assert objects.pmap is not None
    pmap = roundtrip(objects.pmap)
    assert pmap.SeriesDescription == "AI lesion likelihood map (research)"
    values = pmap.pixel_array
    ordered = [str(ds.SOPInstanceUID) for ds in t2w_grid(t2w).datasets]
    expected = sitk.GetArrayFromImage(result.localization_map)
    for i, frame in enumerate(pmap.PerFrameFunctionalGroupsSequence):
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.array_equal(values[i], expected[ordered.index(source)])


def test_overlays_show_outlines_and_caption(positive: tuple[FakeResult, ResultObjects]) -> None:
    result, objects = positive
    slices = {k for lesion in result.lesions for k in np.nonzero(lesion.mask.reshape(19, -1).any(axis=1))[0]}
    assert len(objects.sc) == len(slices)
    image = roundtrip(objects.sc[0])
    assert image.PhotometricInterpretation == "RGB"
    assert image.SeriesDescription == "AI lesion overlay (research, not for diagnosis)"
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID
    pixels = image.pixel_array
    caption = pixels[-40:]
    assert ((caption[..., 0] > 200) & (caption[..., 1] > 200) & (caption[..., 2] < 80)).any()  # yellow text
    red = (pixels[..., 0] == 255) & (pixels[..., 1] == 60) & (pixels[..., 2] == 60)
    yellow = (pixels[..., 0] == 255) & (pixels[..., 1] == 210) & (pixels[..., 2] == 0)
    assert red.any() or yellow.any()


def test_multi_frame_t2w_source(t2w: list[Dataset]) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
            t2w, series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(), instance_number=1
        )
    result = positive_result(t2w)
    objects = write_results(result, [enhanced], analysis_time=WHEN)
    assert objects.seg is not None
    seg = hd.seg.Segmentation.from_dataset(roundtrip(objects.seg))
    grid = t2w_grid([enhanced])
    frames = [grid.frame_slices.index(k) + 1 for k in range(19)]
    pixels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=str(enhanced.SOPInstanceUID),
        source_frame_numbers=frames,
        segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True,
    )
    for number, lesion in enumerate(result.lesions, start=1):
        assert np.array_equal(pixels[..., number - 1].astype(bool), lesion.mask)


def test_sr_outline_in_patient_coordinates(t2w: list[Dataset]) -> None:
    result = positive_result(t2w)
    objects = write_results(result, t2w, ResultSettings(sr_outline="scoord3d"), analysis_time=WHEN)
    grid = t2w_grid(t2w)
    report = report_of(objects.sr)
    planar = report.get_planar_roi_measurement_groups()
    assert len(planar) == 2 * len(result.lesions)
    for n, group in enumerate(planar):
        lesion = result.lesions[n // 2]
        roi = group.roi
        assert roi is not None and roi.ValueType == "SCOORD3D"
        points = np.asarray(roi.GraphicData, dtype=float).reshape(-1, 3)
        k = index_slice(lesion.mask)
        distance = (points - grid.positions[k]) @ grid.normal
        assert np.abs(distance).max() < 1e-3


def test_writer_rejects_results_that_do_not_fit(t2w: list[Dataset]) -> None:
    result = positive_result(t2w)
    lesion = result.lesions[0]
    bad_mask = FakeResult(
        [type(lesion)(**{**lesion.__dict__, "mask": lesion.mask[:, :100]})],
        0.5,
        None,
        result.study_instance_uid,
    )
    with pytest.raises(ValueError, match="mask shape"):
        write_results(bad_mask, t2w)
    bad_probability = FakeResult(
        [type(lesion)(**{**lesion.__dict__, "probability": 1.5})], 0.5, None, result.study_instance_uid
    )
    with pytest.raises(ValueError, match="probability"):
        write_results(bad_probability, t2w)
    other_study = FakeResult(result.lesions, 0.5, None, "1.2.3.4")
    with pytest.raises(ValueError, match="study"):
        write_results(other_study, t2w)
    with pytest.raises(ValueError, match="no T2W"):
        write_results(result, [])
    bad_model = FakeResult(result.lesions, 0.5, None, result.study_instance_uid, {"name": "x"})
    with pytest.raises(ValueError, match="sha256"):
        write_results(bad_model, t2w)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"uid_root": "1.2.03."}, "uid_root"),
        ({"sr_series_number": 9901}, "each result series"),
        ({"manufacturer": "x" * 65}, "at most 64"),
        ({"write_sc": "yes"}, "true or false"),
        ({"sr_outline": "polygon"}, "sr_outline"),
        ({"colour": "red"}, "unknown key"),
    ],
)
def test_settings_are_validated(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ResultSettings.from_mapping(values)


def test_outline_follows_pixel_edges() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole is not part of the outer outline
    assert outline(mask).tolist() == [[0.5, 0.5], [0.5, 5.5], [5.5, 5.5], [5.5, 0.5], [0.5, 0.5]]
    two = np.zeros((6, 6), dtype=bool)
    two[0, 0] = True
    two[2:4, 2:5] = True  # the largest region is outlined
    assert outline(two).tolist() == [[1.5, 1.5], [1.5, 4.5], [3.5, 4.5], [3.5, 1.5], [1.5, 1.5]]
    with pytest.raises(ValueError, match="non-empty"):
        outline(np.zeros((3, 3), dtype=bool))


def test_enclosed_area_fills_holes_and_scales_by_spacing() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # the hole is inside the outline
    assert enclosed_area(outline(mask), (1.0, 1.0)) == pytest.approx(25.0)
    assert enclosed_area(outline(mask), (0.5, 2.0)) == pytest.approx(25.0)
    bar = np.zeros((8, 8), dtype=bool)
    bar[2:5, 1:5] = True
    assert enclosed_area(outline(bar), (1.0, 2.0)) == pytest.approx(3 * 4 * 2.0)
    with pytest.raises(ValueError, match="positive"):
        enclosed_area(outline(bar), (1.0, 0.0))
    with pytest.raises(ValueError, match="3"):
        enclosed_area(np.zeros((2, 2)), (1.0, 1.0))


def test_long_axis_is_measured_in_mm_across_pixel_corners() -> None:
    pixel = np.zeros((3, 3), dtype=bool)
    pixel[1, 1] = True
    ends, length = long_axis(pixel, (1.0, 1.0))
    assert length == pytest.approx(np.sqrt(2.0))
    assert sorted(map(tuple, ends.tolist())) in ([(0.5, 0.5), (1.5, 1.5)], [(0.5, 1.5), (1.5, 0.5)])
    bar = np.zeros((8, 8), dtype=bool)
    bar[2:5, 1:5] = True  # 3 rows x 4 columns, rows 1 mm apart, columns 2 mm apart
    _, length = long_axis(bar, (1.0, 2.0))
    assert length == pytest.approx(np.hypot(3 * 1.0, 4 * 2.0))
    with pytest.raises(ValueError, match="positive"):
        long_axis(bar, (0.0, 1.0))


def test_single_lesion_seg_is_referenced_from_the_sr(t2w: list[Dataset]) -> None:
    # highdicom writes the segment identification of a one-segment SEG into the shared functional groups;
    # the SR's Referenced Segment must still find the segment's frames and source images.
    two = positive_result(t2w)
    one = FakeResult(
        two.lesions[:1], two.lesions[0].probability, two.localization_map, two.study_instance_uid
    )
    objects = write_results(one, t2w)
    assert objects.seg is not None
    assert len(objects.seg.SegmentSequence) == 1
    (group,) = report_of(objects.sr).get_volumetric_roi_measurement_groups()
    reference = group.referenced_segment
    assert reference is not None
    assert reference.referenced_segment_numbers == [1]
    assert reference.referenced_frame_numbers is None
    # Every T2W image the segment was derived from is named as a source of the referenced segment.
    derived_from = {
        str(e.value)
        for e in objects.seg.PerFrameFunctionalGroupsSequence[0].iterall()
        if e.keyword == "ReferencedSOPInstanceUID"
    }
    referenced = {str(e.value) for e in objects.sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert derived_from
    assert derived_from <= referenced
    assert reference.referenced_sop_instance_uid == objects.seg.SOPInstanceUID


def test_sources_without_specific_character_set(t2w: list[Dataset]) -> None:
    # Much real data has no SpecificCharacterSet (default repertoire); every writer must accept it.
    plain = []
    for ds in t2w:
        copy = pydicom.dcmread(io.BytesIO(_bytes_of(ds)))
        del copy.SpecificCharacterSet
        plain.append(copy)
    objects = write_results(positive_result(plain), plain, ResultSettings(write_pmap=True, write_sc=True))
    failures = write_failure(plain, "no ADC map found")
    for ds in [*objects.all(), *failures]:
        assert "SpecificCharacterSet" not in ds or ds.SpecificCharacterSet in ("", "ISO_IR 192", "ISO_IR 100")
        assert roundtrip(ds).StudyInstanceUID == plain[0].StudyInstanceUID


def _bytes_of(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
