"""Named values that every server of a cluster reads and writes alike (``lesion_ai_state``).

Each value has a revision that grows at each write. A reader that keeps a parsed copy asks for the revision
only (:meth:`SharedState.revision`) and reads the value again when it changed; a writer may name the
revision it read (:meth:`SharedState.put` ``expected``), and is refused when another server wrote in
between.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from orthanc_plugin.cluster.database import ClusterDatabase

logger = logging.getLogger(__name__)

__all__ = [
    "CHANGE_POSITION",
    "IGNORED",
    "RULES",
    "SharedProperty",
    "SharedState",
    "SharedValue",
    "StaleRevisionError",
]

#: The dispatcher's position in Orthanc's change log (the cluster's, whichever server follows it).
CHANGE_POSITION = "change-position"
#: The text of the routing rules in force.
RULES = "rules"
#: The studies no rule matched (:mod:`orthanc_plugin.intake.ignored`).
IGNORED = "ignored-studies"


class StaleRevisionError(RuntimeError):
    """A write named a revision that another writer has replaced since."""


@dataclass(frozen=True)
class SharedValue:
    """A value as stored: its text, revision, who wrote it (when known) and when (database clock)."""

    value: str
    revision: int
    updated_by: str | None
    updated_at: float


class SharedState:
    """The named values of the cluster database.

    Parameters
    ----------
    database : ClusterDatabase
        The cluster database.
    """

    def __init__(self, database: ClusterDatabase) -> None:
        self.database = database

    def get(self, name: str) -> SharedValue | None:
        """The value ``name``; None when never written."""
        with self.database.transaction() as cur:
            cur.execute(
                "SELECT value, revision, updated_by, updated_at FROM lesion_ai_state WHERE name = %s", (name,)
            )
            row = cur.fetchone()
        return None if row is None else SharedValue(str(row[0]), int(row[1]), row[2], float(row[3]))

    def revision(self, name: str) -> int | None:
        """The revision of the value ``name`` (None when never written): cheap, to know whether a kept copy
        is still current."""
        with self.database.transaction() as cur:
            cur.execute("SELECT revision FROM lesion_ai_state WHERE name = %s", (name,))
            row = cur.fetchone()
        return None if row is None else int(row[0])

    def put(self, name: str, value: str, by: str | None = None, expected: int | None = None) -> int:
        """Write the value ``name``; returns its new revision.

        Parameters
        ----------
        name, value : str
            The value's name and text.
        by : str, optional
            Who writes it (a user or a server).
        expected : int, optional
            The revision the writer read (0: it read none); the write is refused when the stored one
            differs. None: write whatever is stored.

        Raises
        ------
        StaleRevisionError
            ``expected`` is not the stored revision.
        """
        with self.database.transaction() as cur:
            now = self.database.now(cur)
            cur.execute("SELECT revision FROM lesion_ai_state WHERE name = %s FOR UPDATE", (name,))
            row = cur.fetchone()
            stored = 0 if row is None else int(row[0])
            if expected is not None and expected != stored:
                raise StaleRevisionError(
                    f"{name}: revision {stored} is stored, the writer read {expected}; read it again"
                )
            cur.execute(
                "INSERT INTO lesion_ai_state (name, revision, value, updated_by, updated_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision, "
                "value = EXCLUDED.value, updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at",
                (name, stored + 1, value, by, now),
            )
        return stored + 1

    def put_if_absent(self, name: str, value: str, by: str | None = None) -> bool:
        """Write the value ``name`` unless it exists (e.g. the rules seeded by the first server that
        starts); True when written."""
        with self.database.transaction() as cur:
            now = self.database.now(cur)
            cur.execute(
                "INSERT INTO lesion_ai_state (name, revision, value, updated_by, updated_at) "
                "VALUES (%s, 1, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING revision",
                (name, value, by, now),
            )
            return cur.fetchone() is not None


class SharedProperty:
    """One shared value as a :class:`orthanc_plugin.intake.changes.PropertyStore` (the change position)."""

    def __init__(self, state: SharedState, name: str, holder: str) -> None:
        self.state = state
        self.name = name
        self.holder = holder

    def load(self) -> str | None:
        """The stored text, None when never stored."""
        found = self.state.get(self.name)
        return None if found is None else found.value

    def save(self, value: str) -> None:
        """Store the text."""
        self.state.put(self.name, value, self.holder)
