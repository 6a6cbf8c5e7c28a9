"""An imported PI-CAI nnU-Net in a real node: imported onto it, run in shadow, promoted, its results stored.

``lesion-ai models import picai-nnunet MODEL_DIR --node URL --shadow`` imports the five nnU-Net v1 folds
(:mod:`tests.oracles.picai_nnunet_reference`: nnU-Net's own format, briefly trained) onto a running node with the real
engine. The real fixture study runs with the configured model and, in shadow, with the imported one, whose
agreement report is kept; promoted, the imported model processes the study again and its SEG and SR replace
the earlier results and name it. (The same writers' results in OHIF: ``tests/e2e/test_picai_node.py``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from lesion_engine.model.model_card import model_identity
from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from orthanc_plugin.cli.dicomsend import dicom_files, send_files
from orthanc_plugin.worker.client import OrthancClient
from tests.e2e.test_picai_node import _cli, _done, _one
from tests.oracles.picai_nnunet_reference import (
    NnunetFolds,
    nnunet_folds_fixture,  # noqa: F401 - the session fixture
)
from tests.support.node_env import OrthancFleet, jobs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.fixture]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def test_imported_nnunet_shadows_and_is_promoted(
    fleet: OrthancFleet, prostatex: Path, nnunet_folds: NnunetFolds
) -> None:
    node = fleet.node(processor=None, stable_age=2, extra={"Device": "cpu"}).start()
    client = node.client()
    credentials = node.credentials or {}
    admin = OrthancClient(
        node.url, credentials["username"], credentials["password"], headers={CSRF_HEADER: CSRF_VALUE}
    )
    login = ["--node", node.url, "--user", credentials["username"]]
    env = {"LESION_AI_NODE_PASSWORD": credentials["password"]}

    added = _cli(
        "models", "import", "picai-nnunet", str(nnunet_folds.model_dir), "--name", "picai-nnunet",
        "--version", "synthetic-1", "--shadow", *login, env=env,
    )  # fmt: skip
    assert '"status": "registered"' in added and '"picai-nnunet"' in added
    registered = client.get_json("/lesion-ai/models/picai-nnunet")
    identity = registered["identity"]
    assert identity.startswith("picai-nnunet:synthetic-1:")
    assert model_identity(str(node.home / "models" / "picai-nnunet")) == identity

    report = send_files(dicom_files([prostatex / "dicom"]), "127.0.0.1", node.dicom_port, "SCANNER", node.aet)
    assert report.sent > 0 and not report.failed
    [first] = wait_for(lambda: _done(client, 1), 300, "the fixture processed by the configured model")
    study_id = first["study"]
    shadow = wait_for(
        lambda: (m := client.get_json("/lesion-ai/models/picai-nnunet")) and m["agreement"] and m,
        400,
        "the imported nnU-Net run in shadow on the study",
    )
    assert shadow["status"] == "shadow" and shadow["agreement"]["model"] == identity

    promoted = _cli("models", "promote", "picai-nnunet", *login, env=env)
    assert '"active": "picai-nnunet"' in promoted
    assert admin.post_json(f"/lesion-ai/studies/{study_id}/process", {})["message"] == "queued"
    wait_for(lambda: _done(client, 2), 400, "the study processed by the imported nnU-Net")
    newest = max(jobs(client), key=lambda j: j["id"])
    assert newest["model"] == identity
    seg, sr = _one(client, study_id, "SEG"), _one(client, study_id, "SR")
    segments = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert segments and all("category" not in label for label in segments), segments
    texts = {str(e.value) for e in sr.iterall() if e.VR in ("LO", "SH", "ST", "LT", "UT")}
    assert any("picai-nnunet" in t for t in texts), "the SR names the imported model"
    assert not any("PI-RADS" in t for t in texts), "a detection-map model has no PI-RADS-like category"
    assert isinstance(seg, pydicom.Dataset)
