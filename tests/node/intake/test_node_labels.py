"""What radiologists send back: SEGs stored into processed studies become labels (never jobs), listed by
``GET /lesion-ai/labels`` and built by ``lesion-ai dataset build --from-node``: against a fake ``orthanc``
module (served over HTTP for the build), and once end to end with a real Orthanc."""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from lesion_engine.labels.seg_convention import node_made, parse_grade
from orthanc_plugin.intake.labels import LABELS_FILE, Label, LabelStore
from orthanc_plugin.intake.studies import StudyRecord
from orthanc_plugin.plugin import NodePlugin
from orthanc_plugin.worker.client import OrthancClient
from tests.node.server.test_node_plugin import PROSTATE, _settings
from tests.support.fake_orthanc import FakeOrthanc, FakeSeries, FakeStudy, OrthancException
from tests.support.node_env import OrthancFleet, count_by_modality, jobs, wait_for
from tests.support.seg_support import radiologist_seg
from training.datasets.dataset_build import build_dataset, register
from training.datasets.node_source import PASSWORD_ENV, USER_ENV, NodeSource, NodeSourceError
from training.datasets.picai_data import PicaiLayout, find_picai_cases
from training.synth import SynthConfig, generate_case

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
READER = "Radiologist workstation"
LESION_DIR = Path("picai_labels/csPCa_lesion_delineations/human_expert/resampled")


# -- a fake Orthanc whose simplified tags carry sequences, as Orthanc's do --------------------------------
def _simplified(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for element in ds:
        if not element.keyword or element.VR in ("OB", "OW", "OF", "OD", "OL", "UN"):
            continue
        if element.VR == "SQ":
            out[element.keyword] = [_simplified(item) for item in element.value]
        elif element.VM > 1:
            out[element.keyword] = "\\".join(str(v) for v in element.value)
        else:
            out[element.keyword] = str(element.value)
    return out


class LabelOrthanc(FakeOrthanc):
    """The fake module, with Orthanc's simplified tags of sequences (lists of objects)."""

    def _get(self, path: str, query: dict[str, list[str]]) -> Any:
        if m := re.fullmatch(r"/instances/([^/]+)/simplified-tags", path):
            if m.group(1) not in self.files:
                raise self._missing()
            return _simplified(pydicom.dcmread(io.BytesIO(self.files[m.group(1)]), stop_before_pixels=True))
        if (m := re.fullmatch(r"/instances/([^/]+)", path)) and m.group(1) in self.files:
            return {"ID": m.group(1), "FileSize": len(self.files[m.group(1)])}
        return super()._get(path, query)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[LabelOrthanc, NodePlugin]]:
    settings = _settings(tmp_path)
    fake = LabelOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.install()
    yield fake, plugin
    plugin.stop()


def _series_uid(fake: FakeOrthanc, series_id: str) -> str:
    return fake.series[series_id].tags["SeriesInstanceUID"]


def _add_seg(
    fake: FakeOrthanc,
    study: str,
    references: list[str],
    *,
    manufacturer: str = READER,
    segments: tuple[tuple[str, str], ...] = (("Lesion 1 ISUP 3", "MANUAL"),),
    contributing: str | None = None,
    frames: int | None = None,
) -> tuple[str, str]:
    """Store a SEG header into a study (referencing ``references``, SeriesInstanceUIDs); returns its Orthanc
    series ID and SOPInstanceUID."""
    series_id = fake.add_series(
        study,
        Modality="SEG",
        SeriesDescription="reader SEG",
        Manufacturer=manufacturer,
        sop_class=SEG,
        instances=1,
    )
    instance = fake.series[series_id].instances[0]
    ds = pydicom.dcmread(io.BytesIO(fake.files[instance]))
    items = []
    for uid in references:
        item = Dataset()
        item.SeriesInstanceUID = uid
        referenced = Dataset()
        referenced.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        referenced.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
        item.ReferencedInstanceSequence = [referenced]
        items.append(item)
    ds.ReferencedSeriesSequence = items
    described = []
    for number, (label, algorithm) in enumerate(segments, start=1):
        segment = Dataset()
        segment.SegmentNumber = number
        segment.SegmentLabel = label
        segment.SegmentAlgorithmType = algorithm
        described.append(segment)
    ds.SegmentSequence = described
    # One 8 x 8 binary frame per segment, each frame naming its segment, as a SEG has them.
    ds.NumberOfFrames = len(described) if frames is None else frames
    ds.Rows, ds.Columns, ds.BitsAllocated = 8, 8, 1
    ds.PerFrameFunctionalGroupsSequence = []
    for number in range(1, len(described) + 1):
        identification = Dataset()
        identification.ReferencedSegmentNumber = number
        group = Dataset()
        group.SegmentIdentificationSequence = [identification]
        ds.PerFrameFunctionalGroupsSequence.append(group)
    ds.add_new(0x7FE00010, "OB", b"\xff" * (8 * len(described)))
    if contributing is not None:
        equipment = Dataset()
        equipment.Manufacturer = contributing
        ds.ContributingEquipmentSequence = [equipment]
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    fake.files[instance] = buffer.getvalue()
    return series_id, str(ds.SOPInstanceUID)


def _mark_processed(
    fake: FakeOrthanc, plugin: NodePlugin, study: str, result_series: tuple[str, ...] = ()
) -> None:
    """Write the study record a worker writes when its jobs are done."""
    processed = {
        job.key: {"rule": job.rule, "model": job.model, "status": "done", "job": job.id}
        for job in plugin.queue.list(study_id=study)
    }
    assert processed
    record = StudyRecord(processed=processed, result_series=list(result_series))
    fake.studies[study].metadata[plugin.settings.metadata_name] = record.to_text()


def _jobs(plugin: NodePlugin) -> list[tuple[int, str, str]]:
    return [(job.id, job.key, job.state.value) for job in plugin.queue.list()]


def _labels(fake: FakeOrthanc, **query: str) -> Any:
    output = fake.rest("GET", "/lesion-ai/labels", get=query)
    assert output.status == 200, output.body
    return output.json()


def _processed_study(fake: LabelOrthanc, plugin: NodePlugin) -> tuple[str, str]:
    """A prostate study, evaluated (one job) and processed by the node (its SEG in the study record);
    returns the study's ID and its T2 series' SeriesInstanceUID."""
    study = fake.add_study(series=PROSTATE)
    assert [j.created for j in plugin.enqueue_study(study)] == [True]
    t2 = _series_uid(fake, fake.studies[study].series[0])
    own, _ = _add_seg(
        fake, study, [t2], manufacturer="Lesion AI", segments=(("Lesion 1: ISUP 5", "AUTOMATIC"),)
    )
    _mark_processed(fake, plugin, study, (own,))
    return study, t2


# -- recording ------------------------------------------------------------------------------------------
def test_a_radiologist_seg_in_a_processed_study_is_one_label_and_no_job(
    node: tuple[LabelOrthanc, NodePlugin], tmp_path: Path
) -> None:
    fake, plugin = node
    study, t2 = _processed_study(fake, plugin)
    fake.stabilize(study, notify=False)
    plugin.follower.start()
    before = _jobs(plugin)
    assert len(before) == 1
    assert _labels(fake)["labels"] == []  # the node's own SEG is no label
    series, sop = _add_seg(
        fake, study, [t2], segments=(("Lesion 1 ISUP 3", "MANUAL"), ("PI-RADS 4", "MANUAL"))
    )
    fake.stabilize(study, notify=False)
    plugin.follower.poll()
    assert _jobs(plugin) == before  # no new job, none queued again
    assert plugin.last_evaluation is not None and plugin.last_evaluation.study == study
    assert [j.created for j in plugin.last_evaluation.jobs] == [False]
    answer = _labels(fake)
    assert (answer["total"], answer["has_more"]) == (1, False)
    [label] = answer["labels"]
    assert label["study"] == study
    assert label["study_instance_uid"] == fake.studies[study].tags["StudyInstanceUID"]
    assert (label["series"], label["sop_instance_uid"], label["manufacturer"]) == (series, sop, READER)
    assert label["instance"] == fake.series[series].instances[0]
    assert label["referenced_series"] == [t2]
    assert [(s["label"], s["isup"], s["pirads"]) for s in label["segments"]] == [
        ("Lesion 1 ISUP 3", 3, None),
        ("PI-RADS 4", None, 4),
    ]
    assert "PatientName" not in json.dumps(answer) and "Doe" not in json.dumps(answer)
    # seen again (another stable event, a re-process request): still one label, still no new job
    fake.stabilize(study, notify=False)
    plugin.follower.poll()
    plugin.on_stable_study(study)
    assert _labels(fake)["total"] == 1
    assert _jobs(plugin) == before
    # the table is private and survives a restart
    path = tmp_path / LABELS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    plugin.stop()
    again = NodePlugin(fake, plugin.settings)
    try:
        assert [lab.sop_instance_uid for lab in again.labels.list()] == [sop]
    finally:
        again.stop()


def test_the_nodes_own_segs_are_never_labels(node: tuple[LabelOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study, t2 = _processed_study(fake, plugin)
    # by Manufacturer (not in the study record), and by Contributing Equipment without a manual segment
    _add_seg(fake, study, [t2], manufacturer="Lesion AI")
    _add_seg(
        fake, study, [t2], manufacturer="OHIF", contributing="Lesion AI", segments=(("ISUP 4", "AUTOMATIC"),)
    )
    plugin.on_stable_study(study)
    assert plugin.labels.count() == 0
    # a radiologist's correction of the node's SEG keeps a manual segment: a label
    _, corrected = _add_seg(
        fake, study, [t2], manufacturer="OHIF", contributing="Lesion AI", segments=(("ISUP 2", "MANUAL"),)
    )
    plugin.on_stable_study(study)
    assert [lab.sop_instance_uid for lab in plugin.labels.list()] == [corrected]


def test_a_seg_of_an_unprocessed_study_waits_until_the_node_processed_it(
    node: tuple[LabelOrthanc, NodePlugin], caplog: pytest.LogCaptureFixture
) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    t2 = _series_uid(fake, fake.studies[study].series[0])
    _, sop = _add_seg(fake, study, [t2])
    with caplog.at_level(logging.INFO, logger="orthanc_plugin.intake.labels"):
        jobs = plugin.on_stable_study(study)
    assert [j.created for j in jobs] == [True]  # the SEG is no input: the job has the MR series only
    assert plugin.labels.count() == 0
    assert any("has not processed the study" in r.getMessage() for r in caplog.records)
    _mark_processed(fake, plugin, study)
    assert [j.created for j in plugin.on_stable_study(study)] == [False]
    assert [lab.sop_instance_uid for lab in plugin.labels.list()] == [sop]


def test_a_seg_that_references_no_image_of_the_study_is_not_a_label(
    node: tuple[LabelOrthanc, NodePlugin], caplog: pytest.LogCaptureFixture
) -> None:
    fake, plugin = node
    study, _ = _processed_study(fake, plugin)
    other = fake.add_study(series=PROSTATE, patient_id="P2")
    _add_seg(fake, study, [_series_uid(fake, fake.studies[other].series[0])])
    _add_seg(fake, study, [])
    with caplog.at_level(logging.INFO, logger="orthanc_plugin.intake.labels"):
        plugin.on_stable_study(study)
    assert plugin.labels.count() == 0
    assert sum("references none of the study's image series" in r.getMessage() for r in caplog.records) == 2


def test_a_failure_to_record_labels_does_not_keep_jobs_from_being_queued(
    node: tuple[LabelOrthanc, NodePlugin], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, plugin = node
    study, t2 = _processed_study(fake, plugin)
    _add_seg(fake, study, [t2])

    def broken(label: Label) -> bool:
        raise OSError("disk full")

    monkeypatch.setattr(plugin.labels, "add", broken)
    fresh = fake.add_study(series=PROSTATE, patient_id="P3")
    fake.add_series(fresh, Modality="SEG", Manufacturer=READER, sop_class=SEG, instances=1)
    with caplog.at_level(logging.ERROR, logger="orthanc_plugin.intake.labels"):
        plugin.on_stable_study(study)
        assert [j.created for j in plugin.on_stable_study(fresh)] == [True]
    assert any("recording its radiologists' SEGs as labels failed" in r.getMessage() for r in caplog.records)
    assert plugin.labels.count() == 0


def test_the_grade_convention_and_node_made_read_orthanc_json() -> None:
    assert parse_grade("Lesion 2: ISUP grade group 4") == (4, None)
    assert parse_grade("PIRADS v2.1 5") == (None, 5)
    assert node_made({"Manufacturer": " lesion ai "}, ("Lesion AI",)) is not None
    correction = {
        "Manufacturer": "OHIF",
        "ContributingEquipmentSequence": [{"Manufacturer": "Lesion AI"}],
        "SegmentSequence": [{"SegmentAlgorithmType": "SEMIAUTOMATIC"}],
    }
    assert node_made(correction, ("Lesion AI",)) is None
    correction["SegmentSequence"] = [{"SegmentAlgorithmType": "AUTOMATIC"}]
    assert (
        node_made(correction, ("Lesion AI",))
        == "made by the node (Contributing Equipment 'Lesion AI', no manual segment)"
    )


# -- GET /lesion-ai/labels ------------------------------------------------------------------------------
def test_labels_route_filters_pages_and_validates(node: tuple[LabelOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    studies = []
    for patient in ("P1", "P2"):
        study = fake.add_study(series=PROSTATE, patient_id=patient)
        plugin.enqueue_study(study)
        _mark_processed(fake, plugin, study)
        studies.append(study)
    t2 = _series_uid(fake, fake.studies[studies[0]].series[0])
    sops = [_add_seg(fake, studies[0], [t2])[1] for _ in range(3)]
    plugin.on_stable_study(studies[0])
    other_t2 = _series_uid(fake, fake.studies[studies[1]].series[0])
    other = _add_seg(fake, studies[1], [other_t2])[1]
    plugin.on_stable_study(studies[1])
    everything = _labels(fake)
    assert everything["total"] == 4
    assert next(lab["sop_instance_uid"] for lab in everything["labels"]) == other  # newest first
    by_id = _labels(fake, study=studies[0])
    by_uid = _labels(fake, study=fake.studies[studies[0]].tags["StudyInstanceUID"])
    assert sorted(lab["sop_instance_uid"] for lab in by_id["labels"]) == sorted(sops)
    assert by_uid["labels"] == by_id["labels"]
    first = _labels(fake, study=studies[0], limit="2")
    second = _labels(fake, study=studies[0], limit="2", offset="2")
    assert (len(first["labels"]), first["has_more"], len(second["labels"]), second["has_more"]) == (
        2,
        True,
        1,
        False,
    )
    assert {lab["sop_instance_uid"] for lab in first["labels"] + second["labels"]} == set(sops)
    assert _labels(fake, study="no-such-study")["labels"] == []
    for query in ({"limit": "many"}, {"offset": "-1"}, {"offset": str(2**63)}):
        output = fake.rest("GET", "/lesion-ai/labels", get=query)
        assert output.status == 400, query
        assert ("limit" if "limit" in query else "offset") in output.json()["error"]
    assert fake.rest("POST", "/lesion-ai/labels", headers={"X-Lesion-AI-Request": "1"}).status == 405


def test_label_store_refuses_bad_values(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "labels.sqlite")
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=0)
    with pytest.raises(ValueError, match="offset"):
        store.list(offset=-1)
    with pytest.raises(ValueError, match="study"):
        Label("", "1.2", "s", "1.2.3", "i", "1.2.3.4", "", "", (), (), 0.0)
    store.close()


# -- dataset build --from-node, against the fake served over HTTP ------------------------------------------
USER, PASSWORD = "researcher", "s3cret-for-tests"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        fake = self.server.fake
        wanted = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != wanted:
            self._answer(401, b"{}")
            return
        self.server.requests.append(self.path)
        parts = urlsplit(self.path)
        if parts.path.startswith("/lesion-ai/"):
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            try:
                output = fake.rest("GET", parts.path, get=query)
            except AssertionError:  # no plugin route: Orthanc answers 404
                self._answer(404, b'{"Message": "Unknown resource"}')
                return
            self._answer(output.status or 500, output.body)
            return
        try:
            self._answer(200, fake.RestApiGet(self.path))
        except OrthancException as exc:
            self._answer(404 if exc.args[0] == 17 else 500, b"{}")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    def __init__(self, fake: FakeOrthanc) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def served(node: tuple[LabelOrthanc, NodePlugin]) -> Iterator[tuple[LabelOrthanc, NodePlugin, _Server]]:
    fake, plugin = node
    server = _Server(fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, plugin, server
    server.shutdown()
    server.server_close()


def _store_files(fake: FakeOrthanc, files: list[bytes]) -> str:
    """Store DICOM files into the fake (one study); returns the study's Orthanc ID."""
    study_id: str | None = None
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        uid = str(ds.StudyInstanceUID)
        study_id = next((s.id for s in fake.studies.values() if s.tags["StudyInstanceUID"] == uid), None)
        if study_id is None:
            study_id = str(uuid.uuid4())
            fake.studies[study_id] = FakeStudy(
                study_id,
                {"StudyDescription": str(ds.get("StudyDescription", "MR PROSTATE")), "StudyInstanceUID": uid},
                {"PatientID": str(ds.PatientID)},
            )
        study = fake.studies[study_id]
        series_uid = str(ds.SeriesInstanceUID)
        series = next((s for s in fake.series.values() if s.tags["SeriesInstanceUID"] == series_uid), None)
        if series is None:
            tags = {
                k: str(ds.get(k, ""))
                for k in (
                    "Modality",
                    "SeriesDescription",
                    "Manufacturer",
                    "SeriesInstanceUID",
                    "SeriesNumber",
                )
            }
            series = FakeSeries(
                str(uuid.uuid4()), study_id, tags, [], str(ds.SOPClassUID), "SCANNER", "10.1.2.3"
            )
            fake.series[series.id] = series
            study.series.append(series.id)
        instance = str(uuid.uuid4())
        series.instances.append(instance)
        fake.files[instance] = data
    assert study_id is not None
    return study_id


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["dataset", "build", *argv])
    code: int = args.func(args)
    return code


@pytest.mark.slow
def test_dataset_build_from_node_uses_the_radiologists_seg(
    served: tuple[LabelOrthanc, NodePlugin, _Server],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, plugin, server = served
    case = generate_case(
        tmp_path / "synth", 0, 11, SynthConfig(vendor="siemens", lesion_kinds=("cspca",), profile="small")
    )
    study = _store_files(fake, [p.read_bytes() for p in sorted((case / "dicom").rglob("*.dcm"))])
    assert [j.created for j in plugin.on_stable_study(study)] == [True]
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "labels" / f"{case.name}_lesion.nii.gz"))) > 0
    node_seg = radiologist_seg(case / "dicom", [("Lesion 1: ISUP 5", np.ones_like(lesion))], "Lesion AI", 301)
    assert _store_files(fake, [_bytes(node_seg)]) == study
    own = fake.studies[study].series[-1]
    _mark_processed(fake, plugin, study, (own,))
    older = radiologist_seg(case / "dicom", [("ISUP 2", np.ones_like(lesion))], READER, 300)
    _store_files(fake, [_bytes(older)])
    plugin.on_stable_study(study)
    reader = radiologist_seg(case / "dicom", [("Lesion 1 ISUP 3", lesion)], READER, 302)
    _store_files(fake, [_bytes(reader)])
    before = _jobs(plugin)
    plugin.on_stable_study(study)
    assert _jobs(plugin) == before
    assert plugin.labels.count() == 2
    # a labelled study that is gone from Orthanc is reported, not fatal
    gone = fake.add_study(series=PROSTATE, patient_id="GONE")
    plugin.enqueue_study(gone)
    _mark_processed(fake, plugin, gone)
    _add_seg(fake, gone, [_series_uid(fake, fake.studies[gone].series[0])])
    plugin.on_stable_study(gone)
    del fake.studies[gone]

    out = tmp_path / "out"
    source = NodeSource(server.url, USER, PASSWORD)
    result = build_dataset([], out, node=source)
    [case_id] = result.built
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / LESION_DIR / f"{case_id}.nii.gz")))
    assert set(np.unique(label)) == {0, 3}  # the newest label; not the node's ISUP 5, not the older ISUP 2
    np.testing.assert_array_equal(label > 0, lesion)
    for name in ("t2w", "adc", "hbv"):
        assert (out / case_id.split("_")[0] / f"{case_id}_{name}.mha").is_file()
    record = json.loads((out / "dataset.json").read_text())
    assert record["cases"][case_id]["labels"]["seg"] == f"{reader.SOPInstanceUID}.dcm"
    assert record["cases"][case_id]["marksheet"]["case_ISUP"] == "3"
    assert [s["reason"] for s in result.skipped] == ["the study is no longer in the node's Orthanc"]
    assert any(
        str(older.SOPInstanceUID) in i["input"] and "older label" in i["reason"] for i in result.ignored
    )
    assert not any(p.name.startswith(".node-study-") for p in out.iterdir())  # the downloads are gone
    own_instance = fake.series[own].instances[0]
    assert not any(own_instance in r for r in server.requests)  # the node's SEG is not even fetched
    # idempotent: a second run (the CLI, credentials from the environment) changes nothing
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    snapshot = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "dataset.json"}
    assert _cli(["--from-node", server.url, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nothing changed: 1 case(s) up to date" in printed
    assert "skipped node study" in printed and "no longer in the node's Orthanc" in printed
    assert {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "dataset.json"
    } == snapshot
    # a study larger than the limit is skipped, and says how to fetch it
    small = build_dataset(
        [], tmp_path / "small", node=NodeSource(server.url, USER, PASSWORD, max_study_bytes=10_000)
    )
    assert small.built == []
    assert any("--max-study-gb" in s["reason"] for s in small.skipped)
    assert not any(p.name.startswith(".node-study-") for p in (tmp_path / "small").iterdir())


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_from_node_says_what_is_wrong_with_the_node(
    served: tuple[LabelOrthanc, NodePlugin, _Server], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, server = served
    with pytest.raises(NodeSourceError, match="refused the credentials"):
        NodeSource(server.url, USER, "wrong").labels()
    assert (
        _cli(["--from-node", server.url, "--user", USER, "--password", "wrong", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "refused the credentials" in capsys.readouterr().err
    with pytest.raises(NodeSourceError, match="cannot be reached"):
        NodeSource("http://127.0.0.1:9", USER, PASSWORD).labels()
    # a node without the labels route (another server) is named as such
    server.fake.rest_callbacks.clear()
    with pytest.raises(NodeSourceError, match="no /lesion-ai/labels route"):
        NodeSource(server.url, USER, PASSWORD).labels()
    with pytest.raises(ValueError, match="http"):
        NodeSource("node:8042")
    with pytest.raises(ValueError, match="without a user"):
        NodeSource(server.url, None, PASSWORD)
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


# -- with a real Orthanc ------------------------------------------------------------------------------------
@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def _quiet(client: OrthancClient) -> bool:
    """Every study stable, the whole change log read by the plugin, no job queued or running."""
    last = client.get_json("/changes?last")["Last"]
    health = client.get_json("/lesion-ai/health")
    counts = health["queue"]["counts"]
    return (
        all(s["IsStable"] for s in client.get_json("/studies?expand"))
        and health["changes"]["last_sequence"] >= last
        and counts["queued"] == 0
        and counts["running"] == 0
    )


@pytest.mark.orthanc
@pytest.mark.slow
def test_a_radiologists_seg_sent_to_a_real_node_becomes_training_data(
    fleet: OrthancFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = fleet.node().start()
    client = node.client()
    case = generate_case(
        tmp_path / "synth", 0, 11, SynthConfig(vendor="siemens", lesion_kinds=("cspca",), profile="small")
    )
    for path in sorted((case / "dicom").rglob("*.dcm")):
        client.post_bytes("/instances", path.read_bytes())
    wait_for(lambda: [j for j in jobs(client) if j["state"] == "done"], 90, "the study processed")
    wait_for(lambda: _quiet(client), 60, "the node to settle")
    [job] = jobs(client)
    study = job["study"]
    assert count_by_modality(client, study)["SEG"] == 1  # the node's own
    assert client.get_json("/lesion-ai/labels")["labels"] == []
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "labels" / f"{case.name}_lesion.nii.gz"))) > 0
    seg = radiologist_seg(case / "dicom", [("ISUP 3", lesion)], READER, 300)
    client.post_bytes("/instances", _bytes(seg))
    [label] = wait_for(lambda: client.get_json("/lesion-ai/labels")["labels"], 60, "the label recorded")
    assert (label["study"], label["sop_instance_uid"]) == (study, str(seg.SOPInstanceUID))
    assert [(s["label"], s["isup"]) for s in label["segments"]] == [("ISUP 3", 3)]
    wait_for(lambda: _quiet(client), 60, "the node to settle")
    after = jobs(client)
    assert [(j["id"], j["state"], j["attempts"]) for j in after] == [(job["id"], "done", 1)]  # no new job
    by_uid = client.get_json(f"/lesion-ai/labels?study={label['study_instance_uid']}")["labels"]
    assert [lab["id"] for lab in by_uid] == [label["id"]]
    assert (node.home / LABELS_FILE).stat().st_mode & 0o777 == 0o600
    credentials = node.credentials or {}
    out = tmp_path / "dataset"
    argv = [
        "--from-node",
        node.url,
        "--user",
        credentials["username"],
        f"--password={credentials['password']}",
    ]
    assert _cli([*argv, "--out", str(out)]) == 0
    assert "built 1 case(s)" in capsys.readouterr().out
    layout = PicaiLayout(images_root=out, labels_root=out / "picai_labels")
    [case_id] = find_picai_cases(layout)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / LESION_DIR / f"{case_id}.nii.gz")))
    assert set(np.unique(written)) == {0, 3}
    np.testing.assert_array_equal(written > 0, lesion)
    assert _cli([*argv, "--out", str(out)]) == 0
    assert "nothing changed: 1 case(s) up to date" in capsys.readouterr().out
