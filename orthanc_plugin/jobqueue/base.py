"""The durable job queue: its interface and the SQL logic shared by the SQLite and PostgreSQL back ends (the
data model: :mod:`orthanc_plugin.jobqueue.model`).

A job is one unit of work for a worker: one study, processed under one routing rule, from one set of input
series, with one model. Its ``key`` says exactly that, and is unique: enqueueing the same work twice makes
one job (idempotent enqueue).

States: ``queued`` -> ``running`` (claimed by a worker, which holds a *lease* that it renews by heartbeats)
-> ``done`` or ``failed``. A running job whose lease expired (its worker died) is claimed again by the next
worker. A transient failure puts the job back to ``queued`` with an exponential back-off, until
``max_attempts`` is reached; a permanent failure ends it at once. Jobs are claimed by descending priority,
then in order of arrival.

Replacing: when a study's inputs change, the new job replaces the other jobs of its study and rule
(:meth:`JobQueue.enqueue_replacing`). It is added *held* (queued, never claimed: ``not_before`` is
:data:`HELD_NOT_BEFORE`) until the node has removed the earlier results from the study and releases it
(:meth:`JobQueue.release_held`); earlier jobs that had not started are *superseded*: ``failed``, with a
reason that names the job replacing them.

Started early: a job whose payload carries a store gate (:mod:`orthanc_plugin.jobqueue.store_gate`) stores its
results only once its study has stayed as the gate says. Enqueueing the same work again while such a job is
queued or running moves its gate to the new payload's (or removes it, when the new payload has none); a job
that ended *withdrawn* (its study changed first) is queued again, as :meth:`JobQueue.enqueue` with ``force``
would.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from orthanc_plugin.jobqueue.model import (
    HELD_NOT_BEFORE,
    SUPERSEDED,
    WITHDRAWN,
    Job,
    JobState,
    NewJob,
    QueuePolicy,
)
from orthanc_plugin.jobqueue.store_gate import STORE_GATE_KEY

logger = logging.getLogger(__name__)

__all__ = [
    "HELD_NOT_BEFORE",
    "SUPERSEDED",
    "WITHDRAWN",
    "Job",
    "JobQueue",
    "JobState",
    "NewJob",
    "QueuePolicy",
    "SqlJobQueue",
]


class JobQueue(ABC):
    """Interface of a job queue (see the module docstring for the semantics)."""

    policy: QueuePolicy

    @abstractmethod
    def enqueue(self, job: NewJob, *, force: bool = False) -> tuple[int, bool]:
        """Add a job unless one with the same key exists.

        Parameters
        ----------
        job : NewJob
            The job.
        force : bool
            When a job with the same key exists and is ``done`` or ``failed``, queue it again (with the new
            payload and priority, attempts reset). A queued or running job is left alone.

        Returns
        -------
        job_id : int
            The job's ID (the existing one when the key was known).
        created : bool
            True when a job was added or re-queued.
        """

    @abstractmethod
    def enqueue_replacing(self, job: NewJob) -> tuple[int, bool, bool]:
        """Add a job that replaces the other jobs of its study and rule (see the module docstring).

        When a job with the same key exists nothing changes. Otherwise the job is added, *held* when other
        jobs of its study and rule exist; those of them that are queued are superseded by it.

        Parameters
        ----------
        job : NewJob
            The job.

        Returns
        -------
        job_id : int
            The job's ID (the existing one when the key was known).
        created : bool
            True when the job was added.
        held : bool
            True when the job is held (release it with :meth:`release_held`).
        """

    @abstractmethod
    def release_held(self, job_id: int) -> bool:
        """Let workers claim a held job now; False when the job is not held."""

    @abstractmethod
    def supersede(self, job_id: int, by: int) -> bool:
        """End a queued job, or a running one whose lease expired, as ``failed``: superseded by job ``by``.

        Returns False when the job is in another state (running under a lease, done, failed)."""

    @abstractmethod
    def held(self) -> list[Job]:
        """The held jobs, oldest first."""

    @abstractmethod
    def claim(self, owner: str) -> Job | None:
        """Claim the next runnable job for worker ``owner`` (None when there is none)."""

    @abstractmethod
    def heartbeat(self, job_id: int, owner: str) -> bool:
        """Renew the lease; False when ``owner`` no longer holds the job (it must stop working on it)."""

    @abstractmethod
    def set_progress(self, job_id: int, owner: str, progress: dict[str, Any]) -> bool:
        """Record progress (JSON-ready) so that a retry can skip finished steps; renews the lease."""

    @abstractmethod
    def complete(self, job_id: int, owner: str, progress: dict[str, Any] | None = None) -> bool:
        """Mark the job done; False when ``owner`` no longer holds it."""

    @abstractmethod
    def fail(self, job_id: int, owner: str, reason: str, *, transient: bool) -> JobState | None:
        """Record a failure: back to ``queued`` after a back-off when transient and attempts remain, else
        ``failed``. Returns the new state (None when ``owner`` no longer holds the job)."""

    @abstractmethod
    def release(self, job_id: int, owner: str) -> bool:
        """Hand a running job back (queued again at once, this attempt not counted): a worker stopping.

        Returns False when ``owner`` no longer holds the job."""

    @abstractmethod
    def defer(self, job_id: int, owner: str, reason: str, delay_s: float) -> bool:
        """Hand a running job back to wait ``delay_s`` seconds for its inputs, this attempt not counted; the
        reason is its ``error`` meanwhile (e.g. instances stored empty, waiting for a good copy).

        Returns False when ``owner`` no longer holds the job."""

    @abstractmethod
    def retry(self, job_id: int, note: str) -> bool:
        """Queue a failed job again at once with its attempts reset (an admin's retry).

        Its progress stays: results already stored are kept and only the destinations not served yet are
        sent again (to process the study afresh, enqueue with ``force``). ``note`` (who asked, when) is
        recorded in the job's ``error``, before the last error. Returns False when the job is not failed."""

    @abstractmethod
    def get(self, job_id: int) -> Job | None:
        """The job with this ID, or None."""

    @abstractmethod
    def find(self, key: str) -> Job | None:
        """The job with this key, or None."""

    @abstractmethod
    def list(
        self,
        state: JobState | None = None,
        study_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally filtered by state and study."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state present, possibly 0)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""


_COLUMNS = (
    "id, key, study_id, rule, model, priority, state, attempts, max_attempts, payload, progress, error, "
    "lease_owner, lease_expires, not_before, created_at, updated_at, finished_at"
)


def _row_to_job(row: Sequence[Any]) -> Job:
    return Job(
        id=int(row[0]),
        key=str(row[1]),
        study_id=str(row[2]),
        rule=str(row[3]),
        model=str(row[4]),
        priority=int(row[5]),
        state=JobState(row[6]),
        attempts=int(row[7]),
        max_attempts=int(row[8]),
        payload=json.loads(row[9]) if row[9] else {},
        progress=json.loads(row[10]) if row[10] else {},
        error=row[11],
        lease_owner=row[12],
        lease_expires=None if row[13] is None else float(row[13]),
        not_before=float(row[14]),
        created_at=float(row[15]),
        updated_at=float(row[16]),
        finished_at=None if row[17] is None else float(row[17]),
    )


class SqlJobQueue(JobQueue):
    """The queue's logic in SQL, written once for both back ends.

    Subclasses provide the connection, transactions, the placeholder style and the claim's row lock. Every
    public method runs in one transaction under a lock (one connection per queue object; use one object
    per thread or share it: both work).
    """

    #: Appended to the claim's candidate SELECT (PostgreSQL: ``FOR UPDATE SKIP LOCKED``).
    claim_lock_clause = ""
    #: Placeholder of the DB-API driver.
    placeholder = "?"

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self._lock = threading.RLock()

    # -- back-end hooks -------------------------------------------------------------------------------
    @abstractmethod
    def _transaction(self) -> Any:
        """Context manager yielding a cursor inside a write transaction."""

    def _now(self, cur: Any) -> float:
        """The queue's clock (seconds since the epoch)."""
        return time.time()

    # -- internals ------------------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock, self._transaction() as cur:
            yield cur

    def _execute(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def _select_one(self, cur: Any, where: str, params: Sequence[Any]) -> Job | None:
        row = self._execute(cur, f"SELECT {_COLUMNS} FROM lesion_ai_jobs WHERE {where}", params).fetchone()  # noqa: S608 - built from constants
        return None if row is None else _row_to_job(row)

    # -- interface ------------------------------------------------------------------------------------
    def enqueue(self, job: NewJob, *, force: bool = False) -> tuple[int, bool]:
        """See :meth:`JobQueue.enqueue`."""
        payload = json.dumps(job.payload, sort_keys=True)
        with self._tx() as cur:
            now = self._now(cur)
            existing = self._select_one(cur, "key = ?", (job.key,))
            if existing is None:
                inserted = self._insert(cur, job, payload, now, now)
                stored = self._select_one(cur, "key = ?", (job.key,))
                assert stored is not None
                return stored.id, bool(inserted == 1)
            if force and existing.state in (JobState.DONE, JobState.FAILED):
                self._requeue(cur, existing, job, payload, now)
                return existing.id, True
            return existing.id, self._refresh(cur, existing, job, payload, now)

    def _requeue(self, cur: Any, existing: Job, job: NewJob, payload: str, now: float) -> None:
        """Queue a finished job again, attempts reset, with the payload of ``job``."""
        self._execute(
            cur,
            "UPDATE lesion_ai_jobs SET state = 'queued', attempts = 0, max_attempts = ?, "
            "priority = ?, payload = ?, progress = '{}', error = NULL, lease_owner = NULL, "
            "lease_expires = NULL, not_before = ?, updated_at = ?, finished_at = NULL WHERE id = ?",
            (self.policy.max_attempts, job.priority, payload, now, now, existing.id),
        )

    def _refresh(self, cur: Any, existing: Job, job: NewJob, payload: str, now: float) -> bool:
        """The same work enqueued again: queue a withdrawn job again (True), or move the store gate of one
        that is queued or running to ``job``'s (see the module docstring); else leave it as it is."""
        if existing.state is JobState.FAILED and (existing.error or "").startswith(WITHDRAWN):
            self._requeue(cur, existing, job, payload, now)
            logger.info("job %d: withdrawn earlier, queued again", existing.id)
            return True
        if (
            existing.state not in (JobState.QUEUED, JobState.RUNNING)
            or STORE_GATE_KEY not in existing.payload
        ):
            return False
        moved = {key: value for key, value in existing.payload.items() if key != STORE_GATE_KEY}
        if job.payload.get(STORE_GATE_KEY) is not None:  # (the stored payload is of a version with gates)
            moved[STORE_GATE_KEY] = job.payload[STORE_GATE_KEY]
        self._execute(
            cur,
            "UPDATE lesion_ai_jobs SET payload = ?, updated_at = ? WHERE id = ? AND state IN ('queued', 'running')",
            (json.dumps(moved, sort_keys=True), now, existing.id),
        )
        logger.info(
            "job %d: store gate %s",
            existing.id,
            "moved" if STORE_GATE_KEY in moved else "lifted (study judged)",
        )
        return False

    def _insert(self, cur: Any, job: NewJob, payload: str, not_before: float, now: float) -> int:
        """Insert a queued job unless its key exists; the number of rows inserted (0 or 1)."""
        inserted: int = self._execute(
            cur,
            "INSERT INTO lesion_ai_jobs (key, study_id, rule, model, priority, state, attempts, "
            "max_attempts, payload, progress, not_before, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, '{}', ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (
                job.key,
                job.study_id,
                job.rule,
                job.model,
                job.priority,
                self.policy.max_attempts,
                payload,
                not_before,
                now,
                now,
            ),
        ).rowcount
        return inserted

    def enqueue_replacing(self, job: NewJob) -> tuple[int, bool, bool]:
        """See :meth:`JobQueue.enqueue_replacing`."""
        payload = json.dumps(job.payload, sort_keys=True)
        with self._tx() as cur:
            now = self._now(cur)
            existing = self._select_one(cur, "key = ?", (job.key,))
            if existing is not None:
                requeued = self._refresh(cur, existing, job, payload, now)
                return existing.id, requeued, existing.held
            others = self._execute(
                cur,
                "SELECT id, state FROM lesion_ai_jobs WHERE study_id = ? AND rule = ? AND key <> ?",
                (job.study_id, job.rule, job.key),
            ).fetchall()
            held = bool(others)
            inserted = self._insert(cur, job, payload, HELD_NOT_BEFORE if held else now, now)
            stored = self._select_one(cur, "key = ?", (job.key,))
            assert stored is not None
            if inserted != 1:  # another node's process added it meanwhile
                return stored.id, False, stored.held
            for other_id, state in others:
                if state == JobState.QUEUED.value:
                    self._supersede(cur, int(other_id), stored.id, now)
            return stored.id, True, held

    def _supersede(self, cur: Any, job_id: int, by: int, now: float) -> bool:
        reason = f"{SUPERSEDED} {by}: the study's inputs changed, and its results replace this job's"
        done = self._execute(
            cur,
            "UPDATE lesion_ai_jobs SET state = 'failed', error = ?, lease_owner = NULL, lease_expires = NULL, "
            "updated_at = ?, finished_at = ? "
            "WHERE id = ? AND (state = 'queued' OR (state = 'running' AND lease_expires < ?))",
            (reason, now, now, job_id, now),
        )
        if done.rowcount == 1:
            logger.info("job %d superseded by job %d", job_id, by)
        return bool(done.rowcount == 1)

    def supersede(self, job_id: int, by: int) -> bool:
        """See :meth:`JobQueue.supersede`."""
        with self._tx() as cur:
            return self._supersede(cur, job_id, by, self._now(cur))

    def release_held(self, job_id: int) -> bool:
        """See :meth:`JobQueue.release_held`."""
        with self._tx() as cur:
            now = self._now(cur)
            done = self._execute(
                cur,
                "UPDATE lesion_ai_jobs SET not_before = ?, updated_at = ? "
                "WHERE id = ? AND state = 'queued' AND not_before >= ?",
                (now, now, job_id, HELD_NOT_BEFORE),
            )
            return bool(done.rowcount == 1)

    def held(self) -> list[Job]:
        """See :meth:`JobQueue.held`."""
        with self._tx() as cur:
            rows = self._execute(
                cur,
                f"SELECT {_COLUMNS} FROM lesion_ai_jobs WHERE state = 'queued' AND not_before >= ? "  # noqa: S608 - built from constants
                "ORDER BY id ASC",
                (HELD_NOT_BEFORE,),
            ).fetchall()
        return [_row_to_job(row) for row in rows]

    def claim(self, owner: str) -> Job | None:
        """See :meth:`JobQueue.claim`."""
        while True:
            with self._tx() as cur:
                now = self._now(cur)
                row = self._execute(
                    cur,
                    f"SELECT {_COLUMNS} FROM lesion_ai_jobs "  # noqa: S608 - built from constants
                    "WHERE (state = 'queued' AND not_before <= ?) OR (state = 'running' AND lease_expires < ?) "
                    f"ORDER BY priority DESC, id ASC LIMIT 1 {self.claim_lock_clause}",
                    (now, now),
                ).fetchone()
                if row is None:
                    return None
                job = _row_to_job(row)
                if job.state is JobState.RUNNING and job.attempts >= job.max_attempts:
                    reason = (
                        f"the worker processing this job stopped responding (lease expired) on each of "
                        f"{job.attempts} attempts (last worker {job.lease_owner})"
                    )
                    self._execute(
                        cur,
                        "UPDATE lesion_ai_jobs SET state = 'failed', error = ?, lease_owner = NULL, "
                        "lease_expires = NULL, updated_at = ?, finished_at = ? WHERE id = ?",
                        (reason, now, now, job.id),
                    )
                    logger.warning("job %d failed: %s", job.id, reason)
                    continue
                if job.state is JobState.RUNNING:
                    logger.warning(
                        "job %d: lease of worker %s expired; reclaimed by %s", job.id, job.lease_owner, owner
                    )
                self._execute(
                    cur,
                    "UPDATE lesion_ai_jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?, "
                    "lease_expires = ?, updated_at = ? WHERE id = ?",
                    (owner, now + self.policy.lease_s, now, job.id),
                )
                claimed = self._select_one(cur, "id = ?", (job.id,))
                return claimed

    def heartbeat(self, job_id: int, owner: str) -> bool:
        """See :meth:`JobQueue.heartbeat`."""
        with self._tx() as cur:
            now = self._now(cur)
            done = self._execute(
                cur,
                "UPDATE lesion_ai_jobs SET lease_expires = ?, updated_at = ? "
                "WHERE id = ? AND lease_owner = ? AND state = 'running'",
                (now + self.policy.lease_s, now, job_id, owner),
            )
            return bool(done.rowcount == 1)

    def set_progress(self, job_id: int, owner: str, progress: dict[str, Any]) -> bool:
        """See :meth:`JobQueue.set_progress`."""
        with self._tx() as cur:
            now = self._now(cur)
            done = self._execute(
                cur,
                "UPDATE lesion_ai_jobs SET progress = ?, lease_expires = ?, updated_at = ? "
                "WHERE id = ? AND lease_owner = ? AND state = 'running'",
                (json.dumps(progress, sort_keys=True), now + self.policy.lease_s, now, job_id, owner),
            )
            return bool(done.rowcount == 1)

    def complete(self, job_id: int, owner: str, progress: dict[str, Any] | None = None) -> bool:
        """See :meth:`JobQueue.complete`."""
        with self._tx() as cur:
            now = self._now(cur)
            sets = "state = 'done', error = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = ?, "
            sets += "finished_at = ?"
            params: list[Any] = [now, now]
            if progress is not None:
                sets += ", progress = ?"
                params.append(json.dumps(progress, sort_keys=True))
            done = self._execute(
                cur,
                f"UPDATE lesion_ai_jobs SET {sets} WHERE id = ? AND lease_owner = ? AND state = 'running'",  # noqa: S608 - built from constants
                (*params, job_id, owner),
            )
            return bool(done.rowcount == 1)

    def fail(self, job_id: int, owner: str, reason: str, *, transient: bool) -> JobState | None:
        """See :meth:`JobQueue.fail`."""
        with self._tx() as cur:
            now = self._now(cur)
            job = self._select_one(cur, "id = ? AND lease_owner = ? AND state = 'running'", (job_id, owner))
            if job is None:
                return None
            if transient and job.attempts < job.max_attempts:
                delay = self.policy.backoff_s(job.attempts)
                self._execute(
                    cur,
                    "UPDATE lesion_ai_jobs SET state = 'queued', error = ?, lease_owner = NULL, "
                    "lease_expires = NULL, not_before = ?, updated_at = ? WHERE id = ?",
                    (reason, now + delay, now, job_id),
                )
                logger.info("job %d: transient failure, retry in %.0f s: %s", job_id, delay, reason)
                return JobState.QUEUED
            if transient:
                reason = f"gave up after {job.attempts} attempts; last error: {reason}"
            self._execute(
                cur,
                "UPDATE lesion_ai_jobs SET state = 'failed', error = ?, lease_owner = NULL, "
                "lease_expires = NULL, updated_at = ?, finished_at = ? WHERE id = ?",
                (reason, now, now, job_id),
            )
            return JobState.FAILED

    def release(self, job_id: int, owner: str) -> bool:
        """See :meth:`JobQueue.release`."""
        with self._tx() as cur:
            now = self._now(cur)
            done = self._execute(
                cur,
                "UPDATE lesion_ai_jobs SET state = 'queued', "
                "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, lease_owner = NULL, "
                "lease_expires = NULL, not_before = ?, updated_at = ? "
                "WHERE id = ? AND lease_owner = ? AND state = 'running'",
                (now, now, job_id, owner),
            )
            return bool(done.rowcount == 1)

    def defer(self, job_id: int, owner: str, reason: str, delay_s: float) -> bool:
        """See :meth:`JobQueue.defer`."""
        with self._tx() as cur:
            now = self._now(cur)
            done = self._execute(
                cur,
                "UPDATE lesion_ai_jobs SET state = 'queued', "
                "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, lease_owner = NULL, "
                "lease_expires = NULL, not_before = ?, error = ?, updated_at = ? "
                "WHERE id = ? AND lease_owner = ? AND state = 'running'",
                (now + max(0.0, delay_s), reason[:2000], now, job_id, owner),
            )
            return bool(done.rowcount == 1)

    def retry(self, job_id: int, note: str) -> bool:
        """See :meth:`JobQueue.retry`."""
        with self._tx() as cur:
            now = self._now(cur)
            job = self._select_one(cur, "id = ? AND state = 'failed'", (job_id,))
            if job is None:
                return False
            error = f"{note}; last error: {job.error}" if job.error else note
            done = self._execute(
                cur,
                "UPDATE lesion_ai_jobs SET state = 'queued', attempts = 0, max_attempts = ?, error = ?, "
                "lease_owner = NULL, lease_expires = NULL, not_before = ?, updated_at = ?, finished_at = NULL "
                "WHERE id = ? AND state = 'failed'",
                (self.policy.max_attempts, error, now, now, job_id),
            )
            if done.rowcount == 1:
                logger.warning("job %d queued again: %s", job_id, note)
            return bool(done.rowcount == 1)

    def get(self, job_id: int) -> Job | None:
        """See :meth:`JobQueue.get`."""
        with self._tx() as cur:
            return self._select_one(cur, "id = ?", (job_id,))

    def find(self, key: str) -> Job | None:
        """See :meth:`JobQueue.find`."""
        with self._tx() as cur:
            return self._select_one(cur, "key = ?", (key,))

    def list(
        self,
        state: JobState | None = None,
        study_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """See :meth:`JobQueue.list`."""
        where, params = ["1 = 1"], []
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if study_id is not None:
            where.append("study_id = ?")
            params.append(study_id)
        with self._tx() as cur:
            rows = self._execute(
                cur,
                f"SELECT {_COLUMNS} FROM lesion_ai_jobs WHERE {' AND '.join(where)} "  # noqa: S608 - built from constants
                "ORDER BY id DESC LIMIT ? OFFSET ?",
                (*params, int(limit), int(offset)),
            ).fetchall()
        return [_row_to_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """See :meth:`JobQueue.counts`."""
        out = {state.value: 0 for state in JobState}
        with self._tx() as cur:
            for state, count in self._execute(
                cur, "SELECT state, COUNT(*) FROM lesion_ai_jobs GROUP BY state"
            ).fetchall():
                out[str(state)] = int(count)
        return out
