"""Paths that are not printable ASCII get a 4xx from a real node, never a 500.

orthanc-python decodes a REST callback's path as UTF-8 before any code of ours runs; an invalid sequence
(``%c0%af``, an overlong ``/``; ``%ff``) made it fail with 500 "Internal error". The node's route takes
printable ASCII only, so Orthanc answers 404 for such paths itself (as it does for its own routes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
from tests.node.server.test_node_memory import _request
from tests.support.node_env import OrthancFleet

pytestmark = [pytest.mark.orthanc]

ODD = ("%c0%af", "%ff", "%ff%fe", "%e2%82", "%01", "caf%c3%a9")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def test_odd_bytes_in_paths_get_a_4xx(fleet: OrthancFleet) -> None:
    node = fleet.node(workers=0).start()
    credentials = node.credentials or {}
    token = base64.b64encode(f"{credentials['username']}:{credentials['password']}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", CSRF_HEADER: CSRF_VALUE}
    answers = {}
    for odd in ODD:
        for prefix in ("", "jobs/", "models/", "viewer/", "ui/", "studies/"):
            for method in ("GET", "POST"):
                path = f"/lesion-ai/{prefix}{odd}"
                answers[(method, path)] = _request(node.http_port, method, path, headers)
    wrong = {key: status for key, status in answers.items() if not 400 <= status < 500}
    assert wrong == {}
    assert _request(node.http_port, "GET", "/lesion-ai/health", headers) == 200
    assert b"Traceback" not in node.log.read_bytes()
