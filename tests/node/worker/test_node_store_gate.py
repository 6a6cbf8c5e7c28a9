"""Jobs started early (before their study's quiet time ended) store their results only if the study stayed
as it was: the gate document, and the worker waiting for it or withdrawing the job with nothing stored (the
queue moving, lifting and re-queueing a gate: tests/node/worker/test_node_queue.py)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from orthanc_plugin.jobqueue import (
    STORE_GATE_KEY,
    WITHDRAWN,
    Job,
    JobDocumentError,
    JobPayload,
    JobQueue,
    JobState,
    StoreGate,
    StoreGateError,
)
from orthanc_plugin.node.settings import WorkerSettings
from orthanc_plugin.worker import gate as gate_module
from orthanc_plugin.worker.gate import await_store_gate
from orthanc_plugin.worker.runner import Worker, WorkerOptions
from tests.support.node_fakes import FakeRest, Scripted

OWN = "Lesion AI"
#: The study of :class:`FakeRest`: two series, of 2 and 1 instances.
AS_RECEIVED = {"se1": 2, "se2": 1}


def _gate(not_before: float, series: dict[str, int] | None = None, **extra: Any) -> StoreGate:
    return StoreGate(not_before, AS_RECEIVED if series is None else series, own_manufacturer=OWN, **extra)


def _listing(**counts: int) -> list[dict[str, Any]]:
    return [
        {"ID": sid, "Instances": [f"{sid}-{i}" for i in range(n)], "MainDicomTags": {"Manufacturer": "GE"}}
        for sid, n in counts.items()
    ]


# -- the document ----------------------------------------------------------------------------------------
def test_the_gate_says_what_changed_in_the_study() -> None:
    gate = _gate(10.0, any_count=("dce",))
    assert gate.changes(_listing(se1=2, se2=1)) is None
    assert gate.changes(_listing(se1=2, se2=1, dce=40)) is None  # may go on receiving
    assert gate.changes(_listing(se1=3, se2=1)) == "series se1 holds 3 instance(s), not 2"
    assert gate.changes(_listing(se1=2)) == "series se2 is gone"
    assert gate.changes(_listing(se1=2, se2=1, dwi=5)) == "series dwi (5 instance(s)) arrived"
    own = _listing(se1=2, se2=1, seg=1)
    own[-1]["MainDicomTags"]["Manufacturer"] = OWN  # another rule's results: no change
    assert gate.changes(own) is None
    assert StoreGate(10.0, AS_RECEIVED).changes(own) == "series seg (1 instance(s)) arrived"  # no own name


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"series": {}}, "key 'not_before' is missing"),
        ({"not_before": 1.0}, "key 'series' is missing"),
        ({"not_before": "soon", "series": {}}, "key 'not_before': expected seconds"),
        ({"not_before": float("nan"), "series": {}}, "expected seconds >= 0"),
        ({"not_before": 1.0, "series": {"se1": -2}}, "key 'series': expected an object of series ID"),
        ({"not_before": 1.0, "series": {"se1": True}}, "key 'series'"),
        ({"not_before": 1.0, "series": {}, "any_count": "dce"}, "key 'any_count'"),
        ({"not_before": 1.0, "series": {}, "when": 2}, "unknown key"),
    ],
)
def test_a_bad_gate_is_refused_naming_the_key(data: object, message: str) -> None:
    with pytest.raises(StoreGateError, match=message):
        StoreGate.from_json(data)


def test_a_payload_carries_its_gate_and_says_version_2_only_then() -> None:
    plain = JobPayload(study="st1", rule="r", series=("se1",))
    assert plain.to_json()["schema_version"] == 1 and STORE_GATE_KEY not in plain.to_json()
    gated = JobPayload(study="st1", rule="r", series=("se1",), store_gate=_gate(12.5, any_count=("x",)))
    stored = json.loads(json.dumps(gated.to_json()))
    assert stored["schema_version"] == 2 and stored[STORE_GATE_KEY]["series"] == AS_RECEIVED
    assert JobPayload.from_json(stored) == gated and gated.key == plain.key  # the same work
    with pytest.raises(JobDocumentError, match="key 'store_gate': store gate: key 'series' is missing"):
        JobPayload.from_json({**stored, STORE_GATE_KEY: {"not_before": 1.0}})


# -- the worker (the queue's side of the gate: tests/node/worker/test_node_queue.py) --------------------
def _payload(gate: StoreGate | None) -> JobPayload:
    return JobPayload(study="st1", rule="prostate-mr", series=("se1", "se2"), model="m:1", store_gate=gate)


def _claimed(queue: JobQueue, gate: StoreGate | None) -> Job:
    queue.enqueue(_payload(gate).new_job())
    job = queue.claim("w")
    assert job is not None
    return job


def _worker(queue: JobQueue, rest: FakeRest, processor: Scripted) -> Worker:
    options = WorkerOptions.from_settings(WorkerSettings(queue="sqlite:///unused"), owner="w")
    return Worker(queue, rest, processor, options)


def test_results_are_stored_only_once_the_quiet_time_has_passed(queue: JobQueue) -> None:
    rest = FakeRest()
    quiet_ends = time.time() + 0.6
    job = _claimed(queue, _gate(quiet_ends))
    assert _worker(queue, rest, Scripted("ok")).run_job(job) is JobState.DONE
    done = queue.get(job.id)
    assert done is not None and done.finished_at is not None and done.finished_at >= quiet_ends
    assert rest.stored == [b"SEG...", b"SR...."]


def test_a_study_that_changed_while_analysed_withdraws_the_job_with_nothing_stored(
    queue: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    rest = FakeRest()
    job = _claimed(queue, _gate(time.time() + 0.2))
    rest.series["se2"].append("i4")  # one more image while the job runs
    rest.files["i4"] = b"DICOM i4"
    monkeypatch.setattr(gate_module, "_POLL_S", 0.02)
    started = time.monotonic()
    assert _worker(queue, rest, Scripted("ok")).run_job(job) is JobState.FAILED
    assert time.monotonic() - started >= 3.0  # the plugin's judgement was waited for
    assert rest.stored == [] and rest.sends == [] and "LesionAI" not in rest.metadata
    withdrawn = queue.get(job.id)
    assert withdrawn is not None and withdrawn.error is not None
    assert (
        withdrawn.error.startswith(WITHDRAWN) and "series se2 holds 2 instance(s), not 1" in withdrawn.error
    )
    assert queue.enqueue(_payload(_gate(time.time())).new_job()) == (job.id, True)  # judged again: re-run


def test_a_gate_moved_after_a_change_is_waited_for(queue: JobQueue) -> None:
    rest = FakeRest()
    job = _claimed(queue, _gate(time.time()))
    rest.studies["st1"].append("loc")  # a series the job does not read
    rest.series["loc"] = ["l1"]
    moved = _gate(time.time() + 0.4, {**AS_RECEIVED, "loc": 1})

    def judge_again() -> None:  # the plugin's next look at the study: the same work, its gate moved
        time.sleep(0.3)
        queue.enqueue(_payload(moved).new_job())

    judgement = threading.Thread(target=judge_again)
    judgement.start()
    reason = await_store_gate(queue, rest, job.id, "st1", stop=threading.Event(), check=lambda: None)
    judgement.join()
    assert reason is None and time.time() >= moved.not_before


def test_the_wait_ends_when_the_worker_is_asked_to_stop(queue: JobQueue) -> None:
    job = _claimed(queue, _gate(time.time() + 60))
    stop = threading.Event()

    class StoppedError(Exception):
        pass

    def check() -> None:
        if stop.is_set():
            raise StoppedError

    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StoppedError):
        await_store_gate(queue, FakeRest(), job.id, "st1", stop=stop, check=check)
    assert time.monotonic() - started < 5
