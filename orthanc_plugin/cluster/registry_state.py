"""The model registry's state (active, shadow, history) in the cluster database, so that a model promoted
on one server is the active model of every server and worker at its next study
(:class:`orthanc_plugin.models.registry.RegistryStateStore`). The artifacts themselves stay in the models folder
on the cluster's shared storage.

The state is the shared value :data:`MODEL_REGISTRY`; a change holds the cluster-wide advisory lock of that
name (:class:`~orthanc_plugin.cluster.locks.StudyLocks`) from reading the state to writing it, and around the
artifact's move into the shared folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from orthanc_plugin.cluster.database import ClusterDatabase, database_host
from orthanc_plugin.cluster.locks import StudyLocks
from orthanc_plugin.cluster.shared import SharedState

logger = logging.getLogger(__name__)

__all__ = ["MODEL_REGISTRY", "SharedRegistryState"]

#: The registry's state (a shared value), and the name of its lock.
MODEL_REGISTRY = "model-registry"


class SharedRegistryState:
    """The registry's state in the cluster database.

    Parameters
    ----------
    url : str
        The cluster database's PostgreSQL URL.
    writer : str
        Who writes (this server's identity, or the worker's name).
    """

    def __init__(self, url: str, writer: str) -> None:
        self.database = ClusterDatabase(url)
        self.state = SharedState(self.database)
        self.locks = StudyLocks(ClusterDatabase(url))
        self.writer = writer
        self.where = f"the model registry in the cluster database {database_host(url)}"

    def read(self) -> str | None:
        """The registry's JSON; None before the first change."""
        found = self.state.get(MODEL_REGISTRY)
        return None if found is None else found.value

    def write(self, text: str) -> None:
        """Store the registry's JSON (hold :meth:`locked` around the read before it)."""
        self.state.put(MODEL_REGISTRY, text, self.writer)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's lock across the cluster."""
        with self.locks.hold(MODEL_REGISTRY):
            yield

    def close(self) -> None:
        """Close the connections."""
        self.locks.close()
        self.database.close()
