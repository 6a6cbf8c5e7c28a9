"""The cluster's own tables in PostgreSQL, and one connection to them that comes back by itself.

Cluster mode (``Cluster`` in the node's settings) keeps in the cluster database what every Orthanc of the
cluster must see alike:

``lesion_ai_leases``
    Who holds a lease (the dispatcher's: :mod:`orthanc_plugin.cluster.lease`) and until when.
``lesion_ai_state``
    Named text values with a revision that grows at each write (the change log position, the rules in
    force: :mod:`orthanc_plugin.cluster.shared`).
``lesion_ai_rules_history``
    The earlier versions of the routing rules.

Times are the database server's clock (``clock_timestamp()``), so that a lease means the same to every
machine. A kept connection is checked before each transaction and opened again when a PostgreSQL restart
cut it; a call whose connection breaks while it runs raises :class:`ClusterDatabaseError` (the caller
retries at its next round).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ClusterDatabase", "ClusterDatabaseError", "database_host"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lesion_ai_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS lesion_ai_state (
    name TEXT PRIMARY KEY,
    revision BIGINT NOT NULL,
    value TEXT NOT NULL,
    updated_by TEXT,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS lesion_ai_rules_history (
    number BIGSERIAL PRIMARY KEY,
    document TEXT NOT NULL
)
"""

# Serializes the schema creation of servers starting together (any constant; transaction-scoped).
_SCHEMA_LOCK_ID = 0x4C45534F


class ClusterDatabaseError(RuntimeError):
    """The cluster database cannot be reached or refused a statement (transient: retried later)."""


def database_host(url: str) -> str:
    """The host, port and database of a libpq URL, without user or password (for logs and health)."""
    return url.split("@")[-1].split("?")[0]


class ClusterDatabase:
    """One connection to the cluster database (psycopg 3), shared by the threads of one plugin.

    Parameters
    ----------
    url : str
        A libpq connection URL, ``postgresql://user@host:port/database`` (the password from ``PGPASSWORD``
        or ``~/.pgpass``).
    connect_timeout_s : int
        How long opening a connection may take.

    Raises
    ------
    ValueError
        ``url`` is not a PostgreSQL URL.
    ImportError
        psycopg 3 is not installed.
    """

    def __init__(self, url: str, connect_timeout_s: int = 10) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"the cluster database must be a postgresql:// URL, got {url.split('://')[0]!r}")
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError("cluster mode needs psycopg 3: pip install 'lesion-ai[postgres]'") from exc
        self._psycopg = psycopg
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._conn: Any = None
        self._lock = threading.RLock()
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"ClusterDatabase({database_host(self.url)!r})"

    def connect(self) -> Any:
        """A new connection of its own (autocommit), e.g. for session-level advisory locks."""
        return self._psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout_s)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor in one transaction on the shared connection (one thread at a time).

        Raises
        ------
        ClusterDatabaseError
            The database cannot be reached, or the connection broke (it is opened again next time).
        """
        with self._lock:
            try:
                if not self.usable(self._conn):
                    self._drop()
                    self._conn = self.connect()
                if not self._schema_ready:
                    self._create_schema()
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except self._psycopg.OperationalError as exc:
                self._drop()
                raise ClusterDatabaseError(f"cluster database {database_host(self.url)}: {exc}") from exc

    def usable(self, conn: Any) -> bool:
        """Whether a kept connection still answers (a PostgreSQL restart cuts every connection, and psycopg
        notices only at the next statement): one round trip, so that a call after a restart does not fail
        for it."""
        if conn is None or conn.closed or conn.broken:
            return False
        try:
            conn.execute("SELECT 1")
        except self._psycopg.Error:
            return False
        return True

    def _create_schema(self) -> None:
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
        self._schema_ready = True

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken
                logger.debug("closing a broken cluster database connection failed", exc_info=True)
        self._conn = None

    @staticmethod
    def now(cur: Any) -> float:
        """The database server's clock (seconds since the epoch)."""
        cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::double precision")
        return float(cur.fetchone()[0])

    def close(self) -> None:
        """Close the shared connection."""
        with self._lock:
            self._drop()
