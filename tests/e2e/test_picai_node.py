"""An imported PI-CAI U-Net in a real node: imported onto it, run in shadow, promoted, seen in OHIF.

``lesion-ai models import picai-unet WEIGHTS_DIR --node URL --shadow`` imports the five fold checkpoints
(:mod:`tests.oracles.picai_reference`: the published format, briefly trained) and registers the artifact on a
running node with the real engine; the real fixture study then runs with the active (configured) model
and, in shadow, with the imported one, whose agreement report is kept. Promoted, the imported model
processes the study again: its SEG and SR replace the earlier results, name it, and load in OHIF as
measurements (:func:`tests.browser.test_viewer_browser.check_ohif_shows_the_results`).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from lesion_engine.model.model_card import model_identity
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.cli.dicomsend import dicom_files, send_files
from orthanc_plugin.worker.client import OrthancClient
from tests.browser.test_viewer_browser import check_ohif_shows_the_results, sr_tool_groups
from tests.oracles.picai_reference import PicaiFolds, picai_folds  # noqa: F401 - the session fixture
from tests.support.node_env import OrthancFleet, find_study, jobs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.fixture]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def _cli(*args: str, env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, f"lesion-ai {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _done(client: OrthancClient, count: int) -> list[dict[str, Any]] | None:
    listed = jobs(client)
    if any(j["state"] == "failed" for j in listed):
        raise AssertionError(f"a job failed: {listed}")
    return listed if len(listed) >= count and all(j["state"] == "done" for j in listed) else None


def _one(client: OrthancClient, study: str, modality: str) -> pydicom.Dataset:
    found = [
        s for s in client.get_json(f"/studies/{study}/series") if s["MainDicomTags"]["Modality"] == modality
    ]
    assert len(found) == 1, f"{len(found)} {modality} series in the study after processing, expected 1"
    [instance] = found[0]["Instances"]
    return pydicom.dcmread(io.BytesIO(client.get_bytes(f"/instances/{instance}/file")))


def test_imported_picai_model_shadows_is_promoted_and_shows_in_ohif(
    fleet: OrthancFleet,
    prostatex: Path,
    picai_folds: PicaiFolds,  # noqa: F811
    tmp_path: Path,
) -> None:
    node = fleet.node(processor=None, stable_age=2, extra={"Device": "cpu"}).start()
    client = node.client()
    credentials = node.credentials or {}
    admin = OrthancClient(
        node.url, credentials["username"], credentials["password"], headers={CSRF_HEADER: CSRF_VALUE}
    )
    login = ["--node", node.url, "--user", credentials["username"]]
    env = {"LESION_AI_NODE_PASSWORD": credentials["password"]}

    files = dicom_files([prostatex / "dicom"])
    report = send_files(files, "127.0.0.1", node.dicom_port, "SCANNER", node.aet)
    assert report.sent > 0 and not report.failed
    [first] = wait_for(lambda: _done(client, 1), 300, "the fixture processed by the configured model")
    study_id = first["study"]

    # Imported onto the node and run in shadow beside the configured model.
    added = _cli(
        "models", "import", "picai-unet", str(picai_folds.weights_dir), "--name", "picai-unet",
        "--version", "synthetic-1", "--shadow", *login, env=env,
    )  # fmt: skip
    assert '"status": "registered"' in added and '"shadow": [' in added and '"picai-unet"' in added
    registered = client.get_json("/lesion-ai/models/picai-unet")
    identity = registered["identity"]
    assert identity.startswith("picai-unet:synthetic-1:")
    assert model_identity(str(node.home / "models" / "picai-unet")) == identity
    assert admin.post_json(f"/lesion-ai/studies/{study_id}/process", {})["message"] == "queued"
    shadow = wait_for(
        lambda: (m := client.get_json("/lesion-ai/models/picai-unet")) and m["agreement"] and m,
        400,
        "the study processed again, with the imported model in shadow",
    )
    wait_for(lambda: _done(client, 1), 120, "the job done")
    assert shadow["status"] == "shadow" and shadow["shadow_studies"] == 1
    assert shadow["agreement"]["studies"] == 1 and shadow["agreement"]["model"] == identity

    # Promoted: its results replace the configured model's, and name it.
    promoted = _cli("models", "promote", "picai-unet", *login, env=env)
    assert '"active": "picai-unet"' in promoted
    assert admin.post_json(f"/lesion-ai/studies/{study_id}/process", {})["message"] == "queued"
    wait_for(lambda: _done(client, 2), 400, "the study processed by the imported model")
    newest = max(jobs(client), key=lambda j: j["id"])
    assert newest["model"] == identity
    detail = client.get_json(f"/lesion-ai/jobs/{newest['id']}")
    assert detail["progress"]["model"]["name"] == "picai-unet"
    seg, sr = _one(client, study_id, "SEG"), _one(client, study_id, "SR")
    segments = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert segments and all("category" not in label for label in segments), segments
    texts = {str(e.value) for e in sr.iterall() if e.VR in ("LO", "SH", "ST", "LT", "UT")}
    assert not any("PI-RADS" in t for t in texts), "a detection-map model has no PI-RADS-like category"
    assert any("picai-unet" in t for t in texts), "the SR names the imported model"
    groups = sr_tool_groups(sr)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert find_study(client, study_uid) == study_id
    check_ohif_shows_the_results(node, study_uid, seg, sr, tmp_path, groups, segments, prefix="picai-")
