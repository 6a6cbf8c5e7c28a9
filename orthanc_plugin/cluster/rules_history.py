"""The earlier versions of the routing rules in the cluster database, so that every server lists and
restores the same ones (:class:`orthanc_plugin.rules.history.RulesHistoryStore`, as the data folder's
``rules-history`` on a single node).

Each version is one row of ``lesion_ai_rules_history``, numbered in order and never renumbered; the last
``keep`` are kept. Who saved the rules in force is the shared value ``rules-author`` (the SHA-256 of their
text, the user and the time), trusted only while that text is in force.
"""

from __future__ import annotations

import json
import logging
import time

from orthanc_plugin.cluster.database import ClusterDatabase
from orthanc_plugin.cluster.shared import SharedState
from orthanc_plugin.rules.history import KEEP, RulesVersion, author_of, author_record

logger = logging.getLogger(__name__)

__all__ = ["RULES_AUTHOR", "SharedRulesHistory"]

#: Who saved the rules in force (a shared value).
RULES_AUTHOR = "rules-author"


class SharedRulesHistory:
    """The rules' history in the cluster database.

    Parameters
    ----------
    database : ClusterDatabase
        The cluster database.
    keep : int
        How many versions are kept (at least 1).

    Raises
    ------
    ValueError
        ``keep`` is below 1.
    """

    def __init__(self, database: ClusterDatabase, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError(f"the rules history must keep at least 1 version, got {keep}")
        self.database = database
        self.state = SharedState(database)
        self.keep = keep

    def __repr__(self) -> str:
        return f"SharedRulesHistory({self.database!r}, keep={self.keep})"

    def versions(self) -> list[RulesVersion]:
        """The versions kept, newest first (a row that cannot be read is skipped, and logged)."""
        with self.database.transaction() as cur:
            cur.execute(
                "SELECT number, document FROM lesion_ai_rules_history ORDER BY number DESC LIMIT %s",
                (self.keep,),
            )
            rows = cur.fetchall()
        return [v for v in (self._version(int(n), d) for n, d in rows) if v is not None]

    def get(self, number: int) -> RulesVersion | None:
        """Version ``number``, or None when it is not kept."""
        if number < 1:
            return None
        with self.database.transaction() as cur:
            cur.execute("SELECT document FROM lesion_ai_rules_history WHERE number = %s", (number,))
            row = cur.fetchone()
        return None if row is None else self._version(number, row[0])

    @staticmethod
    def _version(number: int, document: str) -> RulesVersion | None:
        try:
            return RulesVersion.from_json(number, json.loads(document))
        except ValueError as exc:
            logger.warning("rules history: version %d cannot be read, skipped: %s", number, exc)
            return None

    def author(self, text: str) -> tuple[str | None, float | None]:
        """Who saved the rules ``text`` through the admin API, and when; (None, None) when unknown."""
        found = self.state.get(RULES_AUTHOR)
        if found is None:
            return None, None
        try:
            return author_of(json.loads(found.value), text)
        except ValueError:
            return None, None

    def record(
        self, previous: str, new: str, user: str | None, now: float | None = None
    ) -> RulesVersion | None:
        """Keep the version ``previous`` that ``new`` replaces, and note who saved ``new`` (as
        :meth:`orthanc_plugin.rules.history.RulesHistory.record`).

        Raises
        ------
        ClusterDatabaseError
            The database cannot be reached (the caller then leaves the rules as they were).
        """
        when = time.time() if now is None else now
        kept: RulesVersion | None = None
        if previous != new:
            saved_by, saved_at = self.author(previous)
            document = {
                "text": previous,
                "saved_by": saved_by,
                "saved_at": saved_at,
                "replaced_by": user,
                "replaced_at": when,
            }
            with self.database.transaction() as cur:
                cur.execute(
                    "INSERT INTO lesion_ai_rules_history (document) VALUES (%s) RETURNING number",
                    (json.dumps(document),),
                )
                number = int(cur.fetchone()[0])
                cur.execute("DELETE FROM lesion_ai_rules_history WHERE number <= %s", (number - self.keep,))
            kept = RulesVersion.from_json(number, document)
        self.state.put(RULES_AUTHOR, json.dumps(author_record(new, user, when)), user)
        if kept is not None:
            logger.info("rules history: version %d kept (replaced by %s)", kept.number, user or "unknown")
        return kept
