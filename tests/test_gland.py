"""The whole-gland model and the anatomical gate: card and sha256 check, gate, warnings, the real fixture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from lesion_engine.candidates import CandidateConfig, extract_candidates
from lesion_engine.engine import Engine, EngineResult
from lesion_engine.gland import GlandSettings, load_gland_model
from lesion_engine.gland_card import GlandModelError, default_gland_card, read_gland_card, resolve_weights
from lesion_engine.gland_gate import dilate_mm, gland_region
from lesion_engine.preprocess import PreparedStudy, prepare_study

GLAND_LABEL = "picai_labels/10795_1000811_gland.nii.gz"


def _card_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(default_gland_card().read_text())
    return data


def _write_card(folder: Path, data: dict[str, Any]) -> Path:
    path = folder / "gland_model.json"
    path.write_text(json.dumps(data))
    return path


def test_packaged_card_names_origin_licence_and_training_data() -> None:
    card = read_gland_card()
    assert card.origin["package"] == "lavlab-taps"
    assert card.origin["version"] == "1.1.2"
    assert card.origin["url"].startswith("https://")
    assert "MIT" in card.licence
    assert "TAPS-Training-Code" in card.training_data
    assert card.spacing_xyz_mm == (0.8, 0.8, 3.0)


def test_packaged_weights_match_the_card() -> None:
    card = read_gland_card()
    data = resolve_weights(card)
    assert hashlib.sha256(data).hexdigest() == card.weights_sha256


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not the model")
    data = _card_data()
    data["weights"] = {"package": None, "path": "model.onnx", "sha256": "0" * 64}
    card = read_gland_card(_write_card(tmp_path, data))
    with pytest.raises(GlandModelError, match="sha256"):
        resolve_weights(card)
    data["weights"]["sha256"] = hashlib.sha256(b"not the model").hexdigest()
    assert resolve_weights(read_gland_card(_write_card(tmp_path, data))) == b"not the model"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format", "other", "format"),
        ("licence", "", "licence"),
        ("weights", {"package": None, "path": "x.onnx", "sha256": "xyz"}, "weights.sha256"),
        ("input", {"spacing_xyz_mm": [0.8, 0.8, 3.0], "window_xyz": [90, 96, 24]}, "window_xyz"),
    ],
)
def test_invalid_card_names_the_field(tmp_path: Path, field: str, value: object, message: str) -> None:
    data = _card_data()
    data[field] = value
    with pytest.raises(GlandModelError, match=message):
        read_gland_card(_write_card(tmp_path, data))


def test_missing_package_gives_a_warning_or_an_error(tmp_path: Path) -> None:
    data = _card_data()
    data["weights"]["package"] = "lesion-ai-no-such-package"
    card = _write_card(tmp_path, data)
    model, warning = load_gland_model(GlandSettings(card=card))
    assert model is None
    assert warning is not None
    assert "not gated" in warning
    assert "pip install lesion-ai-no-such-package" in warning
    with pytest.raises(GlandModelError, match="not installed"):
        load_gland_model(GlandSettings(card=card, required=True))
    assert load_gland_model(GlandSettings(enabled=False, card=card)) == (None, None)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="margin_mm"):
        GlandSettings(margin_mm=-1.0)


def test_dilation_is_in_mm_on_an_anisotropic_grid() -> None:
    mask = np.zeros((9, 41, 41), dtype=bool)
    mask[4, 20, 20] = True
    grown = dilate_mm(mask, (3.0, 0.5, 0.5), 5.0)
    assert grown[4, 20, 30] and not grown[4, 20, 31]  # 10 voxels of 0.5 mm
    assert grown[5, 20, 20] and not grown[6, 20, 20]  # 3 mm yes, 6 mm no


def test_gate_on_a_crafted_map() -> None:
    """A blob inside the gland is kept, one outside is removed, and the map is 0 outside the gland."""
    t2w = sitk.Image([64, 64, 16], sitk.sitkFloat32)
    t2w.SetSpacing((1.0, 1.0, 3.0))
    t2w.SetOrigin((-32.0, -32.0, -24.0))
    gland = np.zeros((16, 64, 64), dtype=bool)
    gland[5:11, 20:40, 20:40] = True
    region = gland_region(gland, t2w, float(gland.sum()) / 1000.0 * 3.0, 5.0)
    crafted = np.zeros((16, 64, 64), dtype=np.float32)
    crafted[7:9, 28:32, 28:32] = 0.9  # inside the gland
    crafted[7:9, 52:56, 4:8] = 0.8  # far outside it
    candidates = extract_candidates(crafted, CandidateConfig())
    assert len(candidates) == 2
    kept = []
    for candidate in candidates:
        z, y, x = candidate.center_zyx
        point = t2w.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        if region.contains(point):
            kept.append(candidate.center_zyx)
    assert len(kept) == 1
    assert 28 <= kept[0][1] < 32
    gated = crafted * region.on_grid(t2w)
    assert gated[7:9, 52:56, 4:8].max() == 0.0
    assert gated[7:9, 28:32, 28:32].min() == pytest.approx(0.9)
    assert not region.contains((1000.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def fixture_study(prostatex: Path) -> PreparedStudy:
    return prepare_study(prostatex / "dicom")


@pytest.fixture(scope="module")
def picai_gland(prostatex: Path) -> sitk.Image:
    return sitk.ReadImage(str(prostatex / GLAND_LABEL))


@pytest.fixture(scope="module")
def gated_result(fixture_study: PreparedStudy) -> EngineResult:
    return Engine.from_artifact(None, "cpu").run(fixture_study)


@pytest.mark.fixture
@pytest.mark.slow
def test_gland_agrees_with_the_picai_mask(fixture_study: PreparedStudy, picai_gland: sitk.Image) -> None:
    model, warning = load_gland_model(GlandSettings(required=True))
    assert model is not None and warning is None
    found = model.segment(fixture_study.t2w)
    reference = sitk.GetArrayFromImage(picai_gland) > 0
    assert found.mask.shape == reference.shape
    dice = 2.0 * (found.mask & reference).sum() / (found.mask.sum() + reference.sum())
    assert dice >= 0.8
    assert 15.0 < found.volume_ml < 45.0


@pytest.mark.fixture
@pytest.mark.slow
def test_reported_lesions_lie_in_the_gland(gated_result: EngineResult, picai_gland: sitk.Image) -> None:
    reference = sitk.GetArrayFromImage(picai_gland) > 0
    spacing_zyx = picai_gland.GetSpacing()[::-1]
    allowed = dilate_mm(reference, spacing_zyx, 5.0)
    assert gated_result.gland_volume_ml is not None and gated_result.gland_volume_ml > 10.0
    for lesion in gated_result.lesions:
        x, y, z = (
            round(v) for v in picai_gland.TransformPhysicalPointToContinuousIndex(lesion.center_lps_mm)
        )
        assert allowed[z, y, x], f"lesion {lesion.id} at {lesion.center_lps_mm} lies outside the gland"
    far = ~dilate_mm(reference, spacing_zyx, 15.0)
    assert sitk.GetArrayFromImage(gated_result.localization_map)[far].max() == 0.0
    assert sitk.GetArrayFromImage(gated_result.detection_map)[far].max() == 0.0
    document = gated_result.to_json()
    assert document["schema_version"] == "1.2"
    assert document["gland_volume_ml"] == pytest.approx(gated_result.gland_volume_ml, abs=1e-3)
    assert "gland" in document["timings_s"]


@pytest.mark.fixture
@pytest.mark.slow
def test_missing_gland_model_runs_ungated_with_a_warning(
    tmp_path: Path, fixture_study: PreparedStudy
) -> None:
    data = _card_data()
    data["weights"]["package"] = "lesion-ai-no-such-package"
    card = _write_card(tmp_path, data)
    result = Engine.from_artifact(None, "cpu", gland=GlandSettings(card=card)).run(fixture_study)
    assert result.gland_volume_ml is None
    assert any("gland model is not available" in w for w in result.warnings)
    assert result.to_json()["gland_volume_ml"] is None
