"""The training loop: a few steps, checkpoints without pickles, exact resume, logs, plots and export."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lesion_engine.model.artifact import load_artifact
from lesion_engine.model.networks import ClassificationNetConfig, JointModel, LocalizationNetConfig
from tests.support.training_support import TINY_GRID, make_synthetic, tiny_train_config
from training.datasets.candidate_sampling import SamplingConfig, ground_truth_and_random, map_candidates
from training.datasets.dataset import DataSpec, build_cache
from training.fit.checkpoint import load_checkpoint, save_checkpoint
from training.fit.losses import LossConfig, joint_loss, localization_loss
from training.fit.train import TrainConfig, lr_at, train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataSpec, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root)
    spec = DataSpec(root)
    cache = tmp_path_factory.mktemp("cache")
    build_cache(spec, TINY_GRID, cache)
    return spec, cache


def _steps(out: Path) -> list[dict[str, str]]:
    with (out / "steps.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_train_resume_and_export(data: tuple[DataSpec, Path], tmp_path: Path) -> None:
    spec, cache = data
    # uninterrupted reference run: 3 epochs of 2 steps
    full = train(tiny_train_config(spec, cache, tmp_path / "full"), argv=["test"])
    assert full.global_step == 6
    # ... run twice: on some machines CPU kernels are not bit-reproducible from run to run (seen with torch
    # 2.11 on 16-core hosts: up to 1e-3 in the loss after 6 steps, even on one thread). A resumed run must be
    # exact where repeats are exact (as on the CI machine); elsewhere within 3e-3 of the reference loss, or
    # five times a repeat's spread. A resume that loses the optimizer state is off by 1e-2 at steps 5 and 6.
    again = train(tiny_train_config(spec, cache, tmp_path / "again"), argv=["test"])
    assert again.global_step == 6
    loss_noise = max(
        abs(float(a["loss"]) - float(b["loss"])) / abs(float(a["loss"]))
        for a, b in zip(_steps(tmp_path / "full"), _steps(tmp_path / "again"), strict=True)
    )
    reference, _ = load_artifact(tmp_path / "full" / "artifact")
    repeat, _ = load_artifact(tmp_path / "again" / "artifact")
    weight_noise = max(
        float((a - b).abs().max())
        for a, b in zip(reference.state_dict().values(), repeat.state_dict().values(), strict=True)
    )
    # the same run, stopped after 3 steps (in the middle of epoch 1), then resumed
    part = train(tiny_train_config(spec, cache, tmp_path / "part", max_steps=3), argv=["test"])
    assert part.global_step == 3
    record = json.loads((tmp_path / "part" / "checkpoints" / "last.json").read_text())
    assert (record["epoch"], record["step_in_epoch"], record["global_step"]) == (1, 1, 3)
    resumed = train(tiny_train_config(spec, cache, tmp_path / "part"), resume=True, argv=["test", "--resume"])
    assert resumed.global_step == 6

    full_rows, part_rows = _steps(tmp_path / "full"), _steps(tmp_path / "part")
    assert [int(r["step"]) for r in part_rows] == [1, 2, 3, 4, 5, 6]  # no step repeated or lost
    loss_tolerance = max(3e-3, 5 * loss_noise) if loss_noise > 0 else 1e-5
    for a, b in zip(full_rows, part_rows, strict=True):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=loss_tolerance, abs=1e-6)
    assert all(np.isfinite(float(r["loss"])) for r in part_rows)
    # warm-up: no classification candidates from the map in epoch 0, some later
    assert all(int(r["map_candidates"]) == 0 for r in part_rows if r["epoch"] == "0")
    with (tmp_path / "part" / "epochs.csv").open() as handle:
        epochs = list(csv.DictReader(handle))
    assert [int(e["epoch"]) for e in epochs] == [0, 1, 2]
    assert [int(e["steps"]) for e in epochs] == [2, 2, 2]
    assert (tmp_path / "part" / "loss.png").stat().st_size > 1000
    config = json.loads((tmp_path / "part" / "config.json").read_text())
    assert config["command"] == ["test", "--resume"] and config["previous_commands"] == [["test"]]

    # checkpoint tensors are plain safetensors; weights equal those of the uninterrupted run
    tensors = load_file(str(tmp_path / "part" / "checkpoints" / "last.safetensors"))
    assert any(k.startswith("optim/") for k in tensors) and "rng/torch" in tensors
    model, card = load_artifact(tmp_path / "part" / "artifact")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.allclose(
            a, b, rtol=0.0, atol=max(3e-2, 5 * weight_noise) if weight_noise > 0 else 1e-6
        ), name
    assert card.training["detach_map"] is False and card.training["seed"] == 5
    assert card.training["lambda_cls"] == 1.0 and card.training["steps"] == 6
    assert card.preprocessing == TINY_GRID


def test_checkpoint_roundtrip_and_damage_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = JointModel(LocalizationNetConfig(channels=(4, 8, 8, 8)), ClassificationNetConfig(channels=(4, 8)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = sum(p.sum() for p in model.parameters())
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()
    save_checkpoint(tmp_path, model, optimizer, epoch=2, step_in_epoch=1, global_step=9, extra={"a": 1})
    other = JointModel(LocalizationNetConfig(channels=(4, 8, 8, 8)), ClassificationNetConfig(channels=(4, 8)))
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=1e-3)
    state = load_checkpoint(tmp_path, other, other_optimizer)
    assert (state.epoch, state.step_in_epoch, state.global_step, state.extra) == (2, 1, 9, {"a": 1})
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert other_optimizer.state_dict()["state"][0]["exp_avg"].shape == next(model.parameters()).shape
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(
            tmp_path, JointModel(LocalizationNetConfig(channels=(4, 8, 8, 16)), ClassificationNetConfig())
        )
    damaged = bytearray((tmp_path / "last.safetensors").read_bytes())
    damaged[-100] ^= 0xFF
    (tmp_path / "last.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(tmp_path, other)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none", other)


def test_config_validation_names_the_field(tmp_path: Path) -> None:
    spec = DataSpec(tmp_path)
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(data=spec, out_dir=tmp_path, epochs=2, warmup_epochs=2)
    with pytest.raises(ValueError, match="crop_size"):
        TrainConfig(data=spec, out_dir=tmp_path, crop_size=(15, 96, 96))
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(data=spec, out_dir=tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="data_format"):
        DataSpec(tmp_path, "nifti")
    config = TrainConfig(data=spec, out_dir=tmp_path, epochs=10, lr=1e-3, lr_ramp_steps=10)
    rates = [lr_at(step, 100, config) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and max(rates) == pytest.approx(1e-3)
    assert rates[-1] < 1e-4 and all(a >= b for a, b in itertools.pairwise(rates[10:]))


def test_candidate_labels_follow_the_overlap_rule() -> None:
    shape = (8, 32, 32)
    index = np.zeros((1, *shape), np.int16)
    index[0, 2:6, 4:10, 4:10] = 1  # csPCa lesion, category index 2 (ISUP 2)
    index[0, 2:6, 20:26, 20:26] = 2  # BPH nodule, category index 0
    lesions = [np.asarray([[4, 7, 7, 1, 1, 2], [4, 23, 23, 2, 0, 0]], dtype=np.float64)]
    probability = np.zeros((1, *shape), np.float32)
    probability[0, 2:6, 5:11, 5:11] = 0.9  # overlaps the cancer
    probability[0, 2:6, 20:26, 20:26] = 0.8  # on the mimic
    probability[0, 2:5, 14:17, 26:30] = 0.7  # on nothing
    found = map_candidates(probability, lesions, index, SamplingConfig(max_map_candidates=5))
    by_peak = sorted(zip(found.cancer.tolist(), found.category.tolist(), strict=True), key=lambda t: -t[0])
    assert len(found) == 3 and set(found.source.tolist()) == {1}
    assert by_peak[0] == (1.0, 2)
    assert sorted(by_peak[1:]) == [(0.0, 0), (0.0, 0)]
    images = np.ones((1, 3, *shape), np.float32)
    first = ground_truth_and_random(lesions, index, images, 3, np.random.default_rng(0))
    assert first.source.tolist() == [0, 0, 2, 2, 2]
    assert first.cancer.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert all(index[0][tuple(c)] == 0 for c in first.centers[2:])  # random negatives avoid lesions


def test_losses() -> None:
    target = torch.zeros(1, 4, 8, 8)
    target[0, 1:3, 2:5, 2:5] = 1.0
    perfect = (target * 40.0 - 20.0)[:, None]
    bce, dice = localization_loss(perfect, target)
    assert float(bce) < 1e-6 and float(dice) < 1e-3
    logits = torch.zeros(1, 1, 4, 8, 8, requires_grad=True)
    zone_logits = torch.zeros(1, 3, 4, 8, 8, requires_grad=True)
    cancer = torch.zeros(3, requires_grad=True)
    category = torch.zeros(3, 4, requires_grad=True)
    terms = joint_loss(
        logits,
        zone_logits,
        cancer,
        category,
        cspca=target,
        zones=torch.zeros(1, 4, 8, 8, dtype=torch.long),
        has_zones=torch.tensor([False]),
        cancer_target=torch.tensor([1.0, 0.0, 0.0]),
        category_target=torch.tensor([2, -1, 0]),
        config=LossConfig(lambda_cls=2.0),
        cls_scale=1.0,
    )
    terms.total.backward()  # type: ignore[no-untyped-call]
    assert np.isfinite(float(terms.total.detach())) and terms.zone == 0.0
    assert cancer.grad is not None and float(cancer.grad.abs().sum()) > 0
    assert (
        category.grad is not None and float(category.grad[1].abs().sum()) == 0.0
    )  # unknown category ignored
    with pytest.raises(ValueError, match="lambda_cls"):
        LossConfig(lambda_cls=-1.0)
