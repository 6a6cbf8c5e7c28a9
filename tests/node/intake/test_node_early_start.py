"""A study whose series had no new instance for ``CompletenessEarlyStartSeconds`` starts its jobs before its
quiet time ends, with a store gate (against the fake ``orthanc`` module, with a test clock): the gate's
snapshot and time, the gate moved when more arrives in a series the job does not read, a job for new inputs
that waits for the gated one to be withdrawn, and the settings that refuse an early start not below the
quiet time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orthanc_plugin.intake.changes import ReceivingStudies
from orthanc_plugin.jobqueue import WITHDRAWN, Job, JobState, StoreGate
from orthanc_plugin.node.orthanc_api import InProcessApi
from orthanc_plugin.node.settings import NodeSettings
from orthanc_plugin.plugin import NodePlugin
from orthanc_plugin.worker.gate import await_store_gate
from tests.support.fake_orthanc import FakeStudy
from tests.support.receiving import (
    QUIET_S,
    SLICES,
    Clock,
    ReceivingOrthanc,
    dce,
    finish,
    prostate,
    receiving_node,
    step,
    t2w,
)

EARLY_S = 1.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ReceivingOrthanc, NodePlugin, Clock]]:
    with receiving_node(tmp_path, early_s=EARLY_S) as started:
        yield started


def _gate_of(plugin: NodePlugin, job_id: int) -> StoreGate | None:
    job = plugin.queue.get(job_id)
    assert job is not None
    return StoreGate.of_payload(job.payload)


def _early(plugin: NodePlugin, clock: Clock) -> None:
    """The plugin's thread sees what arrived, then the early seconds pass, and it looks again."""
    step(plugin)
    clock.wait(EARLY_S + 0.2)
    step(plugin)


def _running_early_job(
    fake: ReceivingOrthanc, plugin: NodePlugin, clock: Clock
) -> tuple[FakeStudy, dict[str, str], Job]:
    """A prostate study received, its job started early and claimed by a worker."""
    study = fake.new_study()
    ids = prostate(fake, study)
    _early(plugin, clock)
    job = plugin.queue.claim("w")
    assert job is not None
    return study, ids, job


def test_a_study_quiet_for_the_early_seconds_starts_with_a_store_gate(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study = fake.new_study()
    ids = prostate(fake, study)
    step(plugin)
    assert plugin.queue.list() == []  # not quiet for the early seconds yet
    clock.wait(EARLY_S + 0.2)
    before = time.time()
    step(plugin)
    [job] = plugin.queue.list()
    gate = _gate_of(plugin, job.id)
    assert gate is not None and job.state is JobState.QUEUED and not job.held
    assert dict(gate.series) == {series: len(fake.series[series].instances) for series in ids.values()}
    left = QUIET_S - (EARLY_S + 0.2)  # of the quiet time, by the test clock
    assert before + left - 0.05 <= gate.not_before <= time.time() + left + 0.05
    assert gate.own_manufacturer == plugin.manufacturer
    clock.wait(QUIET_S)  # the quiet time ends: the same study, judged once
    step(plugin)
    assert [j.id for j in plugin.queue.list()] == [job.id] and _gate_of(plugin, job.id) == gate
    assert (
        await_store_gate(  # the worker finds the study as judged: it stores at once
            plugin.queue,
            InProcessApi(fake),
            job.id,
            study.id,
            stop=threading.Event(),
            check=lambda: None,
            clock=lambda: gate.not_before,
        )
        is None
    )


def test_more_images_in_a_series_the_job_does_not_read_move_its_gate(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study, _, job = _running_early_job(fake, plugin, clock)
    first = _gate_of(plugin, job.id)
    assert first is not None
    dce_series = fake.receive(study, dce(study, 5))  # while the job runs: not one of its inputs
    assert first.changes(InProcessApi(fake).get_json(f"/studies/{study.id}/series")) is not None
    _early(plugin, clock)
    [same] = plugin.queue.list()  # the same work: no second job
    moved = _gate_of(plugin, job.id)
    assert same.id == job.id and same.state is JobState.RUNNING
    assert moved is not None and moved.series[dce_series] == 5 and moved.not_before > first.not_before
    assert moved.changes(InProcessApi(fake).get_json(f"/studies/{study.id}/series")) is None
    fake.stabilize(study.id, notify=False)  # Orthanc calls it stable: the judgement lifts the gate
    step(plugin)
    assert _gate_of(plugin, job.id) is None


def test_new_input_images_wait_for_the_gated_job_to_be_withdrawn(
    node: tuple[ReceivingOrthanc, NodePlugin, Clock],
) -> None:
    fake, plugin, clock = node
    study, ids, job = _running_early_job(fake, plugin, clock)
    extra = t2w(study, [SLICES])  # one more T2 slice while the job runs: new inputs, new work
    for ds in extra:
        ds.SeriesInstanceUID = fake.series[ids["t2w"]].tags["SeriesInstanceUID"]
    fake.receive(study, extra)
    _early(plugin, clock)
    [held] = [j for j in plugin.queue.list() if j.id != job.id]
    assert held.held  # waits for the running job
    gate = _gate_of(plugin, job.id)
    assert gate is not None
    change = gate.changes(InProcessApi(fake).get_json(f"/studies/{study.id}/series"))
    assert change is not None and ids["t2w"] in change
    assert plugin.queue.fail(job.id, "w", f"{WITHDRAWN} {change}", transient=False) is JobState.FAILED
    step(plugin)
    released = plugin.queue.get(held.id)
    assert released is not None and released.state is JobState.QUEUED and not released.held
    new_id, stored = finish(plugin, fake, study)
    assert new_id == held.id and stored and fake.deleted == []  # the withdrawn job stored nothing


def test_an_early_start_not_below_the_quiet_time_is_refused(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    for early, message in (
        (3.0, r"below CompletenessQuietSeconds \(3.0\)"),
        (-1, "from 0 \\(off\\) to 3600 seconds"),
        (True, "from 0 \\(off\\) to 3600 seconds"),
        ("1", "from 0 \\(off\\) to 3600 seconds"),
    ):
        with pytest.raises(Exception, match="CompletenessEarlyStartSeconds") as caught:
            NodeSettings(home=tmp_path, queue="q", rules=rules, completeness_early_s=early)  # type: ignore[arg-type]
        assert caught.match(message)
    assert NodeSettings(
        home=tmp_path, queue="q", rules=rules, completeness_quiet_s=0, completeness_early_s=5.0
    )
    with pytest.raises(ValueError, match="early_s must be from 0"):
        ReceivingStudies(None, None, 3.0, early_s=3.0)  # type: ignore[arg-type]
