"""Model artifacts: round trip, integrity checks, refusal of pickles and of weights that do not fit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from lesion_engine import engine as engine_module
from lesion_engine.engine import Engine
from lesion_engine.errors import ModelArtifactError
from lesion_engine.model.artifact import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelCard,
    file_sha256,
    load_artifact,
    read_card,
    save_artifact,
)
from lesion_engine.model.candidates import CandidateConfig
from lesion_engine.model.model_input import PreprocessConfig
from tests.support.model_helpers import TINY_CLS, tiny_model, write_tiny_artifact


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """A freshly written tiny artifact."""
    return write_tiny_artifact(tmp_path / "model", seed=3)


def _card(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / CARD_FILE).read_text())
    return data


def _write_card(folder: Path, data: dict[str, Any]) -> None:
    (folder / CARD_FILE).write_text(json.dumps(data))


def _replace_weights(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write other weights and update the card's sha256, so that only the content is wrong."""
    save_file(tensors, str(folder / WEIGHTS_FILE))
    data = _card(folder)
    data["weights_sha256"] = file_sha256(folder / WEIGHTS_FILE)
    _write_card(folder, data)


def test_round_trip_gives_identical_outputs(artifact: Path) -> None:
    original = tiny_model(seed=3)
    loaded, card = load_artifact(artifact)
    assert not loaded.training
    torch.manual_seed(11)
    images = torch.randn(1, 3, 4, 32, 32)
    centers = torch.tensor([[2, 10, 12], [1, 20, 5]])
    batch_index = torch.zeros(2, dtype=torch.long)
    with torch.inference_mode():
        expected = original(images, centers, batch_index)
        got = loaded(images, centers, batch_index)
    for name in ("loc_logits", "zone_logits", "cancer_logits", "category_logits"):
        assert torch.equal(getattr(expected, name), getattr(got, name)), name
    assert card.name == "tiny-random"
    assert card.version == "0.0.1"
    assert card.localization == original.loc.config
    assert card.classification == TINY_CLS
    assert card.preprocessing == PreprocessConfig()
    assert card.candidates == CandidateConfig()
    assert card.categories == [2, 3, 4, 5]
    assert card.weights_sha256 == file_sha256(artifact / WEIGHTS_FILE)
    assert card.training["seed"] == 3


def test_card_document_has_the_documented_fields(artifact: Path) -> None:
    data = _card(artifact)
    assert data["format"] == "lesion-ai-model"
    assert data["format_version"] == 1
    assert set(data) == {
        "format",
        "format_version",
        "name",
        "version",
        "created",
        "architecture",
        "preprocessing",
        "candidates",
        "label_map",
        "training",
        "metrics",
        "intended_use",
        "weights_sha256",
    }
    assert data["architecture"]["localization"]["num_zones"] == 3
    assert data["label_map"]["zones"] == ["background", "peripheral zone", "transition zone"]
    assert "not for diagnosis" in data["intended_use"]
    assert ModelCard.from_dict(data).to_dict() == data


def test_card_path_and_weights_path_are_accepted(artifact: Path) -> None:
    assert read_card(artifact / CARD_FILE).name == "tiny-random"
    _, card = load_artifact(artifact / CARD_FILE)
    assert card.name == "tiny-random"


def test_model_without_zonal_head_round_trips(tmp_path: Path) -> None:
    folder = write_tiny_artifact(tmp_path / "nozones", num_zones=0)
    model, card = load_artifact(folder)
    assert card.localization.num_zones == 0
    assert card.label_map["zones"] == []
    assert model.loc.config.num_zones == 0


def test_changed_weights_are_refused(artifact: Path) -> None:
    weights = artifact / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match="changed or corrupted"):
        load_artifact(artifact)


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.ckpt", "model.pkl"])
def test_pickle_checkpoints_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(ModelArtifactError, match="only safetensors model artifacts are accepted"):
        load_artifact(path)
    with pytest.raises(ModelArtifactError, match="only safetensors model artifacts are accepted"):
        load_artifact(tmp_path)  # a folder holding only the pickle


def test_pickle_disguised_as_safetensors_is_refused(artifact: Path) -> None:
    weights = artifact / WEIGHTS_FILE
    torch.save(tiny_model().state_dict(), weights)
    data = _card(artifact)
    data["weights_sha256"] = file_sha256(weights)
    _write_card(artifact, data)
    with pytest.raises(ModelArtifactError, match="pickle or zip"):
        load_artifact(artifact)
    with pytest.raises(ModelArtifactError, match="pickle or zip"):
        load_artifact(weights)


def test_wrong_shapes_are_refused(artifact: Path) -> None:
    data = _card(artifact)
    data["architecture"]["localization"]["channels"] = [4, 8, 32]
    _write_card(artifact, data)
    with pytest.raises(ModelArtifactError, match=r"wrong shapes: .*encoders\.2"):
        load_artifact(artifact)


def test_missing_and_extra_tensors_are_refused(artifact: Path) -> None:
    tensors = load_file(str(artifact / WEIGHTS_FILE))
    removed = sorted(tensors)[0]
    del tensors[removed]
    tensors["surprise.weight"] = torch.zeros(2)
    _replace_weights(artifact, tensors)
    with pytest.raises(ModelArtifactError, match="missing tensors") as info:
        load_artifact(artifact)
    assert removed in str(info.value)
    assert "unexpected tensors: surprise.weight" in str(info.value)


def test_corrupt_safetensors_header_is_refused(artifact: Path) -> None:
    weights = artifact / WEIGHTS_FILE
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    data = _card(artifact)
    data["weights_sha256"] = file_sha256(weights)
    _write_card(artifact, data)
    with pytest.raises(ModelArtifactError, match="not a readable safetensors file"):
        load_artifact(artifact)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("name"), "'name': missing"),
        (lambda d: d.update(format="other"), "'format'"),
        (lambda d: d.update(format_version=2), "'format_version'"),
        (lambda d: d.update(format_version=True), "'format_version'"),
        (lambda d: d.update(version=""), "'version'"),
        (lambda d: d.update(created="yesterday"), "'created'"),
        (lambda d: d.update(weights_sha256="abc"), "'weights_sha256'"),
        (lambda d: d.update(bogus=1), "'bogus': unknown field"),
        (lambda d: d["architecture"]["localization"].pop("channels"), "'architecture.localization.channels'"),
        (lambda d: d["architecture"]["classification"].update(in_channels=7), "architecture.classification"),
        (lambda d: d["preprocessing"].update(size_zyx=[21, 128, 128]), "'preprocessing.size_zyx'"),
        (lambda d: d["preprocessing"].update(adc_scale=-1), "'preprocessing'"),
        (lambda d: d["candidates"].update(min_peak=2), "'candidates'"),
        (lambda d: d["label_map"].update(categories=[2, 3, 4]), "'label_map.categories'"),
        (lambda d: d["label_map"].update(zones=["a", "b"]), "'label_map.zones'"),
        (lambda d: d.update(metrics=[]), "'metrics'"),
    ],
)
def test_invalid_cards_name_the_field(artifact: Path, edit: Any, field: str) -> None:
    data = _card(artifact)
    edit(data)
    _write_card(artifact, data)
    with pytest.raises(ModelArtifactError, match="invalid model card") as info:
        load_artifact(artifact)
    assert field in str(info.value)


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="not found"):
        load_artifact(tmp_path / "nothing")
    with pytest.raises(ModelArtifactError, match=r"has no model\.json"):
        load_artifact(tmp_path)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelArtifactError, match="not a model artifact"):
        load_artifact(other)
    (tmp_path / CARD_FILE).write_text("{")
    with pytest.raises(ModelArtifactError, match="not valid JSON"):
        load_artifact(tmp_path)


def test_missing_weights_file(artifact: Path) -> None:
    (artifact / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelArtifactError, match="model weights not found"):
        load_artifact(artifact)


def test_save_refuses_invalid_settings(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match=r"preprocessing\.size_zyx"):
        save_artifact(
            tiny_model(),
            tmp_path / "bad",
            name="x",
            version="1",
            preprocessing=PreprocessConfig(size_zyx=(21, 128, 128)),
            candidates=CandidateConfig(),
        )
    with pytest.raises(ModelArtifactError, match="not JSON-ready"):
        save_artifact(
            tiny_model(),
            tmp_path / "bad",
            name="x",
            version="1",
            preprocessing=PreprocessConfig(),
            candidates=CandidateConfig(),
            training={"when": object()},
        )
    assert not (tmp_path / "bad" / WEIGHTS_FILE).exists()


def test_missing_default_model_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "DEFAULT_ARTIFACT", tmp_path / "absent")
    with pytest.raises(ModelArtifactError, match="no default model is installed") as info:
        Engine.from_artifact(None, "cpu")
    assert "make train-default" in str(info.value)
    assert "--model" in str(info.value)


def test_saved_files_follow_the_umask_not_mkstemp(tmp_path: Path) -> None:
    # The node's service account reads artifacts that a researcher exported: 0644 under umask 022.
    previous = os.umask(0o022)
    try:
        folder = write_tiny_artifact(tmp_path / "shared")
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes
