"""The node's plugin, inside Orthanc's embedded Python: thin glue between Orthanc, the rules and the queue.

* Orthanc's change callback only notes events (it runs on Orthanc's single change thread and must stay
  cheap). A daemon thread follows the change log (:mod:`orthanc_plugin.intake.changes`), and for each stable
  study applies the loop guard and the routing rules and enqueues the jobs they ask for (idempotent).
  It starts a job earlier, while the study is still being received, once the series the engine reads
  look complete by their headers (:mod:`orthanc_plugin.intake.completeness`); a job for changed inputs replaces
  the earlier results (:class:`~orthanc_plugin.intake.studies.ResultReplacement`).
  A SEG that a radiologist stores into a study the node processed is recorded as a label of the study
  (:mod:`orthanc_plugin.intake.labels`); that queues nothing.
* At ``ORTHANC_STARTED`` it catches up on what was missed while down and starts the worker processes;
  at ``ORTHANC_STOPPED`` it stops them.
* It serves the admin REST API under ``/lesion-ai/`` (:mod:`orthanc_plugin.admin.routes`), to which it is an
  :class:`~orthanc_plugin.admin.node_protocol.AdminNode`, the OHIF viewer under ``/lesion-ai/viewer/``
  (:mod:`orthanc_plugin.admin.viewer`) and the admins' page under ``/lesion-ai/ui/`` (:mod:`orthanc_plugin.admin.ui`).
* Workers are processes of the virtual environment's interpreter (:mod:`orthanc_plugin.worker.main`),
  started with their settings in a JSON file of the data folder and Orthanc's credentials in their
  environment.

No per-instance callback is registered (ingestion never waits for Python), torch is never imported, and
every callback has one exception boundary: errors are logged, never raised into Orthanc.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from lesion_engine.errors import ConfigError
from lesion_engine.model.model_card import stored_card
from orthanc_plugin.admin.node_protocol import EnqueuedJob, Evaluation, HealthFigures
from orthanc_plugin.admin.qido import QIDO_ROOT, QidoError, qido_uri
from orthanc_plugin.admin.routes import AdminApi
from orthanc_plugin.admin.ui import UI_ROUTE, UiFiles
from orthanc_plugin.admin.viewer import BASE_URL, ViewerAnswer, viewer_files
from orthanc_plugin.cluster.database import ClusterDatabaseError
from orthanc_plugin.cluster.registry_state import SharedRegistryState
from orthanc_plugin.cluster.role import ClusterRole
from orthanc_plugin.cluster.rules import SharedRules
from orthanc_plugin.cluster.shared import CHANGE_POSITION, IGNORED, SharedProperty
from orthanc_plugin.intake.changes import ChangeFollower, HeaderCache, PropertyStore, ReceivingStudies
from orthanc_plugin.intake.completeness import InputRoles
from orthanc_plugin.intake.ignored import IGNORED_FILE, IgnoredStudies
from orthanc_plugin.intake.labels import LABELS_FILE, LabelStore, record_labels
from orthanc_plugin.intake.studies import ResultReplacement, StudyPlan, plan_study
from orthanc_plugin.intake.verdicts import VERDICTS_FILE, VerdictStore, record_verdicts
from orthanc_plugin.jobqueue import JobQueue, JobState, QueuePolicy, StoreGate, open_queue
from orthanc_plugin.models.registry import CONFIGURED, ModelRegistry, RegistryError
from orthanc_plugin.node.logsetup import configure_node_logging
from orthanc_plugin.node.orthanc_api import (
    InProcessApi,
    NotFoundError,
    OrthancModule,
    RestOutput,
    answer,
    answer_file,
    quote_id,
)
from orthanc_plugin.node.rest_leaks import RestReferenceLeak
from orthanc_plugin.node.settings import NodeSettings
from orthanc_plugin.rules import RoutingRules, load_rules, parse_rules
from orthanc_plugin.rules.history import FOLDER, RulesHistory, RulesHistoryStore
from orthanc_plugin.worker.supervisor import WorkerSupervisor

logger = logging.getLogger(__name__)

__all__ = ["REST_ROUTE", "NodePlugin", "guarded", "install", "worker_command"]

F = TypeVar("F", bound=Callable[..., Any])
_IDLE_POLL_S = 5.0
#: How long health names a worker that exited (and the job it held).
_EXIT_SHOWN_S = 300.0
#: How often the follower looks while studies are being received (their completeness is judged).
_RECEIVING_POLL_S = 0.5
#: The viewer's route below ``/lesion-ai/``.
_VIEWER = BASE_URL.removeprefix("/lesion-ai/").rstrip("/")
#: The viewer's QIDO-RS route below ``/lesion-ai/``.
_QIDO = QIDO_ROOT.removeprefix("/lesion-ai/")


def guarded(what: str) -> Callable[[F], F]:
    """Exception boundary of a callback called by Orthanc: log the error, return None, never raise."""

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception:
                logger.exception("%s failed", what)
                return None

        return inner  # type: ignore[return-value]

    return wrap


#: The node's REST routes: ``/lesion-ai/`` and printable ASCII after it (every route, model name, study id
#: and viewer file is ASCII). Orthanc matches it before the Python plugin decodes the path: a path with a
#: control character or a byte outside ASCII (``%c0%af``, ``%ff``, ``%00``) matches no route and Orthanc
#: answers 404, where orthanc-python would fail to decode it as UTF-8 and answer 500.
REST_ROUTE = "/lesion-ai/([ -~]*)"


class _GlobalProperty:
    """An Orthanc global property as a :class:`orthanc_plugin.intake.changes.PropertyStore`."""

    def __init__(self, orthanc: OrthancModule, key: int) -> None:
        self.orthanc = orthanc
        self.key = key

    def load(self) -> str | None:
        value = self.orthanc.GetGlobalProperty(self.key, "")
        return value or None

    def save(self, value: str) -> None:
        self.orthanc.SetGlobalProperty(self.key, value)


def worker_command(settings: NodeSettings) -> list[str]:
    """Command line of a worker started by the plugin: the interpreter, the worker module and the settings
    file (:meth:`NodeSettings.write_worker_settings`); credentials and the parent's PID travel in the
    environment (:meth:`NodeSettings.worker_environment`)."""
    return [
        settings.python,
        "-m",
        "orthanc_plugin.worker.main",
        "--settings",
        str(settings.worker_settings_file),
    ]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is edited or replaced: (inode, size, mtime in ns); None when it is missing."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class NodePlugin:
    """The plugin's state and callbacks.

    Parameters
    ----------
    orthanc : OrthancModule
        The embedded ``orthanc`` module (or a fake in tests).
    settings : NodeSettings
        The node's settings.
    """

    def __init__(self, orthanc: OrthancModule, settings: NodeSettings) -> None:
        self.orthanc = orthanc
        self.api = InProcessApi(orthanc)
        self.settings = settings
        self.started_at = time.time()
        self.manufacturer = settings.result_settings.manufacturer
        self.queue: JobQueue = open_queue(settings.queue, QueuePolicy.from_settings(settings))
        self._rules_lock = threading.Lock()
        self._rules_stamp = _stamp(settings.rules)
        self.rules: RoutingRules = load_rules(settings.rules)
        self.rules_error: str | None = None
        #: Orthanc's StableAge (from its configuration; 60 s when unset, as Orthanc).
        self.stable_age_s = 60.0
        self.cluster: ClusterRole | None = None
        store: PropertyStore = _GlobalProperty(orthanc, settings.sequence_property)
        self.shared_rules: SharedRules | None = None
        if settings.cluster:
            server = settings.server_identifier or f"{socket.gethostname()}:{os.getpid()}"
            self.cluster = ClusterRole(settings.cluster, server, settings.dispatcher_lease_s)
            self.shared_rules = SharedRules(self.cluster.state, server, self.rules_from_text)
            store = SharedProperty(self.cluster.state, CHANGE_POSITION, server)
        self.follower = ChangeFollower(
            self.api,
            store,
            self.on_stable_study,
            settings.catch_up,
            gap_s=settings.change_gap_s if self.cluster is not None else 0.0,
            settled=self.settled if self.cluster is not None else None,
        )
        self.headers = HeaderCache(self.api)
        self.receiving: ReceivingStudies | None = (
            ReceivingStudies(
                self.api,
                self.headers,
                settings.completeness_quiet_s,
                self.manufacturer,
                own_stability=self.cluster is None,
                early_s=settings.completeness_early_s,
            )
            if settings.completeness_quiet_s > 0
            else None
        )
        self.replacement = ResultReplacement(
            self.api, self.queue, self.cluster.locks.hold if self.cluster is not None else None
        )
        self.rules_history: RulesHistoryStore = (
            self.cluster.rules_history if self.cluster is not None else RulesHistory(settings.home / FOLDER)
        )
        # In cluster mode the radiologists' labels and verdicts are the cluster's, whichever server read them.
        self.labels = LabelStore(settings.cluster or settings.home / LABELS_FILE)
        self.verdicts = VerdictStore(settings.cluster or settings.home / VERDICTS_FILE)
        self.ignored = IgnoredStudies(
            settings.home / IGNORED_FILE,
            settings.ignored_keep_days * 86400.0,
            shared=SharedProperty(self.cluster.state, IGNORED, self.cluster.server) if self.cluster else None,
        )
        self.supervisor: WorkerSupervisor | None = None
        self.errors: list[str] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.models = ModelRegistry(
            settings.models_folder,
            settings.model,
            settings.processor,
            settings.model_identity,
            SharedRegistryState(settings.cluster, self.cluster.server) if self.cluster is not None else None,
        )
        self.last_evaluation: Evaluation | None = None
        #: Orthanc's storage folder (its configuration's StorageDirectory), watched for free space.
        self.storage_dir: Path | None = None
        self.admin = AdminApi(self)
        self.viewer = viewer_files(settings)
        self.ui = UiFiles()
        self._worker_exits: collections.deque[tuple[float, int, int, int | None, tuple[int, ...]]] = (
            collections.deque(maxlen=20)
        )
        self._exits_lock = threading.Lock()
        self.rest_leak = RestReferenceLeak(lambda: orthanc.RestApiGet("/plugins/python"))

    @classmethod
    def from_orthanc(cls, orthanc: OrthancModule) -> NodePlugin:
        """Build from Orthanc's configuration (its ``LesionAI`` section)."""
        configuration = json.loads(orthanc.GetConfiguration())
        plugin = cls(orthanc, NodeSettings.from_orthanc_configuration(configuration))
        plugin.storage_dir = Path(str(configuration.get("StorageDirectory", "OrthancStorage"))).absolute()
        # Orthanc's own StableAge (60 s when unset): how long a study that was arriving at a restart waits.
        plugin.stable_age_s = float(configuration.get("StableAge", 60))
        plugin.follower.restart_hold_s = plugin.stable_age_s
        return plugin

    # -- registration and events ----------------------------------------------------------------------
    def install(self) -> None:
        """Register the change callback and the REST routes."""
        self.orthanc.RegisterOnChangeCallback(self.on_change)
        self.orthanc.RegisterRestCallback(REST_ROUTE, self.on_rest)
        logger.info("plugin installed; rules from %s, queue %s", self.settings.rules, self.queue)
        if self.viewer.enabled and not self.viewer.installed():
            logger.warning("the OHIF viewer is not installed at %s: run `make setup`", self.viewer.root)
        elif self.viewer.enabled:
            logger.info("OHIF viewer at %s (files in %s)", BASE_URL, self.viewer.root)

    @guarded("change callback")
    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """Orthanc's change callback: start, stop, and wake the change follower on stable studies and on
        new studies and series (never on each instance)."""
        types = self.orthanc.ChangeType
        if change_type in (types.STABLE_STUDY, types.NEW_STUDY, types.NEW_SERIES):
            self._wake.set()
        elif change_type == types.ORTHANC_STARTED:
            self.start()
        elif change_type == types.ORTHANC_STOPPED:
            self.stop()

    @guarded("REST callback")
    def on_rest(self, output: RestOutput, uri: str, **request: Any) -> None:
        """Orthanc's REST callback for ``/lesion-ai/...`` (an old orthanc-python's leaked references to the
        request's arguments released once it is answered: :mod:`orthanc_plugin.node.rest_leaks`)."""
        try:
            self._serve_rest(output, uri, request)
        finally:
            self.rest_leak.release(request)

    def _serve_rest(self, output: RestOutput, uri: str, request: dict[str, Any]) -> None:
        path = str((request.get("groups") or ("",))[0])
        if path == _VIEWER or path.startswith(_VIEWER + "/"):
            host = (request.get("headers") or {}).get("host")
            method = str(request.get("method", "GET"))
            self.on_viewer(output, method, path[len(_VIEWER) :], str(host) if host else None)
            return
        if path == _QIDO or path.startswith(_QIDO + "/"):
            method = str(request.get("method", "GET"))
            self.on_qido(output, method, path[len(_QIDO) :], dict(request.get("get") or {}))
            return
        if path == UI_ROUTE or path.startswith(UI_ROUTE + "/"):
            self.ui.respond(output, str(request.get("method", "GET")), path[len(UI_ROUTE) :])
            return
        try:
            status, body, mime = self.admin.handle(
                str(request.get("method", "GET")),
                str((request.get("groups") or ("",))[0]),
                dict(request.get("get") or {}),
                request.get("body") or b"",
                dict(request.get("headers") or {}),
            )
        except Exception as exc:
            logger.exception("REST %s failed", uri)
            status, body, mime = 500, {"error": f"{type(exc).__name__}: {exc}"}, "application/json"
        if status == 405:
            output.SendMethodNotAllowed(str(body.get("allowed", "GET")) if isinstance(body, dict) else "GET")
            return
        answer(output, status, body, mime)

    def on_qido(self, output: RestOutput, method: str, rest: str, query: dict[str, str]) -> None:
        """Answer one of the viewer's QIDO-RS searches from Orthanc's DICOMweb plugin, with its
        ``includefield`` values split (:mod:`orthanc_plugin.admin.qido`)."""
        if method != "GET":
            output.SendMethodNotAllowed("GET")
            return
        try:
            uri = qido_uri(rest, query)
        except QidoError as exc:
            logger.info("viewer search refused: %s", exc)
            answer(output, 400, {"error": str(exc)})
            return
        try:
            body = self.orthanc.RestApiGetAfterPlugins(uri)
        except Exception as exc:  # orthanc.OrthancException: no such route (no DICOMweb plugin) or bad values
            logger.warning("viewer search %s: Orthanc's DICOMweb answered %s", rest.strip("/")[:80], exc)
            answer(output, 400, {"error": f"Orthanc's DICOMweb plugin refused the search ({exc})"})
            return
        answer(output, 200, body, "application/dicom+json")

    def on_viewer(self, output: RestOutput, method: str, rest: str, host: str | None = None) -> None:
        """Answer a request for the OHIF viewer (``rest``: the path after ``/lesion-ai/viewer``; Orthanc
        drops a final slash, so the viewer's base URL comes with or without it as ``""``; ``host``: the
        request's Host header)."""
        try:
            result = self.viewer.answer(method, rest.removeprefix("/"), host)
        except OSError as exc:
            logger.error("viewer: cannot read %r: %s", rest, exc)
            result = ViewerAnswer(500, f"the viewer's file cannot be read: {exc}\n".encode())
        answer_file(output, result.status, result.body, result.mime, result.headers)

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the change follower thread and the workers (at ``ORTHANC_STARTED``)."""
        self._stop.clear()
        if self.cluster is not None:
            self._join_cluster(self.cluster)
        self._thread = threading.Thread(target=self._follow, name="lesion-ai-changes", daemon=True)
        self._thread.start()
        if self.settings.workers > 0:
            try:
                env = self.settings.worker_environment(os.getpid())
                self.settings.write_worker_settings()
            except (ConfigError, OSError) as exc:
                self.errors.append(f"workers not started: {exc}")
                logger.error("workers not started: %s", exc)
                return
            self.supervisor = WorkerSupervisor(
                worker_command(self.settings),
                self.settings.workers,
                env,
                self.settings.logs,
                on_exit=self.on_worker_exit,
            )
            self.supervisor.start()

    def on_worker_exit(self, index: int, pid: int, status: int | None) -> None:
        """A worker process exited: its running job goes back to the queue at once, as a failed attempt
        that says why (not after its lease), and health names it for :data:`_EXIT_SHOWN_S`."""
        owner_prefix = f"{socket.gethostname()}:{pid}:"
        reason = f"worker {index} (pid {pid}) exited with status {status} while processing this job"
        released = []
        for job in self.queue.list(state=JobState.RUNNING, limit=1000):
            if job.lease_owner is not None and job.lease_owner.startswith(owner_prefix):
                outcome = self.queue.fail(job.id, job.lease_owner, reason, transient=True)
                logger.warning(
                    "job %d: %s; now %s", job.id, reason, outcome.value if outcome else "unchanged"
                )
                released.append(job.id)
        with self._exits_lock:
            self._worker_exits.append((time.monotonic(), index, pid, status, tuple(released)))

    def _exit_problems(self) -> list[str]:
        """Health's words for the workers that exited in the last :data:`_EXIT_SHOWN_S` seconds."""
        now = time.monotonic()
        with self._exits_lock:
            recent = [e for e in self._worker_exits if now - e[0] <= _EXIT_SHOWN_S]
        out = []
        for at, index, pid, status, jobs in recent:
            held = f"; job {', '.join(str(j) for j in jobs)} handed back to the queue" if jobs else ""
            out.append(f"worker {index} (pid {pid}) exited with status {status} {now - at:.0f} s ago{held}")
        return out

    def stop(self) -> None:
        """Stop the follower thread and the workers (at ``ORTHANC_STOPPED``)."""
        self._stop.set()
        self._wake.set()
        if self.supervisor is not None:
            self.supervisor.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.cluster is not None:
            self.cluster.stop()
        self.queue.close()
        self.labels.close()

    def _join_cluster(self, cluster: ClusterRole) -> None:
        """Cluster mode: put this node's rules in the cluster database unless some are there already,
        and start renewing (or waiting for) the dispatcher lease."""
        try:
            if self.shared_rules is not None and self.shared_rules.seed(self.rules):
                logger.warning("the cluster's rules are this server's rules file %s", self.settings.rules)
        except ClusterDatabaseError as exc:
            logger.error("the cluster's rules cannot be read; this server's rules file is in force: %s", exc)
        cluster.start()

    def _catch_up(self) -> None:
        try:
            handled = self.follower.start()
            if handled:
                logger.info("caught up: %d stable stud(ies) handled at start", handled)
        except Exception:
            logger.exception("catching up on missed changes failed")

    def _dispatching(self) -> bool:
        """Whether this server follows the changes now: always on a single node; in cluster mode while it
        holds the dispatcher lease (when it takes the lease over, it reads the shared position first)."""
        cluster = self.cluster
        if cluster is None:
            return True
        if cluster.changed():
            self.follower.reset()
            if self.receiving is not None:
                self.receiving.forget_all()
            if cluster.dispatching:
                logger.warning("this server (%s) is the cluster's dispatcher now", cluster.server)
                self._catch_up()
        return cluster.dispatching

    def _follow(self) -> None:
        if self.cluster is None:
            self._catch_up()
        while not self._stop.is_set():
            receiving = self.receiving is not None and self.receiving.active
            idle = _IDLE_POLL_S if self.cluster is None else min(_IDLE_POLL_S, self.cluster.lease.seconds / 3)
            self._wake.wait(_RECEIVING_POLL_S if receiving else idle)
            self._wake.clear()
            if self._stop.is_set():
                break
            if not self._dispatching():
                continue
            try:
                self.follower.poll()
                self.start_complete_studies()
                self.replacement.advance()
            except Exception:
                logger.exception("reading Orthanc's changes failed; retrying")
                self._stop.wait(_IDLE_POLL_S)

    # -- routing ------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """Identity of the model jobs are queued for: the active model's (:mod:`orthanc_plugin.models.registry`), read
        again at each call so that a promotion or an edited card takes effect at the next study."""
        try:
            return self.models.active().identity
        except RegistryError as exc:
            logger.error("%s; jobs are queued for the configured model", exc)
            return self.models.get(CONFIGURED).identity

    def current_rules(self) -> RoutingRules:
        """The routing rules in force; re-read from the rules file when an admin edited it.

        An edited file that does not validate leaves the rules in force unchanged; the error is logged once
        and shown by ``GET /lesion-ai/health`` until the file is fixed.
        """
        if self.shared_rules is not None:
            shared = self.shared_rules.current()
            with self._rules_lock:
                self.rules = shared if shared is not None else self.rules
                self.rules_error = self.shared_rules.error
                return self.rules
        path = self.settings.rules
        stamp = _stamp(path)
        with self._rules_lock:
            if stamp == self._rules_stamp:
                return self.rules
            self._rules_stamp = stamp
            try:
                rules = load_rules(path)
            except ConfigError as exc:
                self.rules_error = f"edited rules file not applied, the previous rules stay in force: {exc}"
                logger.error("%s", self.rules_error)
                return self.rules
            self.rules = rules
            self.rules_error = None
            logger.warning("routing rules re-read from %s (%d rule(s))", path, len(rules.rules))
            return self.rules

    def replace_rules(self, rules: RoutingRules) -> None:
        """Put new (validated) rules in force and save them to the rules file (atomically); in cluster mode
        to the cluster database, where every server reads them.

        Raises
        ------
        OSError
            The rules file cannot be written.
        ClusterDatabaseError
            The cluster database cannot be written.
        """
        if self.shared_rules is not None:
            self.shared_rules.replace(rules)
            self.rules, self.rules_error = rules, None
            return
        path = self.settings.rules
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(rules.text, encoding="utf-8")
        with self._rules_lock:
            os.replace(tmp, path)
            self._rules_stamp = _stamp(path)
            self.rules = rules
            self.rules_error = None
        logger.warning("routing rules replaced (%d rule(s))", len(rules.rules))

    def settled(self, study_id: str) -> float:
        """Seconds until a study counts as stable across the cluster: StableAge after its last change in
        the shared index (Orthanc's ``LastUpdate``, UTC), whichever server received it; 0 when stable.

        Raises
        ------
        NotFoundError
            The study is gone.
        """
        study = self.api.get_json(f"/studies/{quote_id(study_id)}")
        try:
            changed = datetime.strptime(str(study.get("LastUpdate")), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            return 0.0  # no time to judge by: Orthanc's own stability decides
        # LastUpdate has whole seconds: the change may have come up to a second after it.
        return max(0.0, changed.timestamp() + 1.0 + self.stable_age_s - time.time())

    def model_card(self) -> dict[str, Any] | None:
        """The card of the active model's artifact (a promoted model, else ``Model``, else the packaged
        default), as stored; None when it cannot be read."""
        try:
            path = self.models.active().path
        except RegistryError:
            path = self.settings.model
        card = stored_card(path)
        if card is None:
            logger.warning("the card of the model in use (%s) cannot be read", path or "packaged default")
        return card

    def rules_from_text(self, text: str, source: str) -> RoutingRules:
        """Validate rules given as YAML text (relative ``series_rules`` files: beside the rules file)."""
        return parse_rules(text, source, self.settings.rules.parent)

    def health_figures(self) -> HealthFigures:
        """The node's state (``GET /lesion-ai/health``)."""
        problems = [*self.errors, *([self.rules_error] if self.rules_error else [])]
        waiting = self.follower.retry_problem()
        if waiting is not None:
            problems.append(waiting)
        problems += self._exit_problems()
        disk = self._disk_space(problems)
        try:
            self.models.state()
        except RegistryError as exc:
            problems.append(f"model registry: {exc}")
        cluster = self.cluster.figures() if self.cluster is not None else None
        if self.cluster is not None and self.cluster.error:
            problems.append(self.cluster.error)
        return HealthFigures(
            problems=tuple(problems),
            uptime_s=time.time() - self.started_at,
            model=self.model,
            workers_configured=self.settings.workers,
            worker_processes=tuple(self.supervisor.status()) if self.supervisor is not None else (),
            rules_source=self.settings.rules,
            last_sequence=self.follower.last or 0,
            pending_studies=len(self.follower.pending),
            last_evaluation=self.last_evaluation,
            disk=tuple(disk),
            cluster=cluster,
        )

    def _disk_space(self, problems: list[str]) -> list[dict[str, object]]:
        """Free space of the data folder and of Orthanc's storage; a problem for each below the warning."""
        out: list[dict[str, object]] = []
        folders = {"data folder": self.settings.home, "Orthanc storage": self.storage_dir}
        limit = self.settings.disk_warning_mb
        for label, folder in folders.items():
            if folder is None:
                continue
            try:
                usage = shutil.disk_usage(folder)
            except OSError as exc:
                problems.append(
                    f"the free space of the {label} {folder} cannot be read: {exc.strerror or exc}"
                )
                continue
            free_mb = usage.free // (1024 * 1024)
            out.append(
                {
                    "folder": label,
                    "path": str(folder),
                    "free_mb": free_mb,
                    "total_mb": usage.total // (1024 * 1024),
                }
            )
            if limit and free_mb < limit:
                problems.append(
                    f"only {free_mb} MB free on the {label} {folder} (DiskSpaceWarningMb {limit}): studies "
                    "may not be stored or evaluated; free some space"
                )
        return out

    def plan_study(self, study_id: str, rules: RoutingRules) -> StudyPlan:
        """What ``rules`` make of a study (loop guard, matches, jobs), without queueing anything."""
        return plan_study(
            self.api,
            study_id,
            rules,
            self.model,
            self.settings.metadata_name,
            self.manufacturer,
            self.headers,
        )

    def start_complete_studies(self) -> list[EnqueuedJob]:
        """Enqueue the jobs of studies being received whose inputs look complete now (see
        :mod:`orthanc_plugin.intake.completeness`); nothing when ``CompletenessQuietSeconds`` is 0."""
        if self.receiving is None:
            return []
        out: list[EnqueuedJob] = []
        for study_id in self.receiving.due(list(self.follower.pending)):
            try:
                out.extend(self.enqueue_study(study_id, early=True, gate=self.receiving.store_gate(study_id)))
            except NotFoundError:
                continue
            except Exception:
                logger.exception("study %s: judging its completeness failed; StableAge decides", study_id)
        return out

    def on_stable_study(self, study_id: str) -> list[EnqueuedJob]:
        """Evaluate a stable study and enqueue the jobs its rules ask for."""
        return self.enqueue_study(study_id)

    def enqueue_study(
        self, study_id: str, *, force: bool = False, early: bool = False, gate: StoreGate | None = None
    ) -> list[EnqueuedJob]:
        """Apply the loop guard and the rules to a study and enqueue its jobs.

        A job for inputs that changed replaces the earlier jobs of its study and rule
        (:class:`~orthanc_plugin.intake.studies.ResultReplacement`).

        Parameters
        ----------
        study_id : str
            Orthanc ID of the study.
        force : bool
            Queue again work that was done or failed before (``POST /lesion-ai/studies/{id}/process``).
        early : bool
            The study is still being received: enqueue only the jobs whose inputs look complete by their
            headers (:meth:`orthanc_plugin.intake.completeness.InputRoles.readiness`); the stable study enqueues
            the others.
        gate : StoreGate, optional
            The study is due before its quiet time ended (``CompletenessEarlyStartSeconds``): its jobs store
            their results only if it is still the same when it has (:mod:`orthanc_plugin.jobqueue.store_gate`).

        Returns
        -------
        list of EnqueuedJob
            What happened to each job the rules ask for.
        """
        plan = self.plan_study(study_id, self.current_rules())
        if not early:  # radiologists' SEGs become labels, their saved SRs verdicts; this queues nothing
            record_labels(self.api, self.labels, plan.study, (self.manufacturer,))
            record_verdicts(
                self.api, self.verdicts, plan.study, (self.manufacturer,), self.settings.verdict_tolerance_mm
            )
        out: list[EnqueuedJob] = []
        inputs = plan.inputs or [None] * len(plan.payloads)
        for job, payload, ranked in zip(plan.jobs, plan.payloads, inputs, strict=True):
            if early and not _ready_early(study_id, job.rule, ranked):
                continue
            if not force and job.key in plan.study.record.processed:
                logger.info(
                    "study %s: already processed under rule %s with model %s", study_id, job.rule, job.model
                )
                out.append(EnqueuedJob(None, job.key, job.rule, created=False))
                continue
            if gate is not None:
                job = replace(payload, store_gate=gate).new_job(job.priority)
            job_id, created = self.replacement.enqueue(job, force=force)
            if created:
                logger.info(
                    "study %s: job %d queued (rule %s, %d input series, model %s%s%s)",
                    study_id,
                    job_id,
                    job.rule,
                    len(payload.series),
                    job.model,
                    ", inputs complete before the study is stable" if early else "",
                    ", results stored once its quiet time has passed" if gate is not None else "",
                )
            out.append(EnqueuedJob(job_id, job.key, job.rule, created))
        if early and not out:
            return out
        if not plan.jobs:
            logger.info(
                "study %s: no rule applies (%d input series, %d excluded)",
                study_id,
                len(plan.study.series),
                len(plan.study.excluded),
            )
            self.ignored.record(study_id, plan.study.study_instance_uid, plan.evaluation())
        else:
            self.ignored.forget(study_id)
        self.last_evaluation = Evaluation(study_id, time.time(), tuple(out))
        return out


def _ready_early(study_id: str, rule: str, ranked: InputRoles | None) -> bool:
    """Whether a rule's inputs look complete by their headers before the study is stable (logs why not)."""
    readiness = ranked.readiness() if ranked is not None else None
    if readiness is None or not readiness.ready:
        logger.info(
            "study %s, rule %s: not started before the study is stable: %s",
            study_id,
            rule,
            readiness.reason if readiness is not None else "its headers cannot be ranked",
        )
        return False
    return True


def install(orthanc: OrthancModule) -> NodePlugin | None:
    """Set up logging into Orthanc's log and install the plugin (called by the entry script).

    A configuration error is logged and leaves Orthanc running without the node (it still stores what
    it receives; the catch-up at the next start handles those studies).
    """
    configure_node_logging(orthanc=orthanc)
    try:
        plugin = NodePlugin.from_orthanc(orthanc)
    except Exception as exc:
        logger.error("the lesion AI node is NOT running: %s", exc)
        return None
    plugin.install()
    return plugin
