"""Real Orthanc servers for the node's integration tests: the node itself and a destination PACS.

Every server listens on free loopback ports and keeps its state under the test's temporary folder;
:class:`OrthancFleet` stops (and if needed kills) every server and worker it started.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.uid import generate_uid

from orthanc_plugin.launch import ORTHANC_ENVIRONMENT, NodeOptions, write_configuration
from orthanc_plugin.node.orthanc_api import RestApiError
from orthanc_plugin.worker.client import OrthancClient
from tests.paths import REPO

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
FAKE_PROCESSOR = "tests.support.node_fakes:factory"
T = TypeVar("T")


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not load libraries after fork
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM this process when the test (or benchmark) process dies, so that
    no Orthanc outlives a run that was killed."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Poll ``predicate`` until it returns a true value; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (RestApiError, OSError) as exc:
            last_error = exc
        time.sleep(interval_s)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {what}" + (f" ({last_error})" if last_error else "")
    )


#: The packaged routing rules, with their results sent to the modality ``pacs``.
RULES_TO_PACS = (
    (REPO / "orthanc_plugin" / "data" / "rules.yaml")
    .read_text()
    .replace("      modalities: []", "      modalities: [pacs]")
)


class OrthancServer:
    """One Orthanc process with a given configuration file."""

    def __init__(
        self,
        name: str,
        home: Path,
        config: Path,
        http_port: int,
        dicom_port: int,
        aet: str,
        credentials: dict[str, str] | None,
        env: dict[str, str],
    ) -> None:
        self.name = name
        self.home = home
        self.config = config
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.aet = aet
        self.credentials = credentials
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / f"{name}-orthanc.log"
        self.worker_pids: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def client(self) -> OrthancClient:
        creds = self.credentials or {}
        return OrthancClient(self.url, creds.get("username"), creds.get("password"), timeout_s=60)

    def fetch(
        self,
        path: str,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Request ``path`` exactly as written (no normalization of ``..`` or percent-escapes; GET unless
        ``method`` says otherwise): status, headers (lower-case names) and body, whatever the status."""
        sent = dict(headers or {})
        if auth and self.credentials:
            token = f"{self.credentials['username']}:{self.credentials['password']}".encode()
            sent["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            if body is not None:
                sent["Content-Length"] = str(len(body))
            for key, value in sent.items():
                connection.putheader(key, value)
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def start(self, timeout_s: float = 60.0) -> OrthancServer:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [ORTHANC, str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        client = self.client()

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"Orthanc {self.name} exited at start:\n{self.log.read_text()[-3000:]}")
            client.get_json("/system")
            return True

        wait_for(up, timeout_s, f"Orthanc {self.name} to start")
        return self

    def note_workers(self) -> None:
        """Remember the node's worker PIDs (to be sure they are gone at the end)."""
        try:
            health = self.client().get_json("/lesion-ai/health")
        except RestApiError:
            return
        for worker in health.get("workers", {}).get("processes", []):
            if worker.get("pid"):
                self.worker_pids.add(int(worker["pid"]))

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop Orthanc gracefully (SIGTERM; SIGKILL if it hangs)."""
        if self.process is None:
            return
        self.note_workers()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"Orthanc {self.name} did not stop within {timeout_s:.0f} s") from None
        self.process = None
        self._reap_workers()

    def kill(self) -> None:
        """SIGKILL Orthanc (workers notice that their parent died and exit)."""
        assert self.process is not None
        self.note_workers()
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def _reap_workers(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        for pid in sorted(self.worker_pids):
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.worker_pids.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


class OrthancFleet:
    """Starts nodes and plain Orthanc servers for one test; :meth:`close` stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[OrthancServer] = []

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LESION_AI_")}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(ORTHANC_ENVIRONMENT)  # as `lesion-ai node` runs Orthanc
        env.update(extra or {})
        return env

    def node(
        self,
        name: str = "node",
        *,
        workers: int = 1,
        stable_age: int = 2,
        processor: str | None = FAKE_PROCESSOR,
        extra: dict[str, Any] | None = None,
        site: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        with_plugin: bool = True,
        home: Path | None = None,
        http_port: int | None = None,
        dicom_port: int | None = None,
        rules: str | None = None,
        cluster: str | None = None,
        storage: Path | None = None,
    ) -> OrthancServer:
        """Configure (not start) a node under ``root/name`` (``rules``: the routing rules' YAML text;
        ``cluster``: the cluster database's URL, with the ``storage`` folder the cluster shares; the
        server's identity is ``name``)."""
        home = home or self.root / name
        home.mkdir(parents=True, exist_ok=True)
        if rules is not None:
            (home / "rules.yaml").write_text(rules)
        if site is not None:
            (home / "orthanc-site.json").write_text(json.dumps(site))
        section: dict[str, Any] = {
            "LeaseSeconds": 6.0,
            "HeartbeatSeconds": 1.0,
            "PollSeconds": 0.3,
            "BackoffSeconds": 1.0,
            "BackoffMaxSeconds": 4.0,
            "ForwardTimeoutSeconds": 60.0,
        }
        if processor:
            section["Processor"] = processor
        section.update(extra or {})
        options = NodeOptions(
            home=home,
            http_port=http_port or free_port(),
            dicom_port=dicom_port or free_port(),
            aet="LESIONAI",
            workers=workers,
            stable_age=stable_age,
            remote_access=False,
            queue=None,
            model=None,
            device=None,
            name=name,
            extra=section,
            with_plugin=with_plugin,
            cluster=cluster,
            server_id=name if cluster else None,
            storage=storage,
        )
        config, credentials, _ = write_configuration(options)
        server = OrthancServer(
            name, home, config, options.http_port, options.dicom_port, "LESIONAI", credentials, self._env(env)
        )
        self.servers.append(server)
        return server

    def pacs(self, name: str = "pacs") -> OrthancServer:
        """Configure (not start) a plain Orthanc used as destination PACS (no authentication)."""
        home = self.root / name
        (home / "db").mkdir(parents=True, exist_ok=True)
        http_port, dicom_port = free_port(), free_port()
        config = home / "orthanc.json"
        config.write_text(
            json.dumps(
                {
                    "Name": name,
                    "StorageDirectory": str(home / "db"),
                    "IndexDirectory": str(home / "db"),
                    "HttpPort": http_port,
                    "DicomPort": dicom_port,
                    "DicomAet": name.upper(),
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "Plugins": [],
                    "SyncStorageArea": False,
                }
            )
        )
        server = OrthancServer(name, home, config, http_port, dicom_port, name.upper(), None, self._env(None))
        self.servers.append(server)
        return server

    def close(self) -> None:
        """Stop every server, all at once (an Orthanc takes about 3 s to stop its HTTP and DICOM servers)."""

        def stop(server: OrthancServer) -> str | None:
            try:
                server.stop()
            except Exception as exc:
                server._reap_workers()
                return f"{server.name}: {exc}"
            return None

        with ThreadPoolExecutor(max_workers=max(1, len(self.servers))) as pool:
            errors = [e for e in pool.map(stop, reversed(self.servers)) if e is not None]
        self.servers.clear()
        if errors:
            raise AssertionError("; ".join(errors))


# -- studies ----------------------------------------------------------------------------------------------
def count_by_modality(client: OrthancClient, study_id: str) -> dict[str, int]:
    """Number of series per Modality in a study."""
    out: dict[str, int] = {}
    for series in client.get_json(f"/studies/{study_id}/series"):
        modality = series["MainDicomTags"].get("Modality", "")
        out[modality] = out.get(modality, 0) + len(series["Instances"])
    return out


def study_ids(client: OrthancClient) -> list[str]:
    return list(client.get_json("/studies"))


def find_study(client: OrthancClient, study_uid: str) -> str | None:
    found = json.loads(client.request("POST", "/tools/lookup", study_uid.encode(), "text/plain"))
    return next((item["ID"] for item in found if item["Type"] == "Study"), None)


def jobs(client: OrthancClient, state: str | None = None) -> list[dict[str, Any]]:
    query = f"?state={state}" if state else ""
    return list(client.get_json(f"/lesion-ai/jobs{query}")["jobs"])


def make_study(
    folder: Path,
    *,
    modality: str = "MR",
    study_description: str = "MR PROSTATE",
    body_part: str = "PROSTATE",
    series: tuple[str, ...] = ("t2_tse_tra", "ep2d_diff_tra_ADC"),
    images: int = 3,
    patient_id: str | None = None,
) -> str:
    """Write a tiny synthetic study (a few 8x8 images per series); returns its StudyInstanceUID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = str(generate_uid())
    patient = patient_id or f"TEST-{uuid.uuid4().hex[:8]}"
    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    for number, description in enumerate(series, start=1):
        series_uid = str(generate_uid())
        for index in range(images):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = str(generate_uid())
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.PatientName = "Test^Synthetic"
            ds.PatientID = patient
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyDescription = study_description
            ds.SeriesDescription = description
            ds.BodyPartExamined = body_part
            ds.Modality = modality
            ds.Manufacturer = "SIEMENS"
            ds.SeriesNumber = number
            ds.InstanceNumber = index + 1
            ds.StudyDate = "20240101"
            ds.ImagePositionPatient = [0.0, 0.0, float(index * 3)]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [1.0, 1.0]
            ds.Rows = 8
            ds.Columns = 8
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.PixelData = bytes(128)
            pydicom.dcmwrite(folder / f"s{number:02d}_{index:03d}.dcm", ds, enforce_file_format=True)
    return study_uid
