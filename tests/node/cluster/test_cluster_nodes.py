"""A real cluster on loopback ports: one PostgreSQL server (Orthanc's index, the job queue and the cluster's
tables), Orthanc A and B sharing one storage folder, each with the node's plugin and a worker. Studies sent
to A, to B, and split across both are each processed exactly once; rules put on A are in force on B; when
the dispatching Orthanc is killed, the other takes over and nothing is lost or processed twice."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lesion_engine.model.model_card import CARD_FILE, WEIGHTS_FILE, model_identity
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.cli.dicomsend import dicom_files, send_files
from orthanc_plugin.worker.client import OrthancClient
from tests.support.model_helpers import write_tiny_artifact
from tests.support.node_env import (
    RULES_TO_PACS,
    OrthancFleet,
    OrthancServer,
    count_by_modality,
    find_study,
    jobs,
    make_study,
    wait_for,
)
from tests.support.pg_env import PostgresServer, running_postgres

pytestmark = [pytest.mark.orthanc, pytest.mark.postgres, pytest.mark.slow]


LEASE_S = 3.0
#: The header that state-changing admin requests carry.
ADMIN = {CSRF_HEADER: CSRF_VALUE}
STABLE_AGE_S = 3


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def _cluster(
    fleet: OrthancFleet,
    postgres: PostgresServer,
    tmp_path: Path,
    runs: Path,
    delay_s: float = 0.5,
    workers: int = 1,
    pacs: OrthancServer | None = None,
) -> tuple[OrthancServer, OrthancServer]:
    """Orthanc A and B on one new database, sharing a storage folder (with ``pacs``: their results go there,
    sent in one synchronous request each, as workers behind a load balancer send)."""
    database = postgres.database()
    servers = []
    for name in ("A", "B"):
        servers.append(
            fleet.node(
                name,
                workers=workers,
                stable_age=STABLE_AGE_S,
                cluster=database,
                storage=tmp_path / "shared-storage",
                extra={"DispatcherLeaseSeconds": LEASE_S, **({"ForwardMode": "synchronous"} if pacs else {})},
                env={"LESION_AI_FAKE_DELAY": str(delay_s), "LESION_AI_FAKE_LOG": str(runs)},
                site={"DicomModalities": {"pacs": [pacs.aet, "127.0.0.1", pacs.dicom_port]}}
                if pacs
                else None,
                rules=RULES_TO_PACS if pacs else None,
            ).start()
        )
    return servers[0], servers[1]


def _send(server: OrthancServer, files: list[Path]) -> None:
    report = send_files(files, "127.0.0.1", server.dicom_port, "SCANNER", server.aet)
    assert report.sent == len(files) and not report.failed, report.failed


def _done(client: OrthancClient, count: int, timeout_s: float = 90.0) -> list[dict[str, Any]]:
    def finished() -> list[dict[str, Any]] | None:
        found = jobs(client)
        if any(j["state"] == "failed" for j in found):
            raise AssertionError(f"a job failed: {found}")
        done = [j for j in found if j["state"] == "done"]
        return found if len(done) >= count and len(done) == len(found) else None

    return wait_for(finished, timeout_s, f"{count} job(s) done")


def _settle(*servers: OrthancServer, timeout_s: float = 60.0) -> None:
    """Wait until the dispatcher has read the whole change log, judged every study that arrived, and no job
    is queued or running (so that a study judged twice would show)."""

    def quiet() -> bool:
        for server in servers:
            health = server.client().get_json("/lesion-ai/health")
            if not health["cluster"]["dispatching"]:
                continue
            last = server.client().get_json("/changes?last")["Last"]
            counts = health["queue"]["counts"]
            return bool(
                health["changes"]["last_sequence"] >= last
                and health["changes"]["pending_studies"] == 0
                and counts["queued"] == counts["running"] == 0
            )
        return False

    wait_for(quiet, timeout_s, "the cluster to settle")


def _dispatchers(*servers: OrthancServer) -> list[str]:
    """The servers that say they dispatch now."""
    return [s.name for s in servers if s.client().get_json("/lesion-ai/health")["cluster"]["dispatching"]]


def _check_one_result_set_each(client: OrthancClient, uids: list[str], runs: Path) -> None:
    lines = runs.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(uids)  # each study processed exactly once
    for uid in uids:
        counts = count_by_modality(client, str(find_study(client, uid)))
        assert counts.get("SEG") == 1 and counts.get("SR") == 1, (uid, counts)
    sop_uids = [i["MainDicomTags"]["SOPInstanceUID"] for i in client.get_json("/instances?expand")]
    assert len(sop_uids) == len(set(sop_uids))


def test_studies_sent_to_either_server_or_split_across_both_get_one_result_set(
    fleet: OrthancFleet, postgres: PostgresServer, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    pacs = fleet.pacs().start()
    a, b = _cluster(fleet, postgres, tmp_path, runs, pacs=pacs)
    wait_for(lambda: len(_dispatchers(a, b)) == 1, 20, "one dispatcher")
    uids = [make_study(tmp_path / f"in{i}", patient_id=f"P{i}", images=5 if i == 4 else 3) for i in range(5)]
    for i in range(4):
        _send(a if i % 2 == 0 else b, dicom_files([tmp_path / f"in{i}"]))
    split = dicom_files([tmp_path / "in4"])  # s01_* (T2W) to A; s02_* (ADC) to B, one image a second
    _send(a, [f for f in split if f.name.startswith("s01")])
    for image in [f for f in split if f.name.startswith("s02")]:
        time.sleep(1.0)  # A calls the study stable (its own StableAge) while B still receives it
        _send(b, [image])
    _done(a.client(), 5)
    _settle(a, b)
    found = _done(a.client(), 5)
    assert len(found) == 5 and len({j["study"] for j in found}) == 5
    assert sorted(j["id"] for j in jobs(b.client())) == sorted(j["id"] for j in found)  # one queue
    _check_one_result_set_each(a.client(), uids, runs)
    _check_one_result_set_each(b.client(), uids, runs)  # one index: B sees the same
    for uid in uids:  # each result set reached the PACS once
        counts = count_by_modality(pacs.client(), str(find_study(pacs.client(), uid)))
        assert counts.get("SEG") == 1 and counts.get("SR") == 1, (uid, counts)
    health = [s.client().get_json("/lesion-ai/health")["cluster"] for s in (a, b)]
    assert [h["dispatching"] for h in health].count(True) == 1
    assert health[0]["dispatcher"]["server"] == health[1]["dispatcher"]["server"] in ("A", "B")
    a.note_workers()
    b.note_workers()


RULES = """\
version: 1
rules:
  - name: cluster-ct
    priority: 1
    match: {series: {Modality: [CT], SOPClassUID: [1.2.840.10008.5.1.4.1.1.2]}, calling_aet: [SCANNER]}
"""


def test_rules_and_models_changed_on_one_server_are_in_force_on_the_other(
    fleet: OrthancFleet, postgres: PostgresServer, tmp_path: Path
) -> None:
    a, b = _cluster(fleet, postgres, tmp_path, tmp_path / "runs.log", workers=0)
    # Rules put on A: B shows them, with their author and the previous version, and queues by them.
    before = b.client().get_json("/lesion-ai/rules")["text"]
    status, _, body = a.fetch("/lesion-ai/rules", method="PUT", body=RULES.encode(), headers=ADMIN)
    assert status == 200, body
    on_b = b.client().get_json("/lesion-ai/rules")
    assert on_b["text"] == RULES and on_b["saved_by"] == a.credentials["username"]  # type: ignore[index]
    history = b.client().get_json("/lesion-ai/rules/history")
    assert [v["text"] for v in history["versions"]] == [before]
    make_study(tmp_path / "ct", modality="CT", study_description="CT", body_part="CHEST")
    _send(b, dicom_files([tmp_path / "ct"]))
    [job] = wait_for(lambda: jobs(b.client()), 30, "a job for the CT study under the rules put on A")
    assert job["rule"] == "cluster-ct"  # the packaged rules would not have queued a CT study
    # A study no rule matches now: the dispatcher records it, the other server lists it as ignored too.
    [dispatcher] = wait_for(lambda: _dispatchers(a, b) or None, 20, "a dispatcher")
    other = b if dispatcher == "A" else a
    mr_uid = make_study(tmp_path / "mr", patient_id="P-MR")
    _send(a, dicom_files([tmp_path / "mr"]))
    mr_study = wait_for(lambda: find_study(other.client(), mr_uid), 30, "the MR study in the shared index")
    ignored = wait_for(
        lambda: [
            e for e in other.client().get_json("/lesion-ai/ignored")["ignored"] if e["study"] == mr_study
        ],
        30,
        "the MR study listed as ignored by the server that does not dispatch",
    )
    assert ignored[0]["evaluation"][0]["rule"] == "cluster-ct"
    # A model registered on A and promoted on B: the active model of both.
    artifact = write_tiny_artifact(tmp_path / "tiny", seed=3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in (CARD_FILE, WEIGHTS_FILE):
            archive.write(artifact / name, name)
    status, _, body = a.fetch("/lesion-ai/models/tiny", method="POST", body=buffer.getvalue(), headers=ADMIN)
    assert status == 201, body
    listed = b.client().get_json("/lesion-ai/models")
    assert "tiny" in [m["name"] for m in listed["models"]]
    status, _, body = b.fetch("/lesion-ai/models/tiny/promote", method="POST", body=b"{}", headers=ADMIN)
    assert status == 200, body
    identity = model_identity(str(artifact))
    for server in (a, b):
        health = server.client().get_json("/lesion-ai/health")
        assert health["model"] == identity, (server.name, health["model"])
    models_history = [(h["action"], h["model"]) for h in a.client().get_json("/lesion-ai/models")["history"]]
    assert ("add", "tiny") in models_history and ("promote", "tiny") in models_history


def test_when_the_dispatcher_is_killed_the_other_server_takes_over_and_nothing_is_lost(
    fleet: OrthancFleet, postgres: PostgresServer, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    a, b = _cluster(fleet, postgres, tmp_path, runs)
    [first] = wait_for(lambda: _dispatchers(a, b) or None, 20, "a dispatcher")
    dispatcher, other = (a, b) if first == "A" else (b, a)
    uids = [make_study(tmp_path / f"in{i}", patient_id=f"P{i}") for i in range(3)]
    _send(dispatcher, dicom_files([tmp_path / "in0"]))  # arrives, not stable yet
    half = dicom_files([tmp_path / "in1"])
    _send(dispatcher, half[: len(half) // 2])
    dispatcher.kill()
    killed_at = time.monotonic()
    _send(other, half[len(half) // 2 :])
    _send(other, dicom_files([tmp_path / "in2"]))
    wait_for(lambda: _dispatchers(other) or None, 2 * LEASE_S + 5, "the other server to take over")
    taken_over_s = time.monotonic() - killed_at
    _done(other.client(), 3, timeout_s=90)
    _settle(other)
    found = _done(other.client(), 3)
    assert len(found) == 3 and len({j["study"] for j in found}) == 3
    _check_one_result_set_each(other.client(), uids, runs)
    assert taken_over_s <= LEASE_S + STABLE_AGE_S + 2.0, f"took over after {taken_over_s:.1f} s"
    other.note_workers()
    json.dumps(found)  # the jobs' documents are plain JSON


def test_a_worker_killed_mid_job_has_its_job_run_again_once(
    fleet: OrthancFleet, postgres: PostgresServer, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    a, b = _cluster(fleet, postgres, tmp_path, runs, delay_s=3.0)
    [uid] = [make_study(tmp_path / "in0", patient_id="P0")]
    _send(a, dicom_files([tmp_path / "in0"]))
    [running] = wait_for(lambda: jobs(a.client(), "running"), 30, "the job to start")
    wait_for(lambda: runs.is_file() and runs.read_text(), 30, "the processor to start on the study")
    pid = int(str(running["worker"]).split(":")[1])  # host:pid:...
    for server in (a, b):
        server.note_workers()
    os.kill(pid, signal.SIGKILL)
    [job] = _done(b.client(), 1)
    assert job["id"] == running["id"] and job["attempts"] == 2
    assert [line.split()[0] for line in runs.read_text().splitlines()] == [uid, uid]  # run again once
    counts = count_by_modality(a.client(), job["study"])
    assert counts.get("SEG") == 1 and counts.get("SR") == 1, counts


def test_a_postgresql_restart_mid_run_is_survived_and_nothing_is_lost(
    fleet: OrthancFleet, postgres: PostgresServer, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    a, b = _cluster(fleet, postgres, tmp_path, runs, delay_s=2.0)
    wait_for(lambda: len(_dispatchers(a, b)) == 1, 20, "one dispatcher")
    uids = [make_study(tmp_path / f"in{i}", patient_id=f"P{i}") for i in range(3)]
    _send(a, dicom_files([tmp_path / "in0"]))
    _send(b, dicom_files([tmp_path / "in1"]))
    wait_for(lambda: jobs(a.client(), "running"), 30, "a job to start")
    postgres.restart()  # cuts every connection: Orthanc's index, the queue's, the cluster's
    files = dicom_files([tmp_path / "in2"])
    report = send_files(files, "127.0.0.1", b.dicom_port, "SCANNER", b.aet)
    # Orthanc answers the first store after the restart with a failure (0xA700) while its index reconnects;
    # the sender knows, and sends again, as scanners do.
    refused = [Path(path) for path, _ in report.failed]
    assert all("0xA700" in why for _, why in report.failed) and len(refused) <= 2, report.failed
    if refused:
        time.sleep(1.0)
        _send(b, refused)
    _done(a.client(), 3, timeout_s=120)
    _settle(a, b)
    found = _done(b.client(), 3)
    assert len({j["study"] for j in found}) == 3
    for uid in uids:
        counts = count_by_modality(a.client(), str(find_study(a.client(), uid)))
        assert counts.get("SEG") == 1 and counts.get("SR") == 1, (uid, counts)
    health = [s.client().get_json("/lesion-ai/health") for s in (a, b)]
    assert [h["cluster"]["dispatching"] for h in health].count(True) == 1
    assert all(h["status"] == "ok" for h in health), [h["problems"] for h in health]
    a.note_workers()
    b.note_workers()
