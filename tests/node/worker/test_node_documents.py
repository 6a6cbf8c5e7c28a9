"""The job documents in the queue: payload and progress round trips, reading what existing queues hold
(documents without a schema version), refusing newer versions, unknown keys and wrong types by name,
the job key that deduplicates work, and what workers and the admin API do with unreadable documents."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from lesion_engine.results.outputs import Output
from orthanc_plugin.intake.studies import OrthancSeries, job_for
from orthanc_plugin.jobqueue import (
    JobDocumentError,
    JobPayload,
    JobProgress,
    JobQueue,
    JobState,
    NewJob,
    UnknownSchemaVersionError,
    job_fingerprint,
)
from orthanc_plugin.node.settings import WorkerSettings
from orthanc_plugin.rules import Destinations, RuleMatch, parse_rules
from orthanc_plugin.worker.runner import Worker, WorkerOptions
from tests.paths import REPO
from tests.support.node_fakes import FakeRest, Scripted

# A payload exactly as the node stored them before job documents had a schema version.
PAYLOAD_BEFORE_VERSIONS: dict[str, Any] = {
    "study": "0a1b2c3d-study",
    "study_uid": "1.2.3",
    "rule": "prostate-mr",
    "series": ["se-a", "se-b"],
    "series_uids": ["1.2.3.1", "1.2.3.2"],
    "outputs": ["seg", "sr", "pmap"],
    "destinations": {"modalities": ["pacs"], "dicomweb": [], "peers": []},
    "series_rules": {"roles": {"t2w": {"include": [{"SeriesDescription": "(?i)tse_ax"}]}}},
    "series_rules_source": "rules.yaml (rules[0].series_rules)",
    "model": "bpmri:1.0:0123456789abcdef",
    "fingerprint": "33d1416c7d622354c0c1b44dca40a55e8a64b659ab55e56953c0651dfb0d4ba9",
}
# A progress exactly as workers stored them before job documents had a schema version.
PROGRESS_BEFORE_VERSIONS: dict[str, Any] = {
    "stored": ["r1", "r2"],
    "result_series": ["rs-1", "rs-2"],
    "status": "done",
    "reason": None,
    "model": {"name": "bpmri", "version": "1.0", "sha256": "01" * 32},
    "details": {"lesions": 2, "patient_score": 0.8123, "timings_s": {"total": 12.5}},
    "forwarded": {"modalities:pacs": "failed"},
}


def test_payload_written_before_schema_versions_is_read_as_version_1() -> None:
    payload = JobPayload.from_json(PAYLOAD_BEFORE_VERSIONS)
    assert payload.schema_version == JobPayload.SCHEMA_VERSION == 2  # converted when read
    assert payload.series == ("se-a", "se-b")
    assert payload.outputs == (Output.SEG, Output.SR, Output.PMAP)
    assert payload.destinations == Destinations(modalities=("pacs",))
    assert payload.series_rules is not None  # validated as the engine's series rules
    assert payload.series_rules.to_json() == PAYLOAD_BEFORE_VERSIONS["series_rules"]
    assert payload.series_rules.source == PAYLOAD_BEFORE_VERSIONS["series_rules_source"]
    assert payload.series_rules.t2w.include[0].describe() == "SeriesDescription~/(?i)tse_ax/"
    assert payload.key == "prostate-mr:0a1b2c3d-study:33d1416c7d622354c0c1b44dca40a55e"
    assert payload.to_json() == {**PAYLOAD_BEFORE_VERSIONS, "schema_version": 1}  # same keys, same values


def test_documents_round_trip() -> None:
    payload = JobPayload.from_json(PAYLOAD_BEFORE_VERSIONS)
    assert JobPayload.from_json(json.loads(json.dumps(payload.to_json()))) == payload
    progress = JobProgress.from_json(PROGRESS_BEFORE_VERSIONS)
    assert progress.schema_version == 1 and progress.processed
    assert progress.to_json() == {**PROGRESS_BEFORE_VERSIONS, "schema_version": 1}
    assert JobProgress.from_json(json.loads(json.dumps(progress.to_json()))) == progress
    minimal = JobPayload(study="st", rule="r", series=("se",))
    assert minimal.outputs == (Output.SEG, Output.SR, Output.KOS)  # the engine's default outputs
    assert JobPayload.from_json(minimal.to_json()) == minimal


def test_progress_of_a_new_job_and_its_updates() -> None:
    fresh = JobProgress.from_json({})  # what the queue stores for a job not started
    assert fresh == JobProgress() and not fresh.processed and fresh.stored is None
    done = replace(fresh, stored=("r1",), status="done", model={"name": "m"}, details={"lesions": 0})
    forwarded = done.forwarded_to("peers:other", "done")
    assert forwarded.forwarded == {"peers:other": "done"} and done.forwarded == {}  # documents do not change
    assert JobProgress.from_json(forwarded.to_json()) == forwarded
    with pytest.raises(TypeError):
        forwarded.forwarded["peers:other"] = "failed"  # type: ignore[index]
    with pytest.raises(JobDocumentError, match="status"):
        replace(done, status="finished")  # type: ignore[arg-type]


def test_a_newer_schema_version_is_refused_with_a_clear_error() -> None:
    newer = {**PAYLOAD_BEFORE_VERSIONS, "schema_version": 3, "priority_class": "urgent"}
    with pytest.raises(
        UnknownSchemaVersionError, match=r"schema_version 3, newer than this node reads \(2\)"
    ):
        JobPayload.from_json(newer)
    with pytest.raises(UnknownSchemaVersionError, match="upgrade this worker"):
        JobProgress.from_json({"schema_version": 3})
    with pytest.raises(JobDocumentError, match="key 'schema_version': expected an integer >= 1"):
        JobPayload.from_json({**PAYLOAD_BEFORE_VERSIONS, "schema_version": "1"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"series": "se-a"}, "job payload, key 'series': expected a list of text, got 'se-a'"),
        ({"study": 17}, "job payload, key 'study': expected text, got 17"),
        ({"outputs": ["seg", "report"]}, "job payload, key 'outputs': unknown output 'report'"),
        (
            {"destinations": {"pacs": ["x"]}},
            "job payload, key 'destinations': expected an object of modalities",
        ),
        ({"destinations": {"modalities": "pacs"}}, "key 'destinations': expected lists of destination names"),
        ({"series_rules": ["x"]}, "key 'series_rules': expected a JSON object"),
        (
            {"series_rules": {"min_slices": "many"}},
            r"key 'series_rules': rules.yaml \(rules\[0\].series_rules\), field min_slices: must be an integer",
        ),
        ({"priority_class": "urgent"}, r"unknown key\(s\) 'priority_class' for schema_version 1"),
    ],
)
def test_payload_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(JobDocumentError, match=message):
        JobPayload.from_json({**PAYLOAD_BEFORE_VERSIONS, **change})


def test_payload_needs_study_rule_and_series() -> None:
    for key in ("study", "rule", "series"):
        broken = {k: v for k, v in PAYLOAD_BEFORE_VERSIONS.items() if k != key}
        with pytest.raises(JobDocumentError, match=f"key '{key}' is missing"):
            JobPayload.from_json(broken)
    with pytest.raises(JobDocumentError, match="expected a JSON object, got list"):
        JobPayload.from_json([1, 2])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stored": "r1"}, "job progress, key 'stored': expected a list of text"),
        ({"status": "finished"}, "job progress, key 'status': expected one of done, failed or null"),
        ({"forwarded": {"modalities:pacs": "maybe"}}, "key 'forwarded': expected an object of destination"),
        ({"model": {"name": 3}}, "key 'model': expected an object of text values"),
        ({"attempt": 2}, r"unknown key\(s\) 'attempt'"),
    ],
)
def test_progress_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(JobDocumentError, match=message):
        JobProgress.from_json({**PROGRESS_BEFORE_VERSIONS, **change})


def test_the_job_key_is_the_same_as_before() -> None:
    """Jobs already in a queue deduplicate against new ones: the key of a study, rule, input series (with
    their instance counts) and model must not change."""

    class Study:
        study_id = "0a1b2c3d-study"
        study_instance_uid = "1.2.3"

    rules = parse_rules((REPO / "orthanc_plugin" / "data" / "rules.yaml").read_text())
    api: Any = None  # not read: the series' tags and instances are given
    series = (
        OrthancSeries(
            api, {"ID": "se-b", "MainDicomTags": {"SeriesInstanceUID": "1.2.3.2"}, "Instances": ["i"] * 3}
        ),
        OrthancSeries(
            api, {"ID": "se-a", "MainDicomTags": {"SeriesInstanceUID": "1.2.3.1"}, "Instances": ["i"] * 20}
        ),
    )
    job = job_for(Study(), RuleMatch(rules.rules[0], series), "bpmri:1.0:0123456789abcdef")  # type: ignore[arg-type]
    assert job.key == "prostate-mr:0a1b2c3d-study:33d1416c7d622354c0c1b44dca40a55e"
    assert job.payload["fingerprint"] == PAYLOAD_BEFORE_VERSIONS["fingerprint"]
    assert (
        job_fingerprint(
            "0a1b2c3d-study", "prostate-mr", [("se-a", 20), ("se-b", 3)], "bpmri:1.0:0123456789abcdef"
        )
        == PAYLOAD_BEFORE_VERSIONS["fingerprint"]
    )
    assert JobPayload.from_json(job.payload).key == job.key


# -- what the worker and the admin API do with documents ---------------------------------------------------
def _run(queue: JobQueue, payload: dict[str, Any]) -> JobState | None:
    queue.enqueue(NewJob("k", "st1", "prostate-mr", "m:1", 0, payload))
    job = queue.claim("w")
    assert job is not None
    options = WorkerOptions.from_settings(WorkerSettings(queue="sqlite:///unused"), owner="w")
    return Worker(queue, FakeRest(), Scripted(), options).run_job(job)


def test_worker_runs_a_job_queued_before_schema_versions(queue: JobQueue) -> None:
    old = {**PAYLOAD_BEFORE_VERSIONS, "study": "st1", "series": ["se1", "se2"], "destinations": {}}
    assert _run(queue, old) is JobState.DONE
    [job] = queue.list()
    assert JobProgress.from_json(job.progress).stored == ("r1", "r2")
    assert job.progress["schema_version"] == 1


def test_worker_fails_an_unreadable_payload_at_once_and_leaves_a_newer_one_to_newer_workers(
    queue: JobQueue,
) -> None:
    broken = {**PAYLOAD_BEFORE_VERSIONS, "study": "st1", "series": "se1"}
    assert _run(queue, broken) is JobState.FAILED
    [job] = queue.list()
    assert job.error is not None and "key 'series'" in job.error
    newer = {**PAYLOAD_BEFORE_VERSIONS, "study": "st1", "schema_version": 3}
    queue.enqueue(NewJob("k2", "st1", "prostate-mr", "m:1", 0, newer))
    claimed = queue.claim("w")
    assert claimed is not None
    options = WorkerOptions.from_settings(WorkerSettings(queue="sqlite:///unused"), owner="w")
    assert Worker(queue, FakeRest(), Scripted(), options).run_job(claimed) is JobState.QUEUED  # retried
    again = queue.get(claimed.id)
    assert again is not None and again.error is not None and "newer than this node reads" in again.error
