"""The worker's steps and error paths against an in-memory Orthanc REST API: failure reports, retries,
forwarding through Orthanc jobs, lost leases, deleted studies, the study record."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from lesion_engine.errors import ConfigError
from orthanc_plugin.jobqueue import (
    Job,
    JobPayload,
    JobQueue,
    JobState,
    NewJob,
)
from orthanc_plugin.node.settings import WorkerSettings
from orthanc_plugin.rules import Destinations
from orthanc_plugin.worker.processing import ProcessingOutcome, ProcessingRequest
from orthanc_plugin.worker.runner import Worker, WorkerOptions
from tests.support.node_fakes import FakeRest, Scripted

SETTINGS = WorkerSettings(queue="sqlite:///unused", heartbeat_s=5)


def _job(queue: JobQueue, destinations: Destinations | None = None) -> Job:
    payload = JobPayload(
        study="st1",
        rule="prostate-mr",
        series=("se1", "se2"),
        model="m:1",
        destinations=destinations or Destinations(),
    )
    queue.enqueue(NewJob("k1", "st1", "prostate-mr", "m:1", 0, payload.to_json()))
    claimed = queue.claim("w")
    assert claimed is not None
    return claimed


def _worker(queue: JobQueue, rest: FakeRest, processor: Scripted) -> Worker:
    options = WorkerOptions.from_settings(SETTINGS, owner="w", forward_backoff_s=0.0)
    return Worker(queue, rest, processor, options)


def test_success_stores_forwards_and_records(queue: JobQueue) -> None:
    rest, processor = FakeRest(), Scripted("ok")
    job = _job(queue, Destinations(modalities=("pacs",), dicomweb=("cloud",)))
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
    job = _job(queue, Destinations(modalities=("pacs",)))
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
    job = _job(queue, Destinations(modalities=("pacs",)))
    assert worker.run_job(job) is JobState.QUEUED
    waiting = queue.get(job.id)
    assert waiting is not None and "forwarding failed to modalities:pacs" in str(waiting.error)
    assert len(rest.sends) == 3
    again = queue.claim("w")
    assert again is not None
    assert worker.run_job(again) is JobState.DONE
    assert processor.calls == [3]  # results were not computed twice
    assert rest.stored == [b"SEG...", b"SR...."] and len(rest.sends) == 4


def test_behind_a_load_balancer_a_followed_send_says_what_to_set_and_a_synchronous_one_delivers(
    queue: JobQueue,
) -> None:
    rest, processor = FakeRest(), Scripted("ok", "ok")
    rest.jobs_elsewhere = True  # the send job runs on the Orthanc the balancer chose, not the one asked next
    worker = _worker(queue, rest, processor)
    job = _job(queue, Destinations(modalities=("pacs",)))
    assert worker.run_job(job) is JobState.QUEUED
    waiting = queue.get(job.id)
    assert waiting is not None and "set ForwardMode to synchronous" in str(waiting.error), str(waiting)
    options = WorkerOptions.from_settings(
        WorkerSettings(queue="sqlite:///q.db", forward_mode="synchronous"), owner="w", forward_backoff_s=0.0
    )
    again = queue.claim("w")
    assert again is not None
    sent_before = len(rest.sends)
    assert Worker(queue, rest, processor, options).run_job(again) is JobState.DONE
    assert len(rest.sends) == sent_before + 1  # one request, nothing to follow
    with pytest.raises(ConfigError, match="field ForwardMode: must be 'follow' or 'synchronous'"):
        WorkerSettings(queue="sqlite:///q.db", forward_mode="sync")


def test_study_uid_shared_by_two_patients_gets_a_report_that_says_so(queue: JobQueue) -> None:
    rest, processor = FakeRest(), Scripted("ok")
    # Orthanc files a study under PatientID + StudyInstanceUID: a second patient's series make a second study.
    rest.studies["st2"] = ["se2"]
    rest.study_uids["st2"] = rest.study_uids["st1"]
    claimed = _job(queue)
    assert _worker(queue, rest, processor).run_job(claimed) is JobState.FAILED
    job = queue.get(claimed.id)
    assert job is not None and job.state is JobState.FAILED
    assert "shared by 2 studies of different patients" in str(job.error) and "st2" in str(job.error)
    assert processor.calls == []  # the engine is not asked: it could only say "no ADC" or "no axial T2"
    assert rest.stored == [b"FAIL-SR"]


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
    options = WorkerOptions.from_settings(SETTINGS, owner="w2", parent_pid=os.getpid() + 10_000_000)
    assert Worker(queue, FakeRest(), Scripted(), options).run() == 0


def test_worker_runs_until_the_queue_is_empty(queue: JobQueue) -> None:
    rest = FakeRest()
    queue.enqueue(NewJob("a", "st1", "r", "m", 0, {"study": "st1", "rule": "r", "series": ["se1"]}))
    queue.enqueue(NewJob("b", "st1", "r", "m", 0, {"study": "st1", "rule": "r", "series": ["se2"]}))
    options = WorkerOptions.from_settings(SETTINGS, owner="w3", exit_when_idle=True)
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
    payload = JobPayload(study="st1", rule="r", series=tuple(sorted(by_series)), model="m:1")
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
    from lesion_engine.intake.preprocess import prepare_study

    everything = prepare_study(list(rest.files.values()))
    fetched_only = prepare_study(instances)
    assert {r: c.series_instance_uid for r, c in fetched_only.roles.items()} == {
        r: c.series_instance_uid for r, c in everything.roles.items()
    }


def test_instances_stored_empty_make_the_job_wait_for_a_good_copy(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orthanc may store instances as empty files when its disk is full: the job then neither runs on what
    is left nor fails (no failure report, no attempt counted); it waits, saying why, and runs once a good
    copy has been sent again."""
    import orthanc_plugin.worker.runner as worker_module

    monkeypatch.setattr(worker_module, "_WAIT_S", 0.0)
    rest, processor = FakeRest(), Scripted("ok")
    rest.files["i2"] = b""
    job = _job(queue)
    assert _worker(queue, rest, processor).run_job(job) is JobState.QUEUED
    waiting = queue.get(job.id)
    assert waiting is not None and waiting.state is JobState.QUEUED and waiting.attempts == 0
    assert waiting.error is not None and "stored empty" in waiting.error and "send it again" in waiting.error
    assert processor.calls == [] and rest.stored == []
    rest.files["i2"] = b"DICOM i2"  # sent again: Orthanc overwrites the empty copy (OverwriteInstances)
    again = queue.claim("w")
    assert again is not None and again.id == job.id
    assert _worker(queue, rest, processor).run_job(again) is JobState.DONE
    assert processor.calls == [3]
