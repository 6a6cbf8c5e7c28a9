"""The example service files of a cluster (``deploy/systemd``): every variable they set is one the node or
the worker reads, and makes the configuration the cluster tests run (PostgreSQL index unlocked, own
identity, shared storage); their command lines parse."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from lesion_engine.cli.main import build_parser
from orthanc_plugin.launch import NodeOptions, write_configuration
from tests.paths import REPO

DEPLOY = REPO / "deploy" / "systemd"


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def _exec_start(unit: Path, env: dict[str, str], instance: str) -> list[str]:
    line = next(x for x in unit.read_text(encoding="utf-8").splitlines() if x.startswith("ExecStart="))
    command = line.removeprefix("ExecStart=").replace("%i", instance)
    command = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], command)
    return shlex.split(command)


def test_the_node_env_file_configures_a_cluster_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env_file(DEPLOY / "node-a.env")
    env.update(LESION_AI_HOME=str(tmp_path / "a"), LESION_AI_STORAGE=str(tmp_path / "shared"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    options = NodeOptions()
    config = json.loads(write_configuration(options)[0].read_text())
    assert config["PostgreSQL"]["ConnectionUri"] == env["LESION_AI_CLUSTER"]
    assert config["PostgreSQL"]["Lock"] is False
    assert config["DatabaseServerIdentifier"] == config["LesionAI"]["ServerIdentifier"] == "orthanc-a"
    assert config["StorageDirectory"] == str((tmp_path / "shared").resolve())
    assert config["LesionAI"]["Queue"] == env["LESION_AI_CLUSTER"]
    assert (config["HttpPort"], config["DicomPort"], config["RemoteAccessAllowed"]) == (8142, 4342, True)
    assert options.workers == 1
    argv = _exec_start(DEPLOY / "lesion-ai-node@.service", env, "a")
    assert argv[0].endswith("/.venv/bin/lesion-ai")
    assert build_parser().parse_args(argv[1:]).func.__name__ == "run_node"


def test_the_worker_unit_parses_and_names_only_what_the_worker_reads() -> None:
    env = _env_file(DEPLOY / "worker.env")
    args = build_parser().parse_args(_exec_start(DEPLOY / "lesion-ai-worker@.service", env, "gpu1")[1:])
    assert args.func.__name__ == "run_worker"
    assert (args.orthanc_url, args.queue, args.name) == (
        env["LESION_AI_ORTHANC_URL"],
        env["LESION_AI_QUEUE"],
        "gpu1",
    )
    assert args.cluster == env["LESION_AI_CLUSTER"] and str(args.models_dir) == env["LESION_AI_MODELS_FOLDER"]
    worker_code = (REPO / "orthanc_plugin" / "node" / "settings.py").read_text(encoding="utf-8")
    for key in ("LESION_AI_ORTHANC_USERNAME", "LESION_AI_ORTHANC_PASSWORD"):
        assert key in env and key in worker_code
    unit = (DEPLOY / "lesion-ai-worker@.service").read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(\w+)\}", unit)) <= set(env)
