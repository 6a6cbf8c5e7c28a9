"""``lesion-ai models``: what it sends, and its errors for a bad artifact, an unreachable node and a refusal."""

from __future__ import annotations

import argparse
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lesion_engine.model.model_card import CARD_FILE, WEIGHTS_FILE
from orthanc_plugin.cli.models import PASSWORD_ENV, artifact_zip, register
from tests.support.model_helpers import write_tiny_artifact
from tests.support.node_env import free_port


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["models", *argv])
    code: int = args.func(args)
    return code


class _Node(BaseHTTPRequestHandler):
    """Records requests; refuses the model name ``taken``."""

    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Node.seen.append(("POST", self.path, dict(self.headers), body))
        if self.path == "/lesion-ai/models/taken":
            self._answer(409, {"error": "a model called 'taken' exists already; choose another name"})
        else:
            self._answer(201 if self.path.count("/") == 3 else 200, {"ok": self.path})

    def do_GET(self) -> None:
        _Node.seen.append(("GET", self.path, dict(self.headers), b""))
        self._answer(200, {"active": "configured", "models": [], "history": []})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def node() -> Iterator[str]:
    _Node.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Node)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_artifact(tmp_path_factory.mktemp("artifact") / "a", seed=4)


def test_add_sends_the_artifact_zip_with_the_csrf_header_and_starts_the_shadow(
    node: str, artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "secret")
    assert (
        _cli(["add", str(artifact), "--name", "site 1", "--shadow", "--node", node, "--user", "admin"]) == 0
    )
    (_, path, headers, body), (_, shadow_path, _, shadow_body) = _Node.seen
    assert path == "/lesion-ai/models/site%201" and shadow_path == "/lesion-ai/models/site%201/shadow"
    assert headers["X-Lesion-AI-Request"] == "1" and headers["Authorization"].startswith("Basic ")
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert CARD_FILE in names and WEIGHTS_FILE in names and all("/" not in n for n in names)
    assert json.loads(shadow_body) == {"enabled": True}
    assert '"ok"' in capsys.readouterr().out


def test_errors_say_what_is_wrong(
    node: str, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(["add", str(tmp_path / "missing"), "--name", "x", "--node", node]) == 2
    assert "the artifact cannot be read" in capsys.readouterr().err
    assert _cli(["add", str(artifact), "--name", "taken", "--node", node]) == 1
    refused = capsys.readouterr().err
    assert "the node refused" in refused and "exists already" in refused
    assert _cli(["promote", "x", "--node", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert _cli(["list", "--node", "ftp://node"]) == 2


def test_the_zip_holds_the_card_the_weights_and_the_plots_only(artifact: Path, tmp_path: Path) -> None:
    (artifact / "notes.txt").write_text("not uploaded")
    (artifact / "roc.png").write_bytes(b"png")
    names = sorted(zipfile.ZipFile(io.BytesIO(artifact_zip(artifact))).namelist())
    assert CARD_FILE in names and WEIGHTS_FILE in names and "roc.png" in names and "notes.txt" not in names


def test_an_artifact_over_the_nodes_upload_cap_is_refused_before_sending(
    node: str, artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node refuses an upload over its cap from the headers, with a bare 403: the command says why
    before it sends anything."""
    size = len(artifact_zip(artifact))
    monkeypatch.setattr("orthanc_plugin.cli.models.MAX_UPLOAD_BYTES", size - 1)
    assert _cli(["add", str(artifact), "--name", "big", "--node", node]) == 2
    assert f"the artifact is {size} bytes zipped; the node takes uploads of at most {size - 1}" in (
        capsys.readouterr().err
    )
    assert _Node.seen == []
