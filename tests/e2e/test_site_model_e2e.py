"""A site's own studies to a model in service, end to end on a real node with the real engine.

The real ProstateX fixture with its PI-CAI labels, plus synthetic studies whose labels arrive as a
radiologist's DICOM SEG sent to the node, are built into one PI-CAI data set (``lesion-ai dataset build``
from the folder and ``--from-node``); a model is trained for two epochs and evaluated (picai_eval); it is
registered in the running node as a shadow (``lesion-ai models add --shadow``), runs beside the active model
on a processed study and is compared with it and with the radiologist's label; then it is promoted and the
node's next results name it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import SimpleITK as sitk

from lesion_engine.model.model_card import model_identity, read_card
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.worker.client import OrthancClient
from tests.support.node_env import OrthancFleet, count_by_modality, jobs, wait_for
from tests.support.seg_support import radiologist_seg
from training.datasets.dataset_inputs import find_studies
from training.synth import SynthConfig, generate_case

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.fixture]

CASE = "10795_1000811"
READER = "Radiologist workstation"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"lesion-ai {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _send(client: OrthancClient, folder: Path) -> None:
    for path in sorted(folder.rglob("*.dcm")):
        client.post_bytes("/instances", path.read_bytes())


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _done(client: OrthancClient, count: int) -> list[dict[str, Any]] | None:
    """The jobs, once there are at least ``count`` and none is queued or running."""
    listed = jobs(client)
    finished = [j for j in listed if j["state"] in ("done", "failed")]
    return listed if len(listed) >= count and len(finished) == len(listed) else None


def _results_model(client: OrthancClient, study: str) -> set[str]:
    """The texts of the study's SR results (among them the algorithm that made them)."""
    names: set[str] = set()
    for series in client.get_json(f"/studies/{study}/series"):
        if series["MainDicomTags"].get("Modality") != "SR":
            continue
        for instance in series["Instances"]:
            ds = pydicom.dcmread(io.BytesIO(client.get_bytes(f"/instances/{instance}/file")))
            names.update(str(e.value) for e in ds.iterall() if e.VR in ("LO", "SH", "ST", "LT", "UT"))
    return names


def test_site_studies_become_a_model_that_runs_in_shadow_and_is_promoted(
    fleet: OrthancFleet, prostatex: Path, tmp_path: Path
) -> None:
    node = fleet.node(processor=None, stable_age=2).start()
    client = node.client()
    credentials = node.credentials or {}
    admin = OrthancClient(
        node.url, credentials["username"], credentials["password"], headers={CSRF_HEADER: CSRF_VALUE}
    )
    login = ["--node", node.url, "--user", credentials["username"]]
    env = {"LESION_AI_NODE_PASSWORD": credentials["password"]}

    # Synthetic studies processed by the node; a radiologist sends a SEG back for the first two.
    config = SynthConfig(vendor="siemens", lesion_kinds=("cspca",), profile="small")
    cases = [generate_case(tmp_path / "synth", i, 70 + i, config) for i in range(3)]
    for case in cases[:2]:
        _send(client, case / "dicom")
    first_jobs = wait_for(lambda: _done(client, 2), 240, "the two studies processed")
    assert [j["state"] for j in first_jobs] == ["done", "done"], first_jobs
    configured = first_jobs[0]["model"]
    studies = {}
    for number, case in enumerate(cases[:2]):
        lesion = (
            sitk.GetArrayFromImage(sitk.ReadImage(str(case / "labels" / f"{case.name}_lesion.nii.gz"))) > 0
        )
        seg = radiologist_seg(case / "dicom", [("ISUP 3", lesion)], READER, 300 + number)
        client.post_bytes("/instances", _bytes(seg))
        studies[case.name] = str(seg.StudyInstanceUID)
    labels = wait_for(
        lambda: (found := client.get_json("/lesion-ai/labels")["labels"]) and len(found) == 2 and found,
        90,
        "both labels recorded",
    )
    assert {label["study_instance_uid"] for label in labels} == set(studies.values())

    # One data set: the real fixture with its PI-CAI label files, and the node's labelled studies.
    [fixture] = find_studies([prostatex / "dicom"])[0]
    ids = tmp_path / "case_ids.csv"
    ids.write_text(f"StudyInstanceUID,case_id\n{fixture.study_instance_uid},{CASE}\n")
    data = tmp_path / "data"
    out = _cli(
        "dataset", "build", str(prostatex / "dicom"), "--labels", str(prostatex / "picai_labels"),
        "--case-ids", str(ids), "--from-node", node.url, "--user", credentials["username"], "--out", str(data),
        env=env,
    )  # fmt: skip
    assert "built 3 case(s)" in out, out
    record = json.loads((data / "dataset.json").read_text())
    sources = sorted(entry["labels"]["source"] for entry in record["cases"].values())
    assert len(record["cases"]) == 3 and sources.count("files") == 1, sources

    # Two epochs, evaluated by picai_eval.
    run = tmp_path / "run"
    _cli(
        "train", "--data", str(data), "--data-format", "picai", "--out", str(run), "--epochs", "2",
        "--warmup-epochs", "1", "--samples-per-epoch", "3", "--batch-size", "1", "--crop", "8", "32", "32",
        "--loc-channels", "4", "8", "8", "8", "--cls-channels", "4", "8", "--threads", "2", "--no-progress",
        "--name", "site-e2e", "--model-version", "0.0.1", "--seed", "5",
    )  # fmt: skip
    artifact = run / "artifact"
    card = read_card(artifact)
    evaluation = tmp_path / "eval"
    _cli(
        "evaluate", "--data", str(data), "--data-format", "picai", "--model", str(artifact),
        "--out", str(evaluation), "--device", "cpu", "--no-progress",
    )  # fmt: skip
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["num_cases"] == 3 and metrics["model"]["name"] == "site-e2e"
    assert metrics["picai_eval_version"]

    # Registered as a shadow: it runs beside the active model, its results stay in the node.
    added = _cli("models", "add", str(artifact), "--name", "site-1", "--shadow", *login, env=env)
    assert '"status": "registered"' in added and '"shadow": [' in added
    identity = model_identity(str(artifact))
    study_id = first_jobs[0]["study"]
    before = count_by_modality(client, study_id)
    assert admin.post_json(f"/lesion-ai/studies/{study_id}/process", {})["message"] == "queued"
    wait_for(lambda: _done(client, 2), 240, "the study processed again")
    site = wait_for(
        lambda: (m := client.get_json("/lesion-ai/models/site-1")) and m["agreement"] and m,
        120,
        "the shadow run kept",
    )
    assert site["status"] == "shadow" and site["identity"] == identity and site["shadow_studies"] == 1
    report = site["agreement"]
    assert report["studies"] == 1 and report["model"] == identity
    study_uid = client.get_json(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]
    assert study_uid in studies.values() and report["with_labels"]["labelled_studies"] == [study_uid]
    assert report["with_labels"]["shadow"]["studies"] == 1
    kept = node.home / "models" / "site-1" / "shadow"
    assert sorted(p.name for p in kept.iterdir() if p.is_file())[0].endswith(".json")
    # Nothing of the shadow was stored into Orthanc: the re-run replaced the active model's results only.
    assert count_by_modality(client, study_id).keys() == before.keys()
    assert all(j["model"] == configured for j in jobs(client))

    # Promoted: the next study is processed by it and its results name it.
    promoted = _cli("models", "promote", "site-1", *login, env=env)
    assert '"active": "site-1"' in promoted
    listing = json.loads(_cli("models", "list", *login, env=env))
    assert listing["history"][0]["action"] == "promote" and listing["history"][0]["previous"] == "configured"
    known = len(jobs(client))
    _send(client, cases[2] / "dicom")
    wait_for(lambda: _done(client, known + 1), 240, "the next study processed")
    newest = max(jobs(client), key=lambda j: j["id"])
    assert newest["state"] == "done" and newest["model"] == identity
    detail = client.get_json(f"/lesion-ai/jobs/{newest['id']}")
    assert detail["progress"]["model"]["name"] == card.name == "site-e2e"
    assert any("site-e2e" in name for name in _results_model(client, newest["study"]))
