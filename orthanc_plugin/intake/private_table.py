"""A SQLite table in one file of the node's data folder that only the node reads (mode 0600).

The labels (:mod:`orthanc_plugin.intake.labels`) and the verdicts (:mod:`orthanc_plugin.intake.verdicts`) name studies, so
their files are the node's alone. One connection per store, shared by the node's threads under a lock, in
autocommit mode (``BEGIN IMMEDIATE`` where a change spans statements).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["MAX_PAGE", "PrivateTable", "check_page"]

#: Most rows read in one call, and the largest offset (SQLite's integers are 64-bit signed).
MAX_PAGE = 10_000
MAX_OFFSET = 2**63 - 1


def check_page(limit: int, offset: int) -> None:
    """Refuse a page out of range: ``limit`` from 1 to :data:`MAX_PAGE`, ``offset`` from 0 (ValueError)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be from 1 to {MAX_PAGE}, got {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be from 0 to {MAX_OFFSET}, got {offset}")


class PrivateTable:
    """One SQLite file of the node's data folder, 0600, with its schema applied.

    Parameters
    ----------
    path : Path
        The database file (created when missing, with its folder).
    table : str
        The table whose rows carry an ``instance_id`` column (:meth:`has_instance`).
    schema : str
        SQL run at opening (``CREATE ... IF NOT EXISTS``).
    """

    def __init__(self, path: Path, table: str, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        if self.path.stat().st_mode & 0o077:
            os.chmod(self.path, 0o600)  # the table names studies: no one else reads it
        self._table = table
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._conn.executescript(schema)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def has_instance(self, instance_id: str) -> bool:
        """Whether a row was recorded for the instance with this Orthanc ID."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT 1 FROM {self._table} WHERE instance_id = ? LIMIT 1",  # noqa: S608 - a fixed name
                (instance_id,),
            ).fetchone()
        return row is not None

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()
