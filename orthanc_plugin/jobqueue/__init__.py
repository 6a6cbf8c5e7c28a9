"""The durable job queue of the node (SQLite by default, PostgreSQL for several machines).

``open_queue(url, policy)`` opens either from a URL: ``sqlite:///relative/path.db``,
``sqlite:////absolute/path.db`` (the SQLAlchemy convention), a bare file path, or
``postgresql://user@host:port/database``. The queue stores JSON objects; what the node puts in them is
defined by :mod:`orthanc_plugin.jobqueue.documents` (:class:`JobPayload`, :class:`JobProgress`).
"""

from __future__ import annotations

from pathlib import Path

from orthanc_plugin.jobqueue.base import (
    HELD_NOT_BEFORE,
    SUPERSEDED,
    WITHDRAWN,
    Job,
    JobQueue,
    JobState,
    NewJob,
    QueuePolicy,
    SqlJobQueue,
)
from orthanc_plugin.jobqueue.documents import (
    JobDocumentError,
    JobPayload,
    JobProgress,
    UnknownSchemaVersionError,
    job_fingerprint,
)
from orthanc_plugin.jobqueue.store_gate import STORE_GATE_KEY, StoreGate, StoreGateError

__all__ = [
    "HELD_NOT_BEFORE",
    "STORE_GATE_KEY",
    "SUPERSEDED",
    "WITHDRAWN",
    "Job",
    "JobDocumentError",
    "JobPayload",
    "JobProgress",
    "JobQueue",
    "JobState",
    "NewJob",
    "QueuePolicy",
    "SqlJobQueue",
    "StoreGate",
    "StoreGateError",
    "UnknownSchemaVersionError",
    "job_fingerprint",
    "open_queue",
    "sqlite_url",
]


def sqlite_url(path: str | Path) -> str:
    """The queue URL of a SQLite file (absolute path)."""
    return "sqlite:///" + str(Path(path).resolve())


def open_queue(url: str, policy: QueuePolicy) -> JobQueue:
    """Open the job queue named by ``url`` (see the module docstring).

    Parameters
    ----------
    url : str
        The queue's URL.
    policy : QueuePolicy
        Leases, retries and back-off (the node's: :meth:`QueuePolicy.from_settings`).

    Raises
    ------
    ValueError
        The URL's scheme is not ``sqlite`` or ``postgresql``/``postgres``.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from orthanc_plugin.jobqueue.postgres import PostgresJobQueue

        return PostgresJobQueue(url, policy)
    from orthanc_plugin.jobqueue.sqlite import SqliteJobQueue

    if url.startswith("sqlite:///"):
        return SqliteJobQueue(url[len("sqlite:///") :], policy)
    if "://" in url:
        raise ValueError(
            f"unsupported queue URL {url.split('://')[0]}://...; use sqlite:///PATH or postgresql://..."
        )
    return SqliteJobQueue(url, policy)
