"""Cluster mode's settings and the Orthanc configuration ``lesion-ai node`` writes for a cluster member:
the PostgreSQL index unlocked and shared, this server's own identity, the shared storage; bad values are
refused with the field's name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lesion_engine.errors import ConfigError
from orthanc_plugin.launch import NodeOptions, write_configuration
from orthanc_plugin.node.settings import NodeSettings

URL = "postgresql://lesion@db.example:5432/lesion_ai"


def _settings(tmp_path: Path, **fields: Any) -> NodeSettings:
    values: dict[str, Any] = {
        "home": tmp_path,
        "queue": URL,
        "rules": tmp_path / "rules.yaml",
        "cluster": URL,
    }
    values.update(fields)
    return NodeSettings(**values)


def test_cluster_settings_are_checked_and_name_the_field(tmp_path: Path) -> None:
    assert _settings(tmp_path).cluster == URL and _settings(tmp_path, cluster="").cluster == ""
    with pytest.raises(ConfigError, match="field Cluster: must be a postgresql:// URL or empty, got 'mysql'"):
        _settings(tmp_path, cluster="mysql://x/y")
    with pytest.raises(ConfigError, match="field Queue: must be a postgresql:// URL in cluster mode"):
        _settings(tmp_path, queue="sqlite:///q.db")
    with pytest.raises(ConfigError, match="field DispatcherLeaseSeconds: must be from 2 to 600 seconds"):
        _settings(tmp_path, dispatcher_lease_s=1.0)
    with pytest.raises(ConfigError, match="field ChangeGapSeconds"):
        _settings(tmp_path, change_gap_s=-1.0)
    with pytest.raises(ConfigError, match="field ServerIdentifier: must be at most 128 printable"):
        _settings(tmp_path, server_identifier="a\nb")


def test_a_cluster_member_shares_the_index_and_the_storage_and_has_its_own_identity(tmp_path: Path) -> None:
    options = NodeOptions(
        home=tmp_path / "a", cluster=URL, server_id="orthanc-a", storage=tmp_path / "shared", queue=None
    )
    path, _, _ = write_configuration(options)
    config = json.loads(path.read_text())
    assert config["PostgreSQL"] == {
        "EnableIndex": True,
        "EnableStorage": False,
        "ConnectionUri": URL,
        "Lock": False,
    }
    assert config["DatabaseServerIdentifier"] == "orthanc-a"
    assert config["StorageDirectory"] == str((tmp_path / "shared").resolve())
    assert any(p.endswith("libOrthancPostgreSQLIndex.so") for p in config["Plugins"])
    section = config["LesionAI"]
    assert (section["Cluster"], section["ServerIdentifier"], section["Queue"]) == (URL, "orthanc-a", URL)
    assert section["ModelsFolder"] == str((tmp_path / "shared").resolve() / "lesion-ai-models")


def test_a_single_node_is_unchanged(tmp_path: Path) -> None:
    path, _, _ = write_configuration(NodeOptions(home=tmp_path / "n", cluster=None, queue=None))
    config = json.loads(path.read_text())
    assert "PostgreSQL" not in config and "DatabaseServerIdentifier" not in config
    assert not any("PostgreSQL" in p for p in config["Plugins"])
    assert config["LesionAI"]["Cluster"] == "" and config["LesionAI"]["Queue"].startswith("sqlite:///")


def test_cluster_mode_without_a_shared_storage_or_with_a_bad_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set LESION_AI_STORAGE"):
        NodeOptions(home=tmp_path, cluster=URL, storage=None)
    with pytest.raises(ValueError, match="LESION_AI_CLUSTER must be a postgresql:// URL, got 'http'"):
        NodeOptions(home=tmp_path, cluster="http://db", storage=tmp_path)
