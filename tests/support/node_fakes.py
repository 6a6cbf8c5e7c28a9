"""Fakes for the node's tests: a processor making small SEG and SR objects with deterministic UIDs (no
engine), and, for a worker run in process, Orthanc's REST API in memory and a scripted processor.

Behaviour is steered by environment variables (inherited by the workers that the plugin starts):

``LESION_AI_FAKE_DELAY``     seconds to spend "processing" each study (to kill things mid-job)
``LESION_AI_FAKE_LOG``       a file to which each call appends one line (study UID), to count runs
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from lesion_engine.results.outputs import Output
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApiError
from orthanc_plugin.worker.processing import (
    EngineProcessor,
    ProcessingOutcome,
    ProcessingRequest,
    Processor,
    ProcessorSettings,
    encode,
    headers_of,
)

if TYPE_CHECKING:
    from lesion_engine.anatomy.gland import GlandModel
    from lesion_engine.engine import AnyEngine, Engine, EngineResult
    from lesion_engine.intake.preprocess import PreparedStudy
    from lesion_engine.model.result_types import ModelInfo

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
MANUFACTURER = "Lesion AI"


def _uid(*parts: str) -> str:
    return str(generate_uid(prefix=None, entropy_srcs=list(parts)))


def _object(reference: Dataset, sop_class: str, modality: str, kind: str, key: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    study = str(reference.StudyInstanceUID)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(study, key, kind, "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = _uid(study, key, kind, "series")
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
    ):
        if keyword in reference:
            setattr(ds, keyword, reference.get(keyword))
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"fake {kind} (test)"
    return ds


class FakeProcessor:
    """Implements :class:`orthanc_plugin.worker.processing.Processor` without the engine."""

    def __init__(self, settings: ProcessorSettings) -> None:
        self.settings = settings
        self.delay = float(os.environ.get("LESION_AI_FAKE_DELAY", "0") or 0)
        self.log = os.environ.get("LESION_AI_FAKE_LOG")

    def _reference(self, instances: Sequence[bytes]) -> Dataset | None:
        headers = headers_of(instances)
        return next((ds for ds in headers if ds.get("Modality") == "MR"), headers[0] if headers else None)

    def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
        reference = self._reference(instances)
        if reference is None:
            return ProcessingOutcome.could_not_analyse("no readable instance", [])
        if self.log:
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(f"{reference.StudyInstanceUID} {os.getpid()}\n")
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline:
            time.sleep(0.05)
        if reference.get("Modality") != "MR":
            return ProcessingOutcome.could_not_analyse(
                "not an MR study", self.failure(instances, "not an MR study")
            )
        key = request.model
        objects: dict[Output, list[bytes]] = {}
        if Output.SEG in request.outputs:
            objects[Output.SEG] = [encode(_object(reference, SEG_CLASS, "SEG", "seg", key, 9901))]
        if Output.SR in request.outputs:
            objects[Output.SR] = [encode(_object(reference, SR_CLASS, "SR", "sr", key, 9902))]
        return ProcessingOutcome.analysed(
            objects, model={"name": "fake", "version": "1", "sha256": "0" * 64}, details={"lesions": 1}
        )

    def failure(self, instances: Sequence[bytes], reason: str) -> list[bytes]:
        reference = self._reference(instances)
        if reference is None:
            return []
        return [encode(_object(reference, SR_CLASS, "SR", "failure", reason, 9905))]


def factory(settings: ProcessorSettings) -> FakeProcessor:
    """The ``module:factory`` named in the node's ``Processor`` setting."""
    return FakeProcessor(settings)


# -- a worker's surroundings, in memory --------------------------------------------------------------
class FakeRest:
    """Just enough of Orthanc's REST API for a worker."""

    def __init__(self) -> None:
        self.studies = {"st1": ["se1", "se2"]}
        self.series = {"se1": ["i1", "i2"], "se2": ["i3"]}
        self.files = {i: f"DICOM {i}".encode() for i in ("i1", "i2", "i3")}
        self.stored: list[bytes] = []
        self.metadata: dict[str, str] = {}
        self.sends: list[tuple[str, list[str]]] = []
        self.send_outcomes: list[str] = []  # "Success" / "Failure" per Orthanc job, in order
        self.jobs: dict[str, str] = {}
        #: Behind a load balancer: the Orthanc jobs this worker starts run on another server.
        self.jobs_elsewhere = False
        self.study_uids = {"st1": "1.2.826.0.1.3680043.8.498.1"}
        self.finds: list[Any] = []
        #: Manufacturer of a series, where one is set (``GET /studies/{id}/series`` lists it).
        self.manufacturers: dict[str, str] = {}

    def get_json(self, path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[0] == "studies" and len(parts) == 3 and parts[2] == "series" and parts[1] in self.studies:
            return [
                {
                    "ID": series,
                    "Instances": list(self.series.get(series, [])),
                    "MainDicomTags": {"Manufacturer": self.manufacturers.get(series, "Siemens")},
                }
                for series in self.studies[parts[1]]
            ]
        if parts[0] == "studies" and len(parts) == 2 and parts[1] in self.studies:
            tags = {"StudyInstanceUID": self.study_uids[parts[1]]} if parts[1] in self.study_uids else {}
            return {"ID": parts[1], "Series": self.studies[parts[1]], "MainDicomTags": tags}
        if parts[0] == "series" and parts[1] in self.series:
            return {"ID": parts[1], "Instances": self.series[parts[1]]}
        if parts[0] == "instances" and parts[1].startswith("r"):
            return {"ID": parts[1]}
        if parts[0] == "jobs" and parts[1] in self.jobs:
            state = self.jobs[parts[1]]
            return {
                "State": state,
                "ErrorDescription": "Error in the network protocol" if state == "Failure" else "",
            }
        raise NotFoundError(f"GET {path}", 404)

    def get_bytes(self, path: str) -> bytes:
        parts = path.strip("/").split("/")
        if parts[0] == "instances" and parts[-1] == "file" and parts[1] in self.files:
            return self.files[parts[1]]
        if parts[0] == "studies" and parts[2] == "metadata" and parts[3] in self.metadata:
            return self.metadata[parts[3]].encode()
        raise NotFoundError(f"GET {path}", 404)

    def post_json(self, path: str, body: Any) -> Any:
        if path == "/tools/find":
            self.finds.append(body)
            uid = body["Query"]["StudyInstanceUID"]
            return [study for study, value in self.study_uids.items() if value == uid]
        if path.endswith("/store") or path.endswith("/stow"):
            self.sends.append((path, list(body["Resources"])))
            outcome = self.send_outcomes.pop(0) if self.send_outcomes else "Success"
            if body.get("Synchronous") is True:
                if outcome != "Success":
                    raise RestApiError(f"POST {path}: HTTP 500: Error in the network protocol", 500)
                return {"Description": "REST API", "InstancesCount": len(body["Resources"])}
            assert body["Asynchronous"] is True
            job = f"job{len(self.jobs)}"
            if self.jobs_elsewhere:
                return {"ID": job}  # started on another Orthanc behind a load balancer: unknown here
            self.jobs[job] = outcome
            return {"ID": job}
        raise RestApiError(f"POST {path}", 400)

    def post_bytes(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        assert path == "/instances"
        self.stored.append(body)
        return {"ID": f"r{len(self.stored)}", "ParentSeries": f"rs-{body.decode()[:6]}", "Status": "Success"}

    def get_versioned(self, path: str) -> tuple[bytes, str | None]:
        data = self.get_bytes(path)
        return data, _etag(data) if "/metadata/" in path else None

    def put_text(self, path: str, text: str, if_match: str | None = None) -> bytes:
        """As Orthanc with CheckRevisions: a value is replaced only over the version read (else 409)."""
        name = path.rsplit("/", 1)[-1]
        current = self.metadata.get(name)
        if current is not None and if_match != _etag(current.encode()):
            raise RestApiError(f"PUT {path}: HTTP 409: A bad revision number was provided", 409)
        self.metadata[name] = text
        return b""


def _etag(data: bytes) -> str:
    """Orthanc's ETag of a metadata value: its revision and the MD5 of its content."""
    return f'"0-{hashlib.md5(data).hexdigest()}"'


class Scripted:
    """A processor whose outcomes are scripted: 'ok', 'failed', or an exception to raise."""

    def __init__(self, *script: str | Exception) -> None:
        self.script = list(script)
        self.calls: list[int] = []

    def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
        self.calls.append(len(instances))
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        if step == "failed":
            return ProcessingOutcome.could_not_analyse(
                "no axial T2W", self.failure(instances, "no axial T2W")
            )
        return ProcessingOutcome.analysed(
            {Output.SEG: [b"SEG..."], Output.SR: [b"SR...."]},
            model={"name": "m", "version": "1", "sha256": "0"},
        )

    def failure(self, instances: Sequence[bytes], reason: str) -> list[bytes]:
        return [b"FAIL-SR"]


class _GlandBeside:
    """An ungated engine whose results carry the gland the gate would have found (volume, mask, model), so
    that the SR reports the prostate volume beside lesions the gate would have removed."""

    def __init__(self, engine: Engine, gland: GlandModel) -> None:
        self._engine = engine
        self._gland = gland

    @property
    def model_info(self) -> ModelInfo:
        return self._engine.model_info

    def warm_up(self) -> float:
        return self._engine.warm_up() + self._gland.warm_up()

    def run(self, prepared: PreparedStudy) -> EngineResult:
        result = self._engine.run(prepared)
        found = self._gland.segment(prepared.t2w)
        result.gland_volume_ml, result.gland_mask = found.volume_ml, found.mask
        result.gland_model = self._gland.card.to_dict()
        return result


class UngatedEngineProcessor(EngineProcessor):
    """The real engine without the anatomical gate's filtering: on the fixture, the default model's lesions
    lie outside the gland, so the gated engine reports none; the viewer's browser test needs lesions to
    show. The gland model still runs: the SR reports the prostate volume, as with the gate."""

    def engine(self) -> AnyEngine:
        from lesion_engine.anatomy.gland import GlandSettings, load_gland_model
        from lesion_engine.engine import Engine  # torch: only in the workers that run this processor

        with self._lock:
            if self._engine is None:
                ungated = Engine.from_artifact(
                    self.settings.model,
                    self.settings.device,
                    threads=self.settings.threads,
                    gland=GlandSettings(enabled=False),
                )
                gland, _ = load_gland_model(GlandSettings(required=True), threads=self.settings.threads)
                assert gland is not None  # required: an error, not None, when it cannot load
                self._engine = cast("Engine", _GlandBeside(ungated, gland))
            return self._engine


def ungated_engine(settings: ProcessorSettings) -> Processor:
    """The ``module:factory`` of :class:`UngatedEngineProcessor` for the node's ``Processor`` setting."""
    return UngatedEngineProcessor(settings)
