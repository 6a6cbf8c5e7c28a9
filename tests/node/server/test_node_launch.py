"""``lesion-ai node`` (what ``make run`` runs): the data folder, the generated configuration, credentials
shown once, site overrides, ports; and a real start and stop of the node."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lesion_engine.cli.main import main
from orthanc_plugin import launch
from orthanc_plugin.worker.client import OrthancClient
from tests.paths import REPO
from tests.support.node_env import free_port, wait_for


@pytest.fixture
def node_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in list(os.environ):
        if key.startswith("LESION_AI_"):
            monkeypatch.delenv(key)
    env = {
        "LESION_AI_HOME": str(tmp_path / "home"),
        "LESION_AI_HTTP_PORT": str(free_port()),
        "LESION_AI_DICOM_PORT": str(free_port()),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_configuration_credentials_and_site_overrides(
    node_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    home = Path(node_env["LESION_AI_HOME"])
    assert main(["node", "--config-only"]) == 0
    first = capsys.readouterr().out
    credentials = json.loads((home / "credentials.json").read_text())
    assert set(credentials) == {"username", "password"} and len(credentials["password"]) >= 20
    assert stat.S_IMODE((home / "credentials.json").stat().st_mode) == 0o600
    assert f"password: {credentials['password']}" in first
    assert stat.S_IMODE((home / "orthanc.json").stat().st_mode) == 0o600
    for private in (home, home / "orthanc-db", home / "logs"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, private
    assert stat.S_IMODE((home / "rules.yaml").stat().st_mode) == 0o600
    config = json.loads((home / "orthanc.json").read_text())
    assert config["HttpPort"] == int(node_env["LESION_AI_HTTP_PORT"])
    assert config["DicomPort"] == int(node_env["LESION_AI_DICOM_PORT"])
    assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is False
    assert config["RegisteredUsers"] == {credentials["username"]: credentials["password"]}
    assert config["DicomAlwaysAllowStore"] is True and config["DicomCheckModalityHost"] is False
    assert config["PythonScript"] == config["Python"]["Path"]
    assert config["PythonScript"].endswith("orthanc_plugin/entry/lesion_ai_entry.py")
    assert config["UserMetadata"] == {"LesionAI": 1024}
    assert config["IndexDirectory"] == config["StorageDirectory"] == str(home.resolve() / "orthanc-db")
    assert any(p.endswith("libOrthancPython.so") for p in config["Plugins"])
    assert any(p.endswith("libOrthancDicomWeb.so") for p in config["Plugins"])
    section = config["LesionAI"]
    assert section["Queue"] == f"sqlite:///{home.resolve() / 'queue.sqlite'}"
    assert section["Python"] == sys.executable and Path(section["SitePackages"]).is_dir()
    assert (home / "rules.yaml").read_text() == (REPO / "orthanc_plugin" / "data" / "rules.yaml").read_text()

    # Second start: same credentials, not shown again; site overrides are merged in.
    (home / "orthanc-site.json").write_text(
        json.dumps(
            {
                "DicomModalities": {"pacs": ["PACS", "192.0.2.10", 104]},
                "DicomWeb": {"Servers": {"cloud": ["https://example.org/dicom-web/"]}},
                "DicomAlwaysAllowStore": False,
            }
        )
    )
    assert main(["node", "--config-only", "--aet", "PROSTATE_AI"]) == 0
    second = capsys.readouterr().out
    assert "password" not in second and "AE title PROSTATE_AI" in second
    config = json.loads((home / "orthanc.json").read_text())
    assert config["DicomModalities"] == {"pacs": ["PACS", "192.0.2.10", 104]}
    assert config["DicomWeb"]["Servers"] == {"cloud": ["https://example.org/dicom-web/"]}
    assert config["DicomWeb"]["Enable"] is True and config["DicomAlwaysAllowStore"] is False
    assert config["DicomAet"] == "PROSTATE_AI"
    assert json.loads((home / "credentials.json").read_text()) == credentials


def test_bad_settings_are_reported(
    node_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESION_AI_DICOM_PORT", node_env["LESION_AI_HTTP_PORT"])
    assert main(["node", "--config-only"]) == 2
    assert "ports must differ" in capsys.readouterr().err
    monkeypatch.setenv("LESION_AI_HTTP_PORT", "eighty")
    assert main(["node", "--config-only"]) == 2
    assert "LESION_AI_HTTP_PORT must be an integer" in capsys.readouterr().err


def test_port_in_use_is_reported(node_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", int(node_env["LESION_AI_HTTP_PORT"])))
        busy.listen()
        assert main(["node"]) == 2
    assert f"port {node_env['LESION_AI_HTTP_PORT']} is already in use" in capsys.readouterr().err


@pytest.mark.orthanc
@pytest.mark.slow
def test_node_starts_serves_and_stops(node_env: dict[str, str]) -> None:
    env = {**os.environ, **node_env, "LESION_AI_WORKERS": "1"}
    home = Path(node_env["LESION_AI_HOME"])
    process = subprocess.Popen(
        [sys.executable, "-m", "lesion_engine.cli", "node"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (home / "credentials.json").exists(), 60, "the credentials")
        credentials = json.loads((home / "credentials.json").read_text())
        client = OrthancClient(f"http://127.0.0.1:{node_env['LESION_AI_HTTP_PORT']}", **credentials)

        def up() -> dict[str, Any] | None:
            health: dict[str, Any] = client.get_json("/lesion-ai/health")
            processes = health["workers"]["processes"]
            return health if processes and processes[0]["alive"] else None

        health = wait_for(up, 60, "the node's health")
        assert health["status"] == "ok" and health["rules"]["names"] == ["prostate-mr"]
        worker_pid = health["workers"]["processes"][0]["pid"]
        assert client.get_bytes("/lesion-ai/source")[:2] == b"\x1f\x8b"
        assert client.get_json("/dicom-web/studies") == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(40) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{worker_pid}").exists():
            time.sleep(0.1)
        assert not Path(f"/proc/{worker_pid}").exists(), "the worker outlived Orthanc"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.stdout is not None
    output = process.stdout.read().decode()
    assert "password:" in output and "Starting Orthanc" in output


def test_entry_script_keeps_the_standard_library_ahead_of_the_virtual_environment() -> None:
    """A backport in site-packages named like a standard module (picai_prep pulls in the 2018 ``dataclasses``)
    must not shadow the standard library inside Orthanc's interpreter: the entry script puts the virtual
    environment's site-packages behind the standard library and ahead of the system's packages."""
    import ast
    import os as os_module

    source = (REPO / "orthanc_plugin" / "entry" / "lesion_ai_entry.py").read_text()
    [function] = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == "ordered_path"
    ]
    namespace: dict[str, object] = {"os": os_module}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "entry", "exec"), namespace)
    ordered = namespace["ordered_path"]
    before = ["/plugin", "/usr/lib/python311.zip", "/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload",
              "/usr/lib/python3/dist-packages"]  # fmt: skip
    added = ["/venv/lib/python3.11/site-packages"]
    stdlib = {"/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload"}
    assert ordered(before, added, stdlib) == [  # type: ignore[operator]
        "/usr/lib/python311.zip",
        "/usr/lib/python3.11",
        "/usr/lib/python3.11/lib-dynload",
        "/venv/lib/python3.11/site-packages",
        "/plugin",
        "/usr/lib/python3/dist-packages",
    ]


def test_a_generated_password_never_starts_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = iter(["-looks-like-an-option", "_also-fine", "unused"])
    monkeypatch.setattr("secrets.token_urlsafe", lambda _n: next(drawn))
    credentials, created = launch.ensure_credentials(tmp_path / "home")
    assert created and credentials["password"] == "_also-fine"
