"""A table that only the node reads: in a SQLite file of the node's data folder (mode 0600), or, in cluster
mode, in the cluster's PostgreSQL database, so that every server of the cluster reads the same rows.

The labels (:mod:`orthanc_plugin.intake.labels`) and the verdicts (:mod:`orthanc_plugin.intake.verdicts`) name
studies, so their tables are the node's alone. One connection per store, shared by the node's threads under
a lock, in autocommit mode (:meth:`PrivateTable.transaction` where a change spans statements). The stores
write their SQL once, in SQLite's words (``?`` parameters, ``INSERT OR IGNORE``, ``INTEGER PRIMARY KEY
AUTOINCREMENT``, ``REAL``); :func:`postgres_sql` says the same to PostgreSQL.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["MAX_PAGE", "PrivateTable", "check_page", "postgres_sql"]

#: Most rows read in one call, and the largest offset (SQLite's integers are 64-bit signed).
MAX_PAGE = 10_000
MAX_OFFSET = 2**63 - 1
#: Serializes the schema creation of servers starting together (any constant; transaction-scoped).
_SCHEMA_LOCK_ID = 0x4C455350


def check_page(limit: int, offset: int) -> None:
    """Refuse a page out of range: ``limit`` from 1 to :data:`MAX_PAGE`, ``offset`` from 0 (ValueError)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be from 1 to {MAX_PAGE}, got {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be from 0 to {MAX_OFFSET}, got {offset}")


def postgres_sql(sql: str) -> str:
    """A statement of the stores (SQLite's words) in PostgreSQL's: ``%s`` parameters, ``ON CONFLICT DO
    NOTHING``, ``BIGSERIAL`` keys and ``DOUBLE PRECISION`` times. The stores' statements hold no literal
    ``?`` or ``%``."""
    out = sql.replace("%", "%%").replace("?", "%s")
    out = out.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)
    if out.lstrip().startswith("INSERT OR IGNORE INTO"):
        out = out.replace("INSERT OR IGNORE INTO", "INSERT INTO", 1).rstrip() + " ON CONFLICT DO NOTHING"
    return out


class PrivateTable:
    """One table of the node, with its schema applied.

    Parameters
    ----------
    location : Path or str
        A SQLite file (created when missing, with its folder; 0600), or the ``postgresql://`` URL of the
        cluster database.
    table : str
        The table whose rows carry an ``instance_id`` column (:meth:`has_instance`).
    schema : str
        SQL run at opening (``CREATE ... IF NOT EXISTS``, SQLite's words).
    """

    def __init__(self, location: Path | str, table: str, schema: str) -> None:
        self._table = table
        self._lock = threading.RLock()
        self._postgres = isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))
        self._url = str(location) if self._postgres else None
        self.path = None if self._postgres else Path(location)
        self._conn: Any = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            if self.path.stat().st_mode & 0o077:
                os.chmod(self.path, 0o600)  # the table names studies: no one else reads it
            self._conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            with self._lock:
                self._conn.executescript(schema)
        else:
            with self.transaction():
                self._execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK_ID,))
                for statement in schema.split(";"):
                    if statement.strip():
                        self._execute(statement)

    def __repr__(self) -> str:
        where = self.path if self.path is not None else str(self._url).split("@")[-1]
        return f"{type(self).__name__}({str(where)!r})"

    def _connection(self) -> Any:
        if self._postgres and not self._answers():
            import psycopg

            if self._conn is not None:
                self._conn.close()
            self._conn = psycopg.connect(str(self._url), autocommit=True, connect_timeout=10)
        return self._conn

    def _answers(self) -> bool:
        """Whether the kept PostgreSQL connection still answers (a server restart cuts it, and psycopg
        notices only at the next statement)."""
        import psycopg

        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return False
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return True  # inside the store's own transaction: its statements say whether it broke
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (SQLite's words); returns the cursor. Call it holding ``self._lock``."""
        if self._postgres:
            return self._connection().execute(postgres_sql(sql), tuple(params))
        return self._conn.execute(sql, tuple(params))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the store's lock and run the block's statements in one transaction (rolled back on error)."""
        with self._lock:
            self._execute("BEGIN" if self._postgres else "BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._execute("ROLLBACK")
                raise
            self._execute("COMMIT")

    def has_instance(self, instance_id: str) -> bool:
        """Whether a row was recorded for the instance with this Orthanc ID."""
        with self._lock:
            row = self._execute(
                f"SELECT 1 FROM {self._table} WHERE instance_id = ? LIMIT 1",  # noqa: S608 - a fixed name
                (instance_id,),
            ).fetchone()
        return row is not None

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
