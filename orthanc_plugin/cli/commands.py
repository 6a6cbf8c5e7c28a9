"""Sub-commands of ``lesion-ai`` contributed by the node: ``node``, ``worker`` and ``send``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lesion_engine.errors import ConfigError

if TYPE_CHECKING:
    from lesion_engine.results.settings import ResultSettings

logger = logging.getLogger(__name__)

__all__ = ["register_node", "register_send", "register_worker", "run_node", "run_send", "run_worker"]


# -- node ---------------------------------------------------------------------------------------------
def register_node(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``node`` sub-command."""
    from orthanc_plugin.launch import DEFAULT_AET, DEFAULT_DICOM_PORT, DEFAULT_HTTP_PORT
    from orthanc_plugin.node.settings import setting_default

    parser = subparsers.add_parser(
        "node",
        help="start the node: Orthanc with the lesion AI plugin, DICOMweb and workers",
        description="Generate Orthanc's configuration from config/orthanc.json.in into the data folder and "
        "start Orthanc (foreground). Settings come from LESION_AI_* environment variables (see the README); "
        "options override them.",
    )
    parser.add_argument("--home", type=Path, help="data folder (LESION_AI_HOME, default var)")
    parser.add_argument(
        "--http-port", type=int, help=f"HTTP port (LESION_AI_HTTP_PORT, default {DEFAULT_HTTP_PORT})"
    )
    parser.add_argument(
        "--dicom-port", type=int, help=f"DICOM port (LESION_AI_DICOM_PORT, default {DEFAULT_DICOM_PORT})"
    )
    parser.add_argument("--aet", help=f"the node's AE title (LESION_AI_AET, default {DEFAULT_AET})")
    parser.add_argument(
        "--workers",
        type=int,
        help=f"worker processes (LESION_AI_WORKERS, default {setting_default('workers')})",
    )
    parser.add_argument("--config-only", action="store_true", help="write the configuration and exit")
    parser.set_defaults(func=run_node)


def run_node(args: argparse.Namespace) -> int:
    """Write the configuration and replace this process with Orthanc."""
    from dataclasses import replace

    from orthanc_plugin.launch import (
        ORTHANC_ENVIRONMENT,
        PRIVATE_UMASK,
        NodeOptions,
        port_in_use,
        write_configuration,
    )

    try:
        options = NodeOptions()
        changes = {
            k: v
            for k, v in (
                ("home", args.home),
                ("http_port", args.http_port),
                ("dicom_port", args.dicom_port),
                ("aet", args.aet),
                ("workers", args.workers),
            )
            if v is not None
        }
        options = replace(options, **changes)
        config, credentials, created = write_configuration(options)
    except (ValueError, ConfigError, OSError) as exc:
        sys.stderr.write(f"lesion-ai node: {exc}\n")
        return 2
    home = options.home.resolve()
    out = sys.stdout
    if created:
        out.write(
            "REST API credentials generated (shown once; kept in "
            f"{home / 'credentials.json'}, mode 0600):\n"
            f"  username: {credentials['username']}\n  password: {credentials['password']}\n"
        )
    out.write(
        f"Orthanc configuration: {config}\n"
        f"  HTTP (REST, DICOMweb, admin /lesion-ai/): http://127.0.0.1:{options.http_port}/\n"
        f"  DICOM: AE title {options.aet}, port {options.dicom_port}\n"
        f"  admin page: http://127.0.0.1:{options.http_port}/lesion-ai/ui/\n"
    )
    if options.viewer:
        out.write(f"  OHIF viewer: http://127.0.0.1:{options.http_port}/lesion-ai/viewer/\n")
    if args.config_only:
        return 0
    for port in (options.http_port, options.dicom_port):
        if port_in_use(port):
            sys.stderr.write(
                f"lesion-ai node: port {port} is already in use (another Orthanc or node?); choose other ports "
                "with LESION_AI_HTTP_PORT / LESION_AI_DICOM_PORT\n"
            )
            return 2
    orthanc = os.environ.get("LESION_AI_ORTHANC", "Orthanc")
    binary = shutil.which(orthanc)
    if binary is None:
        sys.stderr.write(
            f"lesion-ai node: {orthanc} not found; install the Debian package orthanc (make setup)\n"
        )
        return 2
    out.write("Starting Orthanc (Ctrl-C stops the node)...\n")
    out.flush()
    for key, value in ORTHANC_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    # Everything Orthanc (which replaces this process) and the node write is private: 0600 files, 0700 folders.
    os.umask(PRIVATE_UMASK)
    os.execv(binary, [binary, str(config)])  # noqa: S606 - replaces this process with Orthanc
    return 0  # pragma: no cover


# -- worker -------------------------------------------------------------------------------------------
#: Options of ``lesion-ai worker`` that set a settings field: (option, field). Defaults and help come from
#: the field (:mod:`orthanc_plugin.node.settings`), so that no default is written twice.
_WORKER_SETTING_OPTIONS = (
    ("--lease", "lease_s"),
    ("--heartbeat", "heartbeat_s"),
    ("--poll", "poll_s"),
    ("--max-attempts", "max_attempts"),
    ("--backoff", "backoff_s"),
    ("--backoff-max", "backoff_max_s"),
    ("--forward-attempts", "forward_attempts"),
    ("--forward-timeout", "forward_timeout_s"),
    ("--forward-mode", "forward_mode"),
    ("--cluster", "cluster"),
    ("--metadata-name", "metadata_name"),
    ("--model", "model"),
    ("--models-folder", "models_dir"),
    ("--device", "device"),
    ("--threads", "threads"),
    ("--processor", "processor"),
    ("--gland-gate", "gland_gate"),
    ("--gland-margin", "gland_margin_mm"),
    ("--gland-min-ml", "gland_min_ml"),
    ("--gland-max-ml", "gland_max_ml"),
    ("--gland-runtime", "gland_runtime"),
    ("--gland-precision", "gland_precision"),
)


def register_worker(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``worker`` sub-command."""
    from orthanc_plugin.node.settings import (
        PASSWORD_ENV,
        USERNAME_ENV,
        setting_default,
        setting_doc,
        setting_type,
    )

    parser = subparsers.add_parser(
        "worker",
        help="run a worker: claim jobs from the queue, process studies, store and forward results",
        description="Claims jobs from the node's queue, fetches the studies from Orthanc's REST API, runs the "
        "lesion engine, stores the results into Orthanc and forwards them. Orthanc's credentials come from "
        f"{USERNAME_ENV} / {PASSWORD_ENV} or --credentials.",
    )
    parser.add_argument("--orthanc-url", required=True, help="Orthanc's REST API, e.g. http://node:8142")
    parser.add_argument("--queue", required=True, help=setting_doc("queue"))
    parser.add_argument("--credentials", type=Path, help="JSON file with username and password")
    parser.add_argument("--name", default="worker", help="name in the logs")
    parser.add_argument("--parent-pid", type=int, help="exit (handing the job back) when this parent dies")
    for option, name in _WORKER_SETTING_OPTIONS:
        default = setting_default(name)
        shown = (
            ""
            if default is None
            else f" (default {default:g})"
            if isinstance(default, float)
            else f" (default {default})"
        )
        parser.add_argument(
            option, dest=name, type=setting_type(name), default=default, help=setting_doc(name) + shown
        )
    parser.add_argument(
        "--gland-required",
        action="store_true",
        default=setting_default("gland_required"),
        help=setting_doc("gland_required"),
    )
    parser.add_argument("--result-settings", help="JSON object: " + setting_doc("result_settings"))
    parser.add_argument("--once", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    parser.set_defaults(func=run_worker)


def _result_settings(text: str | None) -> ResultSettings:
    """The result settings of ``--result-settings`` (a JSON object; none: the defaults).

    Raises
    ------
    ConfigError
        The text is not a JSON object of valid result settings.
    """
    from lesion_engine.results.settings import ResultSettings

    try:
        values = json.loads(text) if text else {}
    except ValueError as exc:
        raise ConfigError(f"--result-settings is not JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"--result-settings must be a JSON object, got {values!r}")
    try:
        return ResultSettings.from_mapping(values)
    except ConfigError as exc:
        raise ConfigError(f"--result-settings: {exc}") from exc


def _credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    from orthanc_plugin.node.settings import PASSWORD_ENV, USERNAME_ENV

    if args.credentials is not None:
        data = json.loads(args.credentials.read_text(encoding="utf-8"))
        return str(data["username"]), str(data["password"])
    return os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)


def run_worker(args: argparse.Namespace) -> int:
    """Run a worker until stopped (SIGTERM / Ctrl-C) or, with --once, until the queue is empty."""
    from orthanc_plugin.node.logsetup import configure_node_logging
    from orthanc_plugin.node.settings import WorkerSettings
    from orthanc_plugin.worker.main import run_worker as run

    # the node's and the engine's own messages at INFO (or more with -vv), with the worker's name
    level = min(logging.INFO, logging.getLogger("orthanc_plugin").getEffectiveLevel())
    configure_node_logging(worker=args.name, level=level)
    try:
        settings = WorkerSettings(
            queue=args.queue,
            orthanc_url=args.orthanc_url,
            result_settings=_result_settings(args.result_settings),
            gland_required=args.gland_required,
            **{name: getattr(args, name) for _, name in _WORKER_SETTING_OPTIONS},
        )
        username, password = _credentials(args)
    except (ValueError, OSError, KeyError, ConfigError) as exc:
        sys.stderr.write(f"lesion-ai worker: {exc}\n")
        return 2
    return run(
        settings,
        name=args.name,
        parent_pid=args.parent_pid,
        username=username,
        password=password,
        once=args.once,
        max_jobs=args.max_jobs,
    )


# -- send ---------------------------------------------------------------------------------------------
def register_send(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``send`` sub-command (its defaults: the node's DICOM port and AE title)."""
    from orthanc_plugin.node.settings import DEFAULT_AET, DEFAULT_CALLING_AET, DEFAULT_DICOM_PORT

    parser = subparsers.add_parser(
        "send",
        help="send DICOM files to a node or PACS (C-STORE)",
        description="Send every DICOM file under the given folders or files with C-STORE. Exit status 0 when "
        "all were accepted, 1 when some were refused, 2 when none could be sent.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="files or folders (searched recursively)")
    parser.add_argument("--host", default="127.0.0.1", help="receiver's host (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_DICOM_PORT,
        help=f"receiver's DICOM port (default {DEFAULT_DICOM_PORT}, the node's)",
    )
    parser.add_argument(
        "--aet", default=DEFAULT_CALLING_AET, help=f"calling AE title (default {DEFAULT_CALLING_AET})"
    )
    parser.add_argument(
        "--called-aet", default=DEFAULT_AET, help=f"called AE title (default {DEFAULT_AET}, the node's)"
    )
    parser.set_defaults(func=run_send)


def run_send(args: argparse.Namespace) -> int:
    """Send the files; print a one-line summary."""
    from orthanc_plugin.cli.dicomsend import dicom_files, send_files

    try:
        files = dicom_files(args.paths)
        report = send_files(files, args.host, args.port, args.aet, args.called_aet)
    except (FileNotFoundError, ConnectionError) as exc:
        sys.stderr.write(f"lesion-ai send: {exc}\n")
        return 2
    for path, reason in report.failed[:20]:
        sys.stderr.write(f"failed: {path}: {reason}\n")
    sys.stdout.write(
        f"sent {report.sent} file(s), {len(report.failed)} failed, {len(report.skipped)} skipped (not DICOM)\n"
    )
    if report.sent == 0:
        return 2
    return 1 if report.failed else 0
