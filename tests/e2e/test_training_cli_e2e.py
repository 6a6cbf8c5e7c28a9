"""The research workflow end to end through the console command: synth -> train -> evaluate -> infer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lesion_engine.model.artifact import read_card

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_synth_train_evaluate_infer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = _cli("synth", "--out", str(data), "--cases", "3", "--seed", "31", "--profile", "small")
    assert done.returncode == 0, done.stderr
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    assert len(cases) == 3

    run = tmp_path / "run"
    done = _cli(
        "train", "--data", str(data), "--out", str(run), "--epochs", "2", "--warmup-epochs", "1",
        "--samples-per-epoch", "2", "--batch-size", "1", "--crop", "8", "32", "32",
        "--loc-channels", "4", "8", "8", "8", "--cls-channels", "4", "8", "--threads", "2",
        "--no-progress", "--name", "cli-e2e", "--model-version", "0.0.1", "--seed", "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    artifact = run / "artifact"
    card = read_card(artifact)
    assert (card.name, card.version) == ("cli-e2e", "0.0.1")
    log = (run / "steps.csv").read_text().splitlines()
    assert len(log) == 1 + 4  # header + 2 epochs x 2 steps
    assert any(p.suffix == ".png" for p in run.iterdir())

    evaluation = tmp_path / "eval"
    done = _cli("evaluate", "--data", str(data), "--model", str(artifact), "--out", str(evaluation),
                "--device", "cpu", "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["num_cases"] == 3 and metrics["model"]["name"] == "cli-e2e"

    out = tmp_path / "infer"
    done = _cli(
        "infer", str(cases[0] / "dicom"), "--out", str(out), "--model", str(artifact), "--device", "cpu"
    )
    assert done.returncode == 0, done.stderr
    lesions = json.loads((out / "lesions.json").read_text())
    assert lesions["model"]["name"] == "cli-e2e"
    assert lesions["model"]["sha256"] == card.weights_sha256
    assert (out / "detection_map.nii.gz").is_file() and (out / "localization_map.nii.gz").is_file()
