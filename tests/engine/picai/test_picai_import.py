"""Importing PI-CAI U-Net fold checkpoints: the layout mapping, the artifact, and every refusal.

The folds here are built by MONAI's ``UNet`` itself (as picai_baseline builds it), small so that the tests
are quick; the full-size folds are imported in the equivalence tests (tests/engine/picai/test_picai_equivalence.py).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from lesion_engine.errors import CheckpointImportError, ModelArtifactError
from lesion_engine.model.model_card import read_any_card, read_card
from lesion_engine.model.picai_unet.card import DetectionModelCard
from lesion_engine.model.picai_unet.checkpoint import (
    PUBLISHED_CHECKPOINTS,
    import_picai_unet,
    read_fold_checkpoint,
)
from lesion_engine.model.picai_unet.engine import load_detection_artifact
from lesion_engine.model.picai_unet.network import PicaiUNet, PicaiUNetConfig, monai_key_map

SMALL = PicaiUNetConfig(channels=(4, 8, 16), strides=((2, 2, 2), (1, 2, 2)))


def monai_unet(config: PicaiUNetConfig, seed: int, num_res_units: int = 0) -> torch.nn.Module:
    """The network picai_baseline builds (MONAI's UNet with its defaults), for ``config``."""
    from monai.networks.nets.unet import UNet

    torch.manual_seed(seed)
    strides: Any = config.strides
    net: torch.nn.Module = UNet(
        spatial_dims=3,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        channels=config.channels,
        strides=strides,
        num_res_units=num_res_units,
    )
    return net.eval()


def save_folds(
    folder: Path, config: PicaiUNetConfig = SMALL, folds: range = range(5)
) -> list[torch.nn.Module]:
    folder.mkdir(parents=True, exist_ok=True)
    nets = []
    for fold in folds:
        net = monai_unet(config, seed=fold)
        torch.save({"model_state_dict": net.state_dict()}, folder / f"unet_F{fold}.pt")
        nets.append(net)
    return nets


class _Custom:
    def __init__(self) -> None:
        self.tensor = torch.zeros(2)


class _Lambda:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("lambda x: x",))


def test_key_map_matches_monai_layout() -> None:
    for config in (SMALL, PicaiUNetConfig()):
        with torch.device("meta"):
            theirs = monai_unet(config, seed=0).state_dict()
            ours = PicaiUNet(config).state_dict()
        mapping = monai_key_map(config)
        assert set(mapping) == set(ours)
        assert set(mapping.values()) == set(theirs)
        assert all(tuple(ours[k].shape) == tuple(theirs[v].shape) for k, v in mapping.items())


def test_imported_folds_compute_what_monai_computes(tmp_path: Path) -> None:
    nets = save_folds(tmp_path / "weights")
    card = import_picai_unet(tmp_path / "weights", tmp_path / "artifact", name="small", config=SMALL)
    assert card.architecture.folds == (0, 1, 2, 3, 4)
    folds, loaded = load_detection_artifact(tmp_path / "artifact")
    assert loaded == card
    images = torch.randn(2, 3, 8, 32, 32)
    with torch.inference_mode():
        for net, fold in zip(nets, folds, strict=True):
            assert torch.equal(net(images), fold(images)) or torch.allclose(
                net(images), fold(images), atol=1e-6
            )


def test_card_records_origin_licence_pipeline_and_sources(tmp_path: Path) -> None:
    save_folds(tmp_path / "weights")
    import_picai_unet(tmp_path / "weights", tmp_path / "artifact", name="small", version="2", config=SMALL)
    data = json.loads((tmp_path / "artifact" / "model.json").read_text())
    assert data["kind"] == "detection-map"
    assert "picai_unet_semi_supervised_gc_algorithm" in data["source"]["origin"]
    assert data["source"]["licence"].startswith("Apache-2.0")
    assert [c["fold"] for c in data["source"]["checkpoints"]] == [0, 1, 2, 3, 4]
    digests = {c["sha256"] for c in data["source"]["checkpoints"]}
    assert len(digests) == 5
    # Not the published weights (those are recognised by their git-lfs sha256).
    assert all(c["published"] is None for c in data["source"]["checkpoints"])
    assert not digests & set(PUBLISHED_CHECKPOINTS)
    assert pipeline_defaults_are_the_reference(data["pipeline"])
    pipeline = data["pipeline"]
    assert pipeline["spacing_zyx"] == [3.0, 0.5, 0.5]
    assert pipeline["matrix_zyx"] == [20, 256, 256]
    assert pipeline["normalization_percentile"] == 99.5
    assert pipeline["blur_sigma"] == 1.5
    assert pipeline["weak_candidate_divisor"] == 5.0
    assert pipeline["extraction"]["version"] == 1 and "dynamic" in pipeline["extraction"]["method"]
    assert "1,500" in data["training"]["data"]
    assert isinstance(read_any_card(tmp_path / "artifact"), DetectionModelCard)
    assert (tmp_path / "artifact" / "MODEL_CARD.md").read_text().count("| ") >= 5


def pipeline_defaults_are_the_reference(pipeline: dict[str, Any]) -> bool:
    return (
        pipeline["crop_resampling"] == "whole"
        and pipeline["diffusion_resampling"] == "reference"
        and pipeline["input_pixel_type"] == "dicom"
        and pipeline["flip_tta"] is True
        and pipeline["output_channel"] == 1
    )


def test_joint_model_readers_refuse_a_detection_model_clearly(tmp_path: Path) -> None:
    save_folds(tmp_path / "weights")
    import_picai_unet(tmp_path / "weights", tmp_path / "artifact", name="small", config=SMALL)
    with pytest.raises(ModelArtifactError, match="detection-map model"):
        read_card(tmp_path / "artifact")


def test_missing_fold_is_named(tmp_path: Path) -> None:
    save_folds(tmp_path / "weights", folds=range(4))
    with pytest.raises(CheckpointImportError, match=r"lacks fold\(s\) 4 \(unet_F4.pt"):
        import_picai_unet(tmp_path / "weights", tmp_path / "artifact", name="x", config=SMALL)
    assert not (tmp_path / "artifact" / "model.json").exists()
    # Naming the folds present imports them.
    card = import_picai_unet(
        tmp_path / "weights", tmp_path / "a2", name="x", folds=[0, 1, 2, 3], config=SMALL
    )
    assert card.architecture.folds == (0, 1, 2, 3)


def _write(path: Path, obj: Any) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: _write(p, {"model_state_dict": {}, "extra": _Custom()}),
            r"fold 2 \(unet_F2.pt\): refused: it holds .*_Custom, which only general unpickling could load",
        ),
        (
            lambda p: _write(p, {"model_state_dict": _Lambda()}),
            r"fold 2 \(unet_F2.pt\): refused: it holds eval, which only general unpickling",
        ),
        (
            lambda p: p.write_bytes(pickle.dumps({"model_state_dict": {}}, protocol=2)),
            r"fold 2 \(unet_F2.pt\): is truncated or not a torch checkpoint",
        ),
        (lambda p: p.write_bytes(b""), r"fold 2 \(unet_F2.pt\): is empty"),
        (
            lambda p: p.write_bytes(
                b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 127230211\n"
            ),
            r"fold 2 \(unet_F2.pt\): is a git-lfs pointer, not the weights: run `git lfs pull`",
        ),
        (
            lambda p: _write(p, {"optimizer": {"lr": torch.tensor(1.0)}}),
            r"fold 2 \(unet_F2.pt\): has no 'model_state_dict' \(found \['optimizer'\]\)",
        ),
    ],
    ids=["custom-class", "lambda", "plain-pickle", "empty", "lfs-pointer", "no-state-dict"],
)
def test_hostile_or_broken_fold_is_refused_naming_it(tmp_path: Path, make: Any, message: str) -> None:
    weights = tmp_path / "weights"
    save_folds(weights)
    make(weights / "unet_F2.pt")
    with pytest.raises(CheckpointImportError, match=message):
        import_picai_unet(weights, tmp_path / "artifact", name="x", config=SMALL)
    assert not (tmp_path / "artifact" / "model.safetensors").exists()


def test_truncated_fold_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    save_folds(weights)
    data = (weights / "unet_F1.pt").read_bytes()
    (weights / "unet_F1.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointImportError, match=r"fold 1 \(unet_F1.pt\): is truncated or not a torch checkpoint"
    ):
        import_picai_unet(weights, tmp_path / "artifact", name="x", config=SMALL)


def test_a_pickle_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    weights = tmp_path / "weights"
    save_folds(weights)

    class _Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    _write(weights / "unet_F0.pt", {"model_state_dict": _Payload()})
    with pytest.raises(CheckpointImportError, match="refused"):
        import_picai_unet(weights, tmp_path / "artifact", name="x", config=SMALL)
    assert not marker.exists()


def test_fold_of_another_architecture_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    save_folds(weights)
    other = PicaiUNetConfig(channels=(4, 8, 32), strides=SMALL.strides)
    torch.save({"model_state_dict": monai_unet(other, seed=9).state_dict()}, weights / "unet_F3.pt")
    with pytest.raises(
        CheckpointImportError,
        match=r"fold 3 \(unet_F3.pt\): tensor model\.1\.submodule\.2\.conv\.weight has shape \(40, 4, 3, 3, 3\), "
        r"the architecture needs \(24, 4, 3, 3, 3\)",
    ):
        import_picai_unet(weights, tmp_path / "artifact", name="x", config=SMALL)
    residual = monai_unet(SMALL, seed=1, num_res_units=2)
    torch.save({"model_state_dict": residual.state_dict()}, weights / "unet_F3.pt")
    with pytest.raises(
        CheckpointImportError,
        match=r"fold 3 \(unet_F3.pt\): is not the PI-CAI baseline U-Net.*missing tensors",
    ):
        import_picai_unet(weights, tmp_path / "artifact", name="x", config=SMALL)


def test_non_float32_and_non_finite_tensors_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    nets = save_folds(weights)
    state = nets[0].state_dict()
    state["model.0.conv.bias"] = state["model.0.conv.bias"].double()
    torch.save({"model_state_dict": state}, weights / "unet_F0.pt")
    with pytest.raises(CheckpointImportError, match=r"tensor model\.0\.conv\.bias is torch\.float64"):
        read_fold_checkpoint(weights / "unet_F0.pt", 0, SMALL)
    state["model.0.conv.bias"] = torch.full_like(nets[0].state_dict()["model.0.conv.bias"], float("nan"))
    torch.save({"model_state_dict": state}, weights / "unet_F0.pt")
    with pytest.raises(
        CheckpointImportError, match=r"tensor model\.0\.conv\.bias holds NaN or infinite values"
    ):
        read_fold_checkpoint(weights / "unet_F0.pt", 0, SMALL)


def test_changed_artifact_weights_are_refused_at_load(tmp_path: Path) -> None:
    save_folds(tmp_path / "weights")
    import_picai_unet(tmp_path / "weights", tmp_path / "artifact", name="x", config=SMALL)
    weights = tmp_path / "artifact" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match="changed or corrupted after import"):
        load_detection_artifact(tmp_path / "artifact")


def test_cli_import_writes_the_artifact_and_says_why_it_refuses(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    save_folds(weights, config=PicaiUNetConfig(), folds=range(1))
    done = subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", "models", "import", "picai-unet", str(weights),
         "--name", "picai-f0", "--folds", "0", "--crop-resampling", "crop", "--out", str(tmp_path / "artifact")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["kind"] == "detection-map" and summary["folds"] == [0]
    assert summary["pipeline"] == {"crop_resampling": "crop", "diffusion_resampling": "reference"}
    assert isinstance(read_any_card(tmp_path / "artifact"), DetectionModelCard)
    refused = subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", "models", "import", "picai-unet", str(weights),
         "--name", "picai", "--out", str(tmp_path / "other")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "lacks fold(s) 1, 2, 3, 4" in refused.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", "models", "import", "picai-unet", str(weights), "--name", "x"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert usage.returncode == 2 and "--out" in usage.stderr


def test_detection_artifact_zip_is_accepted_by_the_node_registry(tmp_path: Path) -> None:
    from orthanc_plugin.cli.models import artifact_zip
    from orthanc_plugin.models.registry import ModelRegistry

    save_folds(tmp_path / "weights")
    import_picai_unet(tmp_path / "weights", tmp_path / "artifact", name="small", config=SMALL)
    data = artifact_zip(tmp_path / "artifact")
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["MODEL_CARD.md", "model.json", "model.safetensors"]
    registry = ModelRegistry(tmp_path / "models")
    model = registry.add_zip("picai-small", data, "admin")
    assert model.identity.startswith("small:1:")
    assert isinstance(read_any_card(tmp_path / "models" / "picai-small"), DetectionModelCard)
