"""The worker's steps and error paths against an in-memory Orthanc REST API: failure reports, retries,
forwarding through Orthanc jobs, lost leases, deleted studies, the study record."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.jobqueue import Job, JobQueue, JobState, NewJob, QueuePolicy, open_queue, sqlite_url
from orthanc_plugin.orthanc_api import NotFoundError, RestApiError
from orthanc_plugin.processing import ProcessingOutcome, ProcessingRequest
from orthanc_plugin.worker import Worker, WorkerOptions


class FakeRest:
    """Just enough of Orthanc's REST API for a worker."""

    def __init__(self) -> None:
        self.studies = {"st1": ["se1", "se2"]}
        self.series = {"se1": ["i1", "i2"], "se2": ["i3"]}
        self.files = {i: f"DICOM {i}".encode() for i in ("i1", "i2", "i3")}
        self.stored: list[bytes] = []
        self.metadata: dict[str, str] = {}
        self.sends: list[tuple[str, list[str]]] = []
        self.send_outcomes: list[str] = []  # "Success" / "Failure" per Orthanc job, in order
        self.jobs: dict[str, str] = {}

    def get_json(self, path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[0] == "studies" and len(parts) == 2 and parts[1] in self.studies:
            return {"ID": parts[1], "Series": self.studies[parts[1]]}
        if parts[0] == "series" and parts[1] in self.series:
            return {"ID": parts[1], "Instances": self.series[parts[1]]}
        if parts[0] == "instances" and parts[1].startswith("r"):
            return {"ID": parts[1]}
        if parts[0] == "jobs" and parts[1] in self.jobs:
            state = self.jobs[parts[1]]
            return {
                "State": state,
                "ErrorDescription": "Error in the network protocol" if state == "Failure" else "",
            }
        raise NotFoundError(f"GET {path}", 404)

    def get_bytes(self, path: str) -> bytes:
        parts = path.strip("/").split("/")
        if parts[0] == "instances" and parts[-1] == "file" and parts[1] in self.files:
            return self.files[parts[1]]
        if parts[0] == "studies" and parts[2] == "metadata" and parts[3] in self.metadata:
            return self.metadata[parts[3]].encode()
        raise NotFoundError(f"GET {path}", 404)

    def post_json(self, path: str, body: Any) -> Any:
        if path.endswith("/store") or path.endswith("/stow"):
            self.sends.append((path, list(body["Resources"])))
            assert body["Asynchronous"] is True
            job = f"job{len(self.jobs)}"
            self.jobs[job] = self.send_outcomes.pop(0) if self.send_outcomes else "Success"
            return {"ID": job}
        raise RestApiError(f"POST {path}", 400)

    def post_bytes(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        assert path == "/instances"
        self.stored.append(body)
        return {"ID": f"r{len(self.stored)}", "ParentSeries": f"rs-{body.decode()[:6]}", "Status": "Success"}

    def put_text(self, path: str, text: str) -> bytes:
        self.metadata[path.rsplit("/", 1)[-1]] = text
        return b""


class Scripted:
    """A processor whose outcomes are scripted: 'ok', 'failed', or an exception to raise."""

    def __init__(self, *script: str | Exception) -> None:
        self.script = list(script)
        self.calls: list[int] = []

    def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
        self.calls.append(len(instances))
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        if step == "failed":
            return ProcessingOutcome(
                self.failure(instances, "no axial T2W"), failed=True, reason="no axial T2W"
            )
        return ProcessingOutcome([b"SEG...", b"SR...."], model={"name": "m", "version": "1", "sha256": "0"})

    def failure(self, instances: Sequence[bytes], reason: str) -> list[bytes]:
        return [b"FAIL-SR"]


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    q = open_queue(
        sqlite_url(tmp_path / "q.sqlite"),
        QueuePolicy(lease_s=30, max_attempts=2, backoff_base_s=0, backoff_max_s=0),
    )
    yield q
    q.close()


def _job(queue: JobQueue, destinations: dict[str, list[str]] | None = None) -> Job:
    payload = {
        "study": "st1",
        "series": ["se1", "se2"],
        "outputs": ["seg", "sr"],
        "model": "m:1",
        "destinations": destinations or {},
    }
    queue.enqueue(NewJob("k1", "st1", "prostate-mr", "m:1", 0, payload))
    claimed = queue.claim("w")
    assert claimed is not None
    return claimed


def _worker(queue: JobQueue, rest: FakeRest, processor: Scripted) -> Worker:
    options = WorkerOptions(owner="w", forward_backoff_s=0.0, heartbeat_s=5)
    return Worker(queue, rest, processor, options)


def test_success_stores_forwards_and_records(queue: JobQueue) -> None:
    rest, processor = FakeRest(), Scripted("ok")
    job = _job(queue, {"modalities": ["pacs"], "dicomweb": ["cloud"], "peers": []})
    assert _worker(queue, rest, processor).run_job(job) is JobState.DONE
    assert processor.calls == [3] and rest.stored == [b"SEG...", b"SR...."]
    assert rest.sends == [
        ("/dicom-web/servers/cloud/stow", ["r1", "r2"]),
        ("/modalities/pacs/store", ["r1", "r2"]),
    ]
    done = queue.get(job.id)
    assert done is not None and done.progress["forwarded"] == {
        "dicomweb:cloud": "done",
        "modalities:pacs": "done",
    }
    record = json.loads(rest.metadata["LesionAI"])
    assert record["processed"]["k1"]["status"] == "done" and record["processed"]["k1"]["model"] == "m:1"
    assert record["result_series"] == ["rs-SEG...", "rs-SR...."]


def test_study_that_cannot_be_analysed_gets_a_failure_report(queue: JobQueue) -> None:
    rest = FakeRest()
    job = _job(queue, {"modalities": ["pacs"]})
    assert _worker(queue, rest, Scripted("failed")).run_job(job) is JobState.FAILED
    assert rest.stored == [b"FAIL-SR"] and rest.sends == [("/modalities/pacs/store", ["r1"])]
    failed = queue.get(job.id)
    assert failed is not None and failed.error == "no axial T2W"
    assert json.loads(rest.metadata["LesionAI"])["processed"]["k1"]["status"] == "failed"


def test_transient_error_retries_then_last_attempt_sends_a_failure_report(queue: JobQueue) -> None:
    rest = FakeRest()
    processor = Scripted(RuntimeError("out of memory"), RuntimeError("out of memory"))
    worker = _worker(queue, rest, processor)
    job = _job(queue)
    assert worker.run_job(job) is JobState.QUEUED
    again = queue.claim("w")
    assert again is not None and again.attempts == 2
    assert worker.run_job(again) is JobState.FAILED
    assert rest.stored == [b"FAIL-SR"]  # the failure is visible to the radiologist
    failed = queue.get(job.id)
    assert (
        failed is not None
        and failed.error is not None
        and failed.error.startswith("gave up after 2 attempts")
    )


def test_forward_retries_and_a_retried_job_only_forwards(queue: JobQueue) -> None:
    rest, processor = FakeRest(), Scripted("ok")
    rest.send_outcomes = ["Failure", "Failure", "Failure"]  # all three sends of the first attempt fail
    worker = _worker(queue, rest, processor)
    job = _job(queue, {"modalities": ["pacs"]})
    assert worker.run_job(job) is JobState.QUEUED
    waiting = queue.get(job.id)
    assert waiting is not None and "forwarding failed to modalities:pacs" in str(waiting.error)
    assert len(rest.sends) == 3
    again = queue.claim("w")
    assert again is not None
    assert worker.run_job(again) is JobState.DONE
    assert processor.calls == [3]  # results were not computed twice
    assert rest.stored == [b"SEG...", b"SR...."] and len(rest.sends) == 4


def test_deleted_study_fails_permanently(queue: JobQueue) -> None:
    rest = FakeRest()
    rest.studies.clear()
    job = _job(queue)
    assert _worker(queue, rest, Scripted()).run_job(job) is JobState.FAILED
    failed = queue.get(job.id)
    assert failed is not None and failed.error == "study st1 no longer exists in Orthanc"


def test_lost_lease_leaves_the_job_to_the_new_owner(queue: JobQueue) -> None:
    rest = FakeRest()
    job = _job(queue)

    class Steal(Scripted):
        def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
            queue.release(job.id, "w")
            assert queue.claim("other") is not None
            return super().__call__(instances, request)

    assert _worker(queue, rest, Steal()).run_job(job) is None
    taken = queue.get(job.id)
    assert taken is not None and taken.state is JobState.RUNNING and taken.lease_owner == "other"
    assert rest.stored == []


def test_worker_exits_when_its_parent_is_gone(queue: JobQueue) -> None:
    _job(queue)
    options = WorkerOptions(owner="w2", parent_pid=os.getpid() + 10_000_000)
    assert Worker(queue, FakeRest(), Scripted(), options).run() == 0


def test_worker_runs_until_the_queue_is_empty(queue: JobQueue) -> None:
    rest = FakeRest()
    queue.enqueue(NewJob("a", "st1", "r", "m", 0, {"study": "st1", "series": ["se1"]}))
    queue.enqueue(NewJob("b", "st1", "r", "m", 0, {"study": "st1", "series": ["se2"]}))
    options = WorkerOptions(owner="w3", exit_when_idle=True)
    assert Worker(queue, rest, Scripted(), options).run() == 2
    assert queue.counts()["done"] == 2


@pytest.mark.slow
def test_series_the_engine_ignores_are_fetched_by_their_first_instance_only(
    queue: JobQueue, tmp_path: Path
) -> None:
    import pydicom

    from training.synth import SynthConfig, generate_case

    case = generate_case(
        tmp_path,
        0,
        5,
        SynthConfig(vendor="siemens", dce=True, coil_reference=True, n_localizers=1, lesion_kinds=()),
    )
    by_series: dict[str, list[Path]] = {}
    descriptions: dict[str, str] = {}
    for path in sorted((case / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(path)
        descriptions[str(ds.SeriesInstanceUID)] = str(ds.get("SeriesDescription", ""))
    rest = FakeRest()
    rest.studies = {"st1": sorted(by_series)}
    rest.series = {uid: [f"{uid}-{n}" for n in range(len(paths))] for uid, paths in by_series.items()}
    rest.files = {
        f"{uid}-{n}": path.read_bytes() for uid, paths in by_series.items() for n, path in enumerate(paths)
    }
    requested: list[str] = []
    original = rest.get_bytes

    def get_bytes(path: str) -> bytes:
        requested.append(path.split("/")[2])
        return original(path)

    rest.get_bytes = get_bytes  # type: ignore[method-assign]
    payload = {"study": "st1", "series": sorted(by_series), "outputs": ["seg", "sr"], "model": "m:1"}
    worker = _worker(queue, rest, Scripted())
    request = ProcessingRequest.from_payload(1, payload)
    instances = worker._fetch(payload, request)

    fetched = {uid: sum(1 for r in requested if r.rsplit("-", 1)[0] == uid) for uid in by_series}
    dce = [uid for uid, text in descriptions.items() if "dyn" in text.lower() or "dce" in text.lower()]
    t2_axial = [uid for uid, text in descriptions.items() if "tra" in text.lower() and "t2" in text.lower()]
    assert dce and t2_axial, descriptions
    for uid in dce:  # DCE: many instances, only the first fetched
        assert len(by_series[uid]) > 1 and fetched[uid] == 1, (descriptions[uid], fetched[uid])
    for uid in t2_axial:  # what the engine may use is fetched whole
        assert fetched[uid] == len(by_series[uid])
    assert len(instances) == len(requested) < len(rest.files)
    # the processor still sees every series (the skipped ones by one instance) and chooses the same roles
    from lesion_engine.preprocess import prepare_study

    everything = prepare_study(list(rest.files.values()))
    fetched_only = prepare_study(instances)
    assert {r: c.series_instance_uid for r, c in fetched_only.roles.items()} == {
        r: c.series_instance_uid for r, c in everything.roles.items()
    }
