"""Over-long values of the source images are cut to their VR's length in every result object."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.value_limits import MAX_TEXT_LENGTH, fit_text_values
from lesion_engine.results.writer import write_failure, write_results
from tests.support import validators
from tests.support.results_cases import positive_result, read_series

pytestmark = pytest.mark.fixture

WHEN = datetime.datetime(2026, 1, 2, 3, 4, 5)
LONG = {
    "PatientName": "Verylongfamilyname" * 8 + "^" + "Given" * 20,
    "StudyDescription": "MR PROSTATE " + "x" * 300,
    "InstitutionName": "Hospital " * 20,
    "ReferringPhysicianName": "Referrer" * 12,
    "StudyID": "S" * 40,
    "AccessionNumber": "A" * 40,
}


@pytest.fixture(scope="module")
def t2w_long(prostatex_series: dict[int, Path]) -> list[Dataset]:
    datasets = [copy.deepcopy(ds) for ds in read_series(prostatex_series[10])]
    for ds in datasets:
        for keyword, value in LONG.items():
            setattr(ds, keyword, value)
    return datasets


def _check(ds: Dataset) -> None:
    for keyword in LONG:
        if keyword in ds and ds[keyword].value not in (None, ""):
            limit = MAX_TEXT_LENGTH[ds[keyword].VR]
            for group in str(ds[keyword].value).split("="):
                assert len(group) <= limit, (ds.Modality, keyword, len(group))


def test_every_result_object_fits_the_value_limits(t2w_long: list[Dataset], tmp_path: Path) -> None:
    result = positive_result(t2w_long)
    settings = ResultSettings(write_pmap=True, write_sc=True, sc_all_slices=False)
    objects = write_results(result, t2w_long, settings, analysis_time=WHEN).all()
    objects += write_failure(t2w_long, "no ADC map", settings, analysis_time=WHEN)
    assert [ds.Modality for ds in objects[:2]] == ["SEG", "SR"] and len(objects) >= 5
    for i, ds in enumerate(objects):
        _check(ds)
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        _check(pydicom.dcmread(path))
    # The SR and SEG stay valid with the cut values.
    for ds in objects[:2]:
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        report = validators.dciodvfy(path)
        assert not [e for e in report.errors if "exceeds maximum length" in e.lower()], report.output
    assert str(objects[1].PatientName).startswith("Verylongfamilyname")


def test_fit_text_values_cuts_nested_values_and_names_them() -> None:
    ds = Dataset()
    ds.PatientName = "A" * 70 + "=" + "B" * 10
    ds.StudyDescription = "ok"
    item = Dataset()
    item.InstitutionName = "I" * 100
    ds.ReferencedStudySequence = [item]
    assert sorted(fit_text_values(ds)) == ["InstitutionName", "PatientName"]
    assert str(ds.PatientName) == "A" * 64 + "=" + "B" * 10
    assert ds.ReferencedStudySequence[0].InstitutionName == "I" * 64
    assert fit_text_values(ds) == []
