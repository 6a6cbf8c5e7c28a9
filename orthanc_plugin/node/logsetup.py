"""Where the node's log records go: the one place that configures log handlers in the node.

Records of the node (``orthanc_plugin``) and of the engine (``lesion_engine``) go

* inside Orthanc, into Orthanc's log (:class:`~orthanc_plugin.node.orthanc_api.OrthancLogHandler`);
* in a worker process, to standard error, which the plugin's supervisor writes to ``worker-N.log`` in the
  log folder (``lesion-ai worker`` on another machine: the terminal), each line with the time and the
  worker's name.

Handlers go onto those two package loggers only; the root logger is never touched, so other libraries'
records and an embedding application's logging stay as they are.
"""

from __future__ import annotations

import logging

from lesion_engine.logsetup import configure_cli_logging
from orthanc_plugin.node.orthanc_api import OrthancLogHandler, OrthancModule

logger = logging.getLogger(__name__)

__all__ = ["NODE_PACKAGES", "configure_node_logging", "remove_orthanc_logging"]

NODE_PACKAGES: tuple[str, ...] = ("orthanc_plugin", "lesion_engine")
"""The package loggers whose records the node routes."""


def configure_node_logging(
    *, orthanc: OrthancModule | None = None, worker: str | None = None, level: int = logging.INFO
) -> None:
    """Route the node's and the engine's log records at ``level`` and above (idempotent).

    Parameters
    ----------
    orthanc : OrthancModule, optional
        Inside Orthanc: records go into Orthanc's log (and not further up the logger tree).
    worker : str, optional
        In a worker process: records go to standard error, each line with the time and this name.
    level : int
        The lowest level passed on.

    Raises
    ------
    ValueError
        Neither or both of ``orthanc`` and ``worker`` are given.
    """
    if worker is not None and orthanc is None:
        configure_cli_logging(
            level, fmt=f"%(asctime)s %(levelname)s [{worker}] %(name)s: %(message)s", packages=NODE_PACKAGES
        )
    elif orthanc is not None and worker is None:
        remove_orthanc_logging()
        handler = OrthancLogHandler(orthanc)
        for name in NODE_PACKAGES:
            package_logger = logging.getLogger(name)
            package_logger.addHandler(handler)
            package_logger.setLevel(level)
            package_logger.propagate = False
    else:
        raise ValueError(
            "configure_node_logging needs either orthanc (the plugin) or worker (a worker's name)"
        )


def remove_orthanc_logging() -> None:
    """Undo :func:`configure_node_logging` with ``orthanc``: its handlers removed, records propagate again."""
    for name in NODE_PACKAGES:
        package_logger = logging.getLogger(name)
        for handler in [h for h in package_logger.handlers if isinstance(h, OrthancLogHandler)]:
            package_logger.removeHandler(handler)
            package_logger.propagate = True
