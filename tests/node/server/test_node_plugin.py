"""The plugin's logic against a fake ``orthanc`` module: loop guard, rules, idempotent jobs, catch-up,
exception boundaries and the admin REST API."""

from __future__ import annotations

import io
import json
import logging
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.admin.node_protocol import EnqueuedJob
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.jobqueue import JobState, NewJob
from orthanc_plugin.launch import ORTHANC_ENVIRONMENT
from orthanc_plugin.node.logsetup import remove_orthanc_logging
from orthanc_plugin.node.orthanc_api import OrthancLogHandler
from orthanc_plugin.node.settings import NodeSettings
from orthanc_plugin.plugin import NodePlugin, install, worker_command
from orthanc_plugin.worker.supervisor import WorkerSupervisor
from tests.support.fake_orthanc import (
    ChangeType,
    FakeOrthanc,
    OrthancException,
    ResourceType,
    fake_node,
    node_settings,
)

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
PROSTATE: list[dict[str, Any]] = [
    {"SeriesDescription": "t2_tse_tra"},
    {"SeriesDescription": "ep2d_diff_tra_ADC"},
    {"SeriesDescription": "t2_localizer", "instances": 1},
]
#: The header that state-changing admin requests carry.
ADMIN = {CSRF_HEADER: CSRF_VALUE}


def _settings(tmp_path: Path, **changes: Any) -> NodeSettings:
    return node_settings(tmp_path, **changes)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[FakeOrthanc, NodePlugin]]:
    with fake_node(tmp_path) as node:
        yield node


def test_stable_prostate_study_gives_one_job_with_its_mr_series(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    fake.stabilize(study, notify=False)
    assert plugin.follower.start() == 1
    jobs = plugin.queue.list()
    assert len(jobs) == 1
    job = jobs[0]
    assert (job.state, job.rule, job.study_id, job.priority) == (JobState.QUEUED, "prostate-mr", study, 0)
    assert sorted(job.payload["series"]) == sorted(fake.studies[study].series)
    assert job.payload["outputs"] == ["seg", "sr", "kos"]
    assert job.model == "processor:tests.support.node_fakes:factory"


def test_ct_and_non_prostate_mr_studies_are_ignored(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    ct = fake.add_study(
        description="CT THORAX",
        series=[
            {
                "Modality": "CT",
                "SeriesDescription": "thorax 1.0",
                "BodyPartExamined": "CHEST",
                "sop_class": "1.2.840.10008.5.1.4.1.1.2",
            }
        ],
    )
    brain = fake.add_study(
        description="MRI BRAIN",
        series=[
            {"SeriesDescription": "t2_tse_tra", "BodyPartExamined": "BRAIN"},
            {"SeriesDescription": "ep2d_diff_tra", "BodyPartExamined": "BRAIN"},
        ],
    )
    knee = fake.add_study(
        description="MR KNEE", series=[{"SeriesDescription": "pd_tse_sag", "BodyPartExamined": "KNEE"}]
    )
    for study in (ct, brain, knee):
        fake.stabilize(study, notify=False)
    plugin.follower.start()
    assert plugin.queue.list() == []


def test_mr_without_body_part_but_t2_and_diffusion_is_processed(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(
        description="MR BECKEN",
        series=[
            {"SeriesDescription": "t2_tse_tra", "BodyPartExamined": None},
            {"SeriesDescription": "ep2d_diff_b50_800", "BodyPartExamined": None},
        ],
    )
    plugin.enqueue_study(study)
    assert len(plugin.queue.list()) == 1


def test_own_results_never_trigger_a_new_job(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    first = plugin.enqueue_study(study)
    assert [j.created for j in first] == [True]
    # The worker stores a SEG and an SR (the node's Manufacturer) and a foreign SR into the study.
    fake.add_series(
        study, Modality="SEG", SeriesDescription="AI lesions", Manufacturer="Lesion AI", sop_class=SEG
    )
    fake.add_series(
        study, Modality="SR", SeriesDescription="AI report", Manufacturer="Lesion AI", sop_class=SR
    )
    fake.add_series(study, Modality="MR", SeriesDescription="t2 overlay", Manufacturer="Lesion AI")
    second = plugin.enqueue_study(study)
    assert [j.created for j in second] == [False]
    assert second[0].key == first[0].key
    assert len(plugin.queue.list()) == 1


def test_study_with_only_results_gives_no_job(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=[{"Modality": "SR", "SeriesDescription": "report", "sop_class": SR}])
    assert plugin.enqueue_study(study) == []


def test_a_new_input_series_makes_a_new_job(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    plugin.enqueue_study(study)
    fake.add_series(study, SeriesDescription="t2_tse_tra repeated")
    created = plugin.enqueue_study(study)
    assert [j.created for j in created] == [True]
    assert len(plugin.queue.list()) == 2


def test_study_recorded_as_processed_is_not_queued_again(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    key = plugin.enqueue_study(study)[0].key
    plugin.queue.close()
    (plugin.settings.home / "queue.sqlite").unlink()  # the queue is lost ...
    from orthanc_plugin.jobqueue import QueuePolicy, open_queue

    plugin.queue = open_queue(plugin.settings.queue, QueuePolicy.from_settings(plugin.settings))
    fake.studies[study].metadata["LesionAI"] = json.dumps({"processed": {key: {"status": "done"}}})
    assert plugin.enqueue_study(study) == [EnqueuedJob(None, key, "prostate-mr", created=False)]
    assert plugin.queue.list() == []  # ... but the study's record says it was done


def test_catch_up_handles_changes_missed_while_down(tmp_path: Path) -> None:
    settings = _settings(tmp_path, catch_up="none")
    fake = FakeOrthanc({"LesionAI": settings.to_section()})
    old = fake.add_study(series=PROSTATE)
    fake.stabilize(old, notify=False)
    plugin = NodePlugin(fake, settings)
    assert plugin.follower.start() == 0  # first start: history is not processed
    stored = json.loads(fake.properties[settings.sequence_property])
    assert stored["seq"] == len(fake.changes)
    plugin.stop()
    # Down: a study arrives and becomes stable; another arrives but Orthanc dies before it is stable.
    missed = fake.add_study(series=PROSTATE, patient_id="P2")
    fake.stabilize(missed, notify=False)
    interrupted = fake.add_study(series=PROSTATE, patient_id="P3")
    fake.studies[interrupted].stable = True  # after a restart Orthanc reports it stable, without an event
    plugin = NodePlugin(fake, settings)
    assert plugin.follower.start() == 2
    assert sorted(j.study_id for j in plugin.queue.list()) == sorted([missed, interrupted])
    plugin.stop()


def test_pending_study_survives_a_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    fake = FakeOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.follower.start()
    study = fake.add_study(series=PROSTATE)  # arriving, not stable yet: no job
    plugin.follower.poll()
    assert plugin.queue.list() == []
    assert study in json.loads(fake.properties[settings.sequence_property])["pending"]
    plugin.stop()
    fake.studies[study].stable = True  # Orthanc restarted: the study is stable, no event will come
    plugin = NodePlugin(fake, settings)
    plugin.follower.start()
    assert [j.study_id for j in plugin.queue.list()] == [study]
    plugin.stop()


def test_a_study_arriving_at_a_restart_waits_stable_age_after_it(tmp_path: Path) -> None:
    """Orthanc calls every study stable after a restart: one that was arriving is held for StableAge."""
    settings = _settings(tmp_path)
    fake = FakeOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.follower.start()
    study = fake.add_study(series=PROSTATE)
    plugin.follower.poll()
    plugin.stop()
    fake.studies[study].stable = True  # Orthanc restarted: stable, no event will come
    plugin = NodePlugin(fake, settings)
    now = [time.monotonic()]  # the follower's clock, from where its last sweep was (at its construction)
    plugin.follower.restart_hold_s = 30.0
    plugin.follower.clock = lambda: now[0]
    assert plugin.follower.start() == 0
    now[0] += 29.0
    plugin.follower.poll()
    assert plugin.queue.list() == [] and study in plugin.follower.held
    now[0] += 2.0
    plugin.follower.poll()
    assert [j.study_id for j in plugin.queue.list()] == [study]
    assert not plugin.follower.held and study not in plugin.follower.pending
    plugin.stop()


def test_started_event_runs_the_follower_thread(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    assert fake.on_change is not None
    fake.on_change(ChangeType.ORTHANC_STARTED, ResourceType.NONE, "")
    study = fake.add_study(series=PROSTATE)
    fake.stabilize(study)
    deadline = time.monotonic() + 10
    while not plugin.queue.list() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(plugin.queue.list()) == 1
    fake.on_change(ChangeType.ORTHANC_STOPPED, ResourceType.NONE, "")
    assert plugin._thread is not None and not plugin._thread.is_alive()


def test_callbacks_never_raise_into_orthanc(
    node: tuple[FakeOrthanc, NodePlugin], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, plugin = node

    def broken_stop() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(plugin, "stop", broken_stop)
    with caplog.at_level(logging.ERROR):
        assert fake.on_change is not None
        fake.on_change(ChangeType.ORTHANC_STOPPED, ResourceType.NONE, "")
    assert "change callback failed" in caplog.text
    fake.fail_next_get = OrthancException(1, "Internal error")
    out = fake.rest("GET", "/lesion-ai/health")
    assert out.status == 200  # health does not read Orthanc
    fake.fail_next_get = OrthancException(1, "Internal error")
    study = fake.add_study(series=PROSTATE)
    out = fake.rest("POST", f"/lesion-ai/studies/{study}/process", headers=ADMIN)
    assert out.status == 500 and "Internal error" in out.json()["error"]


def test_evaluation_errors_do_not_stop_the_follower(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    broken = fake.add_study(series=PROSTATE)
    fake.stabilize(broken, notify=False)
    good = fake.add_study(series=PROSTATE, patient_id="P2")
    fake.stabilize(good, notify=False)
    fake.series[fake.studies[broken].series[0]].instances = []  # evaluation of `broken` still works ...
    del fake.studies[broken]  # ... and a deleted study is skipped
    plugin.follower.start()
    assert [j.study_id for j in plugin.queue.list()] == [good]


def test_a_failed_evaluation_is_retried_until_it_succeeds_even_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk or a locked database while a stable study is evaluated: the study is never dropped. It
    waits, health names it, it is evaluated again after a backoff and after a restart, and queued once the
    cause is gone."""
    import sqlite3

    import orthanc_plugin.intake.changes as changes

    monkeypatch.setattr(changes, "_RETRY_FIRST_S", 0.0)
    settings = _settings(tmp_path)
    fake = FakeOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.follower.start()
    study = fake.add_study(series=PROSTATE)
    full = sqlite3.OperationalError("database or disk is full")
    real_enqueue = plugin.replacement.enqueue

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise full

    monkeypatch.setattr(plugin.replacement, "enqueue", failing)
    fake.stabilize(study, notify=False)
    plugin.follower.poll()
    assert plugin.queue.list() == [] and study in plugin.follower.retry
    health = plugin.admin.health()[1]
    assert health["status"] == "degraded"
    assert any("wait" in p and study in p and "database or disk is full" in p for p in health["problems"]), (
        health
    )
    failures = plugin.follower.retry[study][0]
    plugin.follower.poll()  # still failing: evaluated again (no backoff here), still waiting, nothing lost
    assert plugin.follower.retry[study][0] > failures
    assert study in json.loads(fake.properties[settings.sequence_property])["retry"]
    plugin.stop()
    # Orthanc restarted; the disk has room again: the study is evaluated at start.
    plugin = NodePlugin(fake, settings)
    plugin.follower.start()
    assert [j.study_id for j in plugin.queue.list()] == [study]
    assert plugin.follower.retry == {} and plugin.admin.health()[1]["problems"] == []
    # And without a restart: the next poll after the cause is gone queues it.
    other = fake.add_study(series=PROSTATE, patient_id="P2")
    real_enqueue = plugin.replacement.enqueue
    monkeypatch.setattr(plugin.replacement, "enqueue", failing)
    fake.stabilize(other, notify=False)
    plugin.follower.poll()
    assert other in plugin.follower.retry
    monkeypatch.setattr(plugin.replacement, "enqueue", real_enqueue)
    plugin.follower.poll()
    assert sorted(j.study_id for j in plugin.queue.list()) == sorted([study, other])
    plugin.stop()


def test_install_with_a_bad_configuration_logs_and_keeps_orthanc_running() -> None:
    fake = FakeOrthanc(
        {"LesionAI": {"Home": "/nonexistent", "Queue": "mysql://x", "Rules": "/nonexistent.yaml"}}
    )
    assert install(fake) is None
    assert any(level == "error" and "NOT running" in message for level, message in fake.logs)
    assert fake.rest_callbacks == []
    assert any(isinstance(h, OrthancLogHandler) for h in logging.getLogger("lesion_engine").handlers)
    remove_orthanc_logging()  # undo the logging set-up for the other tests
    assert not any(isinstance(h, OrthancLogHandler) for h in logging.getLogger("orthanc_plugin").handlers)


def test_settings_errors_name_the_field(tmp_path: Path) -> None:
    from lesion_engine.errors import ConfigError

    section = _settings(tmp_path).to_section()
    with pytest.raises(ConfigError, match="field Workers"):
        NodeSettings.from_orthanc_configuration({"LesionAI": {**section, "Workers": -1}})
    with pytest.raises(ConfigError, match=r"unknown field.*Wrokers"):
        NodeSettings.from_orthanc_configuration({"LesionAI": {**section, "Wrokers": 2}})
    with pytest.raises(ConfigError, match="field LeaseSeconds: expected float"):
        NodeSettings.from_orthanc_configuration({"LesionAI": {**section, "LeaseSeconds": "long"}})
    with pytest.raises(ConfigError, match="SequenceProperty"):
        NodeSettings.from_orthanc_configuration({"LesionAI": {**section, "SequenceProperty": 99}})
    with pytest.raises(ConfigError, match="no LesionAI section"):
        NodeSettings.from_orthanc_configuration({})


# -- admin REST ---------------------------------------------------------------------------------------
def test_health_and_jobs_routes(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    job_id = plugin.enqueue_study(study)[0].id
    health = fake.rest("GET", "/lesion-ai/health").json()
    assert health["status"] == "ok"
    assert health["queue"]["counts"]["queued"] == 1
    assert health["rules"]["names"] == ["prostate-mr"]
    listed = fake.rest("GET", "/lesion-ai/jobs", get={"state": "queued"}).json()
    assert [j["id"] for j in listed["jobs"]] == [job_id] and "payload" not in listed["jobs"][0]
    assert fake.rest("GET", "/lesion-ai/jobs", get={"state": "done"}).json()["jobs"] == []
    bad = fake.rest("GET", "/lesion-ai/jobs", get={"state": "finished"})
    assert bad.status == 400 and "state must be one of" in bad.json()["error"]
    one = fake.rest("GET", f"/lesion-ai/jobs/{job_id}").json()
    assert one["payload"]["study"] == study and one["state"] == "queued"
    assert fake.rest("GET", "/lesion-ai/jobs/999").status == 404
    assert fake.rest("DELETE", "/lesion-ai/jobs", headers=ADMIN).status == 405
    assert fake.rest("GET", "/lesion-ai/nothing").status == 404


def test_job_route_shows_documents_of_every_version(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    old_payload = {"study": "st-old", "rule": "prostate-mr", "series": ["se1"], "outputs": ["seg", "sr"]}
    old, _ = plugin.queue.enqueue(NewJob("old", "st-old", "prostate-mr", "m", 0, old_payload))
    shown = fake.rest("GET", f"/lesion-ai/jobs/{old}").json()
    assert shown["payload"]["series"] == ["se1"] and shown["payload"]["schema_version"] == 1
    assert set(shown["progress"]) == {
        "schema_version",
        "stored",
        "result_series",
        "status",
        "reason",
        "model",
        "details",
        "forwarded",
    }
    assert "document_error" not in shown
    newer, _ = plugin.queue.enqueue(
        NewJob("new", "st-new", "r", "m", 0, {**old_payload, "schema_version": 9})
    )
    shown = fake.rest("GET", f"/lesion-ai/jobs/{newer}").json()
    assert shown["payload"]["schema_version"] == 9  # as stored
    assert "newer than this node reads" in shown["document_error"]


def test_process_route_requeues_a_finished_study(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    study = fake.add_study(series=PROSTATE)
    plugin.enqueue_study(study)
    job = plugin.queue.claim("w")
    assert job is not None
    plugin.queue.complete(job.id, "w")
    answer = fake.rest("POST", f"/lesion-ai/studies/{study}/process", headers=ADMIN).json()
    assert answer["message"] == "queued" and answer["jobs"][0]["id"] == job.id
    assert plugin.queue.get(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    again = fake.rest("POST", f"/lesion-ai/studies/{study}/process", headers=ADMIN).json()
    assert again["message"] == "already queued or running"
    assert fake.rest("POST", "/lesion-ai/studies/unknown/process", headers=ADMIN).status == 404
    ct = fake.add_study(description="CT", series=[{"Modality": "CT", "BodyPartExamined": "CHEST"}])
    assert (
        fake.rest("POST", f"/lesion-ai/studies/{ct}/process", headers=ADMIN).json()["message"]
        == "no rule applies to this study"
    )


GOOD_RULES = """\
version: 1
rules:
  - name: from-scanner
    priority: 5
    outputs: [seg, sr, pmap]
    destinations: {modalities: [pacs]}
    match:
      calling_aet: [SCANNER]
      series: {Modality: [MR]}
"""


def test_put_rules_validates_and_keeps_old_rules_on_error(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    before = fake.rest("GET", "/lesion-ai/rules").json()
    bad = GOOD_RULES.replace("priority: 5", "priority: high")
    out = fake.rest("PUT", "/lesion-ai/rules", bad.encode(), headers=ADMIN)
    assert out.status == 400
    message = out.json()["error"]
    assert "line 4" in message and "rules[0].priority" in message
    assert fake.rest("GET", "/lesion-ai/rules").json() == before
    unknown_destination = GOOD_RULES.replace("[pacs]", "[elsewhere]")
    out = fake.rest("PUT", "/lesion-ai/rules", unknown_destination.encode(), headers=ADMIN)
    assert out.status == 400 and "'elsewhere' is not defined in Orthanc" in out.json()["error"]
    out = fake.rest("PUT", "/lesion-ai/rules", GOOD_RULES.encode(), headers=ADMIN)
    assert out.status == 200
    assert plugin.settings.rules.read_text() == GOOD_RULES  # saved for the next start
    study = fake.add_study(series=PROSTATE)
    plugin.enqueue_study(study)
    [job] = plugin.queue.list()
    assert (job.rule, job.priority, job.payload["outputs"]) == ("from-scanner", 5, ["seg", "sr", "pmap"])
    assert job.payload["destinations"]["modalities"] == ["pacs"]


def test_hand_edited_rules_file_is_applied_without_restart(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, plugin = node
    path = plugin.settings.rules
    # a broken edit: the rules in force stay, health names the problem
    before = fake.rest("GET", "/lesion-ai/rules").json()
    path.write_text(GOOD_RULES.replace("priority: 5", "priority: high"), encoding="utf-8")
    assert fake.rest("GET", "/lesion-ai/rules").json() == before
    health = fake.rest("GET", "/lesion-ai/health").json()
    assert health["status"] == "degraded"
    assert any("rules[0].priority" in problem for problem in health["problems"])
    # the fixed file is taken at the next event, without a restart
    path.write_text(GOOD_RULES, encoding="utf-8")
    study = fake.add_study(series=PROSTATE)
    plugin.enqueue_study(study)
    [job] = plugin.queue.list()
    assert (job.rule, job.priority) == ("from-scanner", 5)
    health = fake.rest("GET", "/lesion-ai/health").json()
    assert not any("rules" in problem for problem in health["problems"])
    assert health["rules"]["names"] == ["from-scanner"]


def test_rules_test_route_shows_matches_and_roles(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, _ = node
    study = fake.add_study(
        series=[
            {"SeriesDescription": "t2_tse_tra", "instances": 3},
            {"SeriesDescription": "t2_tse_sag", "instances": 3},
            {"Modality": "SR", "SeriesDescription": "old report", "sop_class": SR},
        ]
    )
    out = fake.rest("POST", "/lesion-ai/rules/test", json.dumps({"study": study}).encode(), headers=ADMIN)
    assert out.status == 200, out.body
    result = out.json()
    [match] = result["matches"]
    assert match["rule"] == "prostate-mr" and len(match["input_series"]) == 2
    assert [s["reason"] for s in result["excluded_series"]] == [
        "not an image input (structured report, SOP class 1.2.840.10008.5.1.4.1.1.88.34)"
    ]
    roles = match["roles"]
    assert roles["roles"]["t2w"]["preferred"]["description"] == "t2_tse_tra"
    sagittal = next(s for s in roles["series"] if s["description"] == "t2_tse_sag")
    assert sagittal["ignored"] == "t2_sagittal"
    # Candidate rules can be tried without putting them in force.
    other = fake.rest(
        "POST",
        "/lesion-ai/rules/test",
        json.dumps(
            {"study": study, "rules": GOOD_RULES.replace("SCANNER", "OTHER"), "roles": False}
        ).encode(),
        headers=ADMIN,
    ).json()
    assert other["matches"] == []
    bad = fake.rest(
        "POST",
        "/lesion-ai/rules/test",
        json.dumps({"study": study, "rules": "rules: 3"}).encode(),
        headers=ADMIN,
    )
    assert bad.status == 400 and "field rules" in bad.json()["error"]
    assert fake.rest("POST", "/lesion-ai/rules/test", b"{}", headers=ADMIN).status == 400
    assert fake.rest("POST", "/lesion-ai/rules/test", b"[1]", headers=ADMIN).status == 400


def test_source_route_serves_the_complete_source(node: tuple[FakeOrthanc, NodePlugin]) -> None:
    fake, _ = node
    out = fake.rest("GET", "/lesion-ai/source")
    assert out.status == 200 and out.mime == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(out.body)) as tar:
        names = tar.getnames()
    assert any(n.endswith("orthanc_plugin/plugin.py") for n in names)
    assert any(n.endswith("orthanc_plugin/entry/lesion_ai_entry.py") for n in names)
    assert any(n.endswith("orthanc_plugin/data/orthanc.json.in") for n in names)
    # the whole node, not only the plugin: engine, training, set-up and build files
    for wanted in (
        "lesion_engine/engine.py",
        "training/fit/train.py",
        "scripts/setup.sh",
        "pyproject.toml",
        "Makefile",
    ):
        assert any(n.endswith(wanted) for n in names), wanted
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


# -- workers ------------------------------------------------------------------------------------------
def test_worker_command_carries_no_settings_and_no_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"username": "node-user-7", "password": "s3cret-pw"}))
    settings = _settings(
        tmp_path, python="/opt/venv/bin/python", model="/models/m1", workers=2, credentials_file=credentials
    )
    command = worker_command(settings)
    assert command == [
        "/opt/venv/bin/python",
        "-m",
        "orthanc_plugin.worker.main",
        "--settings",
        str(tmp_path / "worker-settings.json"),
    ]

    def is_number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    assert not [arg for arg in command if is_number(arg)]  # no number: the settings are in the file
    written = json.loads(settings.write_worker_settings().read_text())
    assert written["Model"] == "/models/m1" and written["LeaseSeconds"] == settings.lease_s
    assert written["Threads"] >= 1  # the CPUs shared among the workers
    env = settings.worker_environment(4321)
    assert env["LESION_AI_PARENT_PID"] == "4321" and env["LESION_AI_ORTHANC_PASSWORD"] == "s3cret-pw"
    for text in (" ".join(command), json.dumps(written)):  # credentials travel in the environment only
        assert "s3cret-pw" not in text and "node-user-7" not in text


def test_supervisor_restarts_a_dead_worker_and_stops_all(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = WorkerSupervisor(command, 2, {}, tmp_path / "logs", check_s=0.1)
    supervisor.start()
    try:
        first = supervisor.pids()
        assert all(first)
        import os
        import signal

        os.kill(first[0], signal.SIGKILL)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = supervisor.pids()
            if pids[0] is not None and pids[0] != first[0]:
                break
            time.sleep(0.05)
        assert pids[0] not in (None, first[0]) and pids[1] == first[1]
        assert supervisor.status()[0]["restarts"] == 1
    finally:
        supervisor.stop(timeout_s=5)
    assert supervisor.pids() == [None, None]
    assert (tmp_path / "logs" / "worker-0.log").exists()


def test_supervisor_rotates_a_growing_worker_log(tmp_path: Path) -> None:
    # a chatty worker: 200 lines of 100 bytes every 0.05 s
    chatty = "import sys, time\nwhile True:\n    sys.stdout.write(('x' * 99 + '\\n') * 200); sys.stdout.flush(); time.sleep(0.05)\n"
    supervisor = WorkerSupervisor(
        [sys.executable, "-c", chatty],
        1,
        {},
        tmp_path / "logs",
        check_s=0.05,
        max_log_bytes=50_000,
        log_backups=2,
    )
    log = tmp_path / "logs" / "worker-0.log"
    supervisor.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not log.with_name("worker-0.log.2").exists():
            time.sleep(0.05)
    finally:
        supervisor.stop(timeout_s=5)
    assert log.with_name("worker-0.log.1").stat().st_size > 50_000
    assert log.with_name("worker-0.log.2").stat().st_size > 50_000
    assert not log.with_name("worker-0.log.3").exists()  # only log_backups are kept
    # the worker kept writing to the emptied file, from its start (append mode), not past a hole
    data = log.read_bytes()
    assert b"\0" not in data and log.stat().st_size < 10 * 50_000
    with pytest.raises(ValueError, match="max_log_bytes"):
        WorkerSupervisor(["true"], 1, {}, tmp_path, max_log_bytes=10)


def test_health_reports_free_space_and_warns_below_the_threshold(tmp_path: Path) -> None:
    """Health gives the free space of the data folder and Orthanc's storage, and names a folder below
    ``DiskSpaceWarningMb`` as a problem (a full disk would keep studies from being stored or evaluated)."""
    storage = tmp_path / "storage"
    storage.mkdir()
    for limit, degraded in ((10_000_000, True), (0, False)):
        home = tmp_path / f"home-{limit}"
        home.mkdir()
        settings = _settings(home, disk_warning_mb=limit)
        fake = FakeOrthanc({"LesionAI": settings.to_section(), "StorageDirectory": str(storage)})
        plugin = NodePlugin.from_orthanc(fake)
        health = plugin.admin.health()[1]
        assert {d["folder"] for d in health["disk"]} == {"data folder", "Orthanc storage"}
        assert all(int(d["free_mb"]) > 0 for d in health["disk"])
        low = [p for p in health["problems"] if "MB free" in p]
        assert (health["status"] == "degraded" and len(low) == 2) if degraded else not low, health
        if degraded:
            assert any(str(storage) in p for p in low) and any("data folder" in p for p in low)
        plugin.stop()


def test_a_stable_study_whose_change_orthanc_could_not_log_is_found_by_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a full index Orthanc cannot log the StableStudy change (SQLite error 13), though the study is
    stable: the follower's periodic look at pending studies finds it, without a restart."""
    import orthanc_plugin.intake.changes as changes

    settings = _settings(tmp_path)
    fake = FakeOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.follower.start()
    study = fake.add_study(series=PROSTATE)
    plugin.follower.poll()
    fake.studies[study].stable = True  # stable, but no StableStudy change in the log
    plugin.follower.poll()
    assert plugin.queue.list() == []  # not yet: the sweep runs every _PENDING_SWEEP_S
    monkeypatch.setattr(changes, "_PENDING_SWEEP_S", 0.0)
    plugin.follower.poll()
    assert [j.study_id for j in plugin.queue.list()] == [study]
    assert study not in plugin.follower.pending
    plugin.stop()


def test_workers_do_not_inherit_orthancs_malloc_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orthanc runs with ``MALLOC_MMAP_THRESHOLD_`` (its request buffers go back to the system); a worker
    started from it must not: glibc would map and unmap each of its tensors, and the engine runs ~40 % slower."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", ORTHANC_ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"])
    monkeypatch.setenv("TCP_NODELAY", "1")
    out = tmp_path / "env.json"
    command = [sys.executable, "-c", f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"]
    supervisor = WorkerSupervisor(command, 1, {"LESION_AI_EXTRA": "x"}, tmp_path / "logs", check_s=0.1)
    supervisor.start()
    try:
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        seen = json.loads(out.read_text())
    finally:
        supervisor.stop(timeout_s=5)
    assert "MALLOC_MMAP_THRESHOLD_" not in seen
    assert seen["TCP_NODELAY"] == "1" and seen["LESION_AI_EXTRA"] == "x"
