"""Viewers never starve the workers: fifty keep-alive HTTP clients polling the node while studies are processed.

Fifty connections is what a handful of radiologists' browsers open through OHIF. Each client here keeps
one connection open and polls ``/lesion-ai/health`` and ``/lesion-ai/jobs`` without pause; meanwhile five
small studies are sent and processed by a worker (the tests' fast processor), and a plain request on a new
connection is timed every half second. All five studies must be done in normal time and every plain
request must answer within a second. Bounded: loopback only, about a minute, and everything stops by itself.
"""

from __future__ import annotations

import base64
import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orthanc_plugin.worker.client import OrthancClient
from tests.support.node_env import OrthancFleet, OrthancServer, jobs, make_study, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

CLIENTS = 50
STUDIES = 5
PLAIN_REQUEST_MAX_S = 1.0
STUDIES_DONE_MAX_S = 90.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[OrthancFleet]:
    servers = OrthancFleet(tmp_path)
    yield servers
    servers.close()


def _auth(node: OrthancServer) -> dict[str, str]:
    credentials = node.credentials or {}
    token = base64.b64encode(f"{credentials['username']}:{credentials['password']}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _poll_forever(node: OrthancServer, stop: threading.Event, counts: list[int]) -> None:
    """One keep-alive client: one connection, requests back to back until ``stop``."""
    headers = {**_auth(node), "Connection": "keep-alive"}
    connection = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    paths = ("/lesion-ai/health", "/lesion-ai/jobs")
    n = 0
    try:
        while not stop.is_set():
            try:
                connection.request("GET", paths[n % 2], headers=headers)
                connection.getresponse().read()
                counts[0] += 1
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
            n += 1
    finally:
        connection.close()


def _plain_request_s(node: OrthancServer) -> float:
    """Seconds for ``GET /lesion-ai/health`` on a new connection (as curl does); inf on a timeout."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        connection.request("GET", "/lesion-ai/health", headers={**_auth(node), "Connection": "close"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            return float("inf")
    except (OSError, http.client.HTTPException):
        return float("inf")
    finally:
        connection.close()
    return time.monotonic() - started


def test_fifty_keep_alive_clients_starve_neither_workers_nor_admins(
    fleet: OrthancFleet, tmp_path: Path
) -> None:
    node = fleet.node(stable_age=2, extra={"CompletenessQuietSeconds": 0}).start()
    client: OrthancClient = node.client()
    folders = []
    for n in range(STUDIES):
        make_study(tmp_path / f"study{n}", patient_id=f"LOAD-{n}")
        folders.append(tmp_path / f"study{n}")

    stop = threading.Event()
    counts = [0]
    pollers = [
        threading.Thread(target=_poll_forever, args=(node, stop, counts), daemon=True) for _ in range(CLIENTS)
    ]
    plain: list[float] = []
    try:
        for thread in pollers:
            thread.start()
        time.sleep(2.0)  # every poller holds its connection now
        started = time.monotonic()
        for folder in folders:
            for path in sorted(folder.glob("*.dcm")):
                for attempt in range(3):  # the sender retries as a modality would
                    try:
                        client.post_bytes("/instances", path.read_bytes())
                        break
                    except Exception:
                        if attempt == 2:
                            raise

        def all_done() -> bool:
            plain.append(_plain_request_s(node))
            found = jobs(client)
            return len(found) == STUDIES and all(j["state"] == "done" for j in found)

        wait_for(all_done, STUDIES_DONE_MAX_S, f"{STUDIES} studies processed under load", interval_s=0.5)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for thread in pollers:
            thread.join(timeout=40)
    assert counts[0] > 100, f"the pollers made only {counts[0]} requests: the load did not happen"
    assert max(plain) < PLAIN_REQUEST_MAX_S, (
        f"a plain health request took {max(plain):.1f} s under load (answers: {[round(p, 2) for p in plain]})"
    )
    failed = [j for j in jobs(client) if j["attempts"] > 1]
    assert not failed, f"jobs needed more than one attempt under load: {failed}"
    assert elapsed < STUDIES_DONE_MAX_S
