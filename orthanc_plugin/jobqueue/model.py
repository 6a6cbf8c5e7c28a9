"""The job queue's data model: a job's states, what is needed to queue one, a job as stored, and the
policy of leases and retries (see :mod:`orthanc_plugin.jobqueue.base` for the semantics).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orthanc_plugin.node.settings import WorkerSettings

logger = logging.getLogger(__name__)

__all__ = ["HELD_NOT_BEFORE", "SUPERSEDED", "WITHDRAWN", "Job", "JobState", "NewJob", "QueuePolicy"]

#: ``not_before`` of a held job (year 30 million): queued, but no worker claims it until it is released.
HELD_NOT_BEFORE = 1.0e15
#: How the reason of a superseded job starts.
SUPERSEDED = "superseded by job"
#: How the reason of a withdrawn job starts: started early, its study changed before its results were stored
#: (:mod:`orthanc_plugin.jobqueue.store_gate`); enqueueing its work again queues it again.
WITHDRAWN = "withdrawn:"


class JobState(StrEnum):
    """The life cycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class QueuePolicy:
    """Leases, retries and back-off (the node's: :meth:`from_settings`).

    Attributes
    ----------
    lease_s : float
        How long a claim lasts without a heartbeat; a job whose worker stops heartbeating is claimed again
        after this.
    max_attempts : int
        Attempts (claims) before a job that keeps failing transiently, or whose worker keeps dying, is
        marked failed.
    backoff_base_s, backoff_max_s : float
        Delay before retry number n (n = 1, 2, ...): ``min(backoff_base_s * 2**(n-1), backoff_max_s)``.
    """

    lease_s: float
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float

    def __post_init__(self) -> None:
        if self.lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {self.lease_s}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                "need 0 <= backoff_base_s <= backoff_max_s, got "
                f"{self.backoff_base_s} and {self.backoff_max_s}"
            )

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> QueuePolicy:
        """The policy of the node's settings (``LeaseSeconds``, ``MaxAttempts``, ``BackoffSeconds``, ...)."""
        return cls(
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_s,
            backoff_max_s=settings.backoff_max_s,
        )

    def backoff_s(self, attempts: int) -> float:
        """Delay before the next attempt after ``attempts`` attempts."""
        return float(min(self.backoff_base_s * 2 ** max(attempts - 1, 0), self.backoff_max_s))


@dataclass(frozen=True)
class NewJob:
    """What is needed to enqueue a job.

    Attributes
    ----------
    key : str
        Unique identity of the work: (study, rule, input series, model).
    study_id : str
        Orthanc ID of the study.
    rule : str
        Name of the routing rule that asked for the job.
    model : str
        Identity of the model that will process it.
    priority : int
        Higher runs first.
    payload : dict
        Everything a worker needs, as a JSON object (the node writes
        :meth:`orthanc_plugin.jobqueue.documents.JobPayload.to_json`; the queue stores any JSON object).
    """

    key: str
    study_id: str
    rule: str
    model: str
    priority: int = 0
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """A job as stored in the queue (times are seconds since the epoch).

    ``payload`` and ``progress`` are the stored JSON objects; the node reads them with
    :mod:`orthanc_plugin.jobqueue.documents` (``JobPayload.from_json``, ``JobProgress.from_json``).
    """

    id: int
    key: str
    study_id: str
    rule: str
    model: str
    priority: int
    state: JobState
    attempts: int
    max_attempts: int
    payload: dict[str, Any]
    progress: dict[str, Any]
    error: str | None
    lease_owner: str | None
    lease_expires: float | None
    not_before: float
    created_at: float
    updated_at: float
    finished_at: float | None

    @property
    def held(self) -> bool:
        """Queued but held: no worker claims it until the node releases it (see the module docstring)."""
        return self.state is JobState.QUEUED and self.not_before >= HELD_NOT_BEFORE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the stored record (payload and progress as stored)."""
        return {
            "id": self.id,
            "key": self.key,
            "study": self.study_id,
            "rule": self.rule,
            "model": self.model,
            "priority": self.priority,
            "state": self.state.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "error": self.error,
            "worker": self.lease_owner,
            "lease_expires": self.lease_expires,
            "not_before": self.not_before,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "payload": self.payload,
            "progress": self.progress,
        }
