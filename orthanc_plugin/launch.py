"""Starting the node: Orthanc's configuration from its packaged template, credentials, the data folder.

Everything the node keeps lives in one data folder (``var/`` by default, ``LESION_AI_HOME``):

=========================  ==================================================================
``orthanc.json``           Orthanc's configuration, generated at every start (mode 0600)
``orthanc-site.json``      optional site overrides merged over it (modalities, peers, DICOMweb)
``credentials.json``       the REST API's user, generated at the first start (mode 0600)
``rules.yaml``             routing rules in force (from ``orthanc_plugin/data/rules.yaml`` at first start)
``orthanc-db/``            Orthanc's SQLite index and storage
``queue.sqlite``           the job queue
``worker-settings.json``   the workers' settings, written by the plugin at each start (no credentials)
``logs/``                  the workers' logs
=========================  ==================================================================
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from orthanc_plugin.admin.routes import MAX_REQUEST_BYTES
from orthanc_plugin.jobqueue import sqlite_url
from orthanc_plugin.models.registry import MAX_UPLOAD_BYTES
from orthanc_plugin.node.settings import (
    DEFAULT_AET,
    DEFAULT_DICOM_PORT,
    DEFAULT_HTTP_PORT,
    SECTION,
    NodeSettings,
    setting_default,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_AET",
    "DEFAULT_DICOM_PORT",
    "DEFAULT_HTTP_PORT",
    "ORTHANC_ENVIRONMENT",
    "NodeOptions",
    "cluster_configuration",
    "cluster_models_folder",
    "deep_merge",
    "ensure_credentials",
    "port_in_use",
    "write_configuration",
]

#: Environment variables Orthanc runs with (set when the environment does not already give them):
#:
#: * ``TCP_NODELAY=1``: DCMTK (Orthanc's DICOM layer) keeps Nagle's algorithm on otherwise, and every C-STORE
#:   waits for a delayed ACK (about 40 ms per instance): ingestion is several times faster without it.
#: * ``MALLOC_MMAP_THRESHOLD_=1048576``: glibc serves each buffer of 1 MB or more (a request body, a DICOM
#:   file) from its own mapping and returns it to the system when freed. With glibc's default, sliding
#:   threshold, 200 refused 6 MB requests left Orthanc 60 to 80 MB larger, kept in its heaps for good. The
#:   workers Orthanc's plugin starts do not inherit it (:data:`orthanc_plugin.worker.supervisor.ORTHANC_ONLY_ENVIRONMENT`).
ORTHANC_ENVIRONMENT = {"TCP_NODELAY": "1", "MALLOC_MMAP_THRESHOLD_": "1048576"}
DEFAULT_PLUGINS_DIR = "/usr/share/orthanc/plugins"
METADATA_KEY = 1024
ENTRY_SCRIPT = Path(__file__).resolve().parent / "entry" / "lesion_ai_entry.py"


def packaged_file(name: str) -> str:
    """Text of one of the node's packaged files (``orthanc_plugin/data``: ``orthanc.json.in``, ``rules.yaml``).

    Read through :mod:`importlib.resources`, so that an installed wheel finds them as a checkout does.
    """
    return files("orthanc_plugin").joinpath("data", name).read_text(encoding="utf-8")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {value!r}") from exc


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


@dataclass(frozen=True)
class NodeOptions:
    """What ``lesion-ai node`` needs to generate Orthanc's configuration.

    Defaults come from the environment: ``LESION_AI_HOME`` (``var``), ``LESION_AI_HTTP_PORT`` (8142),
    ``LESION_AI_DICOM_PORT`` (4342), ``LESION_AI_AET`` (LESIONAI), ``LESION_AI_WORKERS`` (1),
    ``LESION_AI_STABLE_AGE`` (30 s), ``LESION_AI_REMOTE_ACCESS`` (0: HTTP from this machine only),
    ``LESION_AI_QUEUE`` (SQLite in the data folder), ``LESION_AI_MODEL`` (packaged default),
    ``LESION_AI_DEVICE``, ``LESION_AI_ORTHANC_PLUGINS`` (Debian's plugin folder), ``LESION_AI_VIEWER``
    (1: serve the OHIF viewer at ``/lesion-ai/viewer/``; 0: off).

    Cluster mode (several Orthancs on one PostgreSQL database): ``LESION_AI_CLUSTER`` (the database's
    ``postgresql://`` URL: Orthanc's index, the job queue unless ``LESION_AI_QUEUE`` names another, and the
    cluster's own tables), ``LESION_AI_SERVER_ID`` (this Orthanc's identity, unique in the cluster; default
    the host name and HTTP port) and ``LESION_AI_STORAGE`` (the storage folder every Orthanc of the cluster
    shares; required in cluster mode).
    """

    home: Path = field(default_factory=lambda: Path(os.environ.get("LESION_AI_HOME", "var")))
    http_port: int = field(default_factory=lambda: _env_int("LESION_AI_HTTP_PORT", DEFAULT_HTTP_PORT))
    dicom_port: int = field(default_factory=lambda: _env_int("LESION_AI_DICOM_PORT", DEFAULT_DICOM_PORT))
    aet: str = field(default_factory=lambda: os.environ.get("LESION_AI_AET", DEFAULT_AET))
    workers: int = field(default_factory=lambda: _env_int("LESION_AI_WORKERS", setting_default("workers")))
    stable_age: int = field(default_factory=lambda: _env_int("LESION_AI_STABLE_AGE", 30))
    remote_access: bool = field(default_factory=lambda: os.environ.get("LESION_AI_REMOTE_ACCESS", "0") == "1")
    queue: str | None = field(default_factory=lambda: os.environ.get("LESION_AI_QUEUE") or None)
    model: str | None = field(default_factory=lambda: os.environ.get("LESION_AI_MODEL") or None)
    device: str | None = field(default_factory=lambda: os.environ.get("LESION_AI_DEVICE") or None)
    plugins_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("LESION_AI_ORTHANC_PLUGINS", DEFAULT_PLUGINS_DIR))
    )
    viewer: bool = field(default_factory=lambda: _env_flag("LESION_AI_VIEWER", setting_default("viewer")))
    cluster: str | None = field(default_factory=lambda: os.environ.get("LESION_AI_CLUSTER") or None)
    server_id: str | None = field(default_factory=lambda: os.environ.get("LESION_AI_SERVER_ID") or None)
    storage: Path | None = field(
        default_factory=lambda: (
            Path(os.environ["LESION_AI_STORAGE"]) if os.environ.get("LESION_AI_STORAGE") else None
        )
    )
    name: str = "lesion-ai"
    #: Further ``LesionAI`` section fields (e.g. ``Processor``, ``LeaseSeconds``) for tests and sites.
    extra: dict[str, Any] = field(default_factory=dict)
    #: Further Orthanc options merged over the generated configuration.
    orthanc_overrides: dict[str, Any] = field(default_factory=dict)
    #: Load the node's plugin (False: plain Orthanc with the same storage, e.g. for comparisons).
    with_plugin: bool = True

    def __post_init__(self) -> None:
        for name in ("http_port", "dicom_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} must be a TCP port (1-65535), got {port}")
        if self.http_port == self.dicom_port:
            raise ValueError(f"the HTTP and DICOM ports must differ (both {self.http_port})")
        if not 1 <= len(self.aet) <= 16 or "\\" in self.aet or not self.aet.isprintable():
            raise ValueError(f"aet must be 1 to 16 printable characters, got {self.aet!r}")
        if self.stable_age < 1:
            raise ValueError(f"stable_age must be at least 1 second, got {self.stable_age}")
        if self.cluster is not None:
            if not self.cluster.startswith(("postgresql://", "postgres://")):
                raise ValueError(
                    f"LESION_AI_CLUSTER must be a postgresql:// URL, got {self.cluster.split('://')[0]!r}"
                )
            if self.storage is None:
                raise ValueError(
                    "cluster mode needs the storage folder every Orthanc of the cluster shares: set "
                    "LESION_AI_STORAGE"
                )

    @property
    def server_identity(self) -> str:
        """This Orthanc's identity in a cluster (``server_id``, else the host name and HTTP port)."""
        return self.server_id or f"{socket.gethostname()}:{self.http_port}"


PRIVATE_UMASK = 0o077
"""The node's umask: what it writes (Orthanc's storage and index, queue, logs, rules) is 0600 in 0700 folders."""


def private_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) if needed and make it 0700: only the node's user may enter it.

    A data folder made by an earlier version with 0755 is tightened too, so that nothing under it (patient
    data in Orthanc's storage, the queue, logs) is readable by other local users, whatever the files' modes.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)


def ensure_credentials(home: Path) -> tuple[dict[str, str], bool]:
    """The REST API's credentials, generated at the first start into ``credentials.json`` (mode 0600); a
    generated password never starts with ``-``, so that it can be given to ``--password`` as it is.

    Returns
    -------
    credentials : dict
        ``username`` and ``password``.
    created : bool
        True when they were generated now (the caller shows them once).
    """
    path = home / "credentials.json"
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not {"username", "password"} <= set(data):
            raise ValueError(f"{path} must hold a JSON object with 'username' and 'password'")
        return {"username": str(data["username"]), "password": str(data["password"])}, False
    private_folder(home)
    password = secrets.token_urlsafe(18)
    while password.startswith("-"):  # one in 64: a command line would read it as an option (--password -x...)
        password = secrets.token_urlsafe(18)
    credentials = {"username": "lesion-ai", "password": password}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(credentials, handle, indent=2)
        handle.write("\n")
    return credentials, True


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base`` (mappings merged key by key, other values replaced)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:  # noqa: S104 - Orthanc listens on all addresses
    """True when a TCP server already listens on ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def write_body_limits(home: Path) -> Path:
    """Write the Lua request filter that refuses a body over its route's cap from the headers, before Orthanc
    reads it (``orthanc_plugin/data/body_limits.lua.in``, with the caps of
    :func:`orthanc_plugin.admin.routes.body_limit`). Orthanc's Lua filter, not the Python plugin's: orthanc-python
    4.0 decodes each request's URI to text before a Python filter runs, and answers 500 for one that is not
    UTF-8 (``/lesion-ai/%ff``)."""
    text = Template(packaged_file("body_limits.lua.in")).substitute(
        request_max=MAX_REQUEST_BYTES, upload_max=MAX_UPLOAD_BYTES
    )
    path = home / "body_limits.lua"
    fd = os.open(path.with_suffix(".lua.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path.with_suffix(".lua.tmp"), path)
    return path


def cluster_models_folder(storage: Path) -> Path:
    """The models folder of a cluster: in the shared storage folder, so that every server and worker reads
    the same artifacts and the same registry (active, shadow, history; locked with ``flock``). Orthanc keeps
    its files in two-hex-digit folders beside it."""
    return storage.resolve() / "lesion-ai-models"


def cluster_configuration(url: str, server: str) -> dict[str, Any]:
    """Orthanc's options of a cluster member: the index in PostgreSQL (Debian's orthanc-postgresql), not
    locked, so that several Orthancs share it, and this server's own identity (Orthanc Book, "Scalability":
    ``Lock`` false, ``DatabaseServerIdentifier`` unique)."""
    return {
        "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "ConnectionUri": url, "Lock": False},
        "DatabaseServerIdentifier": server,
    }


def write_configuration(options: NodeOptions) -> tuple[Path, dict[str, str], bool]:
    """Prepare the data folder and write Orthanc's configuration from ``orthanc_plugin/data/orthanc.json.in``.

    Returns
    -------
    config : Path
        The generated ``orthanc.json``.
    credentials : dict
        ``username`` and ``password`` of the REST API.
    created : bool
        True when the credentials were generated now.
    """
    home = options.home.resolve()
    for folder in (home, home / "orthanc-db", home / "logs"):
        private_folder(folder)
    credentials, created = ensure_credentials(home)
    rules = home / "rules.yaml"
    if not rules.exists():
        fd = os.open(rules, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(packaged_file("rules.yaml"))
    settings = NodeSettings(
        home=home,
        queue=options.queue or options.cluster or sqlite_url(home / "queue.sqlite"),
        rules=rules,
        workers=options.workers,
        python=sys.executable,
        orthanc_url=f"http://127.0.0.1:{options.http_port}",
        credentials_file=home / "credentials.json",
        model=str(Path(options.model).resolve()) if options.model else None,
        device=options.device,
        log_dir=home / "logs",
        site_packages=_site_packages(),
        viewer=options.viewer,
        cluster=options.cluster or "",
        server_identifier=options.server_identity if options.cluster else "",
        models_dir=cluster_models_folder(options.storage) if options.cluster and options.storage else None,
    )
    section = deep_merge(settings.to_section(), options.extra)
    NodeSettings.from_orthanc_configuration({SECTION: section})  # validate the extras too
    plugins = [str(options.plugins_dir / "libOrthancDicomWeb.so")]
    if options.with_plugin:
        plugins.insert(0, str(options.plugins_dir / "libOrthancPython.so"))
    if options.cluster:
        plugins.append(str(options.plugins_dir / "libOrthancPostgreSQLIndex.so"))
    values = {
        "name": options.name,
        "storage_dir": str(options.storage.resolve() if options.storage else home / "orthanc-db"),
        "index_dir": str(home / "orthanc-db"),
        "http_port": options.http_port,
        "remote_access": options.remote_access,
        "registered_users": {credentials["username"]: credentials["password"]},
        "aet": options.aet,
        "dicom_port": options.dicom_port,
        "stable_age": options.stable_age,
        "metadata_name": settings.metadata_name,
        "metadata_key": METADATA_KEY,
        "plugins": plugins,
        "entry_script": str(ENTRY_SCRIPT),
        "lesion_ai": section,
    }
    values["lua_scripts"] = [str(write_body_limits(home))]
    template = Template(packaged_file("orthanc.json.in"))
    config = json.loads(template.substitute({k: json.dumps(v) for k, v in values.items()}))
    if not options.with_plugin:
        for key in ("PythonScript", "Python"):
            config.pop(key, None)
    if options.cluster:
        config.update(cluster_configuration(options.cluster, options.server_identity))
    site = home / "orthanc-site.json"
    if site.exists():
        config = deep_merge(config, json.loads(site.read_text(encoding="utf-8")))
    config = deep_merge(config, options.orthanc_overrides)
    path = home / "orthanc.json"
    fd = os.open(path.with_suffix(".json.tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    os.replace(path.with_suffix(".json.tmp"), path)
    return path, credentials, created
