"""Helpers of the training tests: tiny synthetic data sets, a PI-CAI layout made from them, tiny models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from lesion_engine.intake.preprocess import prepare_study
from lesion_engine.model.artifact import save_artifact
from lesion_engine.model.candidates import CandidateConfig
from lesion_engine.model.model_input import PreprocessConfig
from lesion_engine.model.networks import ClassificationNetConfig, JointModel, LocalizationNetConfig
from training.datasets.dataset import DataSpec
from training.fit.train import TrainConfig
from training.synth import SynthConfig, generate_case
from training.synth.truth import MARKSHEET_COLUMNS, write_marksheet

# Case 0: csPCa + BPH nodule; case 1: no lesion; case 2: indolent cancer + prostatitis.
KINDS: tuple[tuple[str, ...], ...] = (("cspca", "bph"), (), ("indolent", "prostatitis"))
SEED = 7

TINY_GRID = PreprocessConfig(spacing_zyx=(3.0, 2.0, 2.0), size_zyx=(12, 64, 64))
"""A small model grid (36 x 128 x 128 mm) that keeps the tests fast."""


def make_synthetic(root: Path, kinds: tuple[tuple[str, ...], ...] = KINDS, seed: int = SEED) -> list[Path]:
    """Generate one small synthetic case per entry of ``kinds`` (vendors and flavours mixed) and a marksheet."""
    folders = []
    rows = []
    for index, lesion_kinds in enumerate(kinds):
        config = SynthConfig(vendor="mixed", enhanced=index == 1, lesion_kinds=lesion_kinds, profile="small")
        folder = generate_case(root, index, seed, config)
        folders.append(folder)
        rows.append(json.loads((folder / "truth.json").read_text())["marksheet"])
    write_marksheet(root / "marksheet.csv", rows)
    return folders


def make_picai_layout(synthetic: list[Path], root: Path) -> tuple[Path, Path]:
    """Convert synthetic cases into PI-CAI's layout; return (images root, picai_labels root).

    Case 0 gets an expert label; case 1 (negative) gets an empty expert label; case 2 has no expert label but
    an AI-derived one (value 1) and is marked csPCa in the marksheet, so ``human+ai`` must fall back to it.
    Every case gets a zonal mask. Split files are written in both published forms.
    """
    images_root = root / "images"
    labels_root = root / "picai_labels"
    rows = []
    ids = []
    for n, case_dir in enumerate(synthetic):
        case_id = case_dir.name
        patient, _study = case_id.split("_")
        ids.append(case_id)
        prepared = prepare_study(case_dir / "dicom")
        folder = images_root / patient
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in (
            ("t2w", prepared.t2w),
            ("adc", prepared.adc),
            ("hbv", prepared.high_b or prepared.hbv),
        ):
            sitk.WriteImage(image, str(folder / f"{case_id}_{name}.mha"), useCompression=True)
        lesion = sitk.ReadImage(str(case_dir / "labels" / f"{case_id}_lesion.nii.gz"))
        zones = sitk.ReadImage(str(case_dir / "labels" / f"{case_id}_zones.nii.gz"))
        human = labels_root / "csPCa_lesion_delineations" / "human_expert" / "resampled"
        ai = labels_root / "csPCa_lesion_delineations" / "AI" / "Bosma22a"
        zonal = labels_root / "anatomical_delineations" / "zonal_pz_tz" / "AI" / "HeviAI23"
        for path in (human, ai, zonal):
            path.mkdir(parents=True, exist_ok=True)
        row = json.loads((case_dir / "truth.json").read_text())["marksheet"]
        if n == 2:
            # an AI-derived csPCa blob (value 1) around the indolent lesion; the case is csPCa by the marksheet
            array = sitk.GetArrayFromImage(lesion).astype(np.uint8)
            truth = json.loads((case_dir / "truth.json").read_text())
            centre = truth["lesions"][0]["center_lps_mm"]
            x, y, z = lesion.TransformPhysicalPointToIndex(centre)
            array[max(z - 1, 0) : z + 2, max(y - 4, 0) : y + 4, max(x - 4, 0) : x + 4] = 1
            ai_image = sitk.GetImageFromArray(array)
            ai_image.CopyInformation(lesion)
            sitk.WriteImage(ai_image, str(ai / f"{case_id}.nii.gz"))
            row = {**row, "case_csPCa": "YES", "case_ISUP": "2"}
        else:
            sitk.WriteImage(lesion, str(human / f"{case_id}.nii.gz"))
        sitk.WriteImage(zones, str(zonal / f"{case_id}.nii.gz"))
        rows.append(row)
    clinical = labels_root / "clinical_information"
    clinical.mkdir(parents=True, exist_ok=True)
    with (clinical / "marksheet.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(MARKSHEET_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    splits = root / "splits"
    splits.mkdir()
    (splits / "ds-config-train-fold-0.json").write_text(json.dumps({"subject_list": ids[:2]}, indent=4))
    (splits / "ds-config-valid-fold-0.json").write_text(json.dumps({"subject_list": ids[2:]}, indent=4))
    (root / "splits.json").write_text(json.dumps([{"train": ids[1:], "val": ids[:1]}]))
    return images_root, labels_root


def tiny_artifact(folder: Path, grid: PreprocessConfig = TINY_GRID, seed: int = 0) -> Path:
    """A randomly initialized small model exported as an artifact."""
    torch.manual_seed(seed)
    model = JointModel(
        LocalizationNetConfig(channels=(4, 8, 16, 16)),
        ClassificationNetConfig(channels=(4, 8)),
    )
    return save_artifact(
        model,
        folder,
        name="tiny-test-model",
        version="0.0.1",
        preprocessing=grid,
        candidates=CandidateConfig(),
        training={"data": "none (random weights)"},
    )


def tiny_train_config(spec: DataSpec, cache: Path, out: Path, **changes: object) -> TrainConfig:
    """A few-step training run of a tiny model on :data:`TINY_GRID` (3 epochs of 2 steps); ``changes``
    override any field."""
    settings: dict[str, object] = {
        "data": spec,
        "out_dir": out,
        "cache_dir": cache,
        "preprocess": TINY_GRID,
        "epochs": 3,
        "warmup_epochs": 1,
        "samples_per_epoch": 4,
        "batch_size": 2,
        "crop_size": (8, 32, 32),
        "loc_channels": (4, 8, 8, 8),
        "cls_channels": (4, 8),
        "lr": 3e-3,
        "lr_ramp_steps": 2,
        "threads": 1,
        "progress": False,
        "seed": 5,
    }
    settings.update(changes)
    return TrainConfig(**settings)  # type: ignore[arg-type]
