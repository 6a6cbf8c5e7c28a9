"""Jobs start when a study's inputs are complete by their headers, not StableAge later: the checks of one
series, the judgement of a study being received (against the fake ``orthanc`` module, with a test clock),
re-runs that replace earlier results, no duplicate at the stable event, and StableAge as the fallback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

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
from tests.support.fake_orthanc import FakeStudy
from tests.support.pg_env import PostgresServer, running_postgres
from tests.support.receiving import (
    QUIET_S,
    SLICES,
    Clock,
    ReceivingOrthanc,
    adc,
    dce,
    dwi,
    finish,
    prostate,
    quiet,
    receiving_node,
    step,
    t2w,
)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ReceivingOrthanc, NodePlugin, Clock]]:
    """The node with the quiet time alone (no early start: see test_node_early_start)."""
    with receiving_node(tmp_path) as started:
        yield started


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
    ids = prostate(fake, study)
    step(plugin)
    assert plugin.queue.list() == []  # inputs complete, but not quiet yet
    clock.wait(QUIET_S - 0.5)
    step(plugin)
    assert plugin.queue.list() == []
    clock.wait(1.0)
    step(plugin)
    [job] = plugin.queue.list()
    assert job.state is JobState.QUEUED and not job.held and job.study_id == study.id
    assert set(ids.values()) == set(job.payload["series"])
    assert not any(c["ChangeType"] == "StableStudy" for c in fake.changes)
    assert plugin.last_evaluation is not None and plugin.last_evaluation.jobs[0].created
    # the node's results and a DCE series change nothing the engine reads: no new job ...
    finish(plugin, fake, study)
    fake.receive(study, dce(study, 5))
    quiet(plugin, clock)
    assert len(plugin.queue.list()) == 1
    # ... nor does the stable event
    fake.stabilize(study.id, notify=False)
    step(plugin)
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
    step(plugin)
    assert plugin.queue.list() == []  # one diffusion image short of the count, and not quiet
    clock.wait(0.5)
    fake.receive(study, dwi_images[-1:])
    step(plugin)
    [job] = plugin.queue.list()  # no quiet time waited
    assert job.state is JobState.QUEUED and job.study_id == study.id
    assert not any(c["ChangeType"] == "StableStudy" for c in fake.changes)


def test_a_series_the_engine_ignores_may_still_be_receiving(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    prostate(fake, study)
    images = dce(study, 30)
    started_at = None
    for index, ds in enumerate(images):  # DCE keeps arriving, an image a second
        fake.receive(study, [ds])
        step(plugin)
        if started_at is None and plugin.queue.list():
            started_at = index
        clock.wait(1.0)
    assert started_at is not None and started_at <= QUIET_S + 2  # the DCE did not hold the job back
    fake.stabilize(study.id, notify=False)
    step(plugin)
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
        step(plugin)
    fake.receive(study, diffusion[SLICES + 4 :])
    step(plugin)
    assert plugin.queue.list() == []
    with caplog.at_level("INFO", logger="orthanc_plugin.plugin"):
        clock.wait(QUIET_S + 0.5)
        step(plugin)
    assert plugin.queue.list() == []  # quiet, but with a gap in the b=800 stack
    assert "the stack b=800 has images at 11 of the 12 slice positions" in caplog.text
    fake.receive(study, [missing])
    quiet(plugin, clock)
    [job] = plugin.queue.list()
    assert job.state is JobState.QUEUED


def test_more_images_run_the_job_again_and_replace_its_results(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    ids = prostate(fake, study)
    quiet(plugin, clock)
    first, stored = finish(plugin, fake, study)
    # two more T2 slices arrive (the series' range grows): a new job, held until the old results are gone
    extra = t2w(study, [SLICES, SLICES + 1])
    for ds in extra:
        ds.SeriesInstanceUID = fake.series[ids["t2w"]].tags["SeriesInstanceUID"]
    fake.receive(study, extra)
    quiet(plugin, clock)
    jobs = {j.id: j for j in plugin.queue.list()}
    [second] = [j for j in jobs.values() if j.id != first]
    assert second.state is JobState.QUEUED and not second.held
    assert fake.deleted == stored and not any(i in fake.files for i in stored)
    assert jobs[first].state is JobState.DONE  # its record stays; its results are gone
    # the new job stores its results: one live result set in the study
    _, again = finish(plugin, fake, study)
    live = [i for s in fake.series.values() if s.tags["Manufacturer"] == "Lesion AI" for i in s.instances]
    assert live == again
    fake.stabilize(study.id, notify=False)
    step(plugin)
    assert len(plugin.queue.list()) == 2  # the stable event adds nothing


def test_a_running_job_finishes_before_its_replacement_may_run(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    prostate(fake, study)
    quiet(plugin, clock)
    running = plugin.queue.claim("w")
    assert running is not None
    fake.receive(study, t2w(study))  # a repeated T2: another candidate, new input set
    quiet(plugin, clock)
    [held] = plugin.queue.held()
    assert plugin.queue.claim("w2") is None  # held while the earlier job runs
    stored = fake.results(study, running.key)
    plugin.queue.complete(running.id, "w", JobProgress(stored=tuple(stored), status="done").to_json())
    step(plugin)
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
    quiet(plugin, clock)
    quiet(plugin, clock)
    assert plugin.queue.list() == []
    fake.stabilize(study.id, notify=False)
    step(plugin)
    [job] = plugin.queue.list()
    assert job.state is JobState.QUEUED and not job.held


def test_a_new_series_after_the_stable_event_is_judged_early_again(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    prostate(fake, study)
    quiet(plugin, clock)
    first, _ = finish(plugin, fake, study)
    fake.stabilize(study.id, notify=False)
    step(plugin)
    assert study.id not in plugin.follower.pending
    fake.receive(study, adc(study))  # a second ADC map: a new input set
    step(plugin)
    quiet(plugin, clock)
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
