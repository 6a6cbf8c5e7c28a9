"""A node receiving studies, against the fake ``orthanc`` module with a test clock: synthetic prostate
headers (T2W, ADC, diffusion, DCE), an Orthanc that lists series and instances as they arrive, and one pass
of the plugin's thread (for the completeness and early-start tests)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from orthanc_plugin.jobqueue import JobProgress
from orthanc_plugin.plugin import NodePlugin
from tests.support.fake_orthanc import FakeOrthanc, FakeSeries, FakeStudy, OrthancException, node_settings

MR = "1.2.840.10008.5.1.4.1.1.4"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SLICES = 12
QUIET_S = 3.0


# -- synthetic headers ----------------------------------------------------------------------------------
def _image(
    study: FakeStudy, series_uid: str, description: str, number: int, index: int, z: float, **extra: Any
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study.tags["StudyInstanceUID"]
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = study.patient["PatientID"]
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.SeriesDescription = description
    ds.BodyPartExamined = "PROSTATE"
    ds.SeriesNumber = number
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
    ds.ImagePositionPatient = [-100.0, -100.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = 8
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def t2w(study: FakeStudy, slices: Sequence[float] = range(SLICES), **extra: Any) -> list[Dataset]:
    uid = generate_uid()
    return [_image(study, uid, "t2_tse_tra", 1, i, 3.0 * s, **extra) for i, s in enumerate(slices)]


def adc(study: FakeStudy, slices: Sequence[int] = range(SLICES)) -> list[Dataset]:
    uid = generate_uid()
    kind = ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]
    return [
        _image(study, uid, "ep2d_diff_tra_ADC", 3, i, 3.0 * s, ImageType=kind) for i, s in enumerate(slices)
    ]


def dwi(
    study: FakeStudy, b_values: Sequence[int] = (50, 800), slices: Sequence[int] = range(SLICES)
) -> list[Dataset]:
    uid = generate_uid()
    kind = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]
    out: list[Dataset] = []
    for b in b_values:
        for s in slices:
            out.append(
                _image(
                    study,
                    uid,
                    "ep2d_diff_tra",
                    2,
                    len(out),
                    3.0 * s,
                    ImageType=kind,
                    DiffusionBValue=float(b),
                )
            )
    return out


def dce(study: FakeStudy, images: int = 20) -> list[Dataset]:
    uid = generate_uid()
    return [_image(study, uid, "t1_vibe_dyn_tra", 4, i, 3.0 * (i % SLICES)) for i in range(images)]


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class ReceivingOrthanc(FakeOrthanc):
    """The fake module, receiving instances one by one (as C-STORE would), with what the replacement of
    results uses: ``GET /instances/{id}``, ``POST /tools/bulk-delete``, and ``IsStable`` of a series."""

    def __init__(self, configuration: dict[str, Any] | None = None) -> None:
        super().__init__(configuration)
        self.stable_series: set[str] = set()
        self.deleted: list[str] = []

    def new_study(self) -> FakeStudy:
        study_id = self.add_study(series=[])
        return self.studies[study_id]

    def receive(self, study: FakeStudy, datasets: Sequence[Dataset], manufacturer: str | None = None) -> str:
        """Store instances (all of one series, created at its first instance); returns the series ID."""
        uid = str(datasets[0].SeriesInstanceUID)
        series = next((s for s in self.series.values() if s.tags["SeriesInstanceUID"] == uid), None)
        for ds in datasets:
            instance_id = str(uuid.uuid4())
            self.files[instance_id] = _bytes(ds)
            self._log("NewInstance", instance_id, "Instance")
            if series is None:
                first = datasets[0]
                series = FakeSeries(
                    str(uuid.uuid4()),
                    study.id,
                    {
                        "Modality": str(first.Modality),
                        "SeriesDescription": str(first.get("SeriesDescription", "")),
                        "Manufacturer": manufacturer or str(first.get("Manufacturer", "")),
                        "SeriesInstanceUID": uid,
                        "SeriesNumber": str(first.get("SeriesNumber", "")),
                    },
                    [],
                    str(first.SOPClassUID),
                    "SCANNER",
                    "10.1.2.3",
                )
                self.series[series.id] = series
                study.series.append(series.id)
                self._log("NewSeries", series.id, "Series")
            series.instances.append(instance_id)
            self.stable_series.discard(series.id)
            study.stable = False
        assert series is not None
        return series.id

    def _get(self, path: str, query: dict[str, list[str]]) -> Any:
        answer = super()._get(path, query)
        if re.fullmatch(r"/series/[^/]+", path):
            answer["IsStable"] = answer["ID"] in self.stable_series
        return answer

    def RestApiGet(self, uri: str) -> bytes:  # noqa: N802 - Orthanc's name
        if m := re.fullmatch(r"/instances/([^/?]+)", uri):
            if m.group(1) not in self.files:
                raise OrthancException(17, "Unknown resource")
            return json.dumps({"ID": m.group(1), "Type": "Instance"}).encode()
        return super().RestApiGet(uri)

    def RestApiPost(self, uri: str, body: bytes | str) -> bytes:  # noqa: N802 - Orthanc's name
        if uri == "/tools/bulk-delete":
            for resource in json.loads(body)["Resources"]:
                self.files.pop(resource, None)
                for series in self.series.values():
                    if resource in series.instances:
                        series.instances.remove(resource)
                self.deleted.append(resource)
            return b""
        return super().RestApiPost(uri, body)

    def results(self, study: FakeStudy, key: str) -> list[str]:
        """Store a SEG of the node into the study (as a worker does); returns its instance IDs."""
        seg = Dataset()
        seg.file_meta = FileMetaDataset()
        seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        seg.SOPClassUID = SEG
        seg.SOPInstanceUID = generate_uid(entropy_srcs=[key])
        seg.StudyInstanceUID = study.tags["StudyInstanceUID"]
        seg.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
        seg.PatientID = study.patient["PatientID"]
        seg.Modality = "SEG"
        seg.Manufacturer = "Lesion AI"
        series_id = self.receive(study, [seg], manufacturer="Lesion AI")
        return list(self.series[series_id].instances)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds


@contextlib.contextmanager
def receiving_node(
    tmp_path: Path, early_s: float = 0.0
) -> Iterator[tuple[ReceivingOrthanc, NodePlugin, Clock]]:
    """A started node (quiet time :data:`QUIET_S`, early start after ``early_s``; 0: off) on the fake Orthanc,
    its receiving studies judged by a test clock."""
    settings = node_settings(tmp_path, completeness_quiet_s=QUIET_S, completeness_early_s=early_s)
    fake = ReceivingOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    clock = Clock()
    assert plugin.receiving is not None
    plugin.receiving.clock = clock
    plugin.install()
    plugin.follower.start()
    try:
        yield fake, plugin, clock
    finally:
        plugin.stop()


def step(plugin: NodePlugin) -> None:
    """One pass of the plugin's thread: read the change log, start complete studies, release replacements."""
    plugin.follower.poll()
    plugin.start_complete_studies()
    plugin.replacement.advance()


def quiet(plugin: NodePlugin, clock: Clock) -> None:
    """The plugin's thread sees what arrived, then the quiet time passes, and it looks again."""
    step(plugin)
    clock.wait(QUIET_S + 0.5)
    step(plugin)


def prostate(fake: ReceivingOrthanc, study: FakeStudy) -> dict[str, str]:
    return {
        "t2w": fake.receive(study, t2w(study)),
        "dwi": fake.receive(study, dwi(study)),
        "adc": fake.receive(study, adc(study)),
    }


def finish(plugin: NodePlugin, fake: ReceivingOrthanc, study: FakeStudy) -> tuple[int, list[str]]:
    """Run the next job as a worker would: claim it, store a result, record its progress, complete it."""
    job = plugin.queue.claim("w")
    assert job is not None
    stored = fake.results(study, job.key)
    progress = JobProgress(stored=tuple(stored), status="done").to_json()
    assert plugin.queue.complete(job.id, "w", progress)
    return job.id, stored
