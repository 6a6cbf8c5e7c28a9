"""The lesion-ai command line: entry-point discovery and import direction."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lesion_engine.cli.main import build_parser, main


def test_subcommands_discovered_by_entry_point() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    assert "inspect" in help_text
    assert "synth" in help_text


def test_engine_imports_neither_training_nor_plugin() -> None:
    code = (
        "import sys, lesion_engine, lesion_engine.cli.main, lesion_engine.intake.preprocess, lesion_engine.cli.inspect\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('training', 'orthanc_plugin')]\n"
        "sys.exit(1 if bad else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "commands" in capsys.readouterr().err


def test_inspect_rejects_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_inspect_bad_rules_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("min_slices: -1\n")
    assert main(["inspect", str(tmp_path), "--rules", str(rules)]) == 2
    assert "min_slices must be at least 2" in capsys.readouterr().err


def test_inspect_unusable_study_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("x")
    assert main(["inspect", str(tmp_path), "--json"]) == 1
    captured = capsys.readouterr()
    assert '"usable": false' in captured.out
    assert "NoImagesError" in captured.out
    assert "study not usable" in captured.err
