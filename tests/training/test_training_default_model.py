"""The default-model recipe: data mix, installation with metrics, and the Markdown model card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lesion_engine.model.artifact import load_artifact
from tests.support.training_support import tiny_artifact
from training.datasets.synthetic_sets import case_config
from training.default_model import DEFAULTS, build_parser, install

HELD_OUT = {
    "auroc": 0.99,
    "AP": 0.9,
    "ranking_score": 0.945,
    "sensitivity_at_0.5_fp": 0.9,
    "sensitivity_at_1_fp": 0.95,
    "num_cases": 60,
    "num_lesions": 30,
    "per_kind": {
        "cspca": {
            "lesions": 30,
            "detected": 28,
            "called_cspca": 27,
            "called_cspca_rate": 0.9,
            "mean_probability_when_detected": 0.9,
            "detection_rate": 0.93,
        },
        "bph": {
            "lesions": 10,
            "detected": 1,
            "called_cspca": 0,
            "called_cspca_rate": 0.0,
            "mean_probability_when_detected": 0.1,
            "detection_rate": 0.1,
        },
    },
    "category_confusion": {
        "rows_true": ["2", "3", "4", "5", "unknown", "no lesion"],
        "columns_predicted": ["2", "3", "4", "5", "not detected"],
        "matrix": [[1, 0, 0, 0, 9], [0] * 5, [0, 0, 10, 2, 1], [0, 0, 3, 13, 1], [0] * 5, [2, 0, 0, 0, 0]],
    },
}


def test_training_mix_covers_every_vendor_in_both_flavours() -> None:
    configs = [case_config(i) for i in range(8)]
    assert {c.vendor for c in configs} == {"mixed"}
    assert [c.enhanced for c in configs] == [False] * 4 + [True] * 4
    assert all(c.profile == "small" for c in configs)


def test_install_writes_card_metrics_and_markdown(tmp_path: Path) -> None:
    work = tmp_path / "work"
    tiny_artifact(work / "runs" / "joint" / "artifact")
    args = build_parser().parse_args(["--work", str(work), "--model-dir", str(tmp_path / "installed")])
    assert isinstance(args, argparse.Namespace) and args.epochs == DEFAULTS["epochs"]
    assert args.train_seed != args.test_seed
    runs = {
        "joint": {
            "held_out": HELD_OUT,
            "train_command": "lesion-ai train --data d",
            "steps": 800,
            "evaluate_command": "lesion-ai evaluate --data t",
            "train_seconds": 900.0,
            "time_limit_hit": False,
        },
        "detached_map": {
            "held_out": {**HELD_OUT, "AP": 0.8},
            "train_seconds": 880.0,
            "train_command": "lesion-ai train --data d --detach-map",
        },
    }
    # the held-out ROC exists, the other figures do not: the card links only what was installed
    (work / "eval" / "joint").mkdir(parents=True)
    (work / "eval" / "joint" / "roc.png").write_bytes(b"\x89PNG roc")
    folder = install(args, work, runs)
    assert (folder / "heldout_roc.png").read_bytes() == b"\x89PNG roc"
    assert not (folder / "heldout_froc.png").exists()
    _model, card = load_artifact(folder)
    assert card.metrics["held_out"]["auroc"] == 0.99
    assert card.metrics["ablation_detach_map"]["held_out"]["AP"] == 0.8
    assert card.training["commands"]["reproduce"] == "make train-default"
    assert card.training["data"]["kind"] == "synthetic phantoms only"
    text = (folder / "MODEL_CARD.md").read_text()
    assert "synthetic phantoms only" in text.lower() and "not for diagnosis" in text.lower()
    assert "| joint (this model) | 0.990 | 0.900 | 0.945 |" in text
    assert "| ablation: --detach-map | 0.990 | 0.800 |" in text
    assert "--data-format picai" in text and "make train-default" in text
    assert "(heldout_roc.png)" in text and "heldout_froc.png" not in text
    assert json.loads((folder / "model.json").read_text())["intended_use"].startswith("research")
