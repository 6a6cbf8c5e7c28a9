"""Evaluation with picai_eval on tiny synthetic and PI-CAI-layout data sets, and the train/evaluate CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lesion_engine.cli.main import build_parser, main
from tests.support.training_support import make_picai_layout, make_synthetic, tiny_artifact
from training.artifact.export import update_card_metrics
from training.datasets.dataset import DataSpec
from training.evaluation.evaluate import HEADLINE_KEYS, evaluate_model, prepared_from_images

PICAI_KEYS = HEADLINE_KEYS


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("model"))


def test_evaluate_synthetic_writes_picai_metrics(
    synthetic: list[Path], artifact: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    status = main(["evaluate", "--data", str(synthetic[0].parent), "--model", str(artifact), "--out", str(out),
                   "--device", "cpu", "--no-progress"])  # fmt: skip
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in PICAI_KEYS:
        assert key in metrics
    assert metrics["num_cases"] == 3 and metrics["num_lesions"] == 1
    assert 0.0 <= metrics["AP"] <= 1.0 and 0.0 <= metrics["auroc"] <= 1.0
    assert metrics["ranking_score"] == pytest.approx((metrics["AP"] + metrics["auroc"]) / 2)
    # every known lesion kind is accounted for, and the confusion matrix counts each reference lesion once
    assert set(metrics["per_kind"]) >= {"cspca", "bph", "indolent", "prostatitis"}
    confusion = np.asarray(metrics["category_confusion"]["matrix"])
    assert confusion[:5].sum() == 4
    assert metrics["model"]["name"] == "tiny-test-model"
    for name in ("roc.png", "froc.png", "pr.png"):
        assert (out / name).stat().st_size > 1000
    maps = sorted((out / "detection_maps").glob("*_detection_map.nii.gz"))
    assert [p.name.split("_detection")[0] for p in maps] == sorted(p.name for p in synthetic)
    detection = sitk.ReadImage(str(maps[0]))
    label = sitk.ReadImage(str(out / "labels" / maps[0].name.replace("_detection_map", "_label")))
    assert detection.GetSize() == label.GetSize()
    # the metrics go into the model card, which stays valid
    update_card_metrics(artifact, {"held_out": {k: metrics[k] for k in PICAI_KEYS}})
    assert json.loads((artifact / "model.json").read_text())["metrics"]["held_out"]["num_cases"] == 3


@pytest.mark.slow
def test_evaluate_picai_layout(synthetic: list[Path], artifact: Path, tmp_path: Path) -> None:
    images_root, labels_root = make_picai_layout(synthetic, tmp_path / "picai")
    spec = DataSpec(images_root, "picai", labels_root=labels_root)
    record = evaluate_model(spec, artifact, tmp_path / "eval", device="cpu")
    assert record["num_cases"] == 3
    assert record["num_lesions"] == 2  # the expert lesion of case 0 and the AI-derived one of case 2
    assert record["data"]["data_format"] == "picai"


def test_prepared_from_images_puts_everything_on_the_t2w_grid() -> None:
    t2w = sitk.Image(16, 16, 4, sitk.sitkFloat32)
    t2w.SetSpacing((1.0, 1.0, 3.0))
    adc = sitk.Image(8, 8, 4, sitk.sitkFloat32)
    adc.SetSpacing((2.0, 2.0, 3.0))
    prepared = prepared_from_images("1_2", t2w, adc, adc)
    assert prepared.adc.GetSize() == t2w.GetSize() and prepared.hbv.GetSize() == t2w.GetSize()
    assert prepared.report()["roles"]["t2w"]["series_instance_uid"] == "1_2_t2w"


def test_cli_registers_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["train", "--data", str(tmp_path), "--detach-map", "--lambda", "0.5", "--epochs", "3"]
    )
    assert (
        args.detach_map and args.lambda_cls == 0.5 and args.epochs == 3 and args.func.__name__ == "run_train"
    )
    assert main(["train", "--data", str(tmp_path), "--epochs", "2", "--warmup-epochs", "2"]) == 2
    assert "warmup_epochs" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "e")]) == 2
