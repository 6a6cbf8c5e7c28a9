"""A radiologist's verdicts read from the SR OHIF saved, matched to the node's findings by image and geometry.

The SRs are real: OHIF 3.13 wrote them from the node's SR of the ProstateX-0001 fixture (``tests/data/ohif-sr``,
see its README): one after deleting ``Lesion 1 long axis`` and drawing a Length on T2W image 10, one saved
unchanged. The images' geometry comes from the fixture's own T2W series.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from lesion_engine.labels.sr_measurements import (
    MAX_MEASUREMENTS,
    PlanarMeasurement,
    SRMeasurementError,
    planar_measurements,
)
from lesion_engine.labels.verdicts import (
    ForeignImageError,
    ImageGeometry,
    VerdictError,
    judge,
    shown_in_viewer,
)
from tests.paths import DATA

DATA = DATA / "ohif-sr"
DRAWN_ON = "1.3.6.1.4.1.14519.5.2.1.7311.5101.244224652564367222304889599574"  # T2W image 10


@pytest.fixture(scope="module")
def images(prostatex_series: dict[int, Path]) -> dict[str, ImageGeometry]:
    """The fixture's T2W images (series 10 holds the measurements' images)."""
    out = {}
    for path in sorted(prostatex_series[10].glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row, column = (float(v) for v in ds.PixelSpacing)
        out[str(ds.SOPInstanceUID)] = ImageGeometry(int(ds.Rows), int(ds.Columns), row, column)
    return out


def _read(name: str) -> Dataset:
    return pydicom.dcmread(DATA / name)


def _groups(sr: Dataset) -> DicomSequence:
    [measurements] = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups: DicomSequence = measurements.ContentSequence
    return groups


def test_the_nodes_sr_gives_its_eight_planar_measurements() -> None:
    everything = planar_measurements(_read("node-sr.dcm"))
    # Per lesion an outline and a long axis for the viewer, a volumetric group with its index slice's region;
    # the prostate volume group.
    assert len(everything) == 13 and everything[-1].label.startswith("Prostate gland")
    found = shown_in_viewer(everything)
    assert len(found) == 8
    assert [m.kind for m in found] == ["PlanarFreehandROI", "Length"] * 4
    assert found[1].label == "Lesion 1 long axis" and found[0].label.startswith("Lesion 1 outline")
    assert {m.algorithm for m in found} == {"lesion-ai-default 1.0.0"}
    assert all(len(m.points) == 2 for m in found if m.kind == "Length")


def test_ohifs_sr_after_a_deletion_and_a_drawing(images: dict[str, ImageGeometry]) -> None:
    ai = shown_in_viewer(planar_measurements(_read("node-sr.dcm")))
    saved = planar_measurements(_read("ohif-sr-verdicts.dcm"))
    assert len(saved) == 8 and not any(m.algorithm for m in saved)  # OHIF drops the algorithm
    verdicts = judge(ai, saved, images)
    assert verdicts.counts == {"accepted": 7, "rejected": 1, "missed": 1}
    [rejected] = [v for v in verdicts.findings if v.verdict == "rejected"]
    assert rejected.finding.label == "Lesion 1 long axis"
    assert all(v.distance_mm is not None and v.distance_mm < 0.01 for v in verdicts.findings if v.distance_mm)
    [missed] = verdicts.missed
    assert (missed.kind, missed.sop_instance_uid, missed.label) == ("Length", DRAWN_ON, "")
    document = verdicts.to_json()
    assert document["counts"]["missed"] == 1 and document["missed"][0]["sop_instance_uid"] == DRAWN_ON


def test_ohifs_sr_saved_unchanged_accepts_everything(images: dict[str, ImageGeometry]) -> None:
    ai = shown_in_viewer(planar_measurements(_read("node-sr.dcm")))
    verdicts = judge(ai, planar_measurements(_read("ohif-sr-unchanged.dcm")), images)
    assert verdicts.counts == {"accepted": 8, "rejected": 0, "missed": 0}


def _moved(measurement: PlanarMeasurement, columns: float) -> PlanarMeasurement:
    return PlanarMeasurement(
        measurement.tool,
        measurement.label,
        measurement.sop_instance_uid,
        measurement.graphic_type,
        tuple((c + columns, r) for c, r in measurement.points),
    )


def test_a_measurement_moved_beyond_the_tolerance_is_a_rejection_and_a_miss(
    images: dict[str, ImageGeometry],
) -> None:
    ai = shown_in_viewer(planar_measurements(_read("node-sr.dcm")))
    spacing = images[ai[0].sop_instance_uid].column_spacing_mm
    for shift_mm, expected in ((1.0, (8, 0, 0)), (5.0, (7, 1, 1))):
        saved = [_moved(ai[0], shift_mm / spacing), *ai[1:]]
        counts = judge(ai, saved, images, tolerance_mm=3.0).counts
        assert (counts["accepted"], counts["rejected"], counts["missed"]) == expected, shift_mm
    # A Length where the AI drew an outline is not the outline kept.
    as_length = PlanarMeasurement(
        "Cornerstone3DTools@^0.1.0:Length", "", ai[0].sop_instance_uid, "POLYLINE", ai[0].points
    )
    assert judge(ai[:1], [as_length], images).counts == {"accepted": 0, "rejected": 1, "missed": 1}


def test_hostile_srs_give_no_verdict(images: dict[str, ImageGeometry]) -> None:
    ai = shown_in_viewer(planar_measurements(_read("node-sr.dcm")))
    # Measurements on another study's image.
    foreign = _read("ohif-sr-verdicts.dcm")
    image = _groups(foreign)[0].ContentSequence
    for item in image:
        if item.ValueType == "NUM":
            item.ContentSequence[0].ContentSequence[0].ReferencedSOPSequence[
                0
            ].ReferencedSOPInstanceUID = "1.2.3.4"
    with pytest.raises(ForeignImageError, match=r"1\.2\.3\.4, which is not one of this study's"):
        judge(ai, planar_measurements(foreign), images)
    # Geometry outside the image.
    outside = _moved(ai[0], 10_000)
    with pytest.raises(VerdictError, match="points outside its image"):
        judge(ai, [outside], images)
    # 10,000 measurements.
    many = _read("ohif-sr-verdicts.dcm")
    groups = _groups(many)
    groups.extend([groups[0]] * (10_000 - len(groups)))
    with pytest.raises(SRMeasurementError, match=f"more than {MAX_MEASUREMENTS} measurement groups"):
        planar_measurements(many)
    # Malformed geometry: an odd count of numbers, NaN, no image.
    for value, message in (([1.0, 2.0, 3.0], "pairs of finite numbers"), ([1.0, float("nan")], "finite")):
        broken = _read("ohif-sr-verdicts.dcm")
        num = next(i for i in _groups(broken)[0].ContentSequence if i.ValueType == "NUM")
        num.ContentSequence[0].GraphicData = value
        with pytest.raises(SRMeasurementError, match=message):
            planar_measurements(broken)
    broken = _read("ohif-sr-verdicts.dcm")
    num = next(i for i in _groups(broken)[0].ContentSequence if i.ValueType == "NUM")
    del num.ContentSequence[0].ContentSequence
    with pytest.raises(SRMeasurementError, match="names no image"):
        planar_measurements(broken)
    with pytest.raises(VerdictError, match="positive number"):
        judge(ai, ai, images, tolerance_mm=float("nan"))
