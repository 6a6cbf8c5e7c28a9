"""The dispatcher lease: at most one Orthanc of a cluster follows the change log, judges completeness,
queues jobs and replaces results at a time.

The lease is one row of ``lesion_ai_leases``. Its holder renews it (:meth:`Lease.hold`) well before it
expires; another server takes it over only once it has expired, i.e. when the holder stopped renewing it for
``seconds`` (it died, hangs, or lost the database). Expiry is judged by the database server's clock, so the
servers' own clocks do not matter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from orthanc_plugin.cluster.database import ClusterDatabase

logger = logging.getLogger(__name__)

__all__ = ["DISPATCHER", "Lease", "LeaseState"]

#: The dispatcher's lease.
DISPATCHER = "dispatcher"

_TAKE = """
INSERT INTO lesion_ai_leases (name, holder, since, expires) VALUES (%(name)s, %(holder)s, %(now)s, %(expires)s)
ON CONFLICT (name) DO UPDATE SET
    holder = EXCLUDED.holder,
    expires = EXCLUDED.expires,
    since = CASE WHEN lesion_ai_leases.holder = EXCLUDED.holder THEN lesion_ai_leases.since
                 ELSE EXCLUDED.since END
WHERE lesion_ai_leases.holder = EXCLUDED.holder OR lesion_ai_leases.expires < EXCLUDED.since
RETURNING since
"""


@dataclass(frozen=True)
class LeaseState:
    """Who holds a lease, since when and until when (the database's clock, seconds since the epoch)."""

    holder: str
    since: float
    expires: float


class Lease:
    """One named lease held for ``seconds`` at a time by one of several servers.

    Parameters
    ----------
    database : ClusterDatabase
        The cluster database.
    holder : str
        This server's identity (unique in the cluster).
    seconds : float
        How long a hold lasts without renewal.
    name : str
        The lease's name.

    Raises
    ------
    ValueError
        ``holder`` is empty or ``seconds`` is not positive.
    """

    def __init__(
        self, database: ClusterDatabase, holder: str, seconds: float, name: str = DISPATCHER
    ) -> None:
        if not holder:
            raise ValueError("a lease holder needs a name (the server's identity)")
        if not seconds > 0:
            raise ValueError(f"a lease must last a positive number of seconds, got {seconds!r}")
        self.database = database
        self.holder = holder
        self.seconds = float(seconds)
        self.name = name
        self.held = False

    def hold(self) -> bool:
        """Take the lease when it is free or expired, or renew it when held; True when this server holds it
        now. A database error counts as not holding it (logged; raised by :class:`ClusterDatabase`)."""
        with self.database.transaction() as cur:
            now = self.database.now(cur)
            cur.execute(
                _TAKE, {"name": self.name, "holder": self.holder, "now": now, "expires": now + self.seconds}
            )
            held = cur.fetchone() is not None
        if held != self.held:
            if held:
                logger.warning("this server (%s) now holds the %s lease", self.holder, self.name)
            else:
                logger.warning("this server (%s) no longer holds the %s lease", self.holder, self.name)
        self.held = held
        return held

    def release(self) -> None:
        """Give the lease up now (at a clean stop), so that another server takes over at once."""
        with self.database.transaction() as cur:
            cur.execute(
                "DELETE FROM lesion_ai_leases WHERE name = %s AND holder = %s", (self.name, self.holder)
            )
        if self.held:
            logger.warning("this server (%s) gave the %s lease up", self.holder, self.name)
        self.held = False

    def state(self) -> LeaseState | None:
        """The lease's row (None when nobody ever held it or it was given up)."""
        with self.database.transaction() as cur:
            cur.execute("SELECT holder, since, expires FROM lesion_ai_leases WHERE name = %s", (self.name,))
            row = cur.fetchone()
        return None if row is None else LeaseState(str(row[0]), float(row[1]), float(row[2]))
