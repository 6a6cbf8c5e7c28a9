"""The SR as OHIF 3.x loads it: what its SR loader and the Cornerstone3D adapters read, checked on the written
dataset item by item (the strings are spelled out here on purpose: they are OHIF's, not ours to rename).

OHIF's rules (3.13, @cornerstonejs/adapters 4.8): a group maps to a tool only by its Tracking Identifier
text; the tool's geometry is the SCOORD under the group's FIRST NUM (INFERRED FROM), with one IMAGE
SELECTED FROM; groups sharing a Tracking Unique Identifier are merged into one annotation; a group without
any coordinates stops the loader; the label is the group's Comment (DCM 121106) TEXT; a NUM is shown as its
value and unit code; only POLYLINE is drawn, closed when its last point repeats the first.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from lesion_engine.model.contour import enclosed_area, index_slice, outline
from lesion_engine.results.common import t2w_grid
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr_lesion import lesion_labels, percent_text
from lesion_engine.results.writer import ResultObjects, write_results
from tests.support.results_cases import (
    T2W_SERIES_NUMBER,
    FakeLesion,
    FakeResult,
    positive_result,
    read_series,
)

pytestmark = pytest.mark.fixture

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
OUTLINE_TOOL = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
LENGTH_TOOL = "Cornerstone3DTools@^0.1.0:Length"
#: (CodeValue, CodingSchemeDesignator) of the items OHIF looks for.
TRACKING_ID = ("112039", "DCM")
TRACKING_UID = ("112040", "DCM")
COMMENT = ("121106", "DCM")
AREA = ("42798000", "SCT")
LONG_AXIS = ("103339001", "SCT")
PROBABILITY = ("111047", "DCM")


@pytest.fixture(scope="module")
def t2w(prostatex_series: dict[int, Path]) -> list[Dataset]:
    return read_series(prostatex_series[T2W_SERIES_NUMBER])


@pytest.fixture(scope="module")
def positive(t2w: list[Dataset]) -> tuple[FakeResult, ResultObjects]:
    result = positive_result(t2w)
    return result, write_results(result, t2w, analysis_time=WHEN)


def code(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.CodeValue), str(concept.CodingSchemeDesignator)


def children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def groups_of(sr: Dataset) -> list[Dataset]:
    """The Measurement Groups of the Imaging Measurements container, as OHIF finds them."""
    (measurements,) = [i for i in children(sr) if code(i) == ("126010", "DCM")]
    groups = [g for g in children(measurements) if code(g) == ("125007", "DCM")]
    assert len(groups) == len(children(measurements))
    return groups


def text_of(group: Dataset, concept: tuple[str, str]) -> str:
    (item,) = [i for i in children(group) if i.ValueType == "TEXT" and code(i) == concept]
    return str(item.TextValue)


def uid_of(group: Dataset) -> str:
    (item,) = [i for i in children(group) if i.ValueType == "UIDREF" and code(i) == TRACKING_UID]
    return str(item.UID)


def first_num(group: Dataset) -> Dataset:
    return next(i for i in children(group) if i.ValueType == "NUM")


def coordinates_of(num: Dataset) -> Dataset:
    """The one SCOORD/SCOORD3D the NUM is INFERRED FROM."""
    (scoord,) = [i for i in children(num) if i.ValueType in ("SCOORD", "SCOORD3D")]
    assert scoord.RelationshipType == "INFERRED FROM"
    return scoord


def image_of(scoord: Dataset) -> Dataset:
    """The one IMAGE a SCOORD is SELECTED FROM."""
    (image,) = children(scoord)
    assert image.ValueType == "IMAGE" and image.RelationshipType == "SELECTED FROM"
    (reference,) = image.ReferencedSOPSequence
    assert isinstance(reference, Dataset)
    return reference


def unit_of(num: Dataset) -> tuple[str, str]:
    unit = num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    return str(unit.CodeValue), str(unit.CodingSchemeDesignator)


def value_of(num: Dataset) -> float:
    return float(num.MeasuredValueSequence[0].NumericValue)


def walk(items: list[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from walk(children(item))


def by_tool(groups: list[Dataset], tool: str) -> list[Dataset]:
    return [g for g in groups if text_of(g, TRACKING_ID) == tool]


def test_each_lesion_has_an_outline_and_a_length_tool(
    t2w: list[Dataset], positive: tuple[FakeResult, ResultObjects]
) -> None:
    result, objects = positive
    grid = t2w_grid(t2w)
    t2w_uids = {str(ds.SOPInstanceUID) for ds in t2w}
    groups = groups_of(objects.sr)
    outlines, lengths = by_tool(groups, OUTLINE_TOOL), by_tool(groups, LENGTH_TOOL)
    assert len(outlines) == len(lengths) == len(result.lesions)
    for lesion, outline_group, length_group in zip(result.lesions, outlines, lengths, strict=True):
        k = index_slice(lesion.mask)
        index_image = str(grid.datasets[k].SOPInstanceUID)
        # Outline: first NUM is the area (mm2) inferred from a closed POLYLINE on the index slice image.
        area = first_num(outline_group)
        assert code(area) == AREA and area.ConceptNameCodeSequence[0].CodeMeaning == "Area"
        assert unit_of(area) == ("mm2", "UCUM")
        scoord = coordinates_of(area)
        assert scoord.ValueType == "SCOORD" and scoord.GraphicType == "POLYLINE"
        points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
        assert len(points) >= 4 and np.array_equal(points[0], points[-1])
        reference = image_of(scoord)
        assert reference.ReferencedSOPInstanceUID == index_image and index_image in t2w_uids
        assert reference.ReferencedSOPClassUID == t2w[0].SOPClassUID
        assert "ReferencedFrameNumber" not in reference  # single-frame images
        expected_area = enclosed_area(outline(lesion.mask[k]), grid.spacing)
        assert value_of(area) == pytest.approx(expected_area, abs=0.01)
        # The crafted lesions are one region without holes on a slice: the area of their pixels there.
        pixels = int(np.count_nonzero(lesion.mask[k]))
        assert value_of(area) == pytest.approx(pixels * grid.spacing[0] * grid.spacing[1], abs=0.01)
        # Long axis: first NUM is the length (mm) inferred from a two-point POLYLINE on the same image.
        length = first_num(length_group)
        assert code(length) == LONG_AXIS and unit_of(length) == ("mm", "UCUM")
        scoord = coordinates_of(length)
        assert scoord.ValueType == "SCOORD" and scoord.GraphicType == "POLYLINE"
        ends = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
        assert ends.shape == (2, 2)
        row_mm, col_mm = grid.spacing
        assert value_of(length) == pytest.approx(
            float(np.hypot(*((ends[1] - ends[0]) * (col_mm, row_mm)))), abs=0.01
        )
        assert image_of(scoord).ReferencedSOPInstanceUID == index_image


def test_labels_name_the_lesion_zone_category_and_percentage(
    positive: tuple[FakeResult, ResultObjects],
) -> None:
    _, objects = positive
    groups = groups_of(objects.sr)
    outlines, lengths = by_tool(groups, OUTLINE_TOOL), by_tool(groups, LENGTH_TOOL)
    # The crafted lesions: 1 in the peripheral zone, category 4, p=0.81; 2 of unknown zone, category 3, p=0.34.
    assert [text_of(g, COMMENT) for g in outlines] == [
        "Lesion 1 outline, PZ, PI-RADS-like 4, 81 %",
        "Lesion 2 outline, zone unknown, PI-RADS-like 3, 34 %",
    ]
    assert [text_of(g, COMMENT) for g in lengths] == ["Lesion 1 long axis", "Lesion 2 long axis"]
    volumetric = [g for g in groups if text_of(g, TRACKING_ID).startswith("Lesion ")]
    assert [text_of(g, COMMENT) for g in volumetric] == [
        "Lesion 1, PZ, PI-RADS-like 4, 81 %",
        "Lesion 2, zone unknown, PI-RADS-like 3, 34 %",
    ]
    codes = [
        {
            i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning
            for i in children(group)
            if i.ValueType == "CODE"
        }
        for group in volumetric
    ]
    assert [c["Assessment Category"] for c in codes] == [
        "PI-RADS 4 - High (lesion)",
        "PI-RADS 3 - Intermediate (lesion)",
    ]
    assert [c["Finding Site"] for c in codes] == ["Peripheral zone of the prostate", "Prostate"]


def test_probability_is_a_percentage_everywhere(positive: tuple[FakeResult, ResultObjects]) -> None:
    result, objects = positive
    items = list(walk(children(objects.sr)))
    nums = [i for i in items if i.ValueType == "NUM"]
    assert all(unit_of(num) != ("1", "UCUM") for num in nums)  # OHIF would show "0.81 1"
    probabilities = [num for num in nums if code(num) == PROBABILITY]
    assert len(probabilities) == len(result.lesions)
    for lesion, num in zip(result.lesions, probabilities, strict=True):
        assert unit_of(num) == ("%", "UCUM")
        assert num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeMeaning == "Percent"
        assert value_of(num) == pytest.approx(100 * lesion.probability, abs=0.005)
    assert not [i for i in items if i.get("GraphicType") == "POLYGON"]


def test_groups_load_in_ohif_one_annotation_each(
    t2w: list[Dataset], positive: tuple[FakeResult, ResultObjects]
) -> None:
    result, objects = positive
    assert objects.seg is not None
    sr = objects.sr
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = groups_of(sr)
    uids = [uid_of(g) for g in groups]
    assert len(set(uids)) == len(groups) == 3 * len(result.lesions)  # no merging of groups
    t2w_uids = {str(ds.SOPInstanceUID) for ds in t2w}
    for group in groups:
        assert all("ConceptNameCodeSequence" in item for item in children(group))
        text_of(group, TRACKING_ID)
        # Coordinates in every group, else OHIF's loader stops (TID 1410: the region and the first NUM's).
        scoord = coordinates_of(first_num(group))
        assert image_of(scoord).ReferencedSOPInstanceUID in t2w_uids
    # The volumetric groups keep the SEG segments' identity.
    segments = {str(s.TrackingUID): str(s.TrackingID) for s in objects.seg.SegmentSequence}
    volumetric = {uid_of(g): text_of(g, TRACKING_ID) for g in groups if "Lesion" in text_of(g, TRACKING_ID)}
    assert volumetric == segments
    # The planar groups' UIDs are derived, not random: the same result gives the same report.
    again = write_results(result, t2w, analysis_time=WHEN + datetime.timedelta(hours=1))
    assert [uid_of(g) for g in groups_of(again.sr)] == uids


def test_report_without_seg_still_loads(t2w: list[Dataset]) -> None:
    result = positive_result(t2w)
    objects = write_results(result, t2w, ResultSettings(write_seg=False), analysis_time=WHEN)
    assert objects.seg is None
    groups = groups_of(objects.sr)
    assert [text_of(g, TRACKING_ID) for g in groups] == [OUTLINE_TOOL, LENGTH_TOOL] * len(result.lesions)
    for lesion, group in zip(result.lesions, by_tool(groups, OUTLINE_TOOL), strict=True):
        nums = [i for i in children(group) if i.ValueType == "NUM"]
        # The area stays first (OHIF's value of the tool); the lesion's measurements follow.
        assert [code(n) for n in nums] == [AREA, ("118565006", "SCT"), ("81827009", "SCT"), PROBABILITY]
        assert value_of(nums[-1]) == pytest.approx(100 * lesion.probability, abs=0.005)
        coordinates_of(nums[0])
    report = hd.sr.Comprehensive3DSR.from_dataset(objects.sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert report.get_image_measurement_groups() == []  # a TID 1501 group has no coordinates


def test_patient_coordinates_option(t2w: list[Dataset]) -> None:
    result = positive_result(t2w)
    objects = write_results(result, t2w, ResultSettings(sr_outline="scoord3d"), analysis_time=WHEN)
    grid = t2w_grid(t2w)
    for group in groups_of(objects.sr):
        scoord = coordinates_of(first_num(group))
        assert scoord.ValueType == "SCOORD3D" and scoord.GraphicType == "POLYLINE"
        assert scoord.ReferencedFrameOfReferenceUID == grid.frame_of_reference_uid


def test_multi_frame_source_names_the_frame(t2w: list[Dataset]) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
            t2w, series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(), instance_number=1
        )
    result = positive_result(t2w)
    objects = write_results(result, [enhanced], analysis_time=WHEN)
    grid = t2w_grid([enhanced])
    outlines = by_tool(groups_of(objects.sr), OUTLINE_TOOL)
    for lesion, group in zip(result.lesions, outlines, strict=True):
        reference = image_of(coordinates_of(first_num(group)))
        assert reference.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
        assert int(reference.ReferencedFrameNumber) == grid.frame_slices.index(index_slice(lesion.mask)) + 1


@pytest.mark.parametrize(
    ("probability", "text"),
    [(0.0, "0 %"), (0.0001, "<1 %"), (0.0456, "5 %"), (0.345, "35 %"), (0.995, ">99 %"), (1.0, "100 %")],
)
def test_percent_text(probability: float, text: str) -> None:
    assert percent_text(probability) == text


def test_percent_text_rejects_non_probabilities() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        percent_text(1.5)


def test_labels_of_a_transition_zone_lesion() -> None:
    lesion = FakeLesion(3, (0.0, 0.0, 0.0), np.ones((1, 1, 1), dtype=bool), 0.1, 5.0, 0.6, 5, "tz")
    labels = lesion_labels(lesion)
    assert labels.outline == "Lesion 3 outline, TZ, PI-RADS-like 5, 60 %"
    assert labels.long_axis == "Lesion 3 long axis"
    assert labels.lesion == "Lesion 3, TZ, PI-RADS-like 5, 60 %"
    assert all(text.isascii() for text in (labels.outline, labels.long_axis, labels.lesion))
