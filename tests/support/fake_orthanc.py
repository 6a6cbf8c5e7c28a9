"""A fake of Orthanc's embedded ``orthanc`` module, for testing the plugin's logic without Orthanc.

It keeps studies, series and instances in memory, logs changes like Orthanc's ``/changes``, stores global
properties and metadata, and answers the REST URIs the plugin uses (the same JSON shapes as Orthanc 1.10).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.paths import REPO

if TYPE_CHECKING:
    from orthanc_plugin.node.settings import NodeSettings
    from orthanc_plugin.plugin import NodePlugin


class ChangeType:
    COMPLETED_SERIES = 0
    DELETED = 1
    NEW_CHILD_INSTANCE = 2
    NEW_INSTANCE = 3
    NEW_PATIENT = 4
    NEW_SERIES = 5
    NEW_STUDY = 6
    STABLE_PATIENT = 7
    STABLE_SERIES = 8
    STABLE_STUDY = 9
    ORTHANC_STARTED = 10
    ORTHANC_STOPPED = 11


class ResourceType:
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3
    NONE = 4


class OrthancException(Exception):  # noqa: N818 - Orthanc's name
    """As raised by the real module: args = (code, description)."""


@dataclass
class FakeSeries:
    id: str
    study: str
    tags: dict[str, str]
    instances: list[str]
    sop_class: str
    remote_aet: str
    remote_ip: str


@dataclass
class FakeStudy:
    id: str
    tags: dict[str, str]
    patient: dict[str, str]
    series: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    stable: bool = False


_PATIENT_KEYS = ("PatientID", "PatientName", "PatientSex", "PatientBirthDate")


class FakeOrthanc:
    """The fake module (use an instance where the plugin expects the ``orthanc`` module)."""

    ChangeType = ChangeType
    ResourceType = ResourceType
    OrthancException = OrthancException

    def __init__(self, configuration: dict[str, Any] | None = None) -> None:
        self.configuration = configuration or {}
        self.properties: dict[int, str] = {}
        self.studies: dict[str, FakeStudy] = {}
        self.series: dict[str, FakeSeries] = {}
        self.files: dict[str, bytes] = {}
        self.changes: list[dict[str, Any]] = []
        self.on_change: Callable[[int, int, str], None] | None = None
        self.rest_callbacks: list[tuple[re.Pattern[str], Callable[..., None]]] = []
        self.logs: list[tuple[str, str]] = []
        self.modalities: list[str] = ["pacs"]
        self.peers: list[str] = []
        self.dicomweb: list[str] = []
        self.fail_next_get: Exception | None = None

    # -- module API ---------------------------------------------------------------------------------
    def GetConfiguration(self) -> str:  # noqa: N802
        return json.dumps(self.configuration)

    def GetGlobalProperty(self, key: int, default: str) -> str:  # noqa: N802
        if key < 1024:
            raise OrthancException(26, "Plugin invoking an unknown service")
        return self.properties.get(key, default)

    def SetGlobalProperty(self, key: int, value: str) -> None:  # noqa: N802
        if key < 1024:
            raise OrthancException(26, "Plugin invoking an unknown service")
        self.properties[key] = value

    def RegisterOnChangeCallback(self, callback: Callable[[int, int, str], None]) -> None:  # noqa: N802
        self.on_change = callback

    def RegisterRestCallback(self, uri: str, callback: Callable[..., None]) -> None:  # noqa: N802
        self.rest_callbacks.append((re.compile(uri), callback))

    def LogInfo(self, message: str) -> None:  # noqa: N802
        self.logs.append(("info", message))

    def LogWarning(self, message: str) -> None:  # noqa: N802
        self.logs.append(("warning", message))

    def LogError(self, message: str) -> None:  # noqa: N802
        self.logs.append(("error", message))

    def RestApiGetAfterPlugins(self, uri: str) -> bytes:  # noqa: N802
        return self.RestApiGet(uri)

    def RestApiPost(self, uri: str, body: bytes | str) -> bytes:  # noqa: N802
        raise OrthancException(17, "Unknown resource")

    def RestApiPut(self, uri: str, body: bytes | str) -> bytes:  # noqa: N802
        path = urlsplit(uri).path
        m = re.fullmatch(r"/studies/([^/]+)/metadata/([^/]+)", path)
        if m and m.group(1) in self.studies:
            self.studies[m.group(1)].metadata[unquote(m.group(2))] = (
                body.decode() if isinstance(body, bytes) else body
            )
            return b""
        raise OrthancException(17, "Unknown resource")

    def RestApiGet(self, uri: str) -> bytes:  # noqa: N802
        if self.fail_next_get is not None:
            error, self.fail_next_get = self.fail_next_get, None
            raise error
        parts = urlsplit(uri)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        return json.dumps(self._get(path, query)).encode() if not path.endswith("/file") else self._file(path)

    # -- REST emulation ------------------------------------------------------------------------------
    def _missing(self) -> Exception:
        return OrthancException(17, "Unknown resource")

    def _file(self, path: str) -> bytes:
        m = re.fullmatch(r"/instances/([^/]+)/file", path)
        if not m or m.group(1) not in self.files:
            raise self._missing()
        return self.files[m.group(1)]

    def _get(self, path: str, query: dict[str, list[str]]) -> Any:
        if path == "/changes":
            if "last" in query:
                return {"Changes": self.changes[-1:], "Done": True, "Last": len(self.changes)}
            since = int(query.get("since", ["0"])[0])
            limit = int(query.get("limit", ["100"])[0])
            page = [c for c in self.changes if c["Seq"] > since][:limit]
            last = page[-1]["Seq"] if page else len(self.changes)
            return {"Changes": page, "Done": last >= len(self.changes), "Last": last}
        if path == "/statistics":
            return {"CountStudies": len(self.studies), "CountSeries": len(self.series)}
        if path == "/studies":
            since = int(query.get("since", ["0"])[0])
            limit = int(query.get("limit", ["0"])[0]) or len(self.studies)
            chosen = list(self.studies)[since : since + limit]
            if "expand" in query:
                return [self._get(f"/studies/{study_id}", {}) for study_id in chosen]
            return chosen
        if path == "/modalities":
            return self.modalities
        if path == "/peers":
            return self.peers
        if path == "/dicom-web/servers":
            return self.dicomweb
        if m := re.fullmatch(r"/studies/([^/]+)", path):
            study = self.studies.get(m.group(1))
            if study is None:
                raise self._missing()
            return {
                "ID": study.id,
                "IsStable": study.stable,
                "MainDicomTags": study.tags,
                "PatientMainDicomTags": study.patient,
                "Series": study.series,
                "Type": "Study",
            }
        if m := re.fullmatch(r"/studies/([^/]+)/series", path):
            study = self.studies.get(m.group(1))
            if study is None:
                raise self._missing()
            return [self._get(f"/series/{series_id}", {}) for series_id in study.series]
        if m := re.fullmatch(r"/studies/([^/]+)/metadata/([^/]+)", path):
            study = self.studies.get(m.group(1))
            name = unquote(m.group(2))
            if study is None or name not in study.metadata:
                raise self._missing()
            return json.loads(study.metadata[name])
        if m := re.fullmatch(r"/series/([^/]+)", path):
            series = self.series.get(m.group(1))
            if series is None:
                raise self._missing()
            return {
                "ID": series.id,
                "MainDicomTags": series.tags,
                "Instances": series.instances,
                "ParentStudy": series.study,
                "Type": "Series",
            }
        if m := re.fullmatch(r"/instances/([^/]+)/metadata", path):
            series = next((s for s in self.series.values() if m.group(1) in s.instances), None)
            if series is None:
                raise self._missing()
            return {
                "RemoteAET": series.remote_aet,
                "RemoteIP": series.remote_ip,
                "CalledAET": "LESIONAI",
                "SopClassUid": series.sop_class,
                "Origin": "DicomProtocol",
            }
        if m := re.fullmatch(r"/instances/([^/]+)/simplified-tags", path):
            if m.group(1) not in self.files:
                raise self._missing()
            ds = pydicom.dcmread(io.BytesIO(self.files[m.group(1)]), stop_before_pixels=True)
            return {e.keyword: str(e.value) for e in ds if e.keyword and e.VR != "SQ"}
        raise self._missing()

    # -- building test data--------------------------------------------------------------------------
    def _log(self, change: str, resource: str, kind: str) -> None:
        self.changes.append(
            {
                "ChangeType": change,
                "ID": resource,
                "ResourceType": kind,
                "Path": f"/{kind.lower()}s/{resource}",
                "Seq": len(self.changes) + 1,
                "Date": "20240101T000000",
            }
        )

    def add_study(
        self,
        *,
        description: str = "MR PROSTATE",
        series: list[dict[str, Any]] | None = None,
        patient_id: str = "P1",
        study_id: str | None = None,
    ) -> str:
        """Add a study; each series: Modality, SeriesDescription, BodyPartExamined, Manufacturer,
        sop_class, instances (count), aet, ip. Logs NewStudy/NewSeries/NewInstance changes."""
        study_id = study_id or str(uuid.uuid4())
        study_uid = str(generate_uid())
        study = FakeStudy(
            study_id,
            {"StudyDescription": description, "StudyInstanceUID": study_uid},
            {"PatientID": patient_id, "PatientName": "Doe^John"},
        )
        self.studies[study_id] = study
        self._log("NewStudy", study_id, "Study")
        for spec in series or []:
            self.add_series(study_id, **spec)
        return study_id

    def add_series(
        self,
        study_id: str,
        *,
        Modality: str = "MR",  # noqa: N803 - DICOM keywords
        SeriesDescription: str = "t2_tse_tra",  # noqa: N803
        BodyPartExamined: str | None = "PROSTATE",  # noqa: N803
        Manufacturer: str = "SIEMENS",  # noqa: N803
        sop_class: str = "1.2.840.10008.5.1.4.1.1.4",
        instances: int = 2,
        aet: str = "SCANNER",
        ip: str = "10.1.2.3",
        series_id: str | None = None,
    ) -> str:
        study = self.studies[study_id]
        series_id = series_id or str(uuid.uuid4())
        tags = {
            "Modality": Modality,
            "SeriesDescription": SeriesDescription,
            "Manufacturer": Manufacturer,
            "SeriesInstanceUID": str(generate_uid()),
            "SeriesNumber": str(len(study.series) + 1),
        }
        if BodyPartExamined is not None:
            tags["BodyPartExamined"] = BodyPartExamined
        ids = []
        for index in range(instances):
            instance_id = str(uuid.uuid4())
            ids.append(instance_id)
            self.files[instance_id] = _instance_bytes(study, tags, sop_class, index)
        self.series[series_id] = FakeSeries(series_id, study_id, tags, ids, sop_class, aet, ip)
        study.series.append(series_id)
        study.stable = False
        self._log("NewSeries", series_id, "Series")
        for instance_id in ids:
            self._log("NewInstance", instance_id, "Instance")
        return series_id

    def stabilize(self, study_id: str, notify: bool = True) -> None:
        """Mark a study stable: log StableStudy and call the change callback (as Orthanc does)."""
        self.studies[study_id].stable = True
        self._log("StableStudy", study_id, "Study")
        if notify and self.on_change is not None:
            self.on_change(ChangeType.STABLE_STUDY, ResourceType.STUDY, study_id)

    def rest(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        get: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> FakeOutput:
        """Call the plugin's REST route for ``path`` as Orthanc would (header names in lower case, as
        Orthanc passes them; the URL's arguments only for GET, as Orthanc's SDK gives them); returns what
        it answered."""
        if get and method != "GET":
            raise AssertionError(f"Orthanc passes no URL arguments with {method} requests")
        output = FakeOutput()
        for pattern, callback in self.rest_callbacks:
            if m := pattern.fullmatch(path):
                request: dict[str, Any] = {
                    "method": method,
                    "groups": m.groups(),
                    "get": (get or {}) if method == "GET" else {},
                    "headers": {k.lower(): v for k, v in (headers or {}).items()},
                }
                if method in ("POST", "PUT"):
                    request["body"] = body
                callback(output, path, **request)
                return output
        raise AssertionError(f"no REST callback for {path}")


def _instance_bytes(study: FakeStudy, tags: dict[str, str], sop_class: str, index: int) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = str(generate_uid())
    ds.StudyInstanceUID = study.tags["StudyInstanceUID"]
    ds.PatientID = study.patient["PatientID"]
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, 3.0 * index]
    sagittal = "sag" in tags.get("SeriesDescription", "").lower()
    ds.ImageOrientationPatient = (
        [0.0, 1.0, 0.0, 0.0, 0.0, -1.0] if sagittal else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    )
    ds.ImagePositionPatient = [3.0 * index, 0.0, 0.0] if sagittal else [0.0, 0.0, 3.0 * index]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = 4
    ds.Columns = 4
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class FakeOutput:
    """Records what a REST callback answered."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body: bytes = b""
        self.mime: str | None = None
        self.allowed: str | None = None
        self.headers: dict[str, str] = {}

    def SetHttpHeader(self, key: str, value: str) -> None:  # noqa: N802
        assert self.status is None, "headers must be set before the answer"
        self.headers[key] = value

    def AnswerBuffer(self, buffer: bytes | str, mime_type: str) -> None:  # noqa: N802
        self.status, self.mime = 200, mime_type
        self.body = buffer.encode() if isinstance(buffer, str) else buffer

    def SendHttpStatus(self, status: int, body: str, size: int) -> None:  # noqa: N802 - plugin 4.0 signature
        self.status, self.body = status, body.encode()[:size]

    def SendHttpStatusCode(self, status: int) -> None:  # noqa: N802
        self.status = status

    def SendMethodNotAllowed(self, allowed: str) -> None:  # noqa: N802
        self.status, self.allowed = 405, allowed

    def json(self) -> Any:
        return json.loads(self.body)


def node_settings(home: Path, rules: str | None = None, **fields: Any) -> NodeSettings:
    """Node settings for tests, the data folder ``home``: rules from ``rules`` (YAML text; else the
    packaged rules, unless ``home/rules.yaml`` exists), no workers, catch-up of all changes, the fake
    processor; ``fields`` override :class:`~orthanc_plugin.node.settings.NodeSettings` fields."""
    from orthanc_plugin.jobqueue import sqlite_url
    from orthanc_plugin.node.settings import NodeSettings

    path = home / "rules.yaml"
    if rules is not None:
        path.write_text(rules)
    elif not path.exists():
        shutil.copyfile(REPO / "orthanc_plugin" / "data" / "rules.yaml", path)
    values: dict[str, Any] = {
        "home": home,
        "queue": sqlite_url(home / "queue.sqlite"),
        "rules": path,
        "workers": 0,
        "processor": "tests.support.node_fakes:factory",
        "catch_up": "all",
        **fields,
    }
    return NodeSettings(**values)


@contextlib.contextmanager
def fake_node(
    home: Path, rules: str | None = None, **fields: Any
) -> Iterator[tuple[FakeOrthanc, NodePlugin]]:
    """A plugin installed in a :class:`FakeOrthanc`, with :func:`node_settings` (same arguments); stopped
    on exit."""
    from orthanc_plugin.plugin import NodePlugin

    settings = node_settings(home, rules, **fields)
    fake = FakeOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.install()
    try:
        yield fake, plugin
    finally:
        plugin.stop()
