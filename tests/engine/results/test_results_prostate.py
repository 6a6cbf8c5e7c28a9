"""The prostate volume in the results: the SR's TID 1411 "Prostate gland" group and its line in words,
the overlays' line, read back with pydicom and highdicom; none of it without a gland (gate off)."""

from __future__ import annotations

import dataclasses
import datetime
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from lesion_engine.model.contour import index_slice
from lesion_engine.results.common import PROSTATE, VOLUME, t2w_grid
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr_gland import ProstateVolume, prostate_line
from lesion_engine.results.writer import ResultObjects, write_results
from tests.support.results_cases import (
    GLAND_MODEL,
    T2W_SERIES_NUMBER,
    FakeResult,
    ellipsoid,
    grid_info,
    negative_result,
    positive_result,
    read_series,
    with_gland,
)

pytestmark = pytest.mark.fixture

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
TRACKING_ID = ("112039", "DCM")
COMMENT = ("121106", "DCM")
FINDING = ("121071", "DCM")


@pytest.fixture(scope="module")
def t2w(prostatex_series: dict[int, Path]) -> list[Dataset]:
    return read_series(prostatex_series[T2W_SERIES_NUMBER])


def _gland_result(t2w: list[Dataset], base: FakeResult | None = None) -> FakeResult:
    shape, spacing = grid_info(t2w)
    gland = ellipsoid(shape, (9, 220, 190), (4, 50, 60))
    return with_gland(base if base is not None else positive_result(t2w), gland, spacing)


@pytest.fixture(scope="module")
def gated(t2w: list[Dataset]) -> tuple[FakeResult, ResultObjects]:
    result = _gland_result(t2w)
    return result, write_results(result, t2w, ResultSettings(write_sc=True), analysis_time=WHEN)


def code(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.CodeValue), str(concept.CodeMeaning)


def children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def groups_of(sr: Dataset) -> list[Dataset]:
    (measurements,) = [i for i in children(sr) if code(i)[0] == "126010"]
    return children(measurements)


def text_of(group: Dataset, concept: tuple[str, str]) -> list[str]:
    return [str(i.TextValue) for i in children(group) if i.ValueType == "TEXT" and code(i)[0] == concept[0]]


def prostate_groups(sr: Dataset) -> list[Dataset]:
    return [g for g in groups_of(sr) if text_of(g, TRACKING_ID) == ["Prostate gland"]]


def evaluations_text(sr: Dataset) -> list[str]:
    (container,) = [i for i in children(sr) if code(i)[0] == "C0034375"]
    return text_of(container, FINDING)


def test_the_volume_reads_back_with_highdicom(gated: tuple[FakeResult, ResultObjects]) -> None:
    result, objects = gated
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, objects.sr, enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    report = hd.sr.Comprehensive3DSR.from_dataset(read).content
    assert isinstance(report, hd.sr.MeasurementReport)
    (group,) = report.get_volumetric_roi_measurement_groups(finding_site=PROSTATE, finding_type=PROSTATE)
    assert group.tracking_identifier == "Prostate gland"
    assert [site.value for site in group.finding_sites] == [PROSTATE]
    (volume,) = group.get_measurements(name=VOLUME)
    assert result.gland_volume_ml is not None
    assert volume.value == pytest.approx(round(result.gland_volume_ml, 1))
    assert volume.value == pytest.approx(result.gland_volume_ml, abs=0.05)
    assert (volume.unit.value, volume.unit.scheme_designator) == ("ml", "UCUM")
    assert volume.method is not None and volume.method.value == "126030"  # sum of segmented voxels
    (algorithm,) = [i for i in children(volume[0]) if code(i)[0] == "111001"]  # Algorithm Name
    assert str(algorithm.TextValue) == GLAND_MODEL["name"]
    # The lesions' groups are still there, untouched.
    assert len(
        report.get_volumetric_roi_measurement_groups(
            finding_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion")
        )
    ) == len(result.lesions)


def test_the_group_loads_in_ohif_as_the_lesion_groups_do(
    t2w: list[Dataset], gated: tuple[FakeResult, ResultObjects]
) -> None:
    result, objects = gated
    assert result.gland_mask is not None
    (group,) = prostate_groups(objects.sr)
    # After the lesions' groups (TID 1500 row order: 1410, then 1411), with its own Tracking UID.
    assert groups_of(objects.sr)[-1] is group
    uids = [str(i.UID) for g in groups_of(objects.sr) for i in children(g) if code(i)[0] == "112040"]
    assert len(set(uids)) == len(uids) == 3 * len(result.lesions) + 1
    assert text_of(group, COMMENT) == [
        f"Prostate gland, {round(result.gland_volume_ml or 0, 1):.1f} ml (AI gland segmentation)"
    ]
    # The first NUM is the volume, INFERRED FROM a closed POLYLINE SELECTED FROM the gland's largest slice.
    num = next(i for i in children(group) if i.ValueType == "NUM")
    assert code(num) == ("118565006", "Volume")
    (scoord,) = [i for i in children(num) if i.ValueType == "SCOORD"]
    assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
    points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
    assert np.array_equal(points[0], points[-1])
    grid = t2w_grid(t2w)
    largest = str(grid.datasets[index_slice(result.gland_mask)].SOPInstanceUID)
    (image,) = children(scoord)
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == largest
    # The region: one Image Region outline per T2W slice the gland covers, the largest first.
    regions = [i for i in children(group) if i.ValueType == "SCOORD" and code(i)[0] == "111030"]
    covered = [k for k in range(result.gland_mask.shape[0]) if result.gland_mask[k].any()]
    assert len(regions) == len(covered)
    referenced = [str(children(r)[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for r in regions]
    assert referenced[0] == largest
    assert sorted(referenced) == sorted(str(grid.datasets[k].SOPInstanceUID) for k in covered)


def test_the_volume_is_a_line_of_the_report_and_of_the_overlays(
    t2w: list[Dataset], gated: tuple[FakeResult, ResultObjects]
) -> None:
    result, objects = gated
    assert result.gland_volume_ml is not None and result.gland_mask is not None
    line = prostate_line(
        ProstateVolume(result.gland_volume_ml, result.gland_mask, GLAND_MODEL["name"], GLAND_MODEL["version"])
    )
    assert line.startswith(
        f"Prostate volume: {round(result.gland_volume_ml, 1):.1f} ml (automated segmentation"
    )
    assert GLAND_MODEL["name"] in line
    assert line in evaluations_text(objects.sr)
    # The overlays: the same images but for the line under the header.
    plain = write_results(
        dataclasses.replace(result, gland_volume_ml=None, gland_mask=None, gland_model=None),
        t2w,
        ResultSettings(write_sc=True),
        analysis_time=WHEN,
    )
    assert len(plain.sc) == len(objects.sc) > 0
    for with_line, without in zip(objects.sc, plain.sc, strict=True):
        a, b = with_line.pixel_array, without.pixel_array
        changed = np.argwhere((a != b).any(axis=-1))
        assert changed.size > 0
        assert changed[:, 0].max() < a.shape[0] // 4  # only in the band under the header


def test_no_gland_no_group_and_no_line(t2w: list[Dataset]) -> None:
    for result in (positive_result(t2w), negative_result(t2w)):
        sr = write_results(result, t2w, analysis_time=WHEN).sr
        assert prostate_groups(sr) == []
        assert not [text for text in evaluations_text(sr) if "Prostate volume" in text]
    # A negative study with a gland: the prostate's group beside the patient-level group (TID 1501, last).
    sr = write_results(_gland_result(t2w, negative_result(t2w)), t2w, analysis_time=WHEN).sr
    tracking = [text_of(g, TRACKING_ID) for g in groups_of(sr)]
    assert tracking == [["Prostate gland"], ["Patient-level finding"]]


def test_patient_coordinates_option(t2w: list[Dataset]) -> None:
    result = _gland_result(t2w)
    sr = write_results(result, t2w, ResultSettings(sr_outline="scoord3d"), analysis_time=WHEN).sr
    (group,) = prostate_groups(sr)
    num = next(i for i in children(group) if i.ValueType == "NUM")
    (scoord,) = [i for i in children(num) if i.ValueType in ("SCOORD", "SCOORD3D")]
    assert scoord.ValueType == "SCOORD3D"
    assert scoord.ReferencedFrameOfReferenceUID == t2w_grid(t2w).frame_of_reference_uid
    # TID 1411 takes image regions as SCOORDs only.
    assert {i.ValueType for i in children(group) if code(i)[0] == "111030"} == {"SCOORD"}


def test_bad_glands_are_refused(t2w: list[Dataset]) -> None:
    result = _gland_result(t2w)
    with pytest.raises(ValueError, match=r"without result\.gland_mask"):
        write_results(dataclasses.replace(result, gland_mask=None), t2w)
    assert result.gland_mask is not None
    with pytest.raises(ValueError, match="the T2W grid is"):
        write_results(dataclasses.replace(result, gland_mask=result.gland_mask[1:]), t2w)
    with pytest.raises(ValueError, match="positive number of mL"):
        write_results(dataclasses.replace(result, gland_volume_ml=0.0), t2w)
    with pytest.raises(ValueError, match="non-empty 3D boolean"):
        write_results(dataclasses.replace(result, gland_mask=np.zeros_like(result.gland_mask)), t2w)
    with pytest.raises(TypeError, match="number of mL"):
        ProstateVolume("26", result.gland_mask, "m", "1")  # type: ignore[arg-type]
