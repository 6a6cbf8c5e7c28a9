"""One result to the requested DICOM outputs (lesion_engine.results.dicom_outputs), on the real fixture study."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest
import SimpleITK as sitk

from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.model.result_types import EngineResult, Lesion
from lesion_engine.results.dicom_outputs import input_series_uids, t2w_datasets, write_outputs
from lesion_engine.results.outputs import Output
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import write_results
from tests.support.results_cases import MODEL, positive_result

pytestmark = [pytest.mark.fixture, pytest.mark.slow]

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)


@pytest.fixture(scope="module")
def prepared(prostatex: Path) -> PreparedStudy:
    return prepare_study(prostatex / "dicom")


def _result(prepared: PreparedStudy, *, positive: bool) -> EngineResult:
    """An engine result with the crafted lesions of the writer tests (or none)."""
    crafted = positive_result(t2w_datasets(prepared))
    lesions = [
        Lesion(
            id=fake.id,
            center_lps_mm=fake.center_lps_mm,
            mask=fake.mask,
            volume_ml=fake.volume_ml,
            max_diameter_mm=fake.max_diameter_mm,
            axial_diameter_mm=fake.max_diameter_mm,
            probability=fake.probability,
            category=fake.category,
            zone=fake.zone,
            peak=fake.probability,
        )
        for fake in (crafted.lesions if positive else [])
    ]
    localization = crafted.localization_map
    localization.CopyInformation(prepared.t2w)
    return EngineResult(
        study_instance_uid=prepared.study_instance_uid,
        lesions=lesions,
        patient_score=max((lesion.probability for lesion in lesions), default=0.0),
        localization_map=localization,
        detection_map=sitk.Image(prepared.t2w),
        timings_s={},
        model=dict(MODEL),
        series={role: prepared.roles[role].series_instance_uid for role in ("t2w", "adc", "hbv")},
    )


def test_input_series_uids_are_the_results_distinct_series_sorted(prepared: PreparedStudy) -> None:
    result = _result(prepared, positive=False)
    assert input_series_uids(prepared, result) == sorted(set(result.series.values()))
    doubled = dataclasses.replace(result, series={"t2w": "1.2.9", "adc": "1.2.3", "hbv": "1.2.3"})
    assert input_series_uids(prepared, doubled) == ["1.2.3", "1.2.9"]


def test_only_the_requested_outputs_are_written(prepared: PreparedStudy) -> None:
    result = _result(prepared, positive=True)
    default = write_outputs(prepared, result, [Output.SEG, Output.SR], analysis_time=WHEN)
    assert list(default) == [Output.SEG, Output.SR]
    assert len(default[Output.SEG]) == 1 and len(default[Output.SR]) == 2  # the SR and the summary image
    assert [str(ds.SOPClassUID) for ds in default[Output.SR]] == [
        "1.2.840.10008.5.1.4.1.1.88.34",
        "1.2.840.10008.5.1.4.1.1.7",
    ]
    every = write_outputs(prepared, result, set(Output), analysis_time=WHEN)
    assert list(every) == list(Output)
    assert len(every[Output.PMAP]) == 1 and len(every[Output.SC]) >= 1
    only_sc = write_outputs(prepared, result, [Output.SC], analysis_time=WHEN)
    assert list(only_sc) == [Output.SC]
    # Turning an output on or off does not change the other objects' UIDs.
    assert default[Output.SEG][0].SOPInstanceUID == every[Output.SEG][0].SOPInstanceUID
    assert default[Output.SR][0].SOPInstanceUID == every[Output.SR][0].SOPInstanceUID
    assert [ds.SOPInstanceUID for ds in only_sc[Output.SC]] == [ds.SOPInstanceUID for ds in every[Output.SC]]


def test_outputs_decide_not_the_settings_switches(prepared: PreparedStudy) -> None:
    result = _result(prepared, positive=True)
    settings = ResultSettings(write_seg=False, write_pmap=True, write_sc=True)
    objects = write_outputs(prepared, result, [Output.SEG, Output.SR], settings, analysis_time=WHEN)
    assert list(objects) == [Output.SEG, Output.SR] and len(objects[Output.SEG]) == 1
    assert settings.write_seg is False and settings.write_pmap is True  # the caller's settings are untouched


def test_same_objects_as_the_writers_with_the_node_inputs(prepared: PreparedStudy) -> None:
    result = _result(prepared, positive=True)
    objects = write_outputs(prepared, result, list(Output), analysis_time=WHEN)
    direct = write_results(
        result,
        t2w_datasets(prepared),
        ResultSettings(write_pmap=True, write_sc=True),
        input_series_uids=sorted(set(result.series.values())),
        analysis_time=WHEN,
    )
    ours = [ds for output in Output for ds in objects[output]]
    assert [ds.SOPInstanceUID for ds in ours] == [ds.SOPInstanceUID for ds in direct.all()]


def test_negative_study_has_no_segmentation_but_an_sr(prepared: PreparedStudy) -> None:
    objects = write_outputs(prepared, _result(prepared, positive=False), list(Output), analysis_time=WHEN)
    assert objects[Output.SEG] == []
    assert len(objects[Output.SR]) == 2  # the SR and the summary image that says "no lesion found"
    assert str(objects[Output.SR][0].SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.34"
    assert objects[Output.SR][1].SeriesDescription == "AI summary: no lesion found (research)"
    assert len(objects[Output.PMAP]) == 1


def test_names_instead_of_outputs_are_refused(prepared: PreparedStudy) -> None:
    with pytest.raises(TypeError, match="parse_outputs"):
        write_outputs(prepared, _result(prepared, positive=False), ["seg", "sr"])  # type: ignore[list-item]
