"""Output kinds and their SOP classes (lesion_engine.results.outputs), checked against what the writers write."""

from __future__ import annotations

import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from lesion_engine.errors import ConfigError
from lesion_engine.results.outputs import DEFAULT_OUTPUTS, SOP_CLASS_UIDS, Output, output_of, parse_outputs
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import write_failure, write_results
from tests.support.results_cases import T2W_SERIES_NUMBER, negative_result, positive_result, read_series

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)


def test_default_outputs_are_seg_sr_and_kos() -> None:
    assert DEFAULT_OUTPUTS == (Output.SEG, Output.SR, Output.KOS)
    assert [output.value for output in Output] == ["seg", "sr", "pmap", "sc", "kos"]


def test_parse_outputs_validates_deduplicates_and_orders() -> None:
    assert parse_outputs(["sc", "sr", "sc", "seg"]) == (Output.SEG, Output.SR, Output.SC)
    assert parse_outputs([]) == ()
    assert parse_outputs(iter(["pmap"])) == (Output.PMAP,)


def test_parse_outputs_names_the_bad_value_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown output 'segmentation'.*seg, sr, pmap, sc"):
        parse_outputs(["sr", "segmentation"])
    with pytest.raises(ConfigError, match="not the string"):
        parse_outputs("seg")


def test_the_sop_class_literals_are_pydicoms_named_uids() -> None:
    """outputs.py writes the UIDs out (it may not import pydicom): each is the one pydicom names."""
    from lesion_engine.results import outputs

    named = {
        "SEGMENTATION_STORAGE": pydicom.uid.SegmentationStorage,
        "COMPREHENSIVE_3D_SR_STORAGE": pydicom.uid.Comprehensive3DSRStorage,
        "COMPREHENSIVE_SR_STORAGE": pydicom.uid.ComprehensiveSRStorage,
        "PARAMETRIC_MAP_STORAGE": pydicom.uid.ParametricMapStorage,
        "SECONDARY_CAPTURE_IMAGE_STORAGE": pydicom.uid.SecondaryCaptureImageStorage,
        "KEY_OBJECT_SELECTION_DOCUMENT_STORAGE": pydicom.uid.KeyObjectSelectionDocumentStorage,
    }
    assert {name: getattr(outputs, name) for name in named} == named
    assert {uid for uids in SOP_CLASS_UIDS.values() for uid in uids} == set(named.values())


def test_sop_classes_are_exact_uids() -> None:
    assert SOP_CLASS_UIDS[Output.SEG] == ("1.2.840.10008.5.1.4.1.1.66.4",)
    assert SOP_CLASS_UIDS[Output.SR] == ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33")
    assert SOP_CLASS_UIDS[Output.PMAP] == ("1.2.840.10008.5.1.4.1.1.30",)
    assert SOP_CLASS_UIDS[Output.SC] == ("1.2.840.10008.5.1.4.1.1.7",)
    assert SOP_CLASS_UIDS[Output.KOS] == ("1.2.840.10008.5.1.4.1.1.88.59",)
    assert set(SOP_CLASS_UIDS) == set(Output)
    # Not prefixes: other classes that share the leading digits are no output of ours.
    assert output_of("1.2.840.10008.5.1.4.1.1.7.4") is None  # multi-frame true colour SC
    assert output_of("1.2.840.10008.5.1.4.1.1.88.22") is None  # Enhanced SR
    assert output_of("1.2.840.10008.5.1.4.1.1.4") is None  # MR Image Storage
    assert output_of("") is None


@pytest.mark.fixture
def test_every_object_written_maps_to_its_output(prostatex_series: dict[int, Path]) -> None:
    t2w = read_series(prostatex_series[T2W_SERIES_NUMBER])
    all_outputs = ResultSettings(write_pmap=True, write_sc=True)
    objects = write_results(positive_result(t2w), t2w, all_outputs, analysis_time=WHEN)
    assert objects.seg is not None and objects.pmap is not None and objects.sc
    assert objects.summary is not None and objects.kos is not None
    kinds: list[tuple[Dataset, Output]] = [
        (objects.seg, Output.SEG),
        (objects.sr, Output.SR),
        (objects.pmap, Output.PMAP),
        *((image, Output.SC) for image in objects.sc),
        (objects.summary, Output.SC),  # a Secondary Capture, written with the SR
        (objects.kos, Output.KOS),
    ]
    negative = write_results(negative_result(t2w), t2w, all_outputs, analysis_time=WHEN)
    kinds.append((negative.sr, Output.SR))
    failure_sr, failure_sc = write_failure(t2w, "no ADC map", analysis_time=WHEN)
    kinds += [(failure_sr, Output.SR), (failure_sc, Output.SC)]
    for dataset, output in kinds:
        assert output_of(str(dataset.SOPClassUID)) is output, (dataset.SOPClassUID, output)
    assert {str(failure_sr.SOPClassUID), str(objects.sr.SOPClassUID)} == set(SOP_CLASS_UIDS[Output.SR])
