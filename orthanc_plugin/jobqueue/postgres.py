"""The PostgreSQL job queue: one database shared by workers on several machines.

Claims lock the candidate row with ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent workers each get a
different job without waiting for each other. Times come from the database server's clock, so that leases
mean the same to every machine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orthanc_plugin.jobqueue.base import QueuePolicy, SqlJobQueue

logger = logging.getLogger(__name__)

__all__ = ["PostgresJobQueue"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lesion_ai_jobs (
    id BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    study_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    model TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    payload TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    lease_owner TEXT,
    lease_expires DOUBLE PRECISION,
    not_before DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS lesion_ai_jobs_runnable ON lesion_ai_jobs (state, priority DESC, id);
CREATE INDEX IF NOT EXISTS lesion_ai_jobs_study ON lesion_ai_jobs (study_id);
"""

# Serializes the schema creation of concurrent first starts (any constant; transaction-scoped).
_SCHEMA_LOCK_ID = 0x4C45534E


class PostgresJobQueue(SqlJobQueue):
    """Job queue in a PostgreSQL database (psycopg 3; install the ``postgres`` extra).

    Parameters
    ----------
    url : str
        A libpq connection URL, e.g. ``postgresql://lesion@dbhost:5432/lesion_ai``; the password may come
        from ``PGPASSWORD`` or ``~/.pgpass``.
    policy : QueuePolicy
        Leases, retries and back-off.
    """

    claim_lock_clause = "FOR UPDATE SKIP LOCKED"
    placeholder = "%s"

    def __init__(self, url: str, policy: QueuePolicy) -> None:
        super().__init__(policy)
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "the PostgreSQL queue needs psycopg 3: pip install 'lesion-ai[postgres]'"
            ) from exc
        self._psycopg = psycopg
        self.url = url
        self._conn: Any = None
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        try:
            conn = self._connection()
        except self._psycopg.OperationalError:
            self._conn = None
            raise
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def _now(self, cur: Any) -> float:
        cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::double precision")
        return float(cur.fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"PostgresJobQueue(host={self.url.split('@')[-1].split('/')[0]!r})"
