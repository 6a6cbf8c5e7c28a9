"""The node's settings are written in one place: a changed number reaches the queue, the worker and the
processor; workers get them as a JSON file (not on their command line), ``lesion-ai worker`` takes its
defaults from the settings fields, and no other module of the node writes those numbers again."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from lesion_engine.cli.main import build_parser
from lesion_engine.errors import ConfigError
from lesion_engine.results.settings import ResultSettings
from orthanc_plugin.jobqueue import QueuePolicy
from orthanc_plugin.node.settings import (
    PARENT_PID_ENV,
    SECTION,
    NodeSettings,
    WorkerSettings,
    setting_default,
    setting_doc,
)
from orthanc_plugin.worker.processing import ProcessorSettings
from orthanc_plugin.worker.runner import WorkerOptions
from tests.paths import REPO


def _section(tmp_path: Path, **changes: object) -> dict[str, object]:
    return {
        "Home": str(tmp_path),
        "Queue": f"sqlite:///{tmp_path / 'queue.sqlite'}",
        "Rules": str(tmp_path / "rules.yaml"),
        **changes,
    }


def test_a_changed_setting_reaches_the_queue_the_worker_and_the_processor(tmp_path: Path) -> None:
    section = _section(
        tmp_path,
        LeaseSeconds=77.0,
        MaxAttempts=9,
        BackoffSeconds=3.0,
        HeartbeatSeconds=7.5,
        ForwardAttempts=4,
        MetadataName="SiteAI",
        Device="cpu",
        Model="/models/m2",
        ResultSettings={"manufacturer": "Site"},
        Workers=2,
    )
    node = NodeSettings.from_orthanc_configuration({SECTION: section})
    assert QueuePolicy.from_settings(node) == QueuePolicy(
        lease_s=77.0, max_attempts=9, backoff_base_s=3.0, backoff_max_s=setting_default("backoff_max_s")
    )
    # what the plugin's workers read: the file it writes into the data folder
    worker = WorkerSettings.read(node.write_worker_settings())
    assert QueuePolicy.from_settings(worker) == QueuePolicy.from_settings(node)
    options = WorkerOptions.from_settings(worker, name="w0", parent_pid=123)
    assert (options.heartbeat_s, options.forward_attempts, options.metadata_name) == (7.5, 4, "SiteAI")
    assert (options.poll_s, options.name, options.parent_pid) == (setting_default("poll_s"), "w0", 123)
    processor = ProcessorSettings.from_settings(worker)
    assert (processor.device, processor.model, processor.result_settings) == (
        "cpu",
        "/models/m2",
        ResultSettings(manufacturer="Site"),
    )
    assert worker.to_section()["ResultSettings"] == {"manufacturer": "Site"}  # the form the admin wrote
    assert processor.threads == max(1, (os.cpu_count() or 1) // 2)  # the CPUs shared by the 2 workers
    assert NodeSettings.from_orthanc_configuration({SECTION: node.to_section()}) == node


def test_worker_settings_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="field HeartbeatSeconds: must be at most half of LeaseSeconds"):
        WorkerSettings(queue="sqlite:///q", lease_s=10.0, heartbeat_s=6.0)
    with pytest.raises(ConfigError, match="field ForwardAttempts: must be at least 1"):
        WorkerSettings(queue="sqlite:///q", forward_attempts=0)
    with pytest.raises(ConfigError, match="field Queue is missing"):
        WorkerSettings.from_section({"LeaseSeconds": 60})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) Home"):
        WorkerSettings.from_section({"Queue": "sqlite:///q", "Home": "/x"})  # a worker has no data folder
    bad = tmp_path / "worker-settings.json"
    bad.write_text("[1]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        WorkerSettings.read(bad)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"manufacturer": "M" * 80},
            "field ResultSettings: result settings: manufacturer is 80 characters long",
        ),
        ({"colour": "red"}, r"field ResultSettings: result settings: unknown key\(s\) colour; known keys:"),
        (
            ["manufacturer"],
            r"field ResultSettings: expected a JSON object of result settings, got \['manufacturer'\]",
        ),
    ],
)
def test_result_settings_are_read_once_with_the_settings_and_errors_name_the_field(
    tmp_path: Path, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeSettings.from_orthanc_configuration({SECTION: _section(tmp_path, ResultSettings=value)})
    node = NodeSettings.from_orthanc_configuration(
        {SECTION: _section(tmp_path, ResultSettings={"manufacturer": "Site", "sr_series_number": 7})}
    )
    assert node.result_settings == ResultSettings(manufacturer="Site", sr_series_number=7)
    assert node.worker_settings().result_settings is node.result_settings
    with pytest.raises(
        ConfigError, match=r"field ResultSettings: must be lesion_engine\.results\.ResultSettings"
    ):
        WorkerSettings(queue="sqlite:///q", result_settings={"manufacturer": "Site"})  # type: ignore[arg-type]


def test_the_processor_settings_take_their_defaults_from_the_settings_fields() -> None:
    assert ProcessorSettings() == ProcessorSettings.from_settings(WorkerSettings(queue="sqlite:///q"))


def test_worker_process_reads_its_settings_file_and_watches_its_parent(tmp_path: Path) -> None:
    node = NodeSettings.from_orthanc_configuration(
        {SECTION: _section(tmp_path, Processor="tests.support.node_fakes:factory", PollSeconds=0.2)}
    )
    settings_file = node.write_worker_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESION_AI_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env[PARENT_PID_ENV] = "1"  # not the parent of the worker: it exits at once, as when Orthanc died
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orthanc_plugin.worker.main",
            "--settings",
            str(settings_file),
            "--name",
            "w7",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "[w7] orthanc_plugin.worker.runner: worker w7" in done.stderr
    assert "Orthanc (the parent process) is gone" in done.stderr
    assert (tmp_path / "queue.sqlite").exists()
    settings_file.write_text(json.dumps({"Queue": "sqlite:///q", "LeaseSeconds": "long"}))
    bad = subprocess.run(
        [sys.executable, "-m", "orthanc_plugin.worker.main", "--settings", str(settings_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "field LeaseSeconds: expected float" in bad.stderr


def test_lesion_ai_worker_takes_its_defaults_from_the_settings_fields() -> None:
    args = build_parser().parse_args(
        ["worker", "--orthanc-url", "http://node:8142", "--queue", "sqlite:///q"]
    )
    for f in fields(WorkerSettings):
        if f.name in ("queue", "orthanc_url", "result_settings"):
            continue
        assert getattr(args, f.name) == setting_default(f.name), f.name
    assert "claimed again" in setting_doc("lease_s") and "LeaseSeconds" in setting_doc("lease_s")
    changed = build_parser().parse_args(
        [
            "worker",
            "--orthanc-url",
            "http://node:8142",
            "--queue",
            "sqlite:///q",
            "--lease",
            "30",
            "--threads",
            "2",
        ]
    )
    assert (changed.lease_s, changed.threads) == (30.0, 2)


def test_the_entry_script_names_the_section_as_the_settings_do() -> None:
    tree = ast.parse((REPO / "orthanc_plugin" / "entry" / "lesion_ai_entry.py").read_text(encoding="utf-8"))
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }
    keys = {str(f.metadata["key"]) for f in fields(NodeSettings)}
    assert constants["SECTION"] == SECTION
    assert {constants["SITE_PACKAGES_KEY"], constants["PYTHON_KEY"]} <= keys


def test_no_other_module_of_the_node_writes_the_settings_numbers_again() -> None:
    """Defaults that are only settings (longest back-off, send timeout, global property, the section's
    name) appear once (120 s, the lease, is also the HTTP client's socket timeout: another concept)."""
    distinctive = {900.0, 600.0, 5871, SECTION}
    found = []
    for path in sorted((REPO / "orthanc_plugin").rglob("*.py")):
        if path.name == "settings.py" or path.parent.name == "entry":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and not isinstance(node.value, bool)
                and isinstance(node.value, int | float | str)
                and node.value in distinctive
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_the_readme_lists_every_setting_with_its_default() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Configuring Orthanc yourself", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip()
        for line in section.splitlines()
        if line.startswith("| `")
    }
    for f in fields(NodeSettings):
        key = f.metadata["key"]
        assert key in rows, f"README: setting {key} is not documented"
        if f.default is not MISSING and f.default is not None:
            assert rows[key] == str(f.default), f"README: {key} default {rows[key]} != {f.default}"
