"""The whole-gland model and the anatomical gate: card and sha256 check, gate, warnings, the real fixture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from lesion_engine.anatomy.gland import GlandSettings, load_gland_model
from lesion_engine.anatomy.gland_card import (
    GlandModelError,
    default_gland_card,
    read_gland_card,
    resolve_weights,
)
from lesion_engine.anatomy.gland_gate import dilate_mm, gland_region
from lesion_engine.anatomy.gland_graph import free_spatial_dims, prepare_graph, rewrite_mish
from lesion_engine.engine import Engine, EngineResult
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.model.candidates import CandidateConfig, extract_candidates

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


@pytest.fixture(scope="module")
def ungated_result(fixture_study: PreparedStudy) -> EngineResult:
    return Engine.from_artifact(None, "cpu", gland=GlandSettings(enabled=False)).run(fixture_study)


def _inside(
    lesion_centre: tuple[float, float, float] | list[float], image: sitk.Image, allowed: np.ndarray
) -> bool:
    x, y, z = (round(v) for v in image.TransformPhysicalPointToContinuousIndex(lesion_centre))
    shape = allowed.shape
    return 0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2] and bool(allowed[z, y, x])


def _dice(found: np.ndarray, reference: np.ndarray) -> float:
    return 2.0 * float((found & reference).sum()) / float(found.sum() + reference.sum())


@pytest.mark.fixture
@pytest.mark.slow
def test_gland_agrees_with_the_picai_mask(fixture_study: PreparedStudy, picai_gland: sitk.Image) -> None:
    model, warning = load_gland_model(GlandSettings(required=True))
    assert model is not None and warning is None
    found = model.segment(fixture_study.t2w)
    reference = sitk.GetArrayFromImage(picai_gland) > 0
    assert found.mask.shape == reference.shape
    assert found.passes == 1  # the gland fits the first (small) window: one run of the model
    assert _dice(found.mask, reference) >= 0.8
    assert 15.0 < found.volume_ml < 45.0


@pytest.mark.fixture
@pytest.mark.slow
def test_an_off_centre_gland_is_found_in_a_recentred_window(
    fixture_study: PreparedStudy, picai_gland: sitk.Image
) -> None:
    """A field of view whose centre lies 25 mm from the gland: the gland touches the first window's side,
    and the second, larger window centred on it finds all of it."""
    model, _ = load_gland_model(GlandSettings(required=True))
    assert model is not None
    index, size = [100, 0, 0], [284, 384, 19]  # 50 voxels of 0.5 mm off the centre, to the right
    cropped = sitk.RegionOfInterest(fixture_study.t2w, size, index)
    reference = sitk.GetArrayFromImage(sitk.RegionOfInterest(picai_gland, size, index)) > 0
    found = model.segment(cropped)
    assert found.passes == 2
    assert _dice(found.mask, reference) >= 0.8


def test_recentre_window_is_validated(tmp_path: Path) -> None:
    data = _card_data()
    data["input"]["recentre_window_xyz"] = [64, 96, 24]
    with pytest.raises(GlandModelError, match=r"recentre_window_xyz.*at least"):
        read_gland_card(_write_card(tmp_path, data))
    data["input"]["recentre_window_xyz"] = [100, 96, 24]
    with pytest.raises(GlandModelError, match="multiples of 8"):
        read_gland_card(_write_card(tmp_path, data))
    del data["input"]["recentre_window_xyz"]
    card = read_gland_card(_write_card(tmp_path, data))
    assert card.recentre_window_xyz == card.window_xyz


def test_engines_share_one_onnx_runtime_session() -> None:
    first, _ = load_gland_model(GlandSettings(runtime="onnxruntime"), threads=1)
    second, _ = load_gland_model(GlandSettings(runtime="onnxruntime"), threads=1)
    other, _ = load_gland_model(GlandSettings(runtime="onnxruntime"), threads=2)
    assert first is not None and second is not None and other is not None
    assert first._runner is second._runner
    assert other._runner is not first._runner


@pytest.mark.fixture
@pytest.mark.slow
def test_reported_lesions_lie_in_the_gland(
    gated_result: EngineResult, ungated_result: EngineResult, picai_gland: sitk.Image
) -> None:
    """Acceptance (issue 15): on the fixture, every reported lesion lies inside the PI-CAI gland mask
    dilated by 5 mm. Without the gate the default model (trained on phantoms) reports lesions outside it,
    so this is the gate's doing."""
    reference = sitk.GetArrayFromImage(picai_gland) > 0
    spacing_zyx = picai_gland.GetSpacing()[::-1]
    allowed = dilate_mm(reference, spacing_zyx, 5.0)
    outside = [x.id for x in ungated_result.lesions if not _inside(x.center_lps_mm, picai_gland, allowed)]
    assert outside, "the ungated engine should report lesions outside the gland on the fixture"
    assert len(gated_result.lesions) < len(ungated_result.lesions)
    assert gated_result.gland_volume_ml is not None and gated_result.gland_volume_ml > 10.0
    for lesion in gated_result.lesions:
        assert _inside(lesion.center_lps_mm, picai_gland, allowed), (
            f"lesion {lesion.id} at {lesion.center_lps_mm} lies outside the gland"
        )
    # The gland the result carries (for the SR) is the one whose volume it reports, on the T2W grid.
    assert gated_result.gland_mask is not None and gated_result.gland_mask.shape == reference.shape
    voxel_ml = float(np.prod(picai_gland.GetSpacing())) / 1000.0
    assert float(gated_result.gland_mask.sum()) * voxel_ml == pytest.approx(gated_result.gland_volume_ml)
    assert gated_result.gland_model is not None and gated_result.gland_model["name"] == read_gland_card().name
    far = ~dilate_mm(reference, spacing_zyx, 15.0)
    assert sitk.GetArrayFromImage(gated_result.localization_map)[far].max() == 0.0
    assert sitk.GetArrayFromImage(gated_result.detection_map)[far].max() == 0.0
    document = gated_result.to_json()
    assert document["schema_version"] == "1.4"
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


def _mish_graph() -> Any:
    """x -> Softplus -> Tanh -> Mul(x, .) -> y, and a Softplus of x that feeds the output directly (not a
    Mish: it must stay)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Softplus", ["x"], ["s"]),
        helper.make_node("Tanh", ["s"], ["t"]),
        helper.make_node("Mul", ["x", "t"], ["y"]),
        helper.make_node("Softplus", ["x"], ["plain"]),
    ]
    shape = [1, 1, 4, 4, 64]
    graph = helper.make_graph(
        nodes,
        "mish",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("plain", TensorProto.FLOAT, shape),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_mish_rewrite_is_the_same_function() -> None:
    import onnxruntime as ort  # type: ignore[import-untyped]

    model = _mish_graph()
    assert rewrite_mish(model) == 1
    assert [n.op_type for n in model.graph.node].count("Softplus") == 1  # the plain one stays
    x = np.linspace(-60.0, 60.0, 1024, dtype=np.float32).reshape(1, 1, 4, 4, 64)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, plain = session.run(None, {"x": x})
    wide = x.astype(np.float64)
    expected = wide * np.tanh(np.logaddexp(0.0, wide))
    assert np.all(np.isfinite(y))
    assert np.abs(y - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert np.allclose(plain, np.logaddexp(0.0, wide), atol=1e-5)


@pytest.mark.slow
def test_prepared_graph_gives_the_original_logits() -> None:
    import onnx
    import onnxruntime as ort

    original = resolve_weights(read_gland_card())
    prepared = prepare_graph(original)
    model = onnx.load_from_string(prepared)
    assert [n.op_type for n in model.graph.node].count("Softplus") == 0
    free = onnx.load_from_string(original)
    free_spatial_dims(free)
    x = np.random.default_rng(0).normal(size=(1, 1, 32, 32, 16)).astype(np.float32)
    new, old = (
        ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for graph in (prepared, free.SerializeToString())
    )
    assert np.abs(new - old).max() <= 1e-3 * max(1.0, float(np.abs(old).max()))
