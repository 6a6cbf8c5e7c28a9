"""The job queue, on SQLite and on a real PostgreSQL server: idempotent enqueue, priorities, exclusive
claims, lease reclaim, retries with back-off, permanent failures, and the store gates of jobs started early
(moved, lifted, a withdrawn job queued again)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from orthanc_plugin.jobqueue import (
    STORE_GATE_KEY,
    WITHDRAWN,
    Job,
    JobPayload,
    JobQueue,
    JobState,
    NewJob,
    QueuePolicy,
    StoreGate,
    open_queue,
    sqlite_url,
)
from orthanc_plugin.jobqueue.base import SqlJobQueue
from tests.support.pg_env import PostgresServer, running_postgres

FAST = QueuePolicy(lease_s=0.4, max_attempts=3, backoff_base_s=0.2, backoff_max_s=0.3)
SLOW_LEASE = replace(FAST, lease_s=60)


def job(key: str, priority: int = 0, study: str = "s1") -> NewJob:
    return NewJob(key=key, study_id=study, rule="r", model="m", priority=priority, payload={"k": key})


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "queue.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.database()


@pytest.fixture
def queue(queue_url: str) -> Iterator[JobQueue]:
    q = open_queue(queue_url, FAST)
    yield q
    q.close()


def test_enqueue_is_idempotent(queue: JobQueue) -> None:
    first = queue.enqueue(job("a"))
    assert first[1] is True
    assert queue.enqueue(job("a")) == (first[0], False)
    assert len(queue.list()) == 1
    assert queue.find("a") is not None and queue.find("b") is None


def test_force_requeues_only_finished_jobs(queue: JobQueue) -> None:
    job_id, _ = queue.enqueue(job("a"))
    assert queue.enqueue(job("a"), force=True) == (job_id, False)  # still queued: left alone
    claimed = queue.claim("w1")
    assert claimed is not None
    assert queue.enqueue(job("a"), force=True) == (job_id, False)  # running: left alone
    assert queue.complete(job_id, "w1", {"stored": ["x"]})
    assert queue.enqueue(job("a", priority=7), force=True) == (job_id, True)
    again = queue.get(job_id)
    assert again is not None
    assert (again.state, again.attempts, again.priority, again.progress) == (JobState.QUEUED, 0, 7, {})


def test_claims_by_priority_then_arrival(queue: JobQueue) -> None:
    for key, priority in (("low", -1), ("a", 0), ("high", 5), ("b", 0)):
        queue.enqueue(job(key, priority))
    order = []
    while (claimed := queue.claim("w")) is not None:
        order.append(claimed.key)
    assert order == ["high", "a", "b", "low"]


def test_claim_is_exclusive_under_contention(queue_url: str) -> None:
    setup = open_queue(queue_url, SLOW_LEASE)
    for i in range(40):
        setup.enqueue(job(f"j{i}"))
    setup.close()
    claimed: dict[str, list[str]] = {}
    lock = threading.Lock()

    def worker(name: str) -> None:
        q = open_queue(queue_url, SLOW_LEASE)  # own connection, like a worker process
        try:
            while (got := q.claim(name)) is not None:
                with lock:
                    claimed.setdefault(got.key, []).append(name)
                q.complete(got.id, name)
        finally:
            q.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(f"j{i}" for i in range(40))
    assert all(len(owners) == 1 for owners in claimed.values())


def test_expired_lease_is_reclaimed(queue: JobQueue) -> None:
    job_id, _ = queue.enqueue(job("a"))
    first = queue.claim("dead-worker")
    assert first is not None and first.attempts == 1
    assert queue.claim("w2") is None  # lease still valid
    assert queue.heartbeat(job_id, "dead-worker")
    time.sleep(0.6)
    second = queue.claim("w2")
    assert second is not None and second.id == job_id and second.attempts == 2 and second.lease_owner == "w2"
    # The old owner lost the job: it can neither renew nor finish it.
    assert not queue.heartbeat(job_id, "dead-worker")
    assert not queue.complete(job_id, "dead-worker")
    assert queue.fail(job_id, "dead-worker", "x", transient=True) is None
    assert queue.complete(job_id, "w2")
    done = queue.get(job_id)
    assert done is not None and done.state is JobState.DONE and done.finished_at is not None


def test_job_whose_workers_keep_dying_fails(queue: JobQueue) -> None:
    job_id, _ = queue.enqueue(job("a"))
    for attempt in range(1, FAST.max_attempts + 1):
        claimed = queue.claim(f"w{attempt}")
        assert claimed is not None and claimed.attempts == attempt
        time.sleep(0.5)
    assert queue.claim("last") is None
    failed = queue.get(job_id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.error is not None and "stopped responding" in failed.error


def test_transient_failures_retry_with_exponential_backoff(queue: JobQueue) -> None:
    policy = QueuePolicy(lease_s=10, max_attempts=3, backoff_base_s=0.3, backoff_max_s=0.5)
    assert [policy.backoff_s(n) for n in (1, 2, 3)] == [0.3, 0.5, 0.5]
    slow = replace(policy, backoff_base_s=10, backoff_max_s=900)
    assert [slow.backoff_s(n) for n in (1, 2, 3, 9)] == [
        10,
        20,
        40,
        900,
    ]
    queue.policy = policy
    job_id, _ = queue.enqueue(job("a"))
    claimed = queue.claim("w")
    assert claimed is not None
    assert queue.fail(job_id, "w", "Orthanc unreachable", transient=True) is JobState.QUEUED
    waiting = queue.get(job_id)
    assert waiting is not None and waiting.error == "Orthanc unreachable"
    assert waiting.not_before - waiting.updated_at == pytest.approx(0.3, abs=0.01)
    assert queue.claim("w") is None  # backing off
    time.sleep(0.35)
    assert queue.claim("w") is not None
    assert queue.fail(job_id, "w", "again", transient=True) is JobState.QUEUED
    second = queue.get(job_id)
    assert second is not None and second.not_before - second.updated_at == pytest.approx(0.5, abs=0.01)
    time.sleep(0.55)
    assert queue.claim("w") is not None
    assert queue.fail(job_id, "w", "third time", transient=True) is JobState.FAILED
    final = queue.get(job_id)
    assert final is not None and final.state is JobState.FAILED
    assert final.error == "gave up after 3 attempts; last error: third time"


def test_permanent_failure_is_recorded_with_its_reason(queue: JobQueue) -> None:
    job_id, _ = queue.enqueue(job("a"))
    queue.claim("w")
    assert queue.fail(job_id, "w", "no axial T2W series", transient=False) is JobState.FAILED
    failed = queue.get(job_id)
    assert failed is not None and (failed.state, failed.error, failed.attempts) == (
        JobState.FAILED,
        "no axial T2W series",
        1,
    )
    assert queue.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 1}


def test_release_hands_the_job_back_without_counting_the_attempt(queue: JobQueue) -> None:
    job_id, _ = queue.enqueue(job("a"))
    queue.claim("w")
    assert queue.set_progress(job_id, "w", {"stored": ["i1"]})
    assert not queue.set_progress(job_id, "other", {})
    assert queue.release(job_id, "w")
    back = queue.get(job_id)
    assert back is not None and (back.state, back.attempts, back.progress) == (
        JobState.QUEUED,
        0,
        {"stored": ["i1"]},
    )
    assert queue.claim("w2") is not None


def test_list_filters_and_json_form(queue: JobQueue) -> None:
    queue.enqueue(job("a", study="s1"))
    queue.enqueue(job("b", study="s2"))
    queue.claim("w")
    assert [j.key for j in queue.list()] == ["b", "a"]
    assert [j.key for j in queue.list(JobState.RUNNING)] == ["a"]
    assert [j.key for j in queue.list(study_id="s2")] == ["b"]
    assert [j.key for j in queue.list(limit=1, offset=1)] == ["a"]
    data = queue.list(JobState.RUNNING)[0].to_dict()
    assert data["state"] == "running" and data["worker"] == "w" and data["payload"] == {"k": "a"}


def test_queue_survives_reopening(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "q.sqlite")
    q = open_queue(url, FAST)
    q.enqueue(job("a"))
    q.close()
    q = open_queue(url, FAST)
    try:
        assert [j.key for j in q.list()] == ["a"]
    finally:
        q.close()


def test_queue_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_queue("sqlite:///sub/q.sqlite", FAST)
    assert isinstance(relative, SqlJobQueue) and (tmp_path / "sub" / "q.sqlite").exists()
    relative.close()
    bare = open_queue(str(tmp_path / "bare.sqlite"), FAST)
    bare.close()
    assert sqlite_url(tmp_path / "x.db") == f"sqlite:///{tmp_path}/x.db"
    with pytest.raises(ValueError, match="unsupported queue URL mysql"):
        open_queue("mysql://host/db", FAST)
    with pytest.raises(ValueError, match="lease_s"):
        replace(FAST, lease_s=0)


# -- store gates (orthanc_plugin.jobqueue.store_gate) ----------------------------------------------------
def _gate(not_before: float, series: dict[str, int] | None = None) -> StoreGate:
    return StoreGate(not_before, series or {"se1": 2, "se2": 1}, own_manufacturer="Lesion AI")


def _payload(gate: StoreGate | None) -> JobPayload:
    return JobPayload(study="st1", rule="prostate-mr", series=("se1", "se2"), model="m:1", store_gate=gate)


def _claimed_gated(queue: JobQueue, not_before: float) -> Job:
    queue.enqueue(_payload(_gate(not_before)).new_job())
    claimed = queue.claim("w")
    assert claimed is not None
    return claimed


def test_the_same_work_queued_again_moves_or_lifts_the_gate_of_a_running_job(queue: JobQueue) -> None:
    job = _claimed_gated(queue, 100.0)
    moved = _gate(200.0, {"se1": 2, "se2": 1, "loc": 3})
    assert queue.enqueue(_payload(moved).new_job()) == (job.id, False)
    now = queue.get(job.id)
    assert now is not None and now.state is JobState.RUNNING
    assert StoreGate.of_payload(now.payload) == moved
    assert queue.enqueue(_payload(None).new_job()) == (job.id, False)  # judged stable: the gate is lifted
    lifted = queue.get(job.id)
    assert lifted is not None and StoreGate.of_payload(lifted.payload) is None
    assert JobPayload.from_json(lifted.payload) == _payload(None)
    queue.enqueue(_payload(_gate(300.0)).new_job())  # no gate comes back once lifted
    again = queue.get(job.id)
    assert again is not None and STORE_GATE_KEY not in again.payload


def test_a_withdrawn_job_is_queued_again_and_a_superseded_or_done_one_is_not(queue: JobQueue) -> None:
    job = _claimed_gated(queue, 100.0)
    queue.fail(job.id, "w", f"{WITHDRAWN} the study changed", transient=False)
    assert queue.enqueue(_payload(_gate(150.0)).new_job()) == (job.id, True)
    requeued = queue.get(job.id)
    assert requeued is not None and requeued.state is JobState.QUEUED and requeued.error is None
    assert StoreGate.of_payload(requeued.payload) == _gate(150.0) and requeued.attempts == 0
    claimed = queue.claim("w")
    assert claimed is not None
    queue.fail(claimed.id, "w", "no axial T2W", transient=False)
    assert queue.enqueue(_payload(_gate(160.0)).new_job()) == (job.id, False)  # a real failure stays
    failed = queue.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
