"""Settings of the node, read from the ``LesionAI`` section of Orthanc's configuration: the one place where
each of them, its default and its configuration key are written.

``lesion-ai node`` writes that section when it generates Orthanc's configuration; a site that writes its
own Orthanc configuration adds it by hand (see the README). Every field is validated, and errors name it.
The anatomical gate's fields take their defaults and bounds from the engine's
:class:`~lesion_engine.anatomy.gland_settings.GlandSettings`; ``ResultSettings`` is read once, into the engine's
:class:`~lesion_engine.results.settings.ResultSettings`, and written back as the fields that differ from
their defaults.

:class:`WorkerSettings` holds what a worker needs (queue, Orthanc's URL, leases, retries, model, ...);
:class:`NodeSettings` adds what the plugin inside Orthanc needs (data folder, rules, worker processes, ...).
What the parts of the node are configured with is derived from them, never written again:
``QueuePolicy.from_settings`` (:mod:`orthanc_plugin.jobqueue`), ``WorkerOptions.from_settings``
(:mod:`orthanc_plugin.worker.runner`) and ``ProcessorSettings.from_settings`` (:mod:`orthanc_plugin.worker.processing`). The plugin hands its workers their settings as a JSON
file (:meth:`NodeSettings.write_worker_settings`); ``lesion-ai worker`` (workers on other machines) takes
its options' defaults from the fields below. Credentials never travel in settings: workers read them from
the environment (:meth:`NodeSettings.worker_environment`).
"""

from __future__ import annotations

import json
import logging
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from lesion_engine.anatomy.gland_card import GLAND_PRECISIONS, GLAND_RUNTIMES
from lesion_engine.anatomy.gland_settings import GlandSettings
from lesion_engine.errors import ConfigError
from lesion_engine.results.settings import ResultSettings

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_AET",
    "DEFAULT_CALLING_AET",
    "DEFAULT_DICOM_PORT",
    "DEFAULT_HTTP_PORT",
    "FORWARD_MODES",
    "GLAND_GATES",
    "PARENT_PID_ENV",
    "PASSWORD_ENV",
    "SECTION",
    "USERNAME_ENV",
    "NodeSettings",
    "WorkerSettings",
    "one_of",
    "setting_default",
    "setting_doc",
    "setting_type",
]

#: Name of the node's section in Orthanc's configuration.
SECTION = "LesionAI"
#: Orthanc's HTTP port unless configured otherwise (``lesion-ai node`` and the default ``OrthancUrl``).
DEFAULT_HTTP_PORT = 8142
#: The node's DICOM port and AE title unless configured otherwise (``lesion-ai node``; what ``lesion-ai send``
#: calls by default).
DEFAULT_DICOM_PORT = 4342
DEFAULT_AET = "LESIONAI"
#: The AE title ``lesion-ai send`` calls itself unless told otherwise.
DEFAULT_CALLING_AET = "LESIONAI-SCU"
#: Environment variables of a worker: Orthanc's credentials, and the process to watch (Orthanc).
USERNAME_ENV = "LESION_AI_ORTHANC_USERNAME"
PASSWORD_ENV = "LESION_AI_ORTHANC_PASSWORD"  # noqa: S105 - the variable's name, not a password
PARENT_PID_ENV = "LESION_AI_PARENT_PID"
#: ``GlandGate`` values and whether they turn the gate on (None: the engine's default for the model).
GLAND_GATES: Mapping[str, bool | None] = MappingProxyType({"auto": None, "on": True, "off": False})

#: ``ForwardMode`` values: follow Orthanc's send job, or send in one synchronous request.
FORWARD_MODES = ("follow", "synchronous")

S = TypeVar("S", bound="WorkerSettings")
#: The engine's gate settings, whose defaults the gate's settings take.
_ENGINE_GLAND = GlandSettings()


def one_of(choices: Iterable[str]) -> str:
    """``'a', 'b' or 'c'``: the allowed values of a setting, for messages."""
    quoted = [repr(choice) for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _meta(key: str, doc: str) -> dict[str, str]:
    """A settings field's metadata: its configuration key and its documentation."""
    return {"key": key, "doc": doc}


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """What a worker needs: where the queue and Orthanc are, how it leases and retries jobs, which model.

    Each field's configuration key (in the ``LesionAI`` section) and meaning are written beside it (and
    served by :func:`setting_doc`); :meth:`to_section` and :meth:`from_section` convert to and from that
    section's form.
    """

    queue: str = field(metadata=_meta("Queue", "job queue URL (sqlite:///PATH or postgresql://user@host/db)"))
    orthanc_url: str = field(
        default=f"http://127.0.0.1:{DEFAULT_HTTP_PORT}",
        metadata=_meta("OrthancUrl", "how workers reach Orthanc's REST API"),
    )
    metadata_name: str = field(
        default="LesionAI",
        metadata=_meta(
            "MetadataName",
            "study metadata (declared under UserMetadata, key >= 1024) recording what was processed",
        ),
    )
    model: str | None = field(
        default=None, metadata=_meta("Model", "model artifact folder; none: the engine's packaged default")
    )
    models_dir: Path | None = field(
        default=None,
        metadata=_meta(
            "ModelsFolder",
            "folder of the registered models (POST /lesion-ai/models), one active, some in shadow; "
            "none: the models folder of Home",
        ),
    )
    processor: str | None = field(
        default=None,
        metadata=_meta(
            "Processor", "module:function of an alternative processor (tests, demos); none: the engine"
        ),
    )
    device: str | None = field(
        default=None, metadata=_meta("Device", "cpu, cuda, ... for the engine; none: automatic")
    )
    threads: int | None = field(
        default=None,
        metadata=_meta(
            "Threads",
            "CPU threads of the engine in each worker; none: the plugin shares the CPUs among its workers, "
            "a worker started by hand uses all",
        ),
    )
    gland_gate: str = field(
        default="auto",
        metadata=_meta(
            "GlandGate",
            "the anatomical gate (whole-gland model after the lesion networks): auto (on for the packaged "
            "default model, off for other artifacts), on or off",
        ),
    )
    gland_margin_mm: float = field(
        default=_ENGINE_GLAND.margin_mm,
        metadata=_meta(
            "GlandMarginMm",
            f"the gate's margin around the gland, mm (0 to {GlandSettings.MAX_MARGIN_MM:g}): no lesion "
            "centred farther out is reported",
        ),
    )
    gland_required: bool = field(
        default=_ENGINE_GLAND.required,
        metadata=_meta(
            "GlandRequired",
            "true: a study whose gland model cannot load or run, or finds an implausible gland, fails; "
            "false: it is analysed ungated, with a warning",
        ),
    )
    gland_min_ml: float = field(
        default=_ENGINE_GLAND.min_volume_ml,
        metadata=_meta(
            "GlandMinMl",
            "smallest plausible prostate, ml: a smaller gland found by the gland model is not used by the gate "
            "(the result says so)",
        ),
    )
    gland_max_ml: float = field(
        default=_ENGINE_GLAND.max_volume_ml,
        metadata=_meta("GlandMaxMl", "largest plausible prostate, ml (as GlandMinMl)"),
    )
    gland_runtime: str = field(
        default=_ENGINE_GLAND.runtime,
        metadata=_meta(
            "GlandRuntime",
            "what runs the gland model: auto or torch (torch, on the engine's device), or onnxruntime (needs "
            "the optional extra onnxruntime)",
        ),
    )
    gland_precision: str = field(
        default=_ENGINE_GLAND.precision,
        metadata=_meta(
            "GlandPrecision",
            "the gland model's arithmetic in torch: auto (bfloat16 on a CPU with bfloat16 instructions, about "
            "twice as fast, masks within Dice 0.99 of float32's; float32 elsewhere), float32 (as its authors "
            "run it) or bfloat16",
        ),
    )
    lease_s: float = field(
        default=120.0,
        metadata=_meta(
            "LeaseSeconds",
            "job lease, seconds: a job whose worker stops renewing it is claimed again after this",
        ),
    )
    heartbeat_s: float = field(
        default=10.0, metadata=_meta("HeartbeatSeconds", "how often a worker renews its job's lease, seconds")
    )
    poll_s: float = field(
        default=1.0, metadata=_meta("PollSeconds", "how often an idle worker looks for a job, seconds")
    )
    max_attempts: int = field(
        default=5, metadata=_meta("MaxAttempts", "attempts before a job is marked failed")
    )
    backoff_s: float = field(
        default=10.0,
        metadata=_meta(
            "BackoffSeconds", "delay before the first retry of a job, seconds (doubling at each retry)"
        ),
    )
    backoff_max_s: float = field(
        default=900.0, metadata=_meta("BackoffMaxSeconds", "longest delay between retries, seconds")
    )
    forward_attempts: int = field(
        default=3,
        metadata=_meta(
            "ForwardAttempts", "sends per destination before a send counts as failed (the job then retries)"
        ),
    )
    forward_timeout_s: float = field(
        default=600.0,
        metadata=_meta("ForwardTimeoutSeconds", "how long a worker waits for one Orthanc send job, seconds"),
    )
    forward_mode: str = field(
        default="follow",
        metadata=_meta(
            "ForwardMode",
            "follow: start an Orthanc send job and follow it until it ends (cancelled after "
            "ForwardTimeoutSeconds); synchronous: one request that answers when the send has ended, for a "
            "worker whose OrthancUrl is a load balancer in front of several Orthancs (an Orthanc job is known "
            "only to the server that runs it)",
        ),
    )
    cluster: str = field(
        default="",
        metadata=_meta(
            "Cluster",
            "cluster mode: the PostgreSQL URL of the cluster database (dispatcher lease, shared rules, change "
            "position, labels, verdicts and the model registry's state; the job queue must be PostgreSQL too), "
            "shared by every Orthanc and worker of the cluster; empty: a single node (LESION_AI_CLUSTER for "
            "lesion-ai node)",
        ),
    )
    result_settings: ResultSettings = field(
        default_factory=ResultSettings,
        metadata=_meta(
            "ResultSettings",
            "fields of lesion_engine.results.settings.ResultSettings (manufacturer, series numbers, ...)",
        ),
    )

    def __post_init__(self) -> None:
        if not self.queue:
            raise self._bad("queue", "must name the job queue (sqlite:///PATH or postgresql://...)")
        for name in ("lease_s", "heartbeat_s", "poll_s", "forward_timeout_s"):
            if not getattr(self, name) > 0:
                raise self._bad(name, f"must be positive, got {getattr(self, name)!r}")
        if self.heartbeat_s * 2 > self.lease_s:
            raise self._bad("heartbeat_s", f"must be at most half of {_key('lease_s')} ({self.lease_s})")
        for name in ("max_attempts", "forward_attempts"):
            if getattr(self, name) < 1:
                raise self._bad(name, f"must be at least 1, got {getattr(self, name)!r}")
        if self.cluster and not self.cluster.startswith(("postgresql://", "postgres://")):
            raise self._bad(
                "cluster", f"must be a postgresql:// URL or empty, got {self.cluster.split('://')[0]!r}"
            )
        if self.forward_mode not in FORWARD_MODES:
            raise self._bad("forward_mode", f"must be {one_of(FORWARD_MODES)}, got {self.forward_mode!r}")
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise self._bad("backoff_max_s", f"need 0 <= {_key('backoff_s')} <= {_key('backoff_max_s')}")
        if self.threads is not None and self.threads < 1:
            raise self._bad("threads", f"must be at least 1, got {self.threads!r}")
        self._check_gland()
        if not self.metadata_name or not self.metadata_name.isidentifier():
            raise self._bad(
                "metadata_name",
                f"must be a metadata name declared under UserMetadata, got {self.metadata_name!r}",
            )
        if self.processor is not None and ":" not in self.processor:
            raise self._bad("processor", f"must be 'module:function', got {self.processor!r}")
        if not isinstance(self.result_settings, ResultSettings):
            raise self._bad(
                "result_settings",
                "must be lesion_engine.results.ResultSettings (read its JSON object with "
                f"ResultSettings.from_mapping), got {type(self.result_settings).__name__}",
            )

    def _check_gland(self) -> None:
        """The gate's fields: the gate values here, the numbers' bounds as the engine's
        :class:`~lesion_engine.anatomy.gland_settings.GlandSettings` has them."""
        if self.gland_gate not in GLAND_GATES:
            raise self._bad("gland_gate", f"must be {one_of(GLAND_GATES)}, got {self.gland_gate!r}")
        problem = GlandSettings.margin_problem(self.gland_margin_mm)
        if problem is not None:
            raise self._bad("gland_margin_mm", problem)
        if not isinstance(self.gland_required, bool):
            raise self._bad("gland_required", f"must be true or false, got {self.gland_required!r}")
        problem = GlandSettings.volume_problem(self.gland_min_ml, self.gland_max_ml)
        if problem is not None:
            raise self._bad("gland_min_ml", f"and {_key('gland_max_ml')} {problem}")
        if self.gland_runtime not in GLAND_RUNTIMES:
            raise self._bad("gland_runtime", f"must be {one_of(GLAND_RUNTIMES)}, got {self.gland_runtime!r}")
        if self.gland_precision not in GLAND_PRECISIONS:
            raise self._bad(
                "gland_precision", f"must be {one_of(GLAND_PRECISIONS)}, got {self.gland_precision!r}"
            )
        if self.gland_runtime == "onnxruntime" and self.gland_precision == "bfloat16":
            raise self._bad(
                "gland_precision",
                f"is 'bfloat16' but {_key('gland_runtime')} is 'onnxruntime', which runs the model in float32 "
                "only: set the runtime to torch or auto, or the precision to auto or float32",
            )
        if self.gland_required and self.gland_gate == "off":
            raise self._bad(
                "gland_required",
                f"is true but {_key('gland_gate')} is 'off': turn the gate on, or set it false",
            )

    @staticmethod
    def _bad(name: str, message: str) -> ConfigError:
        return ConfigError(f"{SECTION} settings, field {_key(name)}: {message}")

    # -- the configuration section's form --------------------------------------------------------------
    def to_section(self) -> dict[str, Any]:
        """These settings as configuration keys and JSON values (the ``LesionAI`` section's form)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, ResultSettings):
                value = value.to_mapping()
            out[_key(f.name)] = value
        return out

    @classmethod
    def from_section(cls: type[S], section: Mapping[str, Any], where: str = f"section {SECTION}") -> S:
        """Read settings from configuration keys (the ``LesionAI`` section's form).

        Parameters
        ----------
        section : mapping
            Configuration key -> JSON value; a null value means the field's default.
        where : str
            Where the section comes from, for messages.

        Raises
        ------
        ConfigError
            A key is unknown, a required key is missing, or a value is invalid (the message names the key).
        """
        by_key = {_key(f.name): f for f in fields(cls)}
        unknown = sorted(set(section) - set(by_key))
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(by_key))}"
            )
        for key, f in by_key.items():
            if _required(f) and key not in section:
                raise ConfigError(f"{where}: field {key} is missing")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, value in section.items():
            f = by_key[key]
            if value is None:
                continue
            kind = _base_type(hints[f.name])
            try:
                values[f.name] = _convert(value, kind)
            except ConfigError as exc:  # a value of its own settings object (ResultSettings)
                raise ConfigError(f"{where}, field {key}: {exc}") from exc
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}, field {key}: expected {kind.__name__}, got {value!r}") from exc
        return cls(**values)

    @staticmethod
    def read(path: Path) -> WorkerSettings:
        """Read worker settings written by :meth:`NodeSettings.write_worker_settings`.

        Raises
        ------
        ConfigError
            The file cannot be read, is not JSON, or holds invalid settings.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the worker settings {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"worker settings {path}: expected a JSON object of {SECTION} fields")
        return WorkerSettings.from_section(data, f"worker settings {path}")


@dataclass(frozen=True, kw_only=True)
class NodeSettings(WorkerSettings):
    """The node's settings: a worker's (:class:`WorkerSettings`) and the plugin's own.

    ``home``, ``queue`` and ``rules`` are required; every other field has its default beside it.
    """

    home: Path = field(metadata=_meta("Home", "the data folder (queue, rules, logs, credentials)"))
    rules: Path = field(
        metadata=_meta("Rules", "the routing-rules file in use; PUT /lesion-ai/rules rewrites it")
    )
    workers: int = field(
        default=1, metadata=_meta("Workers", "worker processes the plugin starts (0: workers run elsewhere)")
    )
    python: str = field(
        default="python3",
        metadata=_meta(
            "Python", "the interpreter that runs workers (the virtual environment's, not Orthanc's)"
        ),
    )
    credentials_file: Path | None = field(
        default=None,
        metadata=_meta("CredentialsFile", "JSON file with the username and password that workers use"),
    )
    sequence_property: int = field(
        default=5871,
        metadata=_meta(
            "SequenceProperty", "global property (>= 1024) holding the last change sequence number handled"
        ),
    )
    model_identity: str | None = field(
        default=None,
        metadata=_meta(
            "ModelIdentity", "overrides the model identity in job keys (else from the artifact's card)"
        ),
    )
    catch_up: str = field(
        default="none",
        metadata=_meta(
            "CatchUp", "at the first start with an existing database: none (only changes from now on) or all"
        ),
    )
    completeness_quiet_s: float = field(
        default=3.0,
        metadata=_meta(
            "CompletenessQuietSeconds",
            "a study's jobs start once the series the engine reads look complete by their headers and "
            "none of them received an instance for this many seconds (StableAge stays the fallback); "
            "0: jobs start at StableAge only",
        ),
    )
    completeness_early_s: float = field(
        default=1.0,
        metadata=_meta(
            "CompletenessEarlyStartSeconds",
            "a study whose series had no new instance for this many seconds (and look complete by their "
            "headers) starts its jobs while the rest of CompletenessQuietSeconds passes; their results are "
            "stored only if the study is still the same when it has, else the job is withdrawn and the study "
            "judged again; 0: jobs wait for the whole quiet time. Below CompletenessQuietSeconds",
        ),
    )
    ignored_keep_days: float = field(
        default=7.0,
        metadata=_meta(
            "IgnoredKeepDays",
            "how long the admin page lists a study that no rule matched (with each rule's outcome), days "
            "(at most the last 1000 such studies)",
        ),
    )
    verdict_tolerance_mm: float = field(
        default=3.0,
        metadata=_meta(
            "VerdictToleranceMm",
            "a measurement of a radiologist's saved SR is the AI's measurement kept (accepted) when it lies on "
            "the same image, of the same tool, within this distance (mm, symmetric Hausdorff of the points)",
        ),
    )
    disk_warning_mb: int = field(
        default=1024,
        metadata=_meta(
            "DiskSpaceWarningMb",
            "health is degraded, naming the folder, when the data folder (Home) or Orthanc's storage has less "
            "free space than this, in MB (0: no warning)",
        ),
    )
    log_dir: Path | None = field(
        default=None, metadata=_meta("LogDir", "where the workers' logs go; none: the logs folder of Home")
    )
    site_packages: str | None = field(
        default=None,
        metadata=_meta(
            "SitePackages",
            "the virtual environment's site-packages, put first on sys.path by the entry script",
        ),
    )
    viewer: bool = field(
        default=True,
        metadata=_meta(
            "Viewer",
            "serve the OHIF viewer at /lesion-ai/viewer/ (false: that route answers 404; "
            "LESION_AI_VIEWER=0 for lesion-ai node)",
        ),
    )
    viewer_dir: Path | None = field(
        default=None,
        metadata=_meta(
            "ViewerDir",
            "folder of the OHIF viewer's files (its index.html); none: share/lesion-ai-viewer/VERSION "
            "of the virtual environment of Python, where make setup installs it",
        ),
    )

    server_identifier: str = field(
        default="",
        metadata=_meta(
            "ServerIdentifier",
            "this Orthanc's name in the cluster, unique among its servers (as Orthanc's "
            "DatabaseServerIdentifier); empty: the host name and process ID",
        ),
    )
    dispatcher_lease_s: float = field(
        default=10.0,
        metadata=_meta(
            "DispatcherLeaseSeconds",
            "cluster mode: another server takes over as dispatcher when the dispatcher has not renewed its "
            "lease for this many seconds",
        ),
    )
    change_gap_s: float = field(
        default=30.0,
        metadata=_meta(
            "ChangeGapSeconds",
            "cluster mode: how long a change whose sequence number was skipped over (written by another "
            "server, not committed yet) is waited for",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_cluster()
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 0 <= self.workers <= 64:
            raise self._bad("workers", f"must be an integer from 0 to 64, got {self.workers!r}")
        if not 1024 <= self.sequence_property <= 65535:
            raise self._bad("sequence_property", "plugins may use global properties from 1024 to 65535")
        if not isinstance(self.viewer, bool):
            raise self._bad("viewer", f"must be true or false, got {self.viewer!r}")
        if self.catch_up not in ("none", "all"):
            raise self._bad("catch_up", f"must be 'none' or 'all', got {self.catch_up!r}")
        if (
            isinstance(self.disk_warning_mb, bool)
            or not isinstance(self.disk_warning_mb, int)
            or not 0 <= self.disk_warning_mb <= 10_000_000
        ):
            raise self._bad(
                "disk_warning_mb", f"must be an integer from 0 to 10000000 MB, got {self.disk_warning_mb!r}"
            )
        keep = self.ignored_keep_days
        if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 < keep <= 3650:
            raise self._bad(
                "ignored_keep_days", f"must be a number of days above 0, at most 3650, got {keep!r}"
            )
        tolerance = self.verdict_tolerance_mm
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 < tolerance <= 50:
            raise self._bad(
                "verdict_tolerance_mm",
                f"must be a number of millimetres above 0, at most 50, got {tolerance!r}",
            )
        if not 0 <= self.completeness_quiet_s <= 3600:
            raise self._bad(
                "completeness_quiet_s",
                f"must be from 0 (off) to 3600 seconds, got {self.completeness_quiet_s!r}",
            )
        early = self.completeness_early_s
        if isinstance(early, bool) or not isinstance(early, int | float) or not 0 <= early <= 3600:
            raise self._bad("completeness_early_s", f"must be from 0 (off) to 3600 seconds, got {early!r}")
        if early > 0 and self.completeness_quiet_s > 0 and early >= self.completeness_quiet_s:
            raise self._bad(
                "completeness_early_s",
                f"must be below CompletenessQuietSeconds ({self.completeness_quiet_s}), or 0 (off), got {early!r}",
            )

    def _check_cluster(self) -> None:
        if self.cluster and not self.queue.startswith(("postgresql://", "postgres://")):
            raise self._bad(
                "queue",
                "must be a postgresql:// URL in cluster mode (every server and worker shares the queue)",
            )
        if not self.server_identifier.isprintable() or len(self.server_identifier) > 128:
            raise self._bad("server_identifier", "must be at most 128 printable characters")
        for name, low, high in (("dispatcher_lease_s", 2.0, 600.0), ("change_gap_s", 0.0, 3600.0)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise self._bad(name, f"must be from {low:g} to {high:g} seconds, got {value!r}")

    @property
    def logs(self) -> Path:
        """Where the workers' logs go (``log_dir``, else ``home/logs``)."""
        return self.log_dir if self.log_dir is not None else self.home / "logs"

    @property
    def models_folder(self) -> Path:
        """The registered models' folder (``models_dir``, else ``home/models``)."""
        return self.models_dir if self.models_dir is not None else self.home / "models"

    @property
    def worker_settings_file(self) -> Path:
        """The file the plugin writes its workers' settings to (in the data folder)."""
        return self.home / "worker-settings.json"

    @classmethod
    def from_orthanc_configuration(cls, configuration: Mapping[str, Any]) -> NodeSettings:
        """Read the ``LesionAI`` section of Orthanc's configuration (as ``orthanc.GetConfiguration()``).

        Raises
        ------
        ConfigError
            The section is missing, has an unknown field, or a field is invalid.
        """
        section = configuration.get(SECTION)
        if not isinstance(section, dict):
            raise ConfigError(
                f"Orthanc configuration has no {SECTION} section; generate the configuration with "
                "`lesion-ai node` or add the section as the README shows"
            )
        return cls.from_section(section, f"Orthanc configuration, section {SECTION}")

    def worker_settings(self) -> WorkerSettings:
        """The settings of the workers the plugin starts: this node's, the CPUs shared among the workers
        unless ``Threads`` is set."""
        values = {f.name: getattr(self, f.name) for f in fields(WorkerSettings)}
        values["models_dir"] = self.models_folder
        if self.threads is None and self.workers > 0:
            values["threads"] = max(1, (os.cpu_count() or 1) // self.workers)
        return WorkerSettings(**values)

    def write_worker_settings(self) -> Path:
        """Write :meth:`worker_settings` to :attr:`worker_settings_file` (atomically); returns the file.

        The file holds no credentials (workers read them from the environment).
        """
        path = self.worker_settings_file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.worker_settings().to_section(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def worker_environment(self, parent_pid: int | None = None) -> dict[str, str]:
        """Environment variables of the workers the plugin starts: Orthanc's credentials (read from
        ``credentials_file``) and the PID of the process they watch (Orthanc).

        Raises
        ------
        ConfigError
            The credentials file cannot be read.
        """
        env = {PARENT_PID_ENV: str(parent_pid)} if parent_pid is not None else {}
        if self.credentials_file is None:
            return env
        try:
            data = json.loads(self.credentials_file.read_text(encoding="utf-8"))
            env.update({USERNAME_ENV: str(data["username"]), PASSWORD_ENV: str(data["password"])})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the credentials file {self.credentials_file}: {exc}") from exc
        return env


def setting_default(name: str) -> Any:
    """The default of the settings field ``name`` (e.g. ``lease_s``); for command-line options."""
    f = _field(name)
    if f.default_factory is not MISSING:
        return f.default_factory()
    if f.default is MISSING:
        raise KeyError(f"settings field {name} has no default")
    return f.default


def setting_type(name: str) -> type:
    """The type of the settings field ``name`` (``float``, ``int``, ``str``, ``Path``, ``ResultSettings``;
    without ``None``); for command-line options."""
    return _base_type(typing.get_type_hints(NodeSettings)[_field(name).name])


def setting_doc(name: str) -> str:
    """The documentation of the settings field ``name``, with its configuration key."""
    f = _field(name)
    return f"{f.metadata['doc']} ({SECTION} field {f.metadata['key']})"


def _field(name: str) -> Field[Any]:
    for f in fields(NodeSettings):
        if f.name == name:
            return f
    raise KeyError(f"no settings field {name}")


def _key(name: str) -> str:
    return str(_field(name).metadata["key"])


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _base_type(hint: Any) -> type:
    """``float`` of ``float``, ``Path`` of ``Path | None``, ``ResultSettings`` of ``ResultSettings``."""
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    kind = origin if origin is not None else hint
    if not isinstance(kind, type):
        raise TypeError(f"settings field of unsupported type {hint!r}")
    return kind


def _convert(value: Any, kind: type) -> Any:
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise TypeError("path expected")
        return Path(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError("true or false expected")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("integer expected")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("number expected")
        return float(value)
    if kind is ResultSettings:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a JSON object of result settings, got {value!r}")
        return ResultSettings.from_mapping(value)
    if not isinstance(value, str):
        raise TypeError("text expected")
    return value
