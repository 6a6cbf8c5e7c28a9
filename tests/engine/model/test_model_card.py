"""The model card module (lesion_engine.model.model_card): validation, identity, and no torch or numpy import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lesion_engine.errors import ModelArtifactError
from lesion_engine.model import artifact, model_card
from lesion_engine.model.model_card import (
    CARD_FILE,
    ModelCard,
    default_artifact,
    model_identity,
    read_card,
)


@pytest.fixture(scope="module")
def card_data() -> dict[str, Any]:
    """The packaged default model's card, as parsed JSON."""
    data: dict[str, Any] = json.loads((default_artifact() / CARD_FILE).read_text(encoding="utf-8"))
    return data


def _write(folder: Path, data: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD_FILE).write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_default_artifact_is_the_packaged_model() -> None:
    folder = default_artifact()
    assert folder.parts[-4:] == ("lesion_engine", "data", "models", "default")
    assert (folder / CARD_FILE).is_file()


def test_a_card_may_name_its_kind(card_data: dict[str, Any]) -> None:
    """``kind`` is a text ("joint" or "detection-map"), not an object like ``training`` and ``metrics``."""
    assert ModelCard.from_dict({**card_data, "kind": "joint"}) == ModelCard.from_dict(card_data)
    with pytest.raises(ModelArtifactError, match="'kind'"):
        ModelCard.from_dict({**card_data, "kind": "segmentation"})


def test_card_round_trips(card_data: dict[str, Any]) -> None:
    card = ModelCard.from_dict(card_data)
    assert ModelCard.from_dict(card.to_dict()) == card
    assert read_card(default_artifact()) == card
    assert read_card(default_artifact() / CARD_FILE) == card
    assert card.categories == [int(c) for c in card_data["label_map"]["categories"]]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("weights_sha256"), "'weights_sha256': missing"),
        (lambda d: d.update(format="other"), "'format'"),
        (lambda d: d.update(created="soon"), "'created'"),
        (lambda d: d.update(extra=1), "'extra': unknown field"),
        (lambda d: d["preprocessing"].pop("adc_scale"), "'preprocessing.adc_scale': missing"),
        (lambda d: d["candidates"].update(connectivity=8), "'candidates'"),
        (lambda d: d["label_map"].update(categories=[2, 2, 4, 5]), "'label_map.categories'"),
        (lambda d: d.update(training="none"), "'training': must be an object"),
    ],
)
def test_invalid_cards_name_the_file_and_the_field(
    tmp_path: Path, card_data: dict[str, Any], edit: Any, field: str
) -> None:
    data = json.loads(json.dumps(card_data))
    edit(data)
    folder = _write(tmp_path / "model", data)
    with pytest.raises(ModelArtifactError, match="invalid model card") as info:
        read_card(folder)
    assert field in str(info.value)
    assert str(folder / CARD_FILE) in str(info.value)


def test_unreadable_cards_and_non_artifacts(tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="expected a JSON object"):
        ModelCard.from_dict([1, 2])
    (tmp_path / CARD_FILE).write_text("{", encoding="utf-8")
    with pytest.raises(ModelArtifactError, match="not valid JSON"):
        read_card(tmp_path)
    with pytest.raises(ModelArtifactError, match="not found"):
        read_card(tmp_path / "absent")
    checkpoint = tmp_path / "other" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelArtifactError, match="pickle"):
        read_card(checkpoint.parent)
    with pytest.raises(ModelArtifactError, match="pickle or zip"):
        read_card(checkpoint)


def test_model_identity_format(tmp_path: Path, card_data: dict[str, Any]) -> None:
    expected = f"{card_data['name']}:{card_data['version']}:{card_data['weights_sha256'][:16]}"
    assert model_identity(None) == expected
    assert model_identity(str(default_artifact())) == expected
    assert model_identity(str(default_artifact() / CARD_FILE)) == expected
    assert model_identity(None, "tests.support.node_fakes:make") == "processor:tests.support.node_fakes:make"
    assert model_identity(None, "tests.support.node_fakes:make", "site-model-7") == "site-model-7"
    assert model_identity(str(tmp_path / "absent")) == "none"
    (tmp_path / CARD_FILE).write_text("not json", encoding="utf-8")
    assert model_identity(str(tmp_path)) == "none"
    # The card is read as it is (not validated): missing fields show as '?'.
    _write(tmp_path / "partial", {"name": "m", "weights_sha256": "ab" * 32})
    assert model_identity(str(tmp_path / "partial")) == "m:?:" + "ab" * 8


def test_artifact_keeps_the_card_names() -> None:
    assert artifact.ModelCard is model_card.ModelCard
    assert artifact.read_card is model_card.read_card
    assert (artifact.CARD_FILE, artifact.WEIGHTS_FILE) == (model_card.CARD_FILE, model_card.WEIGHTS_FILE)


def test_card_and_outputs_modules_import_no_heavy_packages() -> None:
    code = (
        "import sys, lesion_engine.model.model_card, lesion_engine.results.outputs\n"
        "lesion_engine.model.model_card.model_identity(None)\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'highdicom', 'SimpleITK') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, f"imported: {done.stdout.strip()} {done.stderr.strip()}"
