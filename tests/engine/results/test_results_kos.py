"""The Key Object Selection of a result set: what it references, its title and observer, read back by
highdicom, for positive and negative studies (validators: tests/engine/results/test_results_validators.py)."""

from __future__ import annotations

import datetime
from pathlib import Path

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from lesion_engine.model.contour import index_slice
from lesion_engine.results.common import t2w_grid
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import write_results
from tests.support.results_cases import (
    T2W_SERIES_NUMBER,
    kos_references,
    negative_result,
    positive_result,
    read_series,
    roundtrip,
)

pytestmark = pytest.mark.fixture

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
KO_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def t2w(prostatex_series: dict[int, Path]) -> list[Dataset]:
    return read_series(prostatex_series[T2W_SERIES_NUMBER])


def test_a_positive_result_references_every_object_and_the_key_images(t2w: list[Dataset]) -> None:
    result = positive_result(t2w)
    objects = write_results(result, t2w, ResultSettings(write_pmap=True, write_sc=True), analysis_time=WHEN)
    assert objects.kos is not None and objects.all()[-1] is objects.kos
    kos = roundtrip(objects.kos)
    assert str(kos.SOPClassUID) == KO_CLASS and kos.Modality == "KO"
    assert kos.StudyInstanceUID == t2w[0].StudyInstanceUID
    others = [ds for ds in objects.all() if ds is not objects.kos]
    assert objects.seg is not None and objects.pmap is not None and objects.summary is not None and objects.sc
    grid = t2w_grid(t2w)
    key_slices = {index_slice(lesion.mask) for lesion in result.lesions}
    key_images = {str(grid.slice_sources[k][0].SOPInstanceUID) for k in key_slices}
    assert kos_references(kos) == {str(ds.SOPInstanceUID) for ds in others} | key_images
    # Read back by highdicom: its title (CID 7010) and the algorithm as the SR's device observer.
    document = hd.ko.KeyObjectSelectionDocument.from_dataset(kos)
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113000",
        "DCM",
        "Of Interest",
    )
    observer_uids = [
        str(item.UID)
        for item in kos.ContentSequence
        if item.ValueType == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == "121012"
    ]
    sr_observer = [
        str(item.UID)
        for item in objects.sr.ContentSequence
        if item.ValueType == "UIDREF" and item.ConceptNameCodeSequence[0].CodeValue == "121012"
    ]
    assert observer_uids == sr_observer and len(observer_uids) == 1
    for ds in others:
        assert document.resolve_reference(str(ds.SOPInstanceUID))[2] == str(ds.SOPInstanceUID)
    description = next(i for i in kos.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "113012")
    assert f"{len(result.lesions)} lesions" in str(description.TextValue)  # Key Object Description


def test_a_negative_result_references_the_sr_and_the_summary(t2w: list[Dataset]) -> None:
    objects = write_results(negative_result(t2w), t2w, analysis_time=WHEN)
    assert objects.seg is None and objects.kos is not None and objects.summary is not None
    assert kos_references(roundtrip(objects.kos)) == {
        str(objects.sr.SOPInstanceUID),
        str(objects.summary.SOPInstanceUID),
    }


def test_the_kos_can_be_turned_off_without_changing_other_uids(t2w: list[Dataset]) -> None:
    result = positive_result(t2w)
    on = write_results(result, t2w, analysis_time=WHEN)
    off = write_results(result, t2w, ResultSettings(write_kos=False), analysis_time=WHEN)
    assert off.kos is None and on.kos is not None
    assert [ds.SOPInstanceUID for ds in off.all()] == [ds.SOPInstanceUID for ds in on.all()[:-1]]
