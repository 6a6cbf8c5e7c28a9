"""Settings of the node, read from the ``LesionAI`` section of Orthanc's configuration.

``lesion-ai node`` writes that section when it generates Orthanc's configuration; a site that writes its
own Orthanc configuration adds it by hand (see the README). Every field is validated, and errors name it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lesion_engine.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["SECTION", "NodeSettings"]

SECTION = "LesionAI"


@dataclass(frozen=True)
class NodeSettings:
    """The node's settings (names as in the ``LesionAI`` configuration section).

    Attributes
    ----------
    home : Path
        The data folder (queue, rules, logs, credentials).
    queue : str
        Job queue URL (``sqlite:///...`` or ``postgresql://...``).
    rules : Path
        The routing-rules file in use; ``PUT /lesion-ai/rules`` rewrites it.
    workers : int
        Worker processes the plugin starts (0: workers run elsewhere).
    python : str
        The interpreter that runs workers (the virtual environment's, not ``sys.executable``).
    orthanc_url : str
        How workers reach Orthanc's REST API.
    credentials_file : Path or None
        JSON file with ``username`` and ``password`` that workers use.
    metadata_name : str
        Study metadata (declared under ``UserMetadata``, key >= 1024) recording what was processed.
    sequence_property : int
        Global property (>= 1024) holding the last change sequence number handled.
    model : str or None
        Model artifact folder; None: the engine's packaged default.
    model_identity : str or None
        Overrides the model identity used in job keys (else derived from the artifact's card).
    processor : str or None
        ``module:function`` of an alternative processor (tests, demos); None: the engine.
    device : str or None
        ``cpu``, ``cuda`` ... for the engine; None: automatic.
    lease_s, heartbeat_s, poll_s : float
        Job lease, heartbeat period and the idle workers' polling period.
    max_attempts : int
        Attempts before a job is marked failed.
    backoff_s, backoff_max_s : float
        Retry back-off (doubling from ``backoff_s`` up to ``backoff_max_s``).
    forward_attempts : int
        Attempts per destination before a send counts as failed (the job is then retried).
    forward_timeout_s : float
        How long a worker waits for one Orthanc send job.
    catch_up : str
        At the first start with an existing database: ``none`` (only changes from now on) or ``all``.
    result_settings : dict
        Fields of :class:`lesion_engine.results.ResultSettings` (manufacturer, series numbers, ...).
    log_dir : Path
        Where the workers' logs go.
    site_packages : str or None
        The virtual environment's site-packages, put first on ``sys.path`` by the entry script.
    """

    home: Path
    queue: str
    rules: Path
    workers: int = 1
    python: str = "python3"
    orthanc_url: str = "http://127.0.0.1:8142"
    credentials_file: Path | None = None
    metadata_name: str = "LesionAI"
    sequence_property: int = 5871
    model: str | None = None
    model_identity: str | None = None
    processor: str | None = None
    device: str | None = None
    lease_s: float = 120.0
    heartbeat_s: float = 10.0
    poll_s: float = 1.0
    max_attempts: int = 5
    backoff_s: float = 10.0
    backoff_max_s: float = 900.0
    forward_attempts: int = 3
    forward_timeout_s: float = 600.0
    catch_up: str = "none"
    result_settings: dict[str, Any] = field(default_factory=dict)
    log_dir: Path = Path("logs")
    site_packages: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ConfigError:
            return ConfigError(f"Orthanc configuration, section {SECTION}, field {_KEYS[name]}: {message}")

        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 0 <= self.workers <= 64:
            raise bad("workers", f"must be an integer from 0 to 64, got {self.workers!r}")
        if not 1024 <= self.sequence_property <= 65535:
            raise bad("sequence_property", "plugins may use global properties from 1024 to 65535")
        for name in ("lease_s", "heartbeat_s", "poll_s", "forward_timeout_s"):
            if not getattr(self, name) > 0:
                raise bad(name, f"must be positive, got {getattr(self, name)!r}")
        if self.heartbeat_s * 2 > self.lease_s:
            raise bad("heartbeat_s", f"must be at most half of {_KEYS['lease_s']} ({self.lease_s})")
        if self.max_attempts < 1 or self.forward_attempts < 1:
            raise bad("max_attempts", "attempt counts must be at least 1")
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise bad("backoff_max_s", "need 0 <= BackoffSeconds <= BackoffMaxSeconds")
        if self.catch_up not in ("none", "all"):
            raise bad("catch_up", f"must be 'none' or 'all', got {self.catch_up!r}")
        if not self.metadata_name or not self.metadata_name.isidentifier():
            raise bad(
                "metadata_name",
                f"must be a metadata name declared under UserMetadata, got {self.metadata_name!r}",
            )
        if self.processor is not None and ":" not in self.processor:
            raise bad("processor", f"must be 'module:function', got {self.processor!r}")

    @classmethod
    def from_orthanc_configuration(cls, configuration: dict[str, Any]) -> NodeSettings:
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
        unknown = sorted(set(section) - set(_FIELDS))
        if unknown:
            raise ConfigError(
                f"Orthanc configuration, section {SECTION}: unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_FIELDS))}"
            )
        for required in ("Home", "Queue", "Rules"):
            if required not in section:
                raise ConfigError(f"Orthanc configuration, section {SECTION}: field {required} is missing")
        values: dict[str, Any] = {}
        for key, value in section.items():
            name, kind = _FIELDS[key]
            if value is None:
                continue
            try:
                values[name] = _convert(value, kind)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"Orthanc configuration, section {SECTION}, field {key}: expected {kind.__name__}, "
                    f"got {value!r}"
                ) from exc
        home = values["home"]
        values.setdefault("log_dir", home / "logs")
        return cls(**values)

    def to_section(self) -> dict[str, Any]:
        """The ``LesionAI`` configuration section for these settings (JSON-ready)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[_KEYS[f.name]] = str(value) if isinstance(value, Path) else value
        return out

    def worker_environment(self) -> dict[str, str]:
        """Environment variables that pass Orthanc's credentials to the workers."""
        if self.credentials_file is None:
            return {}
        try:
            data = json.loads(self.credentials_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the credentials file {self.credentials_file}: {exc}") from exc
        return {
            "LESION_AI_ORTHANC_USERNAME": str(data["username"]),
            "LESION_AI_ORTHANC_PASSWORD": str(data["password"]),
        }


def _convert(value: Any, kind: type) -> Any:
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise TypeError("path expected")
        return Path(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("integer expected")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("number expected")
        return float(value)
    if kind is dict:
        if not isinstance(value, dict):
            raise TypeError("mapping expected")
        return dict(value)
    if not isinstance(value, str):
        raise TypeError("text expected")
    return value


# Configuration key -> (field name, type).
_FIELDS: dict[str, tuple[str, type]] = {
    "Home": ("home", Path),
    "Queue": ("queue", str),
    "Rules": ("rules", Path),
    "Workers": ("workers", int),
    "Python": ("python", str),
    "OrthancUrl": ("orthanc_url", str),
    "CredentialsFile": ("credentials_file", Path),
    "MetadataName": ("metadata_name", str),
    "SequenceProperty": ("sequence_property", int),
    "Model": ("model", str),
    "ModelIdentity": ("model_identity", str),
    "Processor": ("processor", str),
    "Device": ("device", str),
    "LeaseSeconds": ("lease_s", float),
    "HeartbeatSeconds": ("heartbeat_s", float),
    "PollSeconds": ("poll_s", float),
    "MaxAttempts": ("max_attempts", int),
    "BackoffSeconds": ("backoff_s", float),
    "BackoffMaxSeconds": ("backoff_max_s", float),
    "ForwardAttempts": ("forward_attempts", int),
    "ForwardTimeoutSeconds": ("forward_timeout_s", float),
    "CatchUp": ("catch_up", str),
    "ResultSettings": ("result_settings", dict),
    "LogDir": ("log_dir", Path),
    "SitePackages": ("site_packages", str),
}
_KEYS = {name: key for key, (name, _) in _FIELDS.items()}
