"""The README's IHE AI Results (AIR) checklist, checked on the objects we write: for each AIR result primitive,
the place the README names holds it, in a positive result (SEG, SR, Parametric Map, summary, KOS) and in a
negative one (SR, summary, KOS). The README's table must list exactly these primitives."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import ResultObjects, write_results
from tests.paths import REPO
from tests.support.results_cases import (
    T2W_SERIES_NUMBER,
    kos_references,
    negative_result,
    positive_result,
    read_series,
)

pytestmark = pytest.mark.fixture

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
README = REPO / "README.md"


def _items(sequence: list[Dataset]) -> Iterator[Dataset]:
    for item in sequence:
        yield item
        yield from _items(list(item.get("ContentSequence", [])))


def _concepts(sr: Dataset, code: str, value_type: str | None = None) -> list[Dataset]:
    return [
        item
        for item in _items(list(sr.ContentSequence))
        if "ConceptNameCodeSequence" in item
        and item.ConceptNameCodeSequence[0].CodeValue == code
        and (value_type is None or item.ValueType == value_type)
    ]


def findings(objects: ResultObjects, lesions: int, t2w: list[Dataset]) -> None:
    """SR: one Finding "Lesion" per lesion group; a negative report says so in a finding."""
    found = _concepts(objects.sr, "121071")  # Finding
    if lesions:
        lesion_groups = [
            i for i in _concepts(objects.sr, "121071", "CODE") if i.ConceptCodeSequence[0].CodeValue
        ]
        assert len(lesion_groups) >= lesions
    else:
        assert any("No lesion" in str(getattr(i, "TextValue", "")) for i in found), [str(i) for i in found]


def measurements(objects: ResultObjects, lesions: int, t2w: list[Dataset]) -> None:
    """SR: NUM items with UCUM units (area, long axis, volume, likelihood) per lesion."""
    numbers = [i for i in _items(list(objects.sr.ContentSequence)) if i.ValueType == "NUM"]
    units = {
        n.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodingSchemeDesignator for n in numbers
    }
    if lesions:
        assert len(numbers) >= 3 * lesions and units == {"UCUM"}
    else:
        assert all(u == "UCUM" for u in units)


def locations(objects: ResultObjects, lesions: int, t2w: list[Dataset]) -> None:
    """SR: Finding Site (SCT 363698007) of every group; SEG: anatomic region and zone of each segment."""
    sites = _concepts(objects.sr, "363698007")
    if lesions:
        assert len(sites) >= lesions
        assert objects.seg is not None and all(
            "AnatomicRegionSequence" in s for s in objects.seg.SegmentSequence
        )


def regions(objects: ResultObjects, lesions: int, t2w: list[Dataset]) -> None:
    """SEG: one segment per lesion; SR: each lesion's outline and long axis as SCOORD on its T2W slice."""
    coordinates = [
        i for i in _items(list(objects.sr.ContentSequence)) if i.ValueType in ("SCOORD", "SCOORD3D")
    ]
    if lesions:
        assert objects.seg is not None and len(objects.seg.SegmentSequence) == lesions
        assert len(coordinates) >= 2 * lesions
    else:
        assert objects.seg is None


def parametric_maps(objects: ResultObjects, lesions: int, t2w: list[Dataset]) -> None:
    """Parametric Map (output ``pmap``): the localization map with its real-world value mapping."""
    assert objects.pmap is not None
    assert str(objects.pmap.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.30"
    assert "RealWorldValueMappingSequence" in objects.pmap.SharedFunctionalGroupsSequence[0]


def tracking_identifiers(objects: ResultObjects, lesions: int, t2w: list[Dataset]) -> None:
    """SR: Tracking Identifier and Tracking Unique Identifier per group; the SEG segment of a lesion carries
    the same Tracking UID as its volumetric group."""
    uids = {str(i.UID) for i in _concepts(objects.sr, "112040", "UIDREF")}
    if lesions:
        assert objects.seg is not None
        segment_uids = {str(s.TrackingUID) for s in objects.seg.SegmentSequence}
        assert len(segment_uids) == lesions and segment_uids <= uids
        assert len(_concepts(objects.sr, "112039", "TEXT")) >= lesions


def image_references(objects: ResultObjects, lesions: int, t2w: list[Dataset]) -> None:
    """SR and SEG reference the T2W instances (the SR also the SEG's segments); the KOS references every result object and the key images."""
    t2w_uids = {str(ds.SOPInstanceUID) for ds in t2w}
    sr_images = {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in _items(list(objects.sr.ContentSequence))
        if i.ValueType == "IMAGE"
    }
    assert objects.kos is not None
    referenced = kos_references(objects.kos)
    others = {str(ds.SOPInstanceUID) for ds in objects.all() if ds is not objects.kos}
    assert others <= referenced
    if lesions:
        assert objects.seg is not None
        assert sr_images & t2w_uids and sr_images <= t2w_uids | {str(objects.seg.SOPInstanceUID)}
        assert referenced - others and (referenced - others) <= t2w_uids  # the key images
        assert objects.seg is not None
        seg_refs = {
            str(i.ReferencedSOPInstanceUID)
            for series in objects.seg.ReferencedSeriesSequence
            for i in series.ReferencedInstanceSequence
        }
        assert seg_refs <= t2w_uids


def algorithm_identification(objects: ResultObjects, lesions: int, t2w: list[Dataset]) -> None:
    """SR: Algorithm Name and Version (DCM 111001, 111003) and the device observer; SEG: the segment's
    algorithm; every object: the model in ContributingEquipmentSequence; KOS: the same device observer."""
    names = {str(i.TextValue) for i in _concepts(objects.sr, "111001", "TEXT")}
    assert "lesion-net" in names or not lesions
    observer = [str(i.UID) for i in _concepts(objects.sr, "121012", "UIDREF")]
    assert objects.kos is not None
    assert observer == [str(i.UID) for i in _concepts(objects.kos, "121012", "UIDREF")] and observer
    for ds in objects.all():
        assert "lesion-net" in [e.get("ManufacturerModelName") for e in ds.ContributingEquipmentSequence]
    if lesions:
        assert objects.seg is not None
        assert all(s.SegmentAlgorithmName == "lesion-net" for s in objects.seg.SegmentSequence)


CHECKLIST: dict[str, Callable[[ResultObjects, int, list[Dataset]], None]] = {
    "findings": findings,
    "measurements": measurements,
    "locations": locations,
    "regions": regions,
    "parametric maps": parametric_maps,
    "tracking identifiers": tracking_identifiers,
    "image references": image_references,
    "algorithm identification": algorithm_identification,
}


@pytest.fixture(scope="module")
def t2w(prostatex_series: dict[int, Path]) -> list[Dataset]:
    return read_series(prostatex_series[T2W_SERIES_NUMBER])


def test_the_readme_lists_the_checked_primitives() -> None:
    section = (
        README.read_text(encoding="utf-8")
        .split("### IHE AI Results (AIR) checklist", 1)[1]
        .split("\n### ", 1)[0]
    )
    listed = re.findall(r"^\| ([a-z ]+) \|", section, flags=re.MULTILINE)
    assert [name for name in listed if name != "primitive"] == list(CHECKLIST)


@pytest.mark.parametrize("primitive", list(CHECKLIST))
def test_each_primitive_is_where_the_readme_says(primitive: str, t2w: list[Dataset]) -> None:
    settings = ResultSettings(write_pmap=True)
    positive = positive_result(t2w)
    CHECKLIST[primitive](
        write_results(positive, t2w, settings, analysis_time=WHEN), len(positive.lesions), t2w
    )
    CHECKLIST[primitive](write_results(negative_result(t2w), t2w, settings, analysis_time=WHEN), 0, t2w)
