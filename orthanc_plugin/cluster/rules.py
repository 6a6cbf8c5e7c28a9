"""The routing rules in force in a cluster: one text in the cluster database (the shared value
:data:`~orthanc_plugin.cluster.shared.RULES`), parsed once per revision by each server.

The first server that starts puts its rules file there (:meth:`SharedRules.seed`); after that the database
holds the rules: ``PUT /lesion-ai/rules`` on any server writes a new revision (:meth:`SharedRules.replace`), and
every server reads it at its next study (:meth:`SharedRules.current` asks for the revision only, and reads
and parses the text when it changed). Rules that do not validate, or a database that cannot be read, leave
the rules read before in force, and :attr:`SharedRules.error` says why until it is no longer so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lesion_engine.errors import ConfigError
from orthanc_plugin.cluster.database import ClusterDatabaseError
from orthanc_plugin.cluster.shared import RULES, SharedState
from orthanc_plugin.rules import RoutingRules

logger = logging.getLogger(__name__)

__all__ = ["SharedRules"]


class SharedRules:
    """The cluster's rules, as one server reads them.

    Parameters
    ----------
    state : SharedState
        The cluster database's shared values.
    server : str
        This server's identity (recorded as the writer).
    parse : callable
        Validates rules given as YAML text and where they come from (the node's ``rules_from_text``).
    """

    def __init__(self, state: SharedState, server: str, parse: Callable[[str, str], RoutingRules]) -> None:
        self.state = state
        self.server = server
        self.parse = parse
        self.rules: RoutingRules | None = None
        self.revision: int | None = None
        self._read_error: str | None = None
        self._parse_error: str | None = None
        self._lock = threading.Lock()

    @property
    def error(self) -> str | None:
        """Why the rules in force are not the database's latest (None when they are)."""
        return self._read_error or self._parse_error

    def seed(self, rules: RoutingRules) -> bool:
        """Put ``rules`` in the database unless some are there already; True when they were put.

        Raises
        ------
        ClusterDatabaseError
            The database cannot be reached.
        """
        return self.state.put_if_absent(RULES, rules.text, self.server)

    def current(self) -> RoutingRules | None:
        """The rules in force: the database's, read again when their revision changed; the rules read
        before when it cannot be read or its rules do not validate (see :attr:`error`); None before any
        were read."""
        with self._lock:
            try:
                revision = self.state.revision(RULES)
                found = self.state.get(RULES) if revision is not None and revision != self.revision else None
            except ClusterDatabaseError as exc:
                message = f"the cluster's rules cannot be read, the rules read before stay in force: {exc}"
                if message != self._read_error:
                    logger.error("%s", message)
                self._read_error = message
                return self.rules
            if self._read_error is not None:
                logger.warning("the cluster's rules can be read again")
            self._read_error = None
            if found is not None:
                self.revision = found.revision
                try:
                    self.rules = self.parse(found.value, f"cluster database, revision {found.revision}")
                except ConfigError as exc:
                    self._parse_error = (
                        f"the cluster's rules (revision {found.revision}) are not applied: {exc}"
                    )
                    logger.error("%s", self._parse_error)
                else:
                    self._parse_error = None
                    logger.warning(
                        "routing rules read from the cluster database (revision %d)", found.revision
                    )
            return self.rules

    def replace(self, rules: RoutingRules) -> int:
        """Put validated rules in force for the whole cluster; returns their revision.

        Raises
        ------
        ClusterDatabaseError
            The database cannot be written (the rules in force stay).
        """
        with self._lock:
            revision = self.state.put(RULES, rules.text, self.server)
            self.rules, self.revision, self._parse_error = rules, revision, None
        logger.warning("routing rules replaced in the cluster database (revision %d)", revision)
        return revision
