"""A worker process: ``python -m orthanc_plugin.worker.main --settings FILE [--name NAME]``.

This is how the plugin starts its workers (:mod:`orthanc_plugin.worker.supervisor`): the settings come from the
JSON file the plugin wrote into the data folder (:meth:`orthanc_plugin.node.settings.NodeSettings.write_worker_settings`),
Orthanc's credentials and the PID of the process to watch (Orthanc) from the environment
(:data:`~orthanc_plugin.node.settings.USERNAME_ENV`, :data:`~orthanc_plugin.node.settings.PASSWORD_ENV`,
:data:`~orthanc_plugin.node.settings.PARENT_PID_ENV`). Workers on other machines run ``lesion-ai worker``
(:mod:`orthanc_plugin.cli.commands`), which ends in the same :func:`run_worker`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from lesion_engine.errors import ConfigError
from orthanc_plugin.cluster.registry_state import SharedRegistryState
from orthanc_plugin.jobqueue import QueuePolicy, open_queue
from orthanc_plugin.models.registry import ModelRegistry
from orthanc_plugin.node.logsetup import configure_node_logging
from orthanc_plugin.node.settings import PARENT_PID_ENV, PASSWORD_ENV, USERNAME_ENV, WorkerSettings
from orthanc_plugin.worker.client import OrthancClient
from orthanc_plugin.worker.model_runs import ModelRuns, NodeLabels
from orthanc_plugin.worker.processing import ProcessorSettings, load_processor, warm_up
from orthanc_plugin.worker.runner import Worker, WorkerOptions

logger = logging.getLogger(__name__)

__all__ = ["main", "run_worker"]


def run_worker(
    settings: WorkerSettings,
    *,
    name: str = "worker",
    parent_pid: int | None = None,
    username: str | None = None,
    password: str | None = None,
    once: bool = False,
    max_jobs: int | None = None,
    program: str = "lesion-ai worker",
) -> int:
    """Run a worker until stopped (SIGTERM / Ctrl-C), or until the queue is empty (``once``).

    Parameters
    ----------
    settings : WorkerSettings
        The node's settings for its workers.
    name : str
        The worker's name in the logs.
    parent_pid : int, optional
        Exit (handing the job back) when this process (Orthanc) is no longer the parent.
    username, password : str, optional
        Orthanc's REST API credentials.
    once : bool
        Exit when the queue is empty.
    max_jobs : int, optional
        Exit after this many jobs.
    program : str
        The program's name in error messages.

    Returns
    -------
    int
        The exit status: 0, or 2 when the queue, Orthanc's client or the processor cannot be set up.
    """
    try:
        queue = open_queue(settings.queue, QueuePolicy.from_settings(settings))
        # A synchronous send is one request that lasts as long as the send: the socket waits that long.
        timeout_s = (
            120.0 if settings.forward_mode == "follow" else max(120.0, settings.forward_timeout_s + 30.0)
        )
        client = OrthancClient(settings.orthanc_url, username, password, timeout_s=timeout_s)
        processor_settings = ProcessorSettings.from_settings(settings)
        processor = load_processor(settings.processor, processor_settings)
    except (ValueError, OSError, ImportError, AttributeError, ConfigError) as exc:
        sys.stderr.write(f"{program}: {exc}\n")
        return 2
    options = WorkerOptions.from_settings(
        settings, name=name, parent_pid=parent_pid, max_jobs=max_jobs, exit_when_idle=once
    )
    models = None
    if settings.models_dir is not None:
        shared = SharedRegistryState(settings.cluster, name) if settings.cluster else None
        registry = ModelRegistry(settings.models_dir, settings.model, settings.processor, state_store=shared)
        models = ModelRuns(registry, processor_settings, settings.processor, processor, NodeLabels(client))
    worker = Worker(queue, client, processor, options, models)
    worker.install_signal_handlers()
    threading.Thread(target=warm_up, args=(processor,), name="warm-up", daemon=True).start()
    try:
        worker.run()
    finally:
        queue.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker of the node with the settings file the plugin wrote."""
    parser = argparse.ArgumentParser(
        prog="python -m orthanc_plugin.worker.main",
        description="A worker process of the lesion AI node, as the plugin starts it. Workers on other "
        "machines: lesion-ai worker.",
    )
    parser.add_argument("--settings", type=Path, required=True, help="the worker settings JSON file")
    parser.add_argument("--name", default="worker", help="name in the logs")
    args = parser.parse_args(argv)
    configure_node_logging(worker=args.name)
    program = f"worker {args.name}"
    parent = os.environ.get(PARENT_PID_ENV) or None
    if parent is not None and not parent.isdigit():
        sys.stderr.write(f"{program}: {PARENT_PID_ENV} must be a process ID, got {parent!r}\n")
        return 2
    try:
        settings = WorkerSettings.read(args.settings)
    except ConfigError as exc:
        sys.stderr.write(f"{program}: {exc}\n")
        return 2
    return run_worker(
        settings,
        name=args.name,
        parent_pid=int(parent) if parent is not None else None,
        username=os.environ.get(USERNAME_ENV),
        password=os.environ.get(PASSWORD_ENV),
        program=program,
    )


if __name__ == "__main__":  # pragma: no cover - run as a process by the plugin
    sys.exit(main())
