"""One lock per study across the cluster: a PostgreSQL advisory lock, held around the replacement of a
study's results (supersede the earlier jobs, delete their results, release the new job). The same locks
serve other names (the model registry's, :mod:`orthanc_plugin.cluster.registry_state`).

Two servers that replace the same study's results one after the other each see what the other did; without
the lock, one could delete results that a worker stored just after the other released the job that made
them (result UIDs derive from the inputs' UIDs, so new results often carry the earlier ones' UIDs).

The lock is transaction-scoped on a connection of its own: it is released when the block ends, and also
when the server dies or the connection breaks, so a dead server never keeps a study locked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orthanc_plugin.cluster.database import ClusterDatabase, ClusterDatabaseError, database_host

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAMESPACE", "StudyLocks"]

#: The first key of the node's study locks (the second is the hash of the study's Orthanc ID).
LOCK_NAMESPACE = 0x4C4149


class StudyLocks:
    """Advisory locks per study in the cluster database.

    Parameters
    ----------
    database : ClusterDatabase
        The cluster database (the locks use a connection of their own).
    timeout_s : float
        How long :meth:`hold` waits for another server's lock before it gives up.

    Raises
    ------
    ValueError
        ``timeout_s`` is not positive.
    """

    def __init__(self, database: ClusterDatabase, timeout_s: float = 60.0) -> None:
        if not timeout_s > 0:
            raise ValueError(f"the study lock timeout must be positive, got {timeout_s!r}")
        self.database = database
        self.timeout_s = timeout_s
        self._conn: Any = None
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, study_id: str) -> Iterator[None]:
        """Hold the lock of ``study_id`` for the block (one block at a time per server).

        Raises
        ------
        ClusterDatabaseError
            The database cannot be reached, the connection broke, or another server held the lock for
            longer than ``timeout_s``.
        """
        psycopg = self.database._psycopg
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = {int(self.timeout_s * 1000)}")
                    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NAMESPACE, study_id))
                    logger.debug("study %s: cluster lock held", study_id)
                    yield
            except psycopg.OperationalError as exc:
                self._drop()
                raise ClusterDatabaseError(
                    f"study {study_id}: the cluster lock in {database_host(self.database.url)} failed: {exc}"
                ) from exc

    def _connection(self) -> Any:
        conn = self._conn
        if not self.database.usable(conn):
            self._drop()
            self._conn = conn = self.database.connect()
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                logger.debug("closing a broken lock connection failed", exc_info=True)
        self._conn = None

    def close(self) -> None:
        """Close the locks' connection."""
        with self._lock:
            self._drop()
