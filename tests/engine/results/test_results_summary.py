"""The result summary image: written with every SR by default, saying the verdict in its pixels, its
SeriesDescription and ImageComments, for negative and positive studies, with no patient data burned in."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import write_results
from tests.paths import REPO
from tests.support.results_cases import (
    T2W_SERIES_NUMBER,
    ellipsoid,
    grid_info,
    negative_result,
    positive_result,
    read_series,
    roundtrip,
    with_gland,
)

pytestmark = pytest.mark.fixture

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
ARTIFACTS = REPO / "test-artifacts" / "results"


@pytest.fixture(scope="module")
def t2w(prostatex_series: dict[int, Path]) -> list[Dataset]:
    return read_series(prostatex_series[T2W_SERIES_NUMBER])


def _save_png(ds: Dataset, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ds.pixel_array).save(ARTIFACTS / name)


def test_a_negative_study_gets_a_summary_that_says_so(t2w: list[Dataset]) -> None:
    objects = write_results(negative_result(t2w), t2w, analysis_time=WHEN)
    assert objects.seg is None and objects.summary is not None
    summary = roundtrip(objects.summary)
    _save_png(summary, "summary-negative.png")
    assert summary.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert summary.SeriesDescription == "AI summary: no lesion found (research)"
    assert summary.SeriesNumber == 9907
    assert "no lesion found" in summary.ImageComments and "Research use only" in summary.ImageComments
    assert "Prostate volume: not measured" in summary.ImageComments
    assert summary.BurnedInAnnotation == "NO"
    assert summary.StudyInstanceUID == t2w[0].StudyInstanceUID
    assert summary.PatientID == t2w[0].PatientID  # identity from the header ...
    pixels = summary.pixel_array
    assert pixels.shape == (512, 512) and (pixels > 128).mean() > 0.01  # ... and text in the pixels
    assert objects.summary.SOPInstanceUID in [d.SOPInstanceUID for d in objects.all()]
    models = [item.get("ManufacturerModelName") for item in summary.ContributingEquipmentSequence]
    assert "lesion-net" in models


def test_a_positive_study_summary_counts_the_lesions_and_gives_the_prostate(t2w: list[Dataset]) -> None:
    shape, spacing = grid_info(t2w)
    result = with_gland(positive_result(t2w), ellipsoid(shape, (9, 220, 190), (4, 50, 60)), spacing)
    objects = write_results(result, t2w, analysis_time=WHEN)
    assert objects.summary is not None
    summary = roundtrip(objects.summary)
    _save_png(summary, "summary-positive.png")
    count = len(result.lesions)
    assert f"Prostate volume: {result.gland_volume_ml:.1f} ml" in summary.ImageComments
    assert (
        summary.SeriesDescription == f"AI summary: {count} lesion{'s' if count != 1 else ''} found (research)"
    )
    # Another verdict, another image: different pixels (and UIDs) than the negative study's summary.
    negative = write_results(negative_result(t2w), t2w, analysis_time=WHEN).summary
    assert negative is not None
    assert not np.array_equal(summary.pixel_array, roundtrip(negative).pixel_array)


def test_the_summary_can_be_turned_off_and_renamed_without_changing_other_uids(t2w: list[Dataset]) -> None:
    result = negative_result(t2w)
    default = write_results(result, t2w, analysis_time=WHEN)
    off = write_results(result, t2w, ResultSettings(write_summary=False), analysis_time=WHEN)
    assert off.summary is None and default.summary is not None
    assert off.sr.SOPInstanceUID == default.sr.SOPInstanceUID
    renamed = write_results(
        result,
        t2w,
        dataclasses.replace(ResultSettings(), summary_series_description="KI: {result}"),
        analysis_time=WHEN,
    )
    assert renamed.summary is not None and renamed.summary.SeriesDescription == "KI: no lesion found"
    assert renamed.sr.SOPInstanceUID == default.sr.SOPInstanceUID
    assert renamed.summary.SOPInstanceUID != default.summary.SOPInstanceUID
