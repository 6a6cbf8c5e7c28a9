"""The engine and training on a CUDA GPU (mixed precision, batches), checked against the CPU.

These run only where CUDA is available (a GPU machine); elsewhere they are reported as skipped.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lesion_engine.engine import DEFAULT_ARTIFACT, Engine
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from tests.support.training_support import TINY_GRID, make_synthetic, tiny_train_config
from training.datasets.dataset import DataSpec, build_cache
from training.fit.train import TrainConfig, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def positive(synthetic: list[Path]) -> PreparedStudy:
    return prepare_study(synthetic[0] / "dicom")  # csPCa + BPH nodule


def test_default_model_on_cuda_agrees_with_the_cpu(positive: PreparedStudy) -> None:
    cpu = Engine.from_artifact(DEFAULT_ARTIFACT, "cpu").run(positive)
    engine = Engine.from_artifact(DEFAULT_ARTIFACT, "cuda")
    assert engine.device.type == "cuda" and engine.amp_dtype in (torch.bfloat16, torch.float16)
    gpu = engine.run(positive)
    cpu_map = sitk.GetArrayFromImage(cpu.localization_map)
    gpu_map = sitk.GetArrayFromImage(gpu.localization_map)
    assert float(np.abs(cpu_map - gpu_map).max()) < 0.05
    assert gpu.patient_score == pytest.approx(cpu.patient_score, abs=0.05)
    confident_cpu = [lesion for lesion in cpu.lesions if lesion.probability >= 0.5]
    confident_gpu = [lesion for lesion in gpu.lesions if lesion.probability >= 0.5]
    assert confident_cpu, "the default model should find the synthetic csPCa lesion"
    assert len(confident_gpu) == len(confident_cpu)
    for a, b in zip(confident_cpu, confident_gpu, strict=True):
        assert np.linalg.norm(np.subtract(a.center_lps_mm, b.center_lps_mm)) < 3.0
        assert b.probability == pytest.approx(a.probability, abs=0.05)
        assert b.category == a.category


def test_batched_studies_on_cuda_match_single_runs(synthetic: list[Path]) -> None:
    engine = Engine.from_artifact(DEFAULT_ARTIFACT, "cuda")
    studies = [prepare_study(case / "dicom") for case in synthetic]
    singles = [engine.run(study) for study in studies]
    batch = engine.run_batch(studies)
    for one, many in zip(singles, batch, strict=True):
        assert many.study_instance_uid == one.study_instance_uid
        assert len(many.lesions) == len(one.lesions)
        for a, b in zip(one.lesions, many.lesions, strict=True):
            assert b.probability == pytest.approx(a.probability, abs=0.02)
            assert np.array_equal(a.mask, b.mask)


def test_training_steps_on_cuda_resume_and_export(synthetic: list[Path], tmp_path: Path) -> None:
    spec = DataSpec(synthetic[0].parent)
    cache = tmp_path / "cache"
    build_cache(spec, TINY_GRID, cache)

    def config(**changes: object) -> TrainConfig:
        return tiny_train_config(spec, cache, tmp_path / "run", epochs=2, device="cuda", **changes)

    first = train(config(max_steps=2), argv=["test"])
    assert first.global_step == 2
    done = train(config(), resume=True, argv=["test", "--resume"])
    assert done.global_step == 4 and done.artifact is not None
    with (tmp_path / "run" / "steps.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 4 and all(np.isfinite(losses))
    result = Engine.from_artifact(done.artifact, "cuda").run(prepare_study(synthetic[1] / "dicom"))
    assert 0.0 <= result.patient_score <= 1.0


def test_cli_infer_on_cuda(synthetic: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", "infer", str(synthetic[0] / "dicom"), "--out", str(out),
         "--device", "cuda"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lesions = json.loads((out / "lesions.json").read_text())
    assert lesions["model"]["name"] == "lesion-ai-default"
    assert (out / "seg.dcm").is_file() and (out / "sr.dcm").is_file()
