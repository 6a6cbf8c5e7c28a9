"""One Orthanc's part in a cluster: its identity, the shared state, the study locks, and whether it is the
dispatcher now.

A thread renews (or tries to take) the dispatcher lease every third of ``LeaseSeconds``. The server counts
as dispatcher only while its last successful renewal is younger than the lease minus a third, so it stops
acting before another server can take over; at a clean stop it gives the lease up at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from orthanc_plugin.cluster.database import ClusterDatabase, ClusterDatabaseError, database_host
from orthanc_plugin.cluster.lease import DISPATCHER, Lease
from orthanc_plugin.cluster.locks import StudyLocks
from orthanc_plugin.cluster.rules_history import SharedRulesHistory
from orthanc_plugin.cluster.shared import SharedState

logger = logging.getLogger(__name__)

__all__ = ["ClusterRole"]


class ClusterRole:
    """This server's part in the cluster.

    Parameters
    ----------
    url : str
        The cluster database's PostgreSQL URL.
    server : str
        This server's identity (unique in the cluster).
    lease_s : float
        How long the dispatcher lease lasts without renewal.
    clock : callable
        Monotonic time in seconds (tests pass their own).
    """

    def __init__(
        self, url: str, server: str, lease_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.database = ClusterDatabase(url)
        self.server = server
        self.state = SharedState(self.database)
        self.lease = Lease(self.database, server, lease_s, DISPATCHER)
        self.locks = StudyLocks(ClusterDatabase(url))
        self.rules_history = SharedRulesHistory(self.database)
        self.clock = clock
        self.error: str | None = None
        self._renewed_at: float | None = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ClusterRole(server={self.server!r}, database={database_host(self.database.url)!r})"

    @property
    def dispatching(self) -> bool:
        """True while this server holds the dispatcher lease with a third of it to spare."""
        renewed = self._renewed_at
        return renewed is not None and self.clock() - renewed < self.lease.seconds * 2 / 3

    def renew(self) -> bool:
        """Take or renew the dispatcher lease once; True when held (a database error: not held, noted
        for health)."""
        started = self.clock()
        was = self.dispatching
        try:
            held = self.lease.hold()
        except ClusterDatabaseError as exc:
            if self.error is None:
                logger.error("the dispatcher lease cannot be renewed: %s", exc)
            self.error = f"cluster database unreachable, the dispatcher lease is not renewed: {exc}"
            held = False
        else:
            if self.error is not None:
                logger.warning("the cluster database answers again")
            self.error = None
        self._renewed_at = started if held else None
        if held != was:
            self._changed.set()
        return held

    def start(self) -> None:
        """Start renewing the lease in a thread (the first attempt is made before it returns)."""
        self.renew()
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, name="lesion-ai-lease", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.lease.seconds / 3):
            self.renew()

    def changed(self) -> bool:
        """True once after each change of :attr:`dispatching` (the plugin then starts or stops following)."""
        if self._changed.is_set():
            self._changed.clear()
            return True
        return False

    def stop(self) -> None:
        """Stop renewing and give the lease up (another server takes over at once); close the
        connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._renewed_at is not None:
            try:
                self.lease.release()
            except ClusterDatabaseError as exc:
                logger.warning("the dispatcher lease was not given up (%s); it expires by itself", exc)
        self._renewed_at = None
        self.locks.close()
        self.database.close()

    def figures(self) -> dict[str, object]:
        """What health says of the cluster: this server, whether it dispatches, and who does."""
        out: dict[str, object] = {"server": self.server, "dispatching": self.dispatching, "dispatcher": None}
        try:
            state = self.lease.state()
        except ClusterDatabaseError as exc:
            out["error"] = str(exc)
            return out
        if state is not None:
            out["dispatcher"] = {"server": state.holder, "since": state.since, "expires": state.expires}
        return out
