"""``lesion-ai dataset build --from-node`` draws the radiologists' verdicts beside the labels: rejected findings
as negative regions, missed findings as lesion hints, on the T2W grid of the case's lesion label.

The node is the fake of ``tests/node/intake/test_node_labels.py``, served over HTTP; the study is the real ProstateX
fixture with a radiologist's SEG; the verdicts are what the node records from the SR OHIF wrote from the
node's SR of that study (``tests/data/ohif-sr``): :func:`lesion_engine.labels.verdicts.judge` of their planar
measurements, stored in the node's verdict table.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from lesion_engine.labels.sr_measurements import MAX_POINTS, PlanarMeasurement, planar_measurements
from lesion_engine.labels.verdicts import ImageGeometry, Verdicts, judge, shown_in_viewer
from orthanc_plugin.intake.verdicts import VerdictRecord
from orthanc_plugin.plugin import NodePlugin
from tests.node.intake.test_node_labels import (
    LESION_DIR,
    PASSWORD,
    READER,
    USER,
    LabelOrthanc,
    _bytes,
    _cli,
    _mark_processed,
    _processed_study,
    _Server,
    _store_files,
    node,  # noqa: F401 - the fixture
    served,  # noqa: F401 - the fixture
)
from tests.paths import DATA
from tests.support.fake_orthanc import FakeOutput
from tests.support.seg_support import radiologist_seg
from training.datasets.dataset_build import build_dataset
from training.datasets.node_source import NodeSource, NodeVerdicts
from training.datasets.verdict_masks import draw_verdicts

DATA = DATA / "ohif-sr"
MODEL = "lesion-ai-default 1.0.0"
DRAWN_ON = "1.3.6.1.4.1.14519.5.2.1.7311.5101.244224652564367222304889599574"  # T2W image 10
NEGATIVE_DIR = Path("picai_labels/verdicts/negative")
HINTS_DIR = Path("picai_labels/verdicts/hints")
LENGTH = "Cornerstone3DTools@^0.1.0:Length"
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
Served = tuple[LabelOrthanc, NodePlugin, _Server]


# -- the study, its label and its verdicts -----------------------------------------------------------------
@pytest.fixture(scope="module")
def study_files(prostatex: Path) -> list[bytes]:
    """The fixture's files and, last, a radiologist's SEG of it (one ISUP 3 lesion on the T2W grid)."""
    files = [p.read_bytes() for p in sorted((prostatex / "dicom").rglob("*.dcm"))]
    lesion = np.zeros((19, 384, 384), dtype=bool)
    lesion[4:6, 300:310, 60:70] = True  # away from the AI's findings
    with warnings.catch_warnings():  # highdicom on the fixture's one-component PatientName, "ProstateX-0001"
        warnings.filterwarnings("ignore", "The string .* is unlikely to represent", UserWarning)
        seg = radiologist_seg(prostatex / "dicom", [("Lesion 1 ISUP 3", lesion)], READER, 300)
    return [*files, _bytes(seg)]


@pytest.fixture(scope="module")
def images(prostatex_series: dict[int, Path]) -> dict[str, tuple[ImageGeometry, Dataset]]:
    """SOPInstanceUID -> geometry and header of the fixture's T2W (series 10) and ADC (series 8) images."""
    out: dict[str, tuple[ImageGeometry, Dataset]] = {}
    for number in (10, 8):
        for path in sorted(prostatex_series[number].glob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            row, column = (float(v) for v in ds.PixelSpacing)
            out[str(ds.SOPInstanceUID)] = (ImageGeometry(int(ds.Rows), int(ds.Columns), row, column), ds)
    return out


def _measurements(name: str) -> list[PlanarMeasurement]:
    return planar_measurements(pydicom.dcmread(DATA / name))


def _judged(images: dict[str, tuple[ImageGeometry, Dataset]], saved: list[PlanarMeasurement]) -> Verdicts:
    ai = shown_in_viewer(_measurements("node-sr.dcm"))
    return judge(ai, saved, {uid: geometry for uid, (geometry, _) in images.items()})


def _first_verdicts(images: dict[str, tuple[ImageGeometry, Dataset]]) -> tuple[Verdicts, PlanarMeasurement]:
    """OHIF's saved SR without ``Lesion 1 outline``: the outline and the long axis of lesion 1 rejected, the
    Length drawn on image 10 missed. Returns the verdicts and the rejected outline."""
    saved = _measurements("ohif-sr-verdicts.dcm")
    [outline] = [m for m in saved if m.label.startswith("Lesion 1 outline")]
    verdicts = _judged(images, [m for m in saved if m is not outline])
    assert verdicts.counts == {"accepted": 6, "rejected": 2, "missed": 1}
    return verdicts, outline


def _labelled_study(fake: LabelOrthanc, plugin: NodePlugin, files: list[bytes]) -> str:
    """The study processed by the node, then the radiologist's SEG stored: one label."""
    study = _store_files(fake, files[:-1])
    assert [j.created for j in plugin.on_stable_study(study)] == [True]
    _mark_processed(fake, plugin, study)
    _store_files(fake, files[-1:])
    plugin.on_stable_study(study)
    assert plugin.labels.count() == 1
    return study


def _record(fake: LabelOrthanc, plugin: NodePlugin, study: str, verdicts: Verdicts) -> str:
    """Record a saved SR's verdicts as the node does (a later one becomes the study's current one)."""
    sop = str(generate_uid())
    plugin.verdicts.add(
        VerdictRecord(
            study=study,
            study_instance_uid=fake.studies[study].tags["StudyInstanceUID"],
            instance=str(uuid.uuid4()),
            sop_instance_uid=sop,
            model=MODEL,
            sender={"name": "OHIF", "origin": "Plugins"},
            content_time="2025-01-01T10:00:00",
            verdicts=verdicts,
            refused=None,
            recorded_at=time.time(),
        )
    )
    return sop


def _read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _slice_of(header: Dataset, grid: sitk.Image) -> int:
    index = grid.TransformPhysicalPointToIndex(tuple(float(v) for v in header.ImagePositionPatient))
    return int(index[2])


def _polygon_area(points: tuple[tuple[float, float], ...]) -> float:
    x, y = np.asarray(points).T
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2.0)


def _mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "dataset.json"}


# -- the build --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.fixture
def test_rejected_and_missed_findings_are_drawn_on_the_t2w_grid(
    served: Served,  # noqa: F811
    study_files: list[bytes],
    images: dict[str, tuple[ImageGeometry, Dataset]],
    tmp_path: Path,
) -> None:
    fake, plugin, server = served
    study = _labelled_study(fake, plugin, study_files)
    verdicts, outline = _first_verdicts(images)
    sr = _record(fake, plugin, study, verdicts)

    out = tmp_path / "out"
    result = build_dataset([], out, node=NodeSource(server.url, USER, PASSWORD))
    [case_id] = result.built
    label, lesion = _read(out / LESION_DIR / f"{case_id}.nii.gz")
    negative_image, negative = _read(out / NEGATIVE_DIR / f"{case_id}.nii.gz")
    hints_image, hints = _read(out / HINTS_DIR / f"{case_id}.nii.gz")
    for image in (negative_image, hints_image):  # the lesion label's grid
        assert image.GetSize() == label.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), label.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(image.GetDirection(), label.GetDirection(), atol=1e-6)
    assert negative.dtype == hints.dtype == np.uint8
    assert set(np.unique(lesion)) == {0, 3}

    # the rejected outline filled on its image's slice, with the rejected long axis of the same lesion
    [long_axis] = [v.finding for v in verdicts.findings if v.finding.label == "Lesion 1 long axis"]
    assert long_axis.sop_instance_uid == outline.sop_instance_uid
    k = _slice_of(images[outline.sop_instance_uid][1], label)
    assert set(np.nonzero(negative)[0]) == {k}
    area = _polygon_area(outline.points)
    perimeter = float(np.hypot(*np.diff(np.asarray(outline.points), axis=0).T).sum())
    assert area > 20
    assert area <= negative.sum() <= area + perimeter + 4, (negative.sum(), area, perimeter)
    centre = np.asarray(outline.points).mean(axis=0)
    assert negative[k, round(centre[1]), round(centre[0])] == 1
    for column, row in (*outline.points, *long_axis.points):
        assert negative[k, round(row), round(column)] == 1

    # the missed Length, a line on image 10's slice from one end to the other
    [missed] = verdicts.missed
    assert (missed.sop_instance_uid, missed.kind) == (DRAWN_ON, "Length")
    k10 = _slice_of(images[DRAWN_ON][1], label)
    assert k10 != k
    assert set(np.nonzero(hints)[0]) == {k10}
    (c0, r0), (c1, r1) = missed.points
    span = max(abs(c1 - c0), abs(r1 - r0))
    assert span > 40  # 31.3 mm at 0.5 mm per pixel
    assert span - 1 <= hints.sum() <= span + 2
    assert hints[k10, round(r0), round(c0)] == hints[k10, round(r1), round(c1)] == 1

    entry = json.loads((out / "dataset.json").read_text())["cases"][case_id]
    assert entry["verdicts"] == {
        "counts": {"accepted": 6, "rejected": 2, "missed": 1},
        "negative_voxels": int(negative.sum()),
        "hint_voxels": int(hints.sum()),
        "sources": [{"id": 1, "sop_instance_uid": sr, "model": MODEL}],
        "not_placed": [],
    }
    assert {f"{NEGATIVE_DIR}/{case_id}.nii.gz", f"{HINTS_DIR}/{case_id}.nii.gz"} <= set(entry["outputs"])
    assert entry["labels"]["lesion_values"] == [3]


@pytest.mark.slow
@pytest.mark.fixture
def test_a_new_verdict_rebuilds_the_case_and_unchanged_verdicts_do_not(
    served: Served,  # noqa: F811
    study_files: list[bytes],
    images: dict[str, tuple[ImageGeometry, Dataset]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, plugin, server = served
    study = _labelled_study(fake, plugin, study_files)
    first, _ = _first_verdicts(images)
    _record(fake, plugin, study, first)
    out = tmp_path / "out"
    argv = ["--from-node", server.url, "--user", USER, "--password", PASSWORD, "--out", str(out)]
    assert _cli(argv) == 0
    assert "built 1 case(s)" in capsys.readouterr().out
    record = json.loads((out / "dataset.json").read_text())
    [case_id] = record["cases"]
    before = record["cases"][case_id]["verdicts"]

    # the same verdicts: nothing is rebuilt
    snapshot = _mtimes(out)
    assert _cli(argv) == 0
    assert "nothing changed: 1 case(s) up to date" in capsys.readouterr().out
    assert _mtimes(out) == snapshot

    # a later SR: lesion 1's outline kept this time, and a Length drawn on an ADC image (no T2W image)
    adc = next(uid for uid, (_, ds) in images.items() if int(ds.SeriesNumber) == 8)
    on_adc = PlanarMeasurement(LENGTH, "on the ADC", adc, "POLYLINE", ((40.0, 40.0), (60.0, 50.0)))
    second = _judged(images, [*_measurements("ohif-sr-verdicts.dcm"), on_adc])
    assert second.counts == {"accepted": 7, "rejected": 1, "missed": 2}
    sr = _record(fake, plugin, study, second)
    result = build_dataset([], out, node=NodeSource(server.url, USER, PASSWORD))
    assert (result.built, result.unchanged) == ([case_id], [])
    after = json.loads((out / "dataset.json").read_text())["cases"][case_id]["verdicts"]
    assert after["sources"] == [{"id": 2, "sop_instance_uid": sr, "model": MODEL}]  # the current one only
    assert after["counts"] == {"accepted": 7, "rejected": 1, "missed": 2}
    assert 0 < after["negative_voxels"] < before["negative_voxels"]  # the long axis only
    assert after["hint_voxels"] == before["hint_voxels"]
    [not_placed] = after["not_placed"]
    assert (not_placed["record"], not_placed["verdict"], not_placed["sop_instance_uid"]) == (2, "missed", adc)
    assert "series 8" in not_placed["reason"] and "not in the study's T2W series" in not_placed["reason"]
    _, negative = _read(out / NEGATIVE_DIR / f"{case_id}.nii.gz")
    assert int(negative.sum()) == after["negative_voxels"]


def test_a_study_with_verdicts_and_no_label_is_skipped_and_not_fetched(
    served: Served,  # noqa: F811
    tmp_path: Path,
) -> None:
    fake, plugin, server = served
    study, _ = _processed_study(fake, plugin)  # a radiologist judged the node's findings, drew no SEG
    _record(fake, plugin, study, _unlabelled_verdicts())
    out = tmp_path / "out"
    result = build_dataset([], out, node=NodeSource(server.url, USER, PASSWORD))
    assert result.built == []
    [skipped] = result.skipped
    uid = fake.studies[study].tags["StudyInstanceUID"]
    assert skipped["input"] == f"node study {study} ({uid})"
    assert skipped["reason"].startswith("verdicts only, no lesion label (a radiologist's SEG): ")
    assert "1 accepted, 1 rejected, 0 missed" in skipped["reason"] and "store a SEG" in skipped["reason"]
    assert json.loads((out / "dataset.json").read_text())["skipped"] == [skipped]
    assert not any(study in request or "/instances/" in request for request in server.requests)


def _unlabelled_verdicts() -> Verdicts:
    uid = str(generate_uid())
    geometry = {uid: ImageGeometry(64, 64, 0.5, 0.5)}
    kept = PlanarMeasurement(LENGTH, "Lesion 1 long axis", uid, "POLYLINE", ((10.0, 10.0), (20.0, 10.0)))
    deleted = PlanarMeasurement(LENGTH, "Lesion 2 long axis", uid, "POLYLINE", ((30.0, 30.0), (40.0, 30.0)))
    return judge([kept, deleted], [kept], geometry)


def _tamper(monkeypatch: pytest.MonkeyPatch, fake: LabelOrthanc, edit: Callable[[Any], Any] | None) -> None:
    """Make the node answer ``edit(answer)`` to ``GET /lesion-ai/verdicts`` (``None``: it has no such route)."""
    real = fake.rest

    def rest(
        method: str,
        path: str,
        body: bytes = b"",
        get: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> FakeOutput:
        if path == "/lesion-ai/verdicts" and edit is None:
            raise AssertionError("no REST callback")  # the served fake answers 404, as Orthanc does
        output = real(method, path, body, get, headers)
        if path == "/lesion-ai/verdicts" and edit is not None:
            output.body = json.dumps(edit(json.loads(output.body))).encode()
        return output

    monkeypatch.setattr(fake, "rest", rest)


def test_malformed_verdicts_from_the_node_are_reported_not_a_crash(
    served: Served,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, plugin, server = served
    study, _ = _processed_study(fake, plugin)
    _record(fake, plugin, study, _unlabelled_verdicts())
    [sound] = fake.rest("GET", "/lesion-ai/verdicts").json()["verdicts"]
    finding, other = sound["findings"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"study_instance_uid": "1.2.x"}, "study_instance_uid '1.2.x' is not a DICOM UID"),
        ({"counts": {"accepted": 1, "rejected": 1, "missed": 3}}, "do not match the measurements listed"),
        ({"findings": [{**finding, "verdict": "maybe"}, other]}, "verdict must be 'accepted' or 'rejected'"),
        ({"findings": [{**finding, "points": [[1, 2], [3, "x"]]}, other]}, "is not a [column, row] pair"),
        (
            {"findings": [{**finding, "points": [[1, 2]] * (MAX_POINTS + 1)}, other]},
            f"{MAX_POINTS + 1} points, more than the {MAX_POINTS} accepted",
        ),
        ({"findings": [{**finding, "points": [[1e300, 2]]}, other]}, "far outside any image"),
        ({"findings": [{**finding, "sop_instance_uid": None}, other]}, "its image None is not a DICOM UID"),
        (
            {"missed": [{**finding, "points": []}], "counts": {**sound["counts"], "missed": 1}},
            "missed 1: points must be a non-empty list",
        ),
        ({"findings": [{**finding, "tool": 7}, other]}, "tool must be text"),
    ]
    entries: list[Any] = [42, {**sound, "id": "seven"}]
    entries += [{**sound, "id": 10 + n, **change} for n, (change, _) in enumerate(cases)]
    entries.append({**sound, "id": 30, "refused": "not judged", "counts": None})  # no verdict: passed over
    _tamper(monkeypatch, fake, lambda page: {**page, "verdicts": [*entries, sound]})
    out = tmp_path / "out"
    result = build_dataset([], out, node=NodeSource(server.url, USER, PASSWORD))
    assert result.built == []
    skipped = [(s["input"], s["reason"]) for s in result.skipped]
    assert skipped[:2] == [
        ("a node verdict record", "malformed, not used: a verdict record must be a JSON object, got int"),
        (
            "a node verdict record",
            "malformed, not used: a verdict record's id must be a positive integer, got 'seven'",
        ),
    ]
    for n, (_, expected) in enumerate(cases):
        where, why = skipped[2 + n]
        assert where == f"node verdict record {10 + n}"
        assert why.startswith(f"malformed, not used: verdict record {10 + n}: ") and expected in why, why
    # the sound record is still read (its study has no label)
    [(where, why)] = skipped[2 + len(cases) :]
    assert where.startswith("node study ") and why.startswith("verdicts only")
    assert json.loads((out / "dataset.json").read_text())["skipped"] == result.skipped

    # a listing that is no list of verdicts, or no verdicts route at all: reported, the build goes on
    _tamper(monkeypatch, fake, lambda page: {"verdicts": "none"})
    [listing] = build_dataset([], tmp_path / "o2", node=NodeSource(server.url, USER, PASSWORD)).skipped
    assert "did not answer a list of verdicts; the cases are built without verdicts" in listing["reason"]
    _tamper(monkeypatch, fake, None)
    [listing] = build_dataset([], tmp_path / "o3", node=NodeSource(server.url, USER, PASSWORD)).skipped
    assert "no /lesion-ai/verdicts route (an older node)" in listing["reason"]


# -- drawing, on a small grid -------------------------------------------------------------------------------
def _image_file(folder: Path, series: str, z: float | None, frames: int = 1) -> tuple[Path, str]:
    """An MR image header (no pixels) of ``series`` at height ``z`` (None: no ImagePositionPatient)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE
    ds.SOPClassUID = MR_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 5
    if z is not None:
        ds.ImagePositionPatient = [10.0, 20.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 2.0]  # rows 1 mm apart, columns 2 mm
    if frames > 1:
        ds.NumberOfFrames = frames
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def _verdicts(rejected: list[PlanarMeasurement], missed: list[PlanarMeasurement]) -> NodeVerdicts:
    counts = {"accepted": 0, "rejected": len(rejected), "missed": len(missed)}
    return NodeVerdicts(1, "s", "1.2", "1.2.3", MODEL, counts, (), tuple(rejected), tuple(missed))


def test_outlines_lines_and_points_are_drawn_in_their_slice(tmp_path: Path) -> None:
    series = str(generate_uid())
    grid = sitk.Image(40, 30, 6, sitk.sitkUInt8)  # x 2 mm, y 1 mm, z 3 mm: the images' grid, shifted
    grid.SetSpacing((2.0, 1.0, 3.0))
    grid.SetOrigin((10.0, 20.0, 0.0))
    files = {z: _image_file(tmp_path, series, 3.0 * z) for z in range(6)}
    other_series = str(generate_uid())
    other, other_uid = _image_file(tmp_path, other_series, 6.0)
    multi, multi_uid = _image_file(tmp_path, series, 9.0, frames=3)
    unplaced, unplaced_uid = _image_file(tmp_path, series, None)
    paths = [p for p, _ in files.values()] + [other, multi, unplaced]

    def m(uid: str, kind: str, *points: tuple[float, float]) -> PlanarMeasurement:
        return PlanarMeasurement("", "", uid, kind, points)

    square = ((5.0, 5.0), (15.0, 5.0), (15.0, 15.0), (5.0, 15.0), (5.0, 5.0))
    masks = draw_verdicts(
        [
            _verdicts(
                [
                    m(files[1][1], "POLYLINE", *square),
                    m(files[2][1], "CIRCLE", (20.0, 20.0), (24.0, 20.0)),
                    m(other_uid, "POINT", (1.0, 1.0)),
                ],
                [
                    m(files[3][1], "POLYLINE", (0.0, 0.0), (10.0, 5.0), (10.0, 9.0)),
                    m(files[4][1], "POINT", (7.2, 8.6)),
                    m(files[4][1], "ELLIPSE", (30.0, 10.0), (36.0, 10.0), (33.0, 8.0), (33.0, 12.0)),
                    m(files[5][1], "TEXT", (1.0, 1.0)),
                    m(multi_uid, "POINT", (1.0, 1.0)),
                    m("1.2.3.999", "POINT", (1.0, 1.0)),
                    m(unplaced_uid, "POINT", (1.0, 1.0)),
                    m(files[5][1], "POINT", (400.0, 1.0)),
                ],
            )
        ],
        paths,
        grid,
        series,
    )
    negative, hints = masks.negative, masks.hints
    assert negative.shape == hints.shape == (6, 30, 40)
    assert set(np.nonzero(negative)[0]) == {1, 2}
    assert negative[1].sum() == 121 and negative[1, 5:16, 5:16].all()  # a closed square, filled
    disk = np.hypot(*np.meshgrid(np.arange(40) - 20.0, np.arange(30) - 20.0)) <= 4
    assert (
        negative[2][disk].all() and negative[2].sum() <= disk.sum() + 2 * np.pi * 4
    )  # filled, with its border
    assert set(np.nonzero(hints)[0]) == {3, 4}
    assert hints[3, 0, 0] == hints[3, 5, 10] == hints[3, 9, 10] == 1 and hints[3].sum() == 15  # open: a line
    assert hints[4, 9, 7] == 1 and hints[4, 10, 33] == 1 and hints[4, 10, 30] == hints[4, 10, 36] == 1
    reasons = [(n["verdict"], n["reason"]) for n in masks.record["not_placed"]]
    assert reasons == [
        (
            "rejected",
            f"its image is in series 5 ({other_series}), not in the study's T2W series the case is built on",
        ),
        ("missed", "a TEXT of 1 point(s) is not drawn"),
        ("missed", "its image is multi-frame and the verdict does not say which frame"),
        ("missed", "its image is not among the study's images fetched from the node"),
        ("missed", "its image has no ImagePositionPatient"),
        ("missed", "its points lie outside the T2W image (40 x 30 pixels)"),
    ]
    assert masks.record["negative_voxels"] == int(negative.sum())
    assert masks.record["hint_voxels"] == int(hints.sum())
