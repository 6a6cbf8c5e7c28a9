"""The SQLite job queue: one file, shared by the processes of one machine.

WAL journal (readers do not block the writer), a busy timeout (writers wait for each other instead of
failing), and ``BEGIN IMMEDIATE`` transactions, so that two workers never claim the same job: the claim's
read and write happen under SQLite's single write lock.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orthanc_plugin.jobqueue.base import QueuePolicy, SqlJobQueue

logger = logging.getLogger(__name__)

__all__ = ["SqliteJobQueue"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lesion_ai_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    lease_expires REAL,
    not_before REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS lesion_ai_jobs_runnable ON lesion_ai_jobs (state, priority DESC, id);
CREATE INDEX IF NOT EXISTS lesion_ai_jobs_study ON lesion_ai_jobs (study_id);
"""


class SqliteJobQueue(SqlJobQueue):
    """Job queue in a SQLite file (created with its folder when missing).

    Parameters
    ----------
    path : str or Path
        The database file.
    policy : QueuePolicy
        Leases, retries and back-off.
    busy_timeout_s : float
        How long a writer waits for another one before giving up.
    """

    def __init__(self, path: str | Path, policy: QueuePolicy, busy_timeout_s: float = 30.0) -> None:
        super().__init__(policy)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteJobQueue({str(self.path)!r})"
