"""Importing a PI-CAI nnU-Net: the artifact, its card, the CLI, the node's registry and every refusal.

The folds are in exactly nnU-Net v1's format, written by nnU-Net's own trainer
(:mod:`tests.oracles.picai_nnunet_reference`, cached). Each broken fold is a copy of a good model folder with one file
changed: missing, truncated, holding a lambda, or of another architecture. Each refusal names the fold and
the file or tensor, and nothing is written.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lesion_engine.engine import load_engine
from lesion_engine.errors import CheckpointImportError, ModelArtifactError
from lesion_engine.model.model_card import read_any_card, read_card
from lesion_engine.model.picai_nnunet.card import NnunetModelCard
from lesion_engine.model.picai_nnunet.checkpoint import import_picai_nnunet
from lesion_engine.model.picai_nnunet.engine import NnunetDetectionEngine, load_nnunet_artifact
from lesion_engine.model.picai_unet.engine import load_detection_artifact
from lesion_engine.model.result_types import ModelInfo
from tests.oracles.picai_nnunet_reference import (
    NnunetFolds,
    nnunet_folds_fixture,  # noqa: F401 - the session fixture
)

pytestmark = [pytest.mark.slow]


class _Lambda:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("lambda x: x",))


def _copy(folds: NnunetFolds, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(folds.model_dir, target)
    return target


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lesion_engine.cli", "models", "import", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def _own_checkpoint(path: Path) -> dict[str, Any]:
    # Our own test checkpoint, written by nnU-Net's trainer in this session: safe to unpickle here.
    data: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return data


def test_import_writes_a_self_describing_artifact_the_engine_loader_runs(
    nnunet_folds: NnunetFolds, tmp_path: Path
) -> None:
    card = import_picai_nnunet(nnunet_folds.model_dir, tmp_path / "artifact", name="nn", version="s1")
    assert card.architecture.folds == (0, 1, 2, 3, 4)
    data = json.loads((tmp_path / "artifact" / "model.json").read_text())
    assert data["kind"] == "detection-map" and data["architecture"]["network"] == "picai-nnunet"
    assert "picai_nnunet_semi_supervised_gc_algorithm" in data["source"]["origin"]
    assert data["source"]["licence"].startswith("CC BY-NC-SA 4.0")
    assert [c["fold"] for c in data["source"]["checkpoints"]] == [0, 1, 2, 3, 4]
    files = {Path(c["file"]).name for c in data["source"]["pickles"]}
    assert files == {"model_best.model.pkl", "plans.pkl"}
    assert all(len(c["sha256"]) == 64 for c in data["source"]["checkpoints"] + data["source"]["pickles"])
    assert data["pipeline"]["mirroring"] is True and data["pipeline"]["step_size"] == 0.5
    assert "1,500" in data["training"]["data"]
    assert "CC BY-NC-SA" in (tmp_path / "artifact" / "MODEL_CARD.md").read_text()
    assert isinstance(read_any_card(tmp_path / "artifact"), NnunetModelCard)
    with pytest.raises(ModelArtifactError):
        read_card(tmp_path / "artifact")
    with pytest.raises(ModelArtifactError):
        load_detection_artifact(tmp_path / "artifact")
    engine = load_engine(tmp_path / "artifact", "cpu")
    assert isinstance(engine, NnunetDetectionEngine)
    assert engine.kind == "detection-map" and engine.gland is None and not engine.gland_settings.enabled
    assert engine.model_info == ModelInfo("nn", "s1", card.weights_sha256)
    # The artifact holds exactly the checkpoints' network tensors.
    folds, _ = load_nnunet_artifact(tmp_path / "artifact")
    state = _own_checkpoint(nnunet_folds.model_dir / "fold_3" / "model_best.model")["state_dict"]
    for key, tensor in folds[3].state_dict().items():
        assert torch.equal(tensor, state[key].float()), key


def test_cli_imports_and_the_node_registry_accepts_it(nnunet_folds: NnunetFolds, tmp_path: Path) -> None:
    from orthanc_plugin.cli.models import artifact_zip
    from orthanc_plugin.models.registry import ModelRegistry

    done = _cli("picai-nnunet", str(nnunet_folds.model_dir), "--name", "picai-nn", "--folds", "0,1",
                "--out", str(tmp_path / "artifact"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["network"] == "picai-nnunet" and summary["folds"] == [0, 1]
    assert len(summary["checkpoints"]) == 2
    data = artifact_zip(tmp_path / "artifact")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["MODEL_CARD.md", "model.json", "model.safetensors"]
    model = ModelRegistry(tmp_path / "models").add_zip("picai-nn", data, "admin")
    assert model.identity.startswith("picai-nn:1:")
    assert isinstance(read_any_card(tmp_path / "models" / "picai-nn"), NnunetModelCard)
    # U-Net settings do not apply to an nnU-Net, and are refused rather than ignored.
    wrong = _cli("picai-nnunet", str(nnunet_folds.model_dir), "--name", "x", "--crop-resampling", "crop",
                 "--out", str(tmp_path / "other"))  # fmt: skip
    assert wrong.returncode == 2 and "picai-unet pipeline" in wrong.stderr
    assert not (tmp_path / "other").exists()


def _missing(model: Path) -> None:
    shutil.rmtree(model / "fold_3")


def _truncated(model: Path) -> None:
    path = model / "fold_2" / "model_best.model"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncated_pickle(model: Path) -> None:
    path = model / "fold_2" / "model_best.model.pkl"
    path.write_bytes(path.read_bytes()[:100])


def _lambda(model: Path) -> None:
    path = model / "fold_4" / "model_best.model"
    data = _own_checkpoint(path)
    data["hook"] = _Lambda()
    torch.save(data, path)


def _other_architecture(model: Path) -> None:
    path = model / "fold_1" / "model_best.model"
    data = _own_checkpoint(path)
    key = next(k for k in data["state_dict"] if k.endswith("weight") and data["state_dict"][k].ndim == 5)
    weight = data["state_dict"][key]
    data["state_dict"][key] = torch.zeros((weight.shape[0] * 2, *weight.shape[1:]))
    torch.save(data, path)


def _renamed_tensors(model: Path) -> None:
    path = model / "fold_0" / "model_best.model"
    data = _own_checkpoint(path)
    data["state_dict"] = {f"encoder.{k}": v for k, v in data["state_dict"].items()}
    torch.save(data, path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, r"fold 3: fold_3/model_best\.model is missing"),
        (_truncated, r"fold 2: model_best\.model is truncated or not a torch checkpoint"),
        (_truncated_pickle, r"fold 2: model_best\.model\.pkl is truncated or not a plain pickle"),
        (_lambda, r"fold 4: model_best\.model refused global (builtins\.)?eval"),
        (_other_architecture, r"fold 1: tensor \S+\.weight has shape \[\d+, "),
        (_renamed_tensors, r"fold 0: model_best\.model does not fit the network of its plans: missing "),
    ],
    ids=["missing", "truncated", "truncated-pickle", "lambda", "other-architecture", "renamed"],
)
def test_broken_folds_are_refused_naming_the_fold(
    nnunet_folds: NnunetFolds, tmp_path: Path, make: Callable[[Path], None], message: str
) -> None:
    model = _copy(nnunet_folds, tmp_path)
    make(model)
    with pytest.raises(CheckpointImportError, match=message):
        import_picai_nnunet(model, tmp_path / "out", name="x")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    done = _cli("picai-nnunet", str(model), "--name", "x", "--out", str(tmp_path / "cli"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    refusal = done.stderr.strip().splitlines()[-1]
    assert refusal.startswith("lesion-ai models import: fold "), done.stderr


def test_changed_artifact_weights_are_refused_at_load(nnunet_folds: NnunetFolds, tmp_path: Path) -> None:
    import_picai_nnunet(nnunet_folds.model_dir, tmp_path / "artifact", name="x", folds=[0])
    weights = tmp_path / "artifact" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match="changed or corrupted after import"):
        load_nnunet_artifact(tmp_path / "artifact")


def test_a_refused_card_leaves_the_artifact_in_the_folder_as_it_was(
    nnunet_folds: NnunetFolds, tmp_path: Path
) -> None:
    """The card is validated before the weights are written: an import refused for its card does not put
    other weights under the card already there."""
    out = tmp_path / "artifact"
    import_picai_nnunet(nnunet_folds.model_dir, out, name="x", folds=[0])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ModelArtifactError, match="name"):
        import_picai_nnunet(nnunet_folds.model_dir, out, name="", folds=[0, 1])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    networks, card = load_nnunet_artifact(out)  # the weights are the ones its card names
    assert len(networks) == 1 and tuple(card.architecture.folds) == (0,)
