"""The gland model in torch: the TAPS weights read from the ONNX file into our SegResNetDS, checked against
ONNX Runtime (on the authors' unchanged file) and against MONAI's own SegResNetDS; refusals of other graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
import SimpleITK as sitk
import torch
from onnx import helper, numpy_helper

from lesion_engine.anatomy.gland import GlandModel, GlandSettings, load_gland_model
from lesion_engine.anatomy.gland_card import GlandModelError, read_gland_card, resolve_weights
from lesion_engine.anatomy.gland_network import (
    GlandNetworkError,
    mish,
    network_from_onnx,
    state_dict_from_onnx,
)
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from tests.oracles.onnx_float64 import evaluate_float64

#: The issue's bounds: probabilities within 1e-4 of ONNX Runtime's, and the same mask.
PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return resolve_weights(read_gland_card())


@pytest.fixture(scope="module")
def network(model_bytes: bytes) -> torch.nn.Module:
    return network_from_onnx(model_bytes)


def _sigmoid(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(1.0 / (1.0 + np.exp(-values.astype(np.float64))))


def _authors_session(model_bytes: bytes) -> Any:
    """ONNX Runtime on the authors' file as it is (fixed 128 x 128 x 32 input, no rewrite), default options."""
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def test_every_parameter_is_read_and_none_left_over(model_bytes: bytes, network: torch.nn.Module) -> None:
    state = state_dict_from_onnx(onnx.load_from_string(model_bytes))
    assert set(state) == set(network.state_dict())
    # 32 convolutions and transposed convolutions (33 tensors: the head has a bias), and 24 group norms.
    assert sum(1 for name in state if name.endswith("norm1.weight") or name.endswith("norm2.weight")) == 24
    assert len(state) == 33 + 24 * 2
    # The norms' scales are the trained ones, not the export's constant ones.
    assert not torch.equal(state["encoder.layers.3.blocks.3.norm2.weight"], torch.ones(256))


def test_same_network_as_monai_segresnetds(network: torch.nn.Module) -> None:
    """MONAI's own class (the layout the authors trained), given the same state dict, computes the same."""
    from monai.networks.nets.segresnet_ds import SegResNetDS

    monai_net = SegResNetDS(
        spatial_dims=3,
        init_filters=32,
        in_channels=1,
        out_channels=1,
        act="mish",
        norm=("group", {"num_groups": 8}),
        blocks_down=(1, 2, 2, 4),
        dsdepth=1,
        upsample_mode="deconv",
    )
    monai_net.load_state_dict(network.state_dict(), strict=True)
    monai_net.eval()
    batch = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 1, 32, 24, 16)).astype(np.float32))
    with torch.inference_mode():
        ours = network(batch)
        theirs = monai_net(batch)
    assert ours.shape == theirs.shape == (1, 1, 32, 24, 16)
    assert float((ours - theirs).abs().max()) <= 1e-5


@pytest.fixture(scope="module")
def fixture_study(prostatex: Path) -> PreparedStudy:
    return prepare_study(prostatex / "dicom")


def _fixture_batch(t2w: sitk.Image, model: GlandModel, size: tuple[int, int, int]) -> np.ndarray[Any, Any]:
    """The engine's input for a window of ``size`` at the centre of the T2W (as ``GlandModel._logits``)."""
    native = sitk.GetArrayViewFromImage(t2w)
    foreground = native[native != 0]
    centre = np.asarray(t2w.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in t2w.GetSize()]))
    window = model._window(t2w, centre, size)
    values = sitk.GetArrayFromImage(
        sitk.Resample(t2w, window, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    inside = values != 0
    values = (values - np.float32(foreground.mean())) / np.float32(foreground.std())
    values[~inside] = 0.0
    return np.ascontiguousarray(values.transpose(2, 1, 0))[None, None].astype(np.float32)


@pytest.fixture(scope="module")
def both_runtimes() -> dict[str, GlandModel]:
    models: dict[str, GlandModel] = {}
    for runtime in ("torch", "onnxruntime"):
        settings = GlandSettings(required=True, runtime=runtime, precision="float32")
        model, _ = load_gland_model(settings, threads=2)
        assert model is not None and model.runtime == runtime and model.precision == "float32"
        models[runtime] = model
    return models


@pytest.mark.fixture
@pytest.mark.slow
def test_torch_matches_onnx_runtime_on_the_engines_windows(
    fixture_study: PreparedStudy, both_runtimes: dict[str, GlandModel]
) -> None:
    """Acceptance (issue 21, item 4): on the fixture's T2W, in the windows the engine runs (the first one and
    the re-centring one), the probabilities of our torch network are within 1e-4 of ONNX Runtime's, and the
    masks are the same (Dice 1.0)."""
    card = read_gland_card()
    for size in (card.window_xyz, card.recentre_window_xyz):
        batch = _fixture_batch(fixture_study.t2w, both_runtimes["onnxruntime"], size)
        ours, theirs = (_sigmoid(both_runtimes[r].network_logits(batch)) for r in ("torch", "onnxruntime"))
        assert float(np.abs(ours - theirs).max()) <= PROBABILITY_TOLERANCE, size
        assert (theirs > card.threshold).sum() > 5_000, size  # the gland is in the window: masks compared
        assert np.array_equal(ours > card.threshold, theirs > card.threshold), size


@pytest.mark.fixture
@pytest.mark.slow
def test_the_authors_unchanged_file_gives_the_same_mask(
    fixture_study: PreparedStudy,
    model_bytes: bytes,
    network: torch.nn.Module,
    both_runtimes: dict[str, GlandModel],
) -> None:
    """In the file's own input size (128 x 128 x 32), ONNX Runtime on the unchanged file (no graph rewrite, its
    default options) and our network give the same mask. Their probabilities differ by up to 2.6e-4 there:
    ONNX Runtime's float32 InstanceNormalization loses precision over the group norm's larger groups (the
    next test shows which of the two is exact)."""
    batch = _fixture_batch(fixture_study.t2w, both_runtimes["onnxruntime"], (128, 128, 32))
    theirs = _sigmoid(_authors_session(model_bytes).run(None, {"input": batch})[0])
    with torch.inference_mode():
        ours = _sigmoid(network(torch.from_numpy(batch)).numpy())
    assert float(np.abs(ours - theirs).max()) <= 1e-3
    threshold = read_gland_card().threshold
    assert (theirs > threshold).sum() > 5_000
    assert np.array_equal(ours > threshold, theirs > threshold)


@pytest.mark.fixture
@pytest.mark.slow
def test_torch_is_the_graphs_exact_value_in_float32(
    fixture_study: PreparedStudy, model_bytes: bytes, both_runtimes: dict[str, GlandModel]
) -> None:
    """Against the graph evaluated node by node in float64 (:mod:`tests.oracles.onnx_float64`, on the engine's
    window): our network is within 1e-5 (float32 rounding), as is ONNX Runtime in this small window."""
    batch = _fixture_batch(fixture_study.t2w, both_runtimes["onnxruntime"], read_gland_card().window_xyz)
    exact = _sigmoid(evaluate_float64(onnx.load_from_string(model_bytes), batch))
    for runtime, model in both_runtimes.items():
        assert float(np.abs(_sigmoid(model.network_logits(batch)) - exact).max()) <= 1e-5, runtime


@pytest.mark.fixture
@pytest.mark.slow
def test_both_runtimes_segment_the_same_gland(
    fixture_study: PreparedStudy, both_runtimes: dict[str, GlandModel]
) -> None:
    """The engine's whole gland step (windows, blur, resampling, largest part) gives the same mask with
    either runtime."""
    found = {runtime: model.segment(fixture_study.t2w) for runtime, model in both_runtimes.items()}
    assert found["torch"].mask.sum() > 0
    assert np.array_equal(found["torch"].mask, found["onnxruntime"].mask)
    assert found["torch"].volume_ml == pytest.approx(found["onnxruntime"].volume_ml)


def test_auto_takes_torch_and_the_runners_are_shared() -> None:
    auto, _ = load_gland_model(GlandSettings(precision="float32"), threads=1)
    again, _ = load_gland_model(GlandSettings(runtime="torch", precision="float32"), threads=2)
    other, _ = load_gland_model(GlandSettings(runtime="torch", precision="bfloat16"), threads=2)
    onnx_model, _ = load_gland_model(GlandSettings(runtime="onnxruntime"), threads=1)
    assert auto is not None and again is not None and other is not None and onnx_model is not None
    assert (
        auto.runtime == "torch" and auto.providers == ["torch cpu float32"] and auto._runner is again._runner
    )
    assert other.providers == ["torch cpu bfloat16"] and other._runner is not auto._runner
    assert onnx_model.runtime == "onnxruntime" and onnx_model.providers == ["CPUExecutionProvider"]
    assert onnx_model.precision == "float32"


def test_runtime_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="runtime must be one of auto, torch, onnxruntime"):
        GlandSettings(runtime="tensorflow")
    card = read_gland_card()
    with pytest.raises(ValueError, match="runtime"):
        GlandModel(card, resolve_weights(card), runtime="TORCH")


@pytest.mark.cuda
def test_torch_runtime_on_cuda(model_bytes: bytes, network: torch.nn.Module) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    model, _ = load_gland_model(GlandSettings(required=True, runtime="auto"), use_cuda=True)
    assert model is not None and model.runtime == "torch" and model.providers == ["torch cuda float32"]
    batch = np.random.default_rng(1).standard_normal((1, 1, 80, 72, 24)).astype(np.float32)
    with torch.inference_mode():
        on_cpu = _sigmoid(network(torch.from_numpy(batch)).numpy())
    assert float(np.abs(_sigmoid(model.network_logits(batch)) - on_cpu).max()) <= PROBABILITY_TOLERANCE


# Refusals: a graph that is not the exported SegResNetDS is named, never half-loaded.


def _with(model_bytes: bytes, change: Any) -> bytes:
    model = onnx.load_from_string(model_bytes)
    change(model)
    return bytes(model.SerializeToString())


def test_other_operators_are_refused(model_bytes: bytes) -> None:
    def add_relu(model: Any) -> None:
        model.graph.node.append(helper.make_node("Relu", ["output"], ["relu_out"]))

    with pytest.raises(GlandNetworkError, match="operators an exported SegResNetDS has not: Relu"):
        network_from_onnx(_with(model_bytes, add_relu))


def test_another_group_count_is_refused(model_bytes: bytes) -> None:
    def four_groups(model: Any) -> None:
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output[0].endswith("norm1/Constant_output_0"):
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.asarray([0, 4, -1], dtype=np.int64)))
                return

    with pytest.raises(GlandNetworkError, match=r"8-group norm.*groups 4"):
        network_from_onnx(_with(model_bytes, four_groups))


def test_a_missing_weight_is_refused(model_bytes: bytes) -> None:
    def drop_head_bias(model: Any) -> None:
        kept = [i for i in model.graph.initializer if i.name != "up_layers.2.head.bias"]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)

    with pytest.raises(GlandNetworkError, match=r"up_layers\.2\.head\.bias"):
        network_from_onnx(_with(model_bytes, drop_head_bias))


def test_not_an_onnx_file_is_refused() -> None:
    with pytest.raises(GlandNetworkError, match="not an ONNX model"):
        network_from_onnx(b"\x00garbage" * 10)


def test_a_refused_graph_is_a_gland_model_error_in_the_engine(tmp_path: Path, model_bytes: bytes) -> None:
    """Through the card: the torch runtime refuses the changed file with a GlandModelError that names it."""
    import hashlib
    import json

    from lesion_engine.anatomy.gland_card import default_gland_card

    def add_relu(model: Any) -> None:
        model.graph.node.append(helper.make_node("Relu", ["output"], ["relu_out"]))

    changed = _with(model_bytes, add_relu)
    (tmp_path / "model.onnx").write_bytes(changed)
    data = json.loads(default_gland_card().read_text())
    data["weights"] = {"package": None, "path": "model.onnx", "sha256": hashlib.sha256(changed).hexdigest()}
    card = tmp_path / "gland_model.json"
    card.write_text(json.dumps(data))
    model, warning = load_gland_model(GlandSettings(card=card, runtime="torch"))
    assert model is None and warning is not None and "Relu" in warning
    with pytest.raises(GlandModelError, match=r"could not be read into torch.*Relu"):
        load_gland_model(GlandSettings(card=card, runtime="torch", required=True))


def test_the_cpu_form_of_mish_is_mish() -> None:
    x = torch.cat([torch.linspace(-100.0, 100.0, 200_001), torch.tensor([-1e4, -88.0, 88.0, 89.0, 1e4])])
    with torch.inference_mode():
        ours = mish(x)
    expected = torch.nn.functional.mish(x.double()).float()
    assert torch.isfinite(ours).all()
    assert float((ours - expected).abs().max()) < 2e-6
    with torch.enable_grad():
        y = x[:5].clone().requires_grad_(True)
        mish(y).sum().backward()  # type: ignore[no-untyped-call]  # autograd takes ATen's kernel
    assert y.grad is not None and torch.isfinite(y.grad).all()
