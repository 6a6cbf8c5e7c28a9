"""The node end to end with real Orthanc servers on free loopback ports: studies arrive by C-STORE
(pynetdicom and dcmtk) and STOW-RS, SEG and SR appear in the study and reach a destination PACS; other
studies are left alone; results never re-trigger jobs; the node survives killed processes and downtime;
rules are replaced at run time; a PostgreSQL queue shared by two workers runs each job once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.cli.dicomsend import dicom_files, send_files
from orthanc_plugin.node.orthanc_api import RestApiError
from orthanc_plugin.worker.client import OrthancClient
from tests.paths import REPO
from tests.support import validators
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

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def _send(server: OrthancServer, folder: Path, calling_aet: str = "SCANNER") -> None:
    report = send_files(dicom_files([folder]), "127.0.0.1", server.dicom_port, calling_aet, server.aet)
    assert report.sent > 0 and not report.failed, report.failed


def _stow(client: OrthancClient, folder: Path) -> None:
    boundary = "lesion-ai-test-boundary"
    parts = [
        b"--"
        + boundary.encode()
        + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + path.read_bytes()
        + b"\r\n"
        for path in dicom_files([folder])
    ]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    answer = json.loads(client.request("POST", "/dicom-web/studies", body, content_type))
    assert not answer.get("00081198", {}).get("Value")  # FailedSOPSequence
    assert len(answer["00081199"]["Value"]) == len(parts)  # ReferencedSOPSequence


def _settle(client: OrthancClient, timeout_s: float = 40.0) -> None:
    """Wait until every study is stable, the plugin has read the whole change log and no job is pending."""

    def quiet() -> bool:
        last = client.get_json("/changes?last")["Last"]
        studies = client.get_json("/studies?expand")
        health = client.get_json("/lesion-ai/health")
        counts = health["queue"]["counts"]
        return (
            all(s["IsStable"] for s in studies)
            and health["changes"]["last_sequence"] >= last
            and counts["queued"] == 0
            and counts["running"] == 0
        )

    wait_for(quiet, timeout_s, "the node to settle")


def _settle_changes(client: OrthancClient, timeout_s: float = 40.0) -> None:
    """Wait until every study is stable and the plugin has read the whole change log."""

    def read() -> bool:
        last = client.get_json("/changes?last")["Last"]
        stable = all(s["IsStable"] for s in client.get_json("/studies?expand"))
        return stable and client.get_json("/lesion-ai/health")["changes"]["last_sequence"] >= last

    wait_for(read, timeout_s, "the plugin to read every change")


def _done(client: OrthancClient, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    def finished() -> list[dict[str, Any]] | None:
        found = jobs(client)
        if any(j["state"] == "failed" for j in found):
            raise AssertionError(f"a job failed: {found}")
        done = [j for j in found if j["state"] == "done"]
        return done if len(done) >= count else None

    return wait_for(finished, timeout_s, f"{count} job(s) done")


def test_studies_by_cstore_storescu_and_stow_are_processed_and_forwarded(
    fleet: OrthancFleet, tmp_path: Path
) -> None:
    pacs = fleet.pacs().start()
    node = fleet.node(
        site={"DicomModalities": {"pacs": [pacs.aet, "127.0.0.1", pacs.dicom_port]}}, rules=RULES_TO_PACS
    ).start()
    client = node.client()
    with pytest.raises(RestApiError) as unauthenticated:
        OrthancClient(node.url).get_json("/lesion-ai/health")
    assert unauthenticated.value.status == 401

    by_cli = make_study(tmp_path / "in" / "cli", study_description="MR PROSTATE")
    by_storescu = make_study(tmp_path / "in" / "storescu", study_description="MRT Prostata")
    by_stow = make_study(tmp_path / "in" / "stow", study_description="prostate mpMRI")
    ct = make_study(
        tmp_path / "in" / "ct", modality="CT", study_description="CT ABDOMEN", body_part="ABDOMEN"
    )
    brain = make_study(
        tmp_path / "in" / "brain",
        study_description="MRI BRAIN",
        body_part="BRAIN",
        series=("t2_tse_tra", "ep2d_diff_tra"),
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "lesion_engine.cli",
            "send",
            str(tmp_path / "in" / "cli"),
            "--port",
            str(node.dicom_port),
            "--aet",
            "MODALITY1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert "sent 6 file(s), 0 failed" in cli.stdout
    storescu = subprocess.run(
        [
            "storescu",
            "-aet",
            "SCANNER2",
            "-aec",
            "LESIONAI",
            "+sd",
            "+r",
            "127.0.0.1",
            str(node.dicom_port),
            str(tmp_path / "in" / "storescu"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert storescu.returncode == 0, storescu.stderr
    _stow(client, tmp_path / "in" / "stow")
    _send(node, tmp_path / "in" / "ct")
    _send(node, tmp_path / "in" / "brain")

    done = _done(client, 3)
    studies = {uid: str(find_study(client, uid)) for uid in (by_cli, by_storescu, by_stow, ct, brain)}
    assert sorted(j["study"] for j in done) == sorted(studies[u] for u in (by_cli, by_storescu, by_stow))
    for uid in (by_cli, by_storescu, by_stow):
        study = studies[uid]
        assert study is not None
        assert count_by_modality(client, study) == {"MR": 6, "SEG": 1, "SR": 1}
        record = client.get_json(f"/studies/{study}/metadata/LesionAI")
        [entry] = record["processed"].values()
        assert entry["status"] == "done" and entry["model"] == "processor:tests.support.node_fakes:factory"
        # The destination PACS received the results of this study.
        pacs_client = pacs.client()
        pacs_study = wait_for(partial(find_study, pacs_client, uid), 20, "the results at the PACS")
        assert count_by_modality(pacs_client, pacs_study) == {"SEG": 1, "SR": 1}
    for uid in (ct, brain):
        assert count_by_modality(client, str(studies[uid])).keys() <= {"CT", "MR"}

    # Our results made the studies unstable again; once all is stable and read, no new job appeared.
    _settle(client)
    after = jobs(client)
    assert len(after) == 3 and all(j["attempts"] == 1 for j in after)
    health = client.get_json("/lesion-ai/health")
    assert health["status"] == "ok" and health["queue"]["counts"]["done"] == 3
    node.note_workers()


def test_real_fixture_study_with_the_engine(fleet: OrthancFleet, prostatex: Path, tmp_path: Path) -> None:
    from tests.support.model_helpers import write_tiny_artifact

    artifact = write_tiny_artifact(tmp_path / "model")
    pacs = fleet.pacs().start()
    node = fleet.node(
        processor=None,
        extra={"Model": str(artifact), "Device": "cpu"},
        site={"DicomModalities": {"pacs": [pacs.aet, "127.0.0.1", pacs.dicom_port]}},
        rules=RULES_TO_PACS,
    ).start()
    client = node.client()
    _send(node, prostatex / "dicom")
    [job] = _done(client, 1, timeout_s=180)
    detail = client.get_json(f"/lesion-ai/jobs/{job['id']}")
    assert detail["progress"]["model"]["name"] == "tiny-random"
    assert detail["model"].startswith("tiny-random:0.0.1:")
    study = job["study"]
    modalities = count_by_modality(client, study)
    assert (modalities["SEG"], modalities["SR"], modalities["OT"], modalities["KO"]) == (1, 1, 1, 1)
    pacs_client = pacs.client()
    uid = client.get_json(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
    wait_for(lambda: find_study(pacs_client, uid), 30, "the results at the PACS")
    # The SEG, the SR, the result summary (a Secondary Capture, modality OT) and the Key Object Selection
    # reach the PACS.
    expected = {"SEG": 1, "SR": 1, "OT": 1, "KO": 1}
    wait_for(
        lambda: count_by_modality(pacs_client, str(find_study(pacs_client, uid))) == expected or None,
        30,
        "every result at the PACS",
    )
    _settle(client)
    assert len(jobs(client)) == 1
    node.note_workers()
    worker_log = (node.home / "logs" / "worker-0.log").read_text()
    assert "model loaded and warmed up ahead of the first job" in worker_log
    assert worker_log.count("model loaded: ") == 1  # once, at the start: the job found it loaded
    # What the node stored is valid by the result validators.
    validated = []
    for series in client.get_json(f"/studies/{study}/series"):
        modality = series["MainDicomTags"].get("Modality", "")
        if modality not in ("SEG", "SR"):
            continue
        for instance in series["Instances"]:
            path = tmp_path / f"{modality}-{instance}.dcm"
            path.write_bytes(client.get_bytes(f"/instances/{instance}/file"))
            report = validators.dciodvfy(path)
            assert report.errors == [], report.output
            if modality == "SR":
                assert validators.dsrdump(path).returncode == 0
            validated.append(modality)
    assert sorted(validated) == ["SEG", "SR"]
    _check_private(node.home)


def _check_private(home: Path) -> None:
    """Patient data at rest: what Orthanc and the node wrote is 0600 in 0700 folders."""
    written = [home / "orthanc-db", home / "logs", home / "worker-settings.json", home / "credentials.json"]
    written += [home / "orthanc.json", *home.glob("queue.sqlite*")]
    found = []
    for top in written:
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            mode = path.stat().st_mode & 0o777
            found.append(path)
            wanted = 0o700 if path.is_dir() else 0o600
            assert mode & ~wanted == 0, f"{path.relative_to(home)} has mode {mode:o}"
    assert oct(home.stat().st_mode & 0o777) == oct(0o700)
    assert any(p.parent.name != "orthanc-db" and p.is_file() for p in (home / "orthanc-db").rglob("*"))
    assert len(found) > 5


def test_orthanc_killed_mid_job_then_restarted(fleet: OrthancFleet, tmp_path: Path) -> None:
    runs = tmp_path / "runs.log"
    node = fleet.node(env={"LESION_AI_FAKE_DELAY": "4", "LESION_AI_FAKE_LOG": str(runs)}).start()
    client = node.client()
    make_study(tmp_path / "in")
    _send(node, tmp_path / "in")
    wait_for(lambda: runs.exists() and runs.read_text(), 30, "the processing to start")
    node.kill()
    # The worker notices that Orthanc died, hands the job back and exits.
    node.start()
    client = node.client()
    [job] = _done(client, 1)
    assert count_by_modality(client, job["study"]) == {"MR": 6, "SEG": 1, "SR": 1}
    _settle(client)
    assert len(jobs(client)) == 1
    assert len(runs.read_text().splitlines()) == 2  # interrupted once, then completed
    node.note_workers()


def test_worker_killed_mid_job_is_restarted_and_job_completes(fleet: OrthancFleet, tmp_path: Path) -> None:
    node = fleet.node(env={"LESION_AI_FAKE_DELAY": "3"}).start()
    client = node.client()
    make_study(tmp_path / "in")
    _send(node, tmp_path / "in")
    [running] = wait_for(lambda: jobs(client, "running"), 30, "the job to start")
    [worker] = client.get_json("/lesion-ai/health")["workers"]["processes"]
    node.worker_pids.add(worker["pid"])
    os.kill(worker["pid"], signal.SIGKILL)
    [job] = _done(client, 1)
    assert job["id"] == running["id"] and job["attempts"] == 2  # reclaimed after the lease expired
    assert count_by_modality(client, job["study"]) == {"MR": 6, "SEG": 1, "SR": 1}
    [restarted] = client.get_json("/lesion-ai/health")["workers"]["processes"]
    assert restarted["alive"] and restarted["pid"] != worker["pid"] and restarted["restarts"] == 1
    node.note_workers()


def test_a_study_arriving_when_orthanc_was_killed_waits_stable_age_after_the_restart(
    fleet: OrthancFleet, tmp_path: Path
) -> None:
    """Orthanc calls every study stable after a restart. One that was half received when Orthanc was killed
    is not processed at once (a failure report for half a study): it waits a full StableAge after the
    restart, and the rest sent meanwhile makes one complete job."""
    node = fleet.node(stable_age=8).start()
    client = node.client()
    make_study(tmp_path / "all")
    files = sorted(dicom_files([tmp_path / "all"]))
    first, rest = tmp_path / "first", tmp_path / "rest"
    for folder, part in ((first, files[:3]), (rest, files[3:])):
        folder.mkdir()
        for path in part:
            shutil.copy(path, folder / path.name)
    _send(node, first)
    wait_for(lambda: len(client.get_json("/instances")) == 3, 30, "half the study stored")
    node.kill()
    node.start()
    client = node.client()
    restarted = time.monotonic()
    assert client.get_json("/studies?expand")[0]["IsStable"]  # as Orthanc sees it after a restart
    while time.monotonic() - restarted < 5:
        assert jobs(client) == [], "half a study was processed right after the restart"
        time.sleep(0.5)
    _send(node, rest)
    [job] = _done(client, 1)
    assert count_by_modality(client, job["study"]) == {"MR": 6, "SEG": 1, "SR": 1}
    _settle(client)
    assert [j["state"] for j in jobs(client)] == ["done"]
    node.note_workers()


def test_a_dead_workers_job_is_handed_back_at_once_and_health_names_it(
    fleet: OrthancFleet, tmp_path: Path
) -> None:
    """With a two-minute lease, the job of a killed worker does not wait for the lease: the supervisor hands
    it back as soon as it sees the exit, the job says why, and health names the worker and the job."""
    node = fleet.node(env={"LESION_AI_FAKE_DELAY": "3"}, extra={"LeaseSeconds": 120.0}).start()
    client = node.client()
    make_study(tmp_path / "in")
    _send(node, tmp_path / "in")
    [running] = wait_for(lambda: jobs(client, "running"), 30, "the job to start")
    [worker] = client.get_json("/lesion-ai/health")["workers"]["processes"]
    node.worker_pids.add(worker["pid"])
    os.kill(worker["pid"], signal.SIGKILL)
    killed = time.monotonic()
    handed_back = wait_for(
        lambda: (j := client.get_json(f"/lesion-ai/jobs/{running['id']}"))["state"] != "running" and j,
        20,
        "the dead worker's job to leave 'running'",
    )
    assert time.monotonic() - killed < 10
    assert f"pid {worker['pid']}) exited with status -9" in handed_back["error"]
    health = client.get_json("/lesion-ai/health")
    named = [p for p in health["problems"] if f"pid {worker['pid']}" in p]
    assert named and f"job {running['id']}" in named[0], health["problems"]
    [job] = _done(client, 1)
    assert job["id"] == running["id"] and job["attempts"] == 2
    assert count_by_modality(client, job["study"]) == {"MR": 6, "SEG": 1, "SR": 1}
    node.note_workers()


def test_study_received_while_the_node_was_down_is_processed_at_start(
    fleet: OrthancFleet, tmp_path: Path
) -> None:
    home = tmp_path / "node"
    first = fleet.node("node", home=home).start()
    first.stop()
    plain = fleet.node("plain", home=home, with_plugin=False).start()  # Orthanc without the node
    uid = make_study(tmp_path / "in")
    _send(plain, tmp_path / "in")
    plain_client = plain.client()
    wait_for(lambda: all(s["IsStable"] for s in plain_client.get_json("/studies?expand")), 30, "stable study")
    plain.stop()
    node = fleet.node("node", home=home).start()
    client = node.client()
    [job] = _done(client, 1)
    assert job["study"] == find_study(client, uid)
    node.note_workers()


BAD_RULE = """\
version: 1
rules:
  - name: everything
    priorty: 1
    match: {series: {Modality: [CT], SOPClassUID: [1.2.840.10008.5.1.4.1.1.2]}, calling_aet: [SCANNER]}
"""


#: The header that state-changing admin requests carry.
ADMIN = {CSRF_HEADER: CSRF_VALUE}


def _post(node: OrthancServer, path: str, body: Any) -> Any:
    """POST JSON to the admin API with the CSRF header; the answer decoded (the test fails on an error)."""
    status, _, data = node.fetch(path, method="POST", body=json.dumps(body).encode(), headers=ADMIN)
    assert status == 200, (path, status, data[:500])
    return json.loads(data)


def test_put_rules_at_run_time(fleet: OrthancFleet, tmp_path: Path) -> None:
    node = fleet.node(workers=0).start()
    client = node.client()
    before = client.get_json("/lesion-ai/rules")
    status, _, body = node.fetch("/lesion-ai/rules", method="PUT", body=BAD_RULE.encode(), headers=ADMIN)
    assert status == 400
    assert "line 4, field rules[0].priorty: unknown field" in json.loads(body)["error"]
    assert client.get_json("/lesion-ai/rules") == before
    good = BAD_RULE.replace("priorty", "priority")
    # Without the CSRF header the node changes nothing, even for its own user.
    status, _, body = node.fetch("/lesion-ai/rules", method="PUT", body=good.encode())
    assert status == 403 and b"X-Lesion-AI-Request: 1" in body
    assert client.get_json("/lesion-ai/rules") == before
    status, _, body = node.fetch("/lesion-ai/rules", method="PUT", body=good.encode(), headers=ADMIN)
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert client.get_json("/lesion-ai/rules")["text"] == good
    make_study(tmp_path / "ct", modality="CT", study_description="CT", body_part="CHEST")
    _send(node, tmp_path / "ct")
    [job] = wait_for(lambda: jobs(client), 30, "a job for the CT study under the new rule")
    assert (job["rule"], job["priority"], job["state"]) == ("everything", 1, "queued")
    test = _post(node, "/lesion-ai/rules/test", {"study": job["study"], "roles": False})
    assert [m["rule"] for m in test["matches"]] == ["everything"]
    again = _post(node, f"/lesion-ai/studies/{job['study']}/process", {})
    assert again["message"] == "already queued or running"
    # Same kind of study from another sender: the rule (calling_aet: [SCANNER]) does not match.
    make_study(tmp_path / "ct2", modality="CT", study_description="CT", body_part="CHEST")
    _send(node, tmp_path / "ct2", calling_aet="OTHER")
    _settle_changes(client)
    assert len(jobs(client)) == 1


@pytest.mark.postgres
def test_postgres_queue_two_workers_each_job_once(
    fleet: OrthancFleet, postgres: PostgresServer, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    node = fleet.node(
        workers=2,
        extra={"Queue": postgres.database()},
        env={"LESION_AI_FAKE_DELAY": "1", "LESION_AI_FAKE_LOG": str(runs)},
    ).start()
    client = node.client()
    uids = [make_study(tmp_path / f"in{i}", patient_id=f"P{i}") for i in range(4)]
    for i in range(4):
        _send(node, tmp_path / f"in{i}")
    done = _done(client, 4, timeout_s=90)
    assert len(done) == 4
    health = client.get_json("/lesion-ai/health")
    assert health["queue"]["backend"] == "PostgresJobQueue"
    lines = runs.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(uids)  # each study processed exactly once
    for uid in uids:
        assert count_by_modality(client, str(find_study(client, uid)))["SEG"] == 1
    node.note_workers()


def test_forwarding_survives_an_outage_and_delivers_once(fleet: OrthancFleet, tmp_path: Path) -> None:
    pacs = fleet.pacs()  # configured, not started: nothing listens on its DICOM port yet
    node = fleet.node(
        site={"DicomModalities": {"pacs": [pacs.aet, "127.0.0.1", pacs.dicom_port]}},
        rules=RULES_TO_PACS,
        extra={"MaxAttempts": 10, "ForwardAttempts": 1},
    ).start()
    client = node.client()
    make_study(tmp_path / "in", study_description="MR PROSTATE")
    _send(node, tmp_path / "in")

    def retried() -> dict[str, Any] | None:
        found = jobs(client)
        return found[0] if found and found[0]["attempts"] >= 2 and found[0]["state"] == "queued" else None

    job = wait_for(retried, 60, "a failed send and a retry of the job")
    detail = client.get_json(f"/lesion-ai/jobs/{job['id']}")
    assert detail["progress"]["forwarded"] == {"modalities:pacs": "failed"}
    assert "pacs" in str(detail["error"])
    pacs.start()
    [done] = _done(client, 1, timeout_s=90)
    detail = client.get_json(f"/lesion-ai/jobs/{done['id']}")
    assert detail["progress"]["forwarded"] == {"modalities:pacs": "done"}
    assert detail["attempts"] >= 2
    uid = client.get_json(f"/studies/{done['study']}")["MainDicomTags"]["StudyInstanceUID"]
    pacs_client = pacs.client()
    wait_for(lambda: find_study(pacs_client, uid), 30, "the results at the PACS")
    _settle(client)
    time.sleep(2)  # a duplicate send would arrive now
    assert count_by_modality(pacs_client, str(find_study(pacs_client, uid))) == {"SEG": 1, "SR": 1}


def _series_copy(source: Path, folder: Path, number: int) -> Path:
    """The images of ``source`` as another series (new series and instance UIDs, SeriesNumber ``number``)."""
    folder.mkdir()
    series_uid = generate_uid()
    for path in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / path.name, enforce_file_format=True)
    return folder


def test_a_series_arriving_while_an_early_job_waits_withdraws_it_with_nothing_stored(
    fleet: OrthancFleet, prostatex: Path, prostatex_series: dict[int, Path], tmp_path: Path
) -> None:
    """The job starts CompletenessEarlyStartSeconds after the last image and waits for the quiet time before
    it stores; a series arriving meanwhile (new inputs) withdraws it: it stores nothing, and the job for the
    new inputs stores the study's only result set."""
    node = fleet.node(stable_age=30, extra={"PollSeconds": 0.1}).start()
    client = node.client()
    again = _series_copy(prostatex_series[8], tmp_path / "adc-again", 108)
    _send(node, prostatex / "dicom")
    [early] = wait_for(
        lambda: [j for j in jobs(client) if j["state"] == "running"] or None,
        20,
        "the early job",
        interval_s=0.05,
    )
    gate = client.get_json(f"/lesion-ai/jobs/{early['id']}")["payload"]["store_gate"]
    assert gate["not_before"] > time.time() + 0.5, "the job should wait for the quiet time"
    _send(node, again)

    def ended() -> list[dict[str, Any]] | None:
        found = jobs(client)
        return found if len(found) == 2 and all(j["state"] in ("done", "failed") for j in found) else None

    found = {j["id"]: client.get_json(f"/lesion-ai/jobs/{j['id']}") for j in wait_for(ended, 40, "both jobs")}
    withdrawn = found.pop(early["id"])
    [second] = found.values()
    assert withdrawn["state"] == "failed" and withdrawn["error"].startswith("withdrawn: the study changed")
    assert "arrived" in withdrawn["error"] and withdrawn["progress"]["stored"] is None
    assert (
        second["state"] == "done"
        and len(second["payload"]["series"]) == len(withdrawn["payload"]["series"]) + 1
    )
    study = second["study"]
    assert count_by_modality(client, study) == {"MR": 212 + 19, "SEG": 1, "SR": 1}
    result_series = {
        s["ID"] for s in client.get_json(f"/studies/{study}/series") if s["MainDicomTags"]["Modality"] != "MR"
    }
    assert result_series == set(second["progress"]["result_series"])
    node.note_workers()


def test_results_arrive_well_before_stable_age_and_a_rerun_replaces_them(
    fleet: OrthancFleet, prostatex: Path, prostatex_series: dict[int, Path], tmp_path: Path
) -> None:
    """StableAge stays at its default (30 s): the job starts once the series the engine reads are complete.
    A second ADC map arriving later is a new input set: the job runs again and its results replace the
    first ones; the stable event adds no job."""
    node = fleet.node(stable_age=30).start()
    client = node.client()
    _send(node, prostatex / "dicom")
    sent = time.monotonic()
    [first] = _done(client, 1, timeout_s=25)
    assert time.monotonic() - sent < 15, "the results should not wait for StableAge (30 s)"
    study = first["study"]
    assert not client.get_json(f"/studies/{study}")["IsStable"]
    assert count_by_modality(client, study) == {"MR": 212, "SEG": 1, "SR": 1}
    results = {
        s["MainDicomTags"]["Modality"]: s["Instances"]
        for s in client.get_json(f"/studies/{study}/series")
        if s["MainDicomTags"]["Modality"] in ("SEG", "SR")
    }

    _send(
        node, _series_copy(prostatex_series[8], tmp_path / "adc-again", 108)
    )  # the ADC map, as another series
    done = _done(client, 2, timeout_s=25)
    [second] = [j for j in done if j["id"] != first["id"]]
    payload = client.get_json(f"/lesion-ai/jobs/{second['id']}")["payload"]
    assert (
        len(payload["series"])
        == len(client.get_json(f"/lesion-ai/jobs/{first['id']}")["payload"]["series"]) + 1
    )
    assert count_by_modality(client, study) == {"MR": 212 + 19, "SEG": 1, "SR": 1}  # one live result set
    replaced = {
        s["MainDicomTags"]["Modality"]: s["Instances"]
        for s in client.get_json(f"/studies/{study}/series")
        if s["MainDicomTags"]["Modality"] in ("SEG", "SR")
    }
    assert set(replaced) == {"SEG", "SR"} and replaced != results
    for instance in results["SEG"] + results["SR"]:  # the first job's results are gone
        with pytest.raises(RestApiError):
            client.get_json(f"/instances/{instance}")
    _settle(client, timeout_s=60)
    assert len(jobs(client)) == 2
    node.note_workers()
