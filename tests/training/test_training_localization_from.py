"""``lesion-ai train --localization-from``: our classifier trained jointly on one fold of an imported PI-CAI
U-Net (frozen or fine-tuned), exported as a regular joint model that the engine runs, ``evaluate`` scores
and a node runs in shadow.

The imported model here is made of small MONAI folds (as picai_baseline builds them) with a small PI-CAI
pipeline (20 x 96 x 96 at 3 x 1 x 1 mm), and the data are three small synthetic studies, so that the whole
chain runs in about a minute; the full-size PI-CAI crop (20 x 256 x 256 at 3 x 0.5 x 0.5 mm) is checked
on one case. Nothing here says anything about accuracy.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from lesion_engine.cli.main import main
from lesion_engine.engine import Engine, load_engine
from lesion_engine.intake.preprocess import prepare_study
from lesion_engine.model.artifact import load_artifact, read_card
from lesion_engine.model.model_card import CARD_FILE, WEIGHTS_FILE, model_identity
from lesion_engine.model.model_config import (
    PICAI_UNET_FIXED,
    ClassificationNetConfig,
    LocalizationNetConfig,
    PreprocessConfig,
)
from lesion_engine.model.model_input import to_model_input, to_model_input_tensor
from lesion_engine.model.networks import JointModel, PicaiLocalizationNet, picai_unet_config
from lesion_engine.model.picai_unet.checkpoint import import_picai_unet
from lesion_engine.model.picai_unet.config import PicaiPipeline
from lesion_engine.model.picai_unet.engine import load_detection_artifact
from lesion_engine.model.picai_unet.network import PicaiUNetConfig
from lesion_engine.model.picai_unet.pipeline import crop_grid, network_input, role_images
from tests.engine.picai.test_picai_import import SMALL, save_folds
from tests.support.model_helpers import write_tiny_artifact
from tests.support.training_support import make_synthetic
from training.datasets.dataset import DataSpec
from training.datasets.synthetic_data import synthetic_case
from training.fit.localization_start import LocalizationStart, classifier_patch, default_crop
from training.fit.train import TrainConfig, build_model, train

SMALL_PIPELINE = PicaiPipeline(spacing_zyx=(3.0, 1.0, 1.0), matrix_zyx=(20, 96, 96))
TRAIN_ARGS = (
    "--epochs", "2", "--samples-per-epoch", "4", "--batch-size", "2", "--crop", "8", "48", "48",
    "--cls-channels", "4", "8", "--threads", "2", "--no-progress", "--seed", "3", "--max-steps", "3",
)  # fmt: skip


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Five small MONAI folds imported with the small pipeline, and a (tiny, random) joint model artifact."""
    root = tmp_path_factory.mktemp("localization-from")
    save_folds(root / "weights")
    import_picai_unet(
        root / "weights", root / "picai", name="picai-small", config=SMALL, pipeline=SMALL_PIPELINE
    )
    write_tiny_artifact(root / "joint")
    return {"root": root, "data": root / "data", "picai": root / "picai", "joint": root / "joint"}


@pytest.fixture(scope="module")
def setup(models: dict[str, Path]) -> dict[str, Path]:
    """:func:`models` and three small synthetic studies (csPCa + BPH; none; indolent + prostatitis)."""
    make_synthetic(models["data"])
    return models


def _fold_state(artifact: Path, fold: int) -> dict[str, torch.Tensor]:
    folds, card = load_detection_artifact(artifact)
    return folds[list(card.architecture.folds).index(fold)].state_dict()


def _loc_state(artifact: Path) -> dict[str, torch.Tensor]:
    model, _ = load_artifact(artifact)
    assert isinstance(model.loc, PicaiLocalizationNet)
    return model.loc.unet.state_dict()


def _train(setup: dict[str, Path], run: Path, *extra: str) -> dict[str, Any]:
    done = _cli(
        "train", "--data", str(setup["data"]), "--out", str(run), "--cache-dir", str(setup["root"] / "cache"),
        "--localization-from", str(setup["picai"]), *TRAIN_ARGS, *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    card: dict[str, Any] = json.loads((run / "artifact" / CARD_FILE).read_text())
    return card


# -- the exported model: frozen and fine-tuned ----------------------------------------------------------------
@pytest.mark.slow
def test_frozen_keeps_the_imported_fold_and_the_model_runs_in_the_engine_and_in_shadow(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "frozen"
    card = _train(setup, run, "--localization", "frozen", "--localization-fold", "2", "--name", "on-picai")
    # The localization network is the imported fold 2, bit for bit; the classifier learnt.
    fold = _fold_state(setup["picai"], 2)
    trained = _loc_state(run / "artifact")
    assert set(trained) == set(fold) and all(torch.equal(trained[k], fold[k]) for k in fold)
    assert not all(torch.equal(trained[k], v) for k, v in _fold_state(setup["picai"], 0).items())
    saved = json.loads((run / "checkpoints" / "last.json").read_text())["param_groups"]
    assert [g["lr_scale"] for g in saved] == [1.0]  # the classifier's parameters only
    config = TrainConfig(
        data=DataSpec(setup["data"]),
        out_dir=tmp_path / "unused",
        localization_from=LocalizationStart.from_artifact(setup["picai"], fold=2, mode="frozen"),
        preprocess=PreprocessConfig.picai_crop(SMALL_PIPELINE),
        cls_channels=(4, 8),
        warmup_epochs=0,
        seed=3,
    )
    initial = build_model(config).cls.state_dict()
    model, _ = load_artifact(run / "artifact")
    assert any(not torch.equal(initial[k], v) for k, v in model.cls.state_dict().items())
    imported = read_card(run / "artifact")
    record = card["training"]["localization_from"]
    picai = json.loads((setup["picai"] / CARD_FILE).read_text())
    assert record["name"] == "picai-small" and record["version"] == picai["version"]
    assert record["weights_sha256"] == picai["weights_sha256"]
    assert (record["fold"], record["mode"], record["lr_scale"]) == (2, "frozen", None)
    assert card.get("kind", "joint") == "joint" and imported.label_map["zones"] == []
    assert card["preprocessing"]["kind"] == "picai" and card["preprocessing"]["size_zyx"] == [20, 96, 96]
    assert card["architecture"]["localization"]["network"] == "picai-unet"
    assert card["architecture"]["classification"]["patch_size"] == [8, 32, 32]
    steps = (run / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 3 and all(row.split(",")[5] == "0.0" for row in steps[1:])  # no zone loss
    _engine_runs_it(setup, run / "artifact")
    _node_runs_it_in_shadow(setup, run / "artifact", tmp_path / "node")


@pytest.mark.slow
def test_fine_tune_trains_the_imported_fold_and_evaluate_scores_the_export(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    run, export = tmp_path / "fine-tune", tmp_path / "store" / "model"
    card = _train(setup, run, "--export", str(export), "--localization-lr-scale", "0.5")
    fold = _fold_state(setup["picai"], 0)
    trained = _loc_state(export)
    assert set(trained) == set(fold)
    changed = [k for k in fold if not torch.equal(trained[k], fold[k])]
    assert len(changed) == len(fold)  # every tensor of the U-Net learnt
    record = card["training"]["localization_from"]
    assert (record["fold"], record["mode"], record["lr_scale"]) == (0, "fine-tune", 0.5)
    assert (export / WEIGHTS_FILE).read_bytes() == (run / "artifact" / WEIGHTS_FILE).read_bytes()
    # The learning rate of the U-Net's group is half the classifier's.
    saved = json.loads((run / "checkpoints" / "last.json").read_text())["param_groups"]
    assert [g["lr_scale"] for g in saved] == [1.0, 0.5]
    assert saved[1]["lr"] == pytest.approx(saved[0]["lr"] * 0.5)

    out = tmp_path / "eval"
    done = _cli("evaluate", "--data", str(setup["data"]), "--model", str(export), "--out", str(out),
                "--device", "cpu", "--threads", "2", "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == 3 and metrics["model"]["name"] == "lesion-ai-joint"
    for key in ("auroc", "AP", "ranking_score", "sensitivity_at_0.5_fp", "sensitivity_at_1_fp"):
        assert key in metrics
    assert 0.0 <= metrics["auroc"] <= 1.0

    # A resumed run must start from the same imported model in the same mode.
    frozen = TrainConfig(
        data=DataSpec(setup["data"]),
        out_dir=run,
        localization_from=LocalizationStart.from_artifact(setup["picai"], mode="frozen"),
        preprocess=PreprocessConfig.picai_crop(SMALL_PIPELINE),
        cls_channels=(4, 8),
        crop_size=(8, 48, 48),
        warmup_epochs=0,
        progress=False,
    )
    with pytest.raises(ValueError, match="another localization_from"):
        train(frozen, resume=True, argv=["test"])


def _engine_runs_it(setup: dict[str, Path], artifact: Path) -> None:
    """The normal engine runs the export; its input is the PI-CAI U-Net's own input, on any device path."""
    engine = load_engine(artifact, "cpu", threads=2)
    assert isinstance(engine, Engine) and engine.card.preprocessing.kind == "picai"
    assert engine.warm_up() > 0
    prepared = prepare_study(sorted(setup["data"].iterdir())[0] / "dicom")
    pipeline = engine.card.preprocessing.picai_pipeline()
    expected, crop = network_input(role_images(prepared, pipeline), pipeline)
    cpu = to_model_input(prepared, engine.card.preprocessing)
    assert np.array_equal(cpu.images, expected)
    coverage = sitk.GetArrayFromImage(cpu.grid).astype(bool)
    # The model grid lies on our T2W's geometry (the inputs are read as SimpleITK reads the series).
    ours = crop_grid(prepared.t2w, pipeline).grid
    assert cpu.grid.GetSpacing() == ours.GetSpacing() and cpu.grid.GetOrigin() == ours.GetOrigin()
    assert np.allclose(cpu.grid.GetOrigin(), crop.grid.GetOrigin(), atol=1e-6)
    assert 0 < coverage.sum() < coverage.size  # the crop pads beyond the small T2W's slices
    tensors = to_model_input_tensor(prepared, engine.card.preprocessing, "cpu")
    assert torch.equal(tensors.images, torch.from_numpy(expected))
    assert torch.equal(tensors.coverage, torch.from_numpy(coverage))
    result = engine.run(prepared)
    assert result.model["name"] == "on-picai" and result.localization_map.GetSize() == prepared.t2w.GetSize()
    assert all(lesion.category in (2, 3, 4, 5) for lesion in result.lesions)
    on_device = Engine(engine.model, engine.card, "cpu", threads=2, resample_on_device=True).run(prepared)
    assert [lesion.probability for lesion in on_device.lesions] == pytest.approx(
        [lesion.probability for lesion in result.lesions], abs=1e-5
    )
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(on_device.localization_map),
        sitk.GetArrayFromImage(result.localization_map),
        atol=1e-5,
    )


def _node_runs_it_in_shadow(setup: dict[str, Path], artifact: Path, home: Path) -> None:
    """Registered on a (fake) node as a shadow model, it runs after the active model on a worker's job."""
    from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
    from orthanc_plugin.jobqueue import JobPayload, JobState, NewJob, QueuePolicy, open_queue, sqlite_url
    from orthanc_plugin.models.shadow import ShadowStore
    from orthanc_plugin.node.settings import WorkerSettings
    from orthanc_plugin.worker.model_runs import ModelRuns
    from orthanc_plugin.worker.processing import EngineProcessor, ProcessorSettings
    from orthanc_plugin.worker.runner import Worker, WorkerOptions
    from tests.support.fake_orthanc import fake_node

    home.mkdir()
    headers = {CSRF_HEADER: CSRF_VALUE, "Authorization": "Basic YWxpY2U6c2VjcmV0"}
    with fake_node(home, processor=None) as (fake, plugin):
        added = fake.rest("POST", "/lesion-ai/models/on-picai", _zip(artifact), headers=headers)
        assert added.status == 201, added.body
        on = fake.rest("POST", "/lesion-ai/models/on-picai/shadow", b'{"enabled": true}', headers=headers)
        assert on.status == 200 and on.json()["shadow"] == ["on-picai"]
        rest = _StudyRest(sorted(setup["data"].iterdir())[0] / "dicom")
        settings = ProcessorSettings(threads=2)
        active = EngineProcessor(ProcessorSettings(model=str(setup["joint"]), threads=2))
        models = ModelRuns(plugin.models, settings, None, active)
        queue = open_queue(
            sqlite_url(home / "jobs.sqlite"),
            QueuePolicy(lease_s=60, max_attempts=1, backoff_base_s=0, backoff_max_s=0),
        )
        identity = model_identity(str(setup["joint"]))
        payload = JobPayload(study="st1", rule="prostate-mr", series=tuple(rest.series), model=identity)
        queue.enqueue(NewJob("k1", "st1", "prostate-mr", identity, 0, payload.to_json()))
        options = WorkerOptions.from_settings(
            WorkerSettings(queue="sqlite:///unused", heartbeat_s=30), owner="w"
        )
        job = queue.claim("w")
        assert job is not None and Worker(queue, rest, active, options, models).run_job(job) is JobState.DONE
        queue.close()
        # The active model's SEG, SR, result summary and Key Object Selection, stored into the study.
        modalities = sorted(
            str(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).Modality) for b in rest.stored
        )
        assert modalities == ["KO", "OT", "SEG", "SR"]
        store = ShadowStore(plugin.settings.models_folder / "on-picai")
        assert store.studies() == [rest.study_uid]
        kept = json.loads((store.shadow / f"{rest.study_uid}.json").read_text())
        assert kept["shadow_model"] == model_identity(str(artifact)) and kept["active_model"] == identity
        kept_files = sorted((store.shadow / rest.study_uid).iterdir())
        shadow_modalities = {str(pydicom.dcmread(f, stop_before_pixels=True).Modality) for f in kept_files}
        assert [f.name for f in kept_files] == [f"{i:02d}.dcm" for i in range(1, len(kept_files) + 1)]
        assert {"SR", "OT"} <= shadow_modalities  # the shadow model's report and its summary image
        listed = fake.rest("GET", "/lesion-ai/models/on-picai").json()
        assert listed["status"] == "shadow" and listed["shadow_studies"] == 1
        assert listed["card"]["training"]["localization_from"]["mode"] == "frozen"


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in (CARD_FILE, WEIGHTS_FILE):
            archive.write(folder / name, name)
    return buffer.getvalue()


class _StudyRest:
    """Orthanc's REST API as a worker sees it, holding one real study (one Orthanc series per DICOM series)."""

    def __init__(self, folder: Path) -> None:
        from tests.support.node_fakes import FakeRest

        self._base = FakeRest()
        self.series: dict[str, list[str]] = {}
        files: dict[str, bytes] = {}
        for n, path in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
            data = path.read_bytes()
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            self.study_uid = str(ds.StudyInstanceUID)
            self.series.setdefault(str(ds.SeriesInstanceUID), []).append(f"i{n}")
            files[f"i{n}"] = data
        self._base.studies = {"st1": list(self.series)}
        self._base.series = dict(self.series)
        self._base.files = files
        self._base.study_uids = {"st1": self.study_uid}
        self.stored: list[bytes] = []

    def get_json(self, path: str) -> Any:
        return self._base.get_json(path)

    def get_bytes(self, path: str) -> bytes:
        return self._base.get_bytes(path)

    def post_json(self, path: str, body: Any) -> Any:
        return self._base.post_json(path, body)

    def get_versioned(self, path: str) -> tuple[bytes, str | None]:
        return self._base.get_versioned(path)

    def put_text(self, path: str, text: str, if_match: str | None = None) -> bytes:
        return self._base.put_text(path, text, if_match)

    def post_bytes(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        assert path == "/instances"
        self.stored.append(body)
        return {"ID": f"r{len(self.stored)}", "ParentSeries": "rs1", "Status": "Success"}


# -- the full-size PI-CAI crop ----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_full_size_crop_gives_cases_and_defaults_on_its_grid(
    tmp_path: Path, setup: dict[str, Path]
) -> None:
    save_folds(tmp_path / "weights", folds=range(1))
    import_picai_unet(tmp_path / "weights", tmp_path / "picai", name="full-crop", folds=[0], config=SMALL)
    start = LocalizationStart.from_artifact(tmp_path / "picai")
    assert start.preprocess.spacing_zyx == (3.0, 0.5, 0.5) and start.preprocess.size_zyx == (20, 256, 256)
    assert classifier_patch(start.preprocess) == (8, 64, 64)  # 24 x 32 x 32 mm, as the default patch
    assert default_crop(start.preprocess, (4, 32, 32), (16, 96, 96)) == (16, 192, 192)
    config = TrainConfig(
        data=DataSpec(setup["data"]),
        out_dir=tmp_path / "run",
        localization_from=start,
        preprocess=start.preprocess,
        warmup_epochs=0,
        crop_size=(16, 192, 192),
    )
    assert config.cls_config().patch_size == (8, 64, 64) and config.loc_config().num_zones == 0
    # A training case is built on the crop, with the engine's own input and the labels on the crop grid.
    case_dir = sorted(setup["data"].iterdir())[0]
    case = synthetic_case(case_dir, start.preprocess)
    prepared = prepare_study(case_dir / "dicom")
    expected, crop = network_input(role_images(prepared, PicaiPipeline()), PicaiPipeline())
    assert case.images.shape == (3, 20, 256, 256) and np.array_equal(case.images, expected)
    assert case.has_zones and {1, 2} <= set(np.unique(case.zones).tolist())
    cancers = [lesion for lesion in case.lesions if lesion.kind == "cspca"]
    assert len(cancers) == 1 and int((case.cspca > 0).sum()) == cancers[0].voxels
    centre = crop.grid.TransformContinuousIndexToPhysicalPoint(cancers[0].center_zyx[::-1])
    truth = json.loads((case_dir / "truth.json").read_text())
    cspca = next(lesion for lesion in truth["lesions"] if lesion["kind"] == "cspca")
    assert np.linalg.norm(np.subtract(centre, cspca["center_lps_mm"])) < 3.0


# -- refusals and settings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LocalizationNetConfig(network="picai-unet"), "no zonal head: num_zones must be 0, got 3"),
        (
            lambda: LocalizationNetConfig.picai_unet((4, 8), ((2, 2, 2),), lesion_channel=2),
            r"lesion_channel must be one of the 2 output channels \(0..1\), got 2",
        ),
        (
            lambda: LocalizationNetConfig.picai_unet((4, 8), ((3, 2, 2),)),
            "three values of 1 or 2, got",
        ),
        (lambda: LocalizationNetConfig.picai_unet((4,), ()), "needs at least two levels"),
        (lambda: LocalizationNetConfig(out_channels=2), "apply to the 'picai-unet' network only"),
        (lambda: LocalizationNetConfig(network="resnet"), "network must be one of"),
        (
            lambda: PreprocessConfig(normalization_percentile=99.0),
            "normalization_percentile apply to the 'picai' preprocessing only",
        ),
        (
            lambda: PreprocessConfig(kind="picai", hbv_source="native"),
            "adc_scale and hbv_source apply to the 'model-grid' preprocessing only",
        ),
        (
            lambda: PreprocessConfig(kind="picai", normalization_percentile=30.0),
            r"normalization_percentile must be in \[50.0, 100.0\]",
        ),
        (
            lambda: PreprocessConfig(kind="picai", diffusion_resampling="nearest"),
            "diffusion_resampling must be",
        ),
        (lambda: PreprocessConfig(kind="crop"), "kind must be one of"),
        (lambda: PreprocessConfig().picai_pipeline(), "is not the PI-CAI crop"),
    ],
)
def test_config_validation_messages(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_configs_round_trip_and_the_default_cards_are_unchanged() -> None:
    assert "network" not in LocalizationNetConfig().to_dict()
    assert set(PreprocessConfig().to_dict()) == {
        "spacing_zyx",
        "size_zyx",
        "adc_scale",
        "hbv_source",
        "channels",
    }
    loc = LocalizationNetConfig.picai_unet((4, 8, 16), ((2, 2, 2), (1, 2, 2)))
    assert LocalizationNetConfig.from_dict(loc.to_dict()) == loc and loc.divisor == (2, 4, 4)
    # The card's architecture is the PI-CAI U-Net's, as its detection-map card states it.
    unet = PicaiUNetConfig(channels=(4, 8, 16), strides=((2, 2, 2), (1, 2, 2)))
    assert {
        k: v for k, v in loc.to_dict().items() if k not in ("lesion_channel", "num_zones")
    } == unet.to_dict()
    assert picai_unet_config(loc) == unet and set(PICAI_UNET_FIXED) < set(unet.to_dict())
    with pytest.raises(ValueError, match=r"dropout must be 0\.0"):
        LocalizationNetConfig.from_dict({**loc.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="unknown architecture arguments: extra"):
        LocalizationNetConfig.from_dict({**loc.to_dict(), "extra": 1})
    crop = PreprocessConfig.picai_crop(PicaiPipeline())
    assert PreprocessConfig.from_dict(crop.to_dict()) == crop and crop.picai_pipeline() == PicaiPipeline()
    assert crop == PreprocessConfig(kind="picai", spacing_zyx=(3.0, 0.5, 0.5), size_zyx=(20, 256, 256))


def test_classification_gradients_reach_the_imported_unet_through_the_map_unless_frozen() -> None:
    loc = LocalizationNetConfig.picai_unet((4, 8, 16), ((2, 2, 2), (1, 2, 2)))
    cls = ClassificationNetConfig(channels=(4, 8), patch_size=(4, 8, 8))
    images = torch.randn(1, 3, 8, 16, 16)
    centers, batch_index = torch.tensor([[4, 8, 8]]), torch.tensor([0])
    for detach, frozen in ((False, False), (True, False), (False, True)):
        torch.manual_seed(0)
        model = JointModel(loc, cls, detach_map=detach)
        if frozen:
            model.freeze_localization()
        model.train()
        assert model.loc.training is not frozen and model.cls.training
        out = model(images, centers, batch_index)
        assert out.zone_logits is None and tuple(out.loc_logits.shape) == (1, 1, 8, 16, 16)
        out.cancer_logits.sum().backward()
        grads = [p.grad for p in model.loc.parameters()]
        reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert reached is (not detach and not frozen)


def test_the_start_refuses_what_is_not_a_detection_model_or_not_its_fold(models: dict[str, Path]) -> None:
    with pytest.raises(
        ValueError, match=r"jointly trained model \(kind .joint.\), not a detection-map model"
    ):
        LocalizationStart.from_artifact(models["joint"])
    with pytest.raises(ValueError, match=r"holds fold\(s\) 0, 1, 2, 3, 4; fold 7 is not one of them"):
        LocalizationStart.from_artifact(models["picai"], fold=7)
    with pytest.raises(ValueError, match="is not a model artifact"):
        LocalizationStart.from_artifact(models["root"])
    with pytest.raises(ValueError, match="mode must be one of"):
        LocalizationStart.from_artifact(models["picai"], mode="thawed")
    with pytest.raises(ValueError, match=r"learning-rate scale must be in \(0, 1\]"):
        LocalizationStart.from_artifact(models["picai"], lr_scale=0.0)
    start = LocalizationStart.from_artifact(models["picai"], mode="frozen")
    base: dict[str, Any] = {
        "data": DataSpec(models["data"]),
        "out_dir": models["root"] / "unused",
        "localization_from": start,
        "preprocess": start.preprocess,
        "warmup_epochs": 0,
        "crop_size": (8, 48, 48),
    }
    for changes, message in (
        ({"warmup_epochs": 1}, "warmup_epochs must be 0 with a frozen localization network"),
        ({"detach_map": True}, "detach_map contradicts a frozen localization network"),
        ({"loc_channels": (4, 8)}, "loc_channels does not apply"),
        ({"preprocess": PreprocessConfig()}, "must be the imported model's PI-CAI crop"),
        ({"crop_size": (8, 50, 48)}, r"must be a multiple of the network's divisor \(2, 4, 4\)"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**{**base, **changes})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--loc-channels", "4", "8"), "--loc-channels does not apply with --localization-from"),
        (("--zone-weight", "1"), "--zone-weight does not apply with --localization-from"),
        (("--localization", "frozen", "--warmup-epochs", "1"), "warmup_epochs must be 0 with a frozen"),
        (
            ("--localization", "frozen", "--localization-lr-scale", "0.5"),
            "applies to --localization fine-tune",
        ),
        (("--localization-fold", "5"), "holds fold(s) 0, 1, 2, 3, 4; fold 5 is not one of them"),
    ],
)
def test_cli_refuses_options_that_contradict_the_import(
    models: dict[str, Path], args: Sequence[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["train", "--data", str(models["data"]), "--localization-from", str(models["picai"]), *args]
    )
    assert status == 2 and message in capsys.readouterr().err.replace("\n", " ")


def test_cli_refuses_a_joint_model_and_localization_options_without_an_import(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["train", "--data", str(models["data"]), "--localization-from", str(models["joint"])])
    assert status == 2 and "not a detection-map model" in capsys.readouterr().err
    status = main(["train", "--data", str(models["data"]), "--localization", "frozen"])
    assert status == 2 and "--localization need(s) --localization-from ARTIFACT" in capsys.readouterr().err
    from training import cli
    from training.fit.localization_start import LOCALIZATION_MODES

    assert cli.LOCALIZATION_MODES == LOCALIZATION_MODES
