"""Jobs start when a study's inputs are complete by their headers, not StableAge later: the checks of one
series, the judgement of a study being received (against the fake ``orthanc`` module, with a test clock),
re-runs that replace earlier results, no duplicate at the stable event, and StableAge as the fallback."""

from __future__ import annotations

import io
import json
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lesion_engine.intake.header_roles import classify_headers
from lesion_engine.intake.series_rules import load_series_rules
from orthanc_plugin.intake.changes import HeaderCache, ReceivingStudies
from orthanc_plugin.intake.completeness import InputSeries, announced_images, check_series, rank_inputs
from orthanc_plugin.jobqueue import (
    HELD_NOT_BEFORE,
    SUPERSEDED,
    JobProgress,
    JobQueue,
    JobState,
    NewJob,
    QueuePolicy,
    open_queue,
    sqlite_url,
)
from orthanc_plugin.node.orthanc_api import InProcessApi
from orthanc_plugin.node.settings import NodeSettings
from orthanc_plugin.plugin import NodePlugin
from tests.paths import REPO
from tests.support.fake_orthanc import FakeOrthanc, FakeSeries, FakeStudy, OrthancException, node_settings
from tests.support.pg_env import PostgresServer, running_postgres

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


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ReceivingOrthanc, NodePlugin, Clock]]:
    settings = node_settings(tmp_path, completeness_quiet_s=QUIET_S)
    fake = ReceivingOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    clock = Clock()
    assert plugin.receiving is not None
    plugin.receiving.clock = clock
    plugin.install()
    plugin.follower.start()
    yield fake, plugin, clock
    plugin.stop()


def _step(plugin: NodePlugin) -> None:
    """One pass of the plugin's thread: read the change log, start complete studies, release replacements."""
    plugin.follower.poll()
    plugin.start_complete_studies()
    plugin.replacement.advance()


def _quiet(plugin: NodePlugin, clock: Clock) -> None:
    """The plugin's thread sees what arrived, then the quiet time passes, and it looks again."""
    _step(plugin)
    clock.wait(QUIET_S + 0.5)
    _step(plugin)


def _prostate(fake: ReceivingOrthanc, study: FakeStudy) -> dict[str, str]:
    return {
        "t2w": fake.receive(study, t2w(study)),
        "dwi": fake.receive(study, dwi(study)),
        "adc": fake.receive(study, adc(study)),
    }


def _finish(plugin: NodePlugin, fake: ReceivingOrthanc, study: FakeStudy) -> tuple[int, list[str]]:
    """Run the next job as a worker would: claim it, store a result, record its progress, complete it."""
    job = plugin.queue.claim("w")
    assert job is not None
    stored = fake.results(study, job.key)
    progress = JobProgress(stored=tuple(stored), status="done").to_json()
    assert plugin.queue.complete(job.id, "w", progress)
    return job.id, stored


# -- one series ------------------------------------------------------------------------------------------
def _series(datasets: Sequence[Dataset]) -> Any:
    verdict = classify_headers(
        str(datasets[0].SeriesInstanceUID), [(str(i), d) for i, d in enumerate(datasets)]
    )
    assert verdict.series is not None
    return verdict.series


def test_series_checks_positions_stacks_and_announced_counts() -> None:
    study = FakeStudy("s", {"StudyInstanceUID": generate_uid()}, {"PatientID": "P"})
    rules = load_series_rules()
    assert check_series(_series(t2w(study)), rules).state == "complete"
    gap = check_series(_series(t2w(study, [*range(5), *range(6, SLICES)])), rules)
    assert gap.state == "incomplete" and "no image at 1 slice position" in gap.reason
    short_stack = dwi(study)[:-3]  # b=800 still arriving
    check = check_series(_series(short_stack), rules)
    assert (
        check.state == "incomplete"
        and "b=800" in check.reason
        and f"{SLICES - 3} of the {SLICES}" in check.reason
    )
    complete_dwi = check_series(_series(dwi(study, (0, 400, 800))), rules)
    assert complete_dwi.state == "complete" and "3 stacks" in complete_dwi.reason
    announced = check_series(_series(t2w(study, ImagesInAcquisition=SLICES + 4)), rules)
    assert announced.state == "incomplete" and "ImagesInAcquisition" in announced.reason
    temporal = t2w(study, NumberOfTemporalPositions=3, TemporalPositionIdentifier=1)
    assert "NumberOfTemporalPositions" in check_series(_series(temporal), rules).reason
    irregular = check_series(_series(t2w(study, [0, 1, 2, 3, 4, 5, 6, 7.5, 8.5, 9.5])), rules)
    assert irregular.state == "unknown" and "irregular" in irregular.reason
    assert check_series(_series(t2w(study, range(4))), rules).state == "unknown"  # too few to judge
    assert check_series(_series(t2w(study)), rules, received=SLICES + 1).state == "unknown"  # unreadable ones


def test_announced_images_are_read_from_the_header() -> None:
    def header(**tags: Any) -> Dataset:
        ds = Dataset()
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        return ds

    assert announced_images(header(ImagesInAcquisition=14)) == 14
    assert announced_images(header(ImagesInAcquisition=48, NumberOfTemporalPositions=3)) == 144
    assert announced_images(header(ImagesInAcquisition=48, NumberOfTemporalPositions=1)) == 48
    assert announced_images(header()) is None
    assert announced_images(header(NumberOfTemporalPositions=3)) is None
    assert announced_images(header(ImagesInAcquisition=0)) is None
    assert announced_images(header(ImagesInAcquisition="")) is None


def test_readiness_needs_every_engine_role_complete() -> None:
    study = FakeStudy("s", {"StudyInstanceUID": generate_uid()}, {"PatientID": "P"})

    def item(name: str, datasets: list[Dataset], stable: bool = False) -> InputSeries:
        headers = [(f"{name}{i}", d) for i, d in enumerate(datasets)]
        return InputSeries(name, str(datasets[0].SeriesInstanceUID), len(datasets), stable, headers)

    complete = [item("t2", t2w(study)), item("dwi", dwi(study)), item("adc", adc(study))]
    ranked = rank_inputs(complete)
    assert ranked.readiness().ready and [s for s, _ in ranked.engine_inputs] == ["adc", "dwi", "t2"]
    no_dwi = rank_inputs(complete[::2]).readiness()
    assert not no_dwi.ready and not no_dwi.judged and "dwi" in no_dwi.reason
    gap = [item("t2", t2w(study, [*range(3), *range(4, SLICES)])), *complete[1:]]
    waiting = rank_inputs(gap).readiness()
    assert not waiting.ready and waiting.judged and "series t2" in waiting.reason
    # Orthanc calls the series stable: complete whatever its positions say
    gap[0] = item("t2", t2w(study, [*range(3), *range(4, SLICES)]), stable=True)
    assert rank_inputs(gap).readiness().ready


def test_header_cache_reads_each_header_once_and_keeps_no_pixels() -> None:
    fake = ReceivingOrthanc()
    study = fake.new_study()
    series = fake.receive(study, t2w(study))
    reads: list[str] = []
    api = InProcessApi(fake)
    original = api.get_bytes

    def counting(uri: str, *, plugins: bool = False) -> bytes:
        reads.append(uri)
        return original(uri, plugins=plugins)

    api.get_bytes = counting  # type: ignore[method-assign]
    cache = HeaderCache(api, limit=5)
    ids = fake.series[series].instances
    assert len(cache.headers(ids)) == SLICES and len(cache) == 5  # the least recently used went first
    cache.header(ids[-1])
    assert len(reads) == SLICES
    assert not hasattr(cache.header(ids[-1]), "buffer")
    assert cache.header("missing") is None
    with pytest.raises(ValueError, match="at least 1"):
        HeaderCache(api, limit=0)


# -- the queue ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobQueue]:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "q.sqlite")
    else:
        url = request.getfixturevalue("postgres").database()
    opened = open_queue(url, QueuePolicy(60, 3, 1, 10))
    yield opened
    opened.close()


def _job(key: str, study: str = "st", rule: str = "r") -> NewJob:
    return NewJob(key, study, rule, "m", 0, {"study": study, "rule": rule, "series": []})


def test_replacing_job_is_held_and_supersedes_the_queued_ones(queue: JobQueue) -> None:
    first, created, held = queue.enqueue_replacing(_job("a"))
    assert created and not held
    assert queue.enqueue_replacing(_job("a")) == (first, False, False)
    other_rule, _, held = queue.enqueue_replacing(_job("x", rule="other"))
    assert not held  # another rule's results are not replaced
    second, created, held = queue.enqueue_replacing(_job("b"))
    assert created and held
    old = queue.get(first)
    assert (
        old is not None
        and old.state is JobState.FAILED
        and str(old.error).startswith(f"{SUPERSEDED} {second}")
    )
    assert [j.id for j in queue.held()] == [second]
    assert queue.claim("w") is not None and queue.claim("w") is None  # only the other rule's job runs
    assert queue.get(second).not_before == HELD_NOT_BEFORE  # type: ignore[union-attr]
    assert queue.release_held(second) and not queue.release_held(second)
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == second
    assert not queue.supersede(second, 99)  # running under a lease: left alone
    assert queue.get(other_rule).state is JobState.RUNNING  # type: ignore[union-attr]


# -- studies being received ----------------------------------------------------------------------------
def test_complete_study_starts_before_any_stable_event(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    ids = _prostate(fake, study)
    _step(plugin)
    assert plugin.queue.list() == []  # inputs complete, but not quiet yet
    clock.wait(QUIET_S - 0.5)
    _step(plugin)
    assert plugin.queue.list() == []
    clock.wait(1.0)
    _step(plugin)
    [job] = plugin.queue.list()
    assert job.state is JobState.QUEUED and not job.held and job.study_id == study.id
    assert set(ids.values()) == set(job.payload["series"])
    assert not any(c["ChangeType"] == "StableStudy" for c in fake.changes)
    assert plugin.last_evaluation is not None and plugin.last_evaluation.jobs[0].created
    # the node's results and a DCE series change nothing the engine reads: no new job ...
    _finish(plugin, fake, study)
    fake.receive(study, dce(study, 5))
    _quiet(plugin, clock)
    assert len(plugin.queue.list()) == 1
    # ... nor does the stable event
    fake.stabilize(study.id, notify=False)
    _step(plugin)
    [done] = plugin.queue.list()
    assert done.state is JobState.DONE and done.id == job.id


def test_series_holding_the_images_their_headers_announce_start_at_once(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    inputs = [t2w(study), adc(study), dwi(study)]
    for series in inputs:  # as GE writes it: the series' image count, b-values included
        for ds in series:
            ds.ImagesInAcquisition = len(series)
    t2w_images, adc_images, dwi_images = inputs
    fake.receive(study, t2w_images)
    fake.receive(study, adc_images)
    fake.receive(study, dwi_images[:-1])
    _step(plugin)
    assert plugin.queue.list() == []  # one diffusion image short of the count, and not quiet
    clock.wait(0.5)
    fake.receive(study, dwi_images[-1:])
    _step(plugin)
    [job] = plugin.queue.list()  # no quiet time waited
    assert job.state is JobState.QUEUED and job.study_id == study.id
    assert not any(c["ChangeType"] == "StableStudy" for c in fake.changes)


def test_a_series_the_engine_ignores_may_still_be_receiving(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    _prostate(fake, study)
    images = dce(study, 30)
    started_at = None
    for index, ds in enumerate(images):  # DCE keeps arriving, an image a second
        fake.receive(study, [ds])
        _step(plugin)
        if started_at is None and plugin.queue.list():
            started_at = index
        clock.wait(1.0)
    assert started_at is not None and started_at <= QUIET_S + 2  # the DCE did not hold the job back
    fake.stabilize(study.id, notify=False)
    _step(plugin)
    assert len(plugin.queue.list()) == 1  # the stable study (all DCE images in) is the same work


def test_no_start_while_a_series_has_a_gap_or_is_still_receiving(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    fake.receive(study, t2w(study))
    fake.receive(study, adc(study))
    diffusion = dwi(study)
    missing = diffusion.pop(SLICES + 4)  # one b=800 image is not there yet
    fake.receive(study, diffusion[:SLICES])
    for ds in diffusion[SLICES : SLICES + 4]:  # b=800 keeps arriving, one image a second: never quiet
        fake.receive(study, [ds])
        clock.wait(1.0)
        _step(plugin)
    fake.receive(study, diffusion[SLICES + 4 :])
    _step(plugin)
    assert plugin.queue.list() == []
    with caplog.at_level("INFO", logger="orthanc_plugin.plugin"):
        clock.wait(QUIET_S + 0.5)
        _step(plugin)
    assert plugin.queue.list() == []  # quiet, but with a gap in the b=800 stack
    assert "the stack b=800 has images at 11 of the 12 slice positions" in caplog.text
    fake.receive(study, [missing])
    _quiet(plugin, clock)
    [job] = plugin.queue.list()
    assert job.state is JobState.QUEUED


def test_more_images_run_the_job_again_and_replace_its_results(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    ids = _prostate(fake, study)
    _quiet(plugin, clock)
    first, stored = _finish(plugin, fake, study)
    # two more T2 slices arrive (the series' range grows): a new job, held until the old results are gone
    extra = t2w(study, [SLICES, SLICES + 1])
    for ds in extra:
        ds.SeriesInstanceUID = fake.series[ids["t2w"]].tags["SeriesInstanceUID"]
    fake.receive(study, extra)
    _quiet(plugin, clock)
    jobs = {j.id: j for j in plugin.queue.list()}
    [second] = [j for j in jobs.values() if j.id != first]
    assert second.state is JobState.QUEUED and not second.held
    assert fake.deleted == stored and not any(i in fake.files for i in stored)
    assert jobs[first].state is JobState.DONE  # its record stays; its results are gone
    # the new job stores its results: one live result set in the study
    _, again = _finish(plugin, fake, study)
    live = [i for s in fake.series.values() if s.tags["Manufacturer"] == "Lesion AI" for i in s.instances]
    assert live == again
    fake.stabilize(study.id, notify=False)
    _step(plugin)
    assert len(plugin.queue.list()) == 2  # the stable event adds nothing


def test_a_running_job_finishes_before_its_replacement_may_run(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    _prostate(fake, study)
    _quiet(plugin, clock)
    running = plugin.queue.claim("w")
    assert running is not None
    fake.receive(study, t2w(study))  # a repeated T2: another candidate, new input set
    _quiet(plugin, clock)
    [held] = plugin.queue.held()
    assert plugin.queue.claim("w2") is None  # held while the earlier job runs
    stored = fake.results(study, running.key)
    plugin.queue.complete(running.id, "w", JobProgress(stored=tuple(stored), status="done").to_json())
    _step(plugin)
    assert plugin.queue.held() == [] and fake.deleted == stored
    claimed = plugin.queue.claim("w2")
    assert claimed is not None and claimed.id == held.id


def test_stable_event_falls_back_for_studies_whose_completeness_cannot_be_judged(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    fake.receive(study, t2w(study))
    fake.receive(study, adc(study))  # no diffusion series: the engine's needs cannot be judged
    _quiet(plugin, clock)
    _quiet(plugin, clock)
    assert plugin.queue.list() == []
    fake.stabilize(study.id, notify=False)
    _step(plugin)
    [job] = plugin.queue.list()
    assert job.state is JobState.QUEUED and not job.held


def test_a_new_series_after_the_stable_event_is_judged_early_again(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    _prostate(fake, study)
    _quiet(plugin, clock)
    first, _ = _finish(plugin, fake, study)
    fake.stabilize(study.id, notify=False)
    _step(plugin)
    assert study.id not in plugin.follower.pending
    fake.receive(study, adc(study))  # a second ADC map: a new input set
    _step(plugin)
    _quiet(plugin, clock)
    [second] = [j for j in plugin.queue.list() if j.id != first]
    assert second.state is JobState.QUEUED and not second.held


def test_quiet_seconds_zero_turns_the_early_start_off(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    shutil.copyfile(REPO / "orthanc_plugin" / "data" / "rules.yaml", rules)
    settings = NodeSettings(
        home=tmp_path, queue=sqlite_url(tmp_path / "q.sqlite"), rules=rules, workers=0, completeness_quiet_s=0
    )
    plugin = NodePlugin(ReceivingOrthanc({"LesionAI": settings.to_section()}), settings)
    assert plugin.receiving is None and plugin.start_complete_studies() == []
    with pytest.raises(Exception, match="CompletenessQuietSeconds"):
        NodeSettings(home=tmp_path, queue="q", rules=rules, completeness_quiet_s=-1)
    with pytest.raises(ValueError, match="quiet_s must be positive"):
        ReceivingStudies(plugin.api, plugin.headers, 0)
    plugin.queue.close()
