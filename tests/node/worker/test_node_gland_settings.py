"""The anatomical gate in the node's settings: GlandGate, GlandMarginMm and GlandRequired, validated, passed
through ProcessorSettings to the engine, and a gland model that fails a study when it is required."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from lesion_engine.anatomy.gland import GlandSettings
from lesion_engine.anatomy.gland_card import GlandModelError
from lesion_engine.errors import ConfigError
from lesion_engine.model.result_types import ModelInfo
from orthanc_plugin.node.settings import WorkerSettings
from orthanc_plugin.worker.processing import EngineProcessor, ProcessingRequest, ProcessorSettings
from tests.support.node_env import make_study

QUEUE = {"Queue": "sqlite:///q.sqlite"}


def test_gate_fields_default_and_read_from_the_section() -> None:
    default = WorkerSettings.from_section(QUEUE)
    assert (default.gland_gate, default.gland_margin_mm, default.gland_required) == ("auto", 5.0, False)
    engine = GlandSettings()  # the node's gate defaults are the engine's
    assert (
        default.gland_margin_mm,
        default.gland_required,
        default.gland_runtime,
        default.gland_precision,
    ) == (engine.margin_mm, engine.required, engine.runtime, engine.precision)
    assert (default.gland_min_ml, default.gland_max_ml) == (engine.min_volume_ml, engine.max_volume_ml)
    settings = WorkerSettings.from_section(
        {**QUEUE, "GlandGate": "on", "GlandMarginMm": 3, "GlandRequired": True}
    )
    assert (settings.gland_gate, settings.gland_margin_mm, settings.gland_required) == ("on", 3.0, True)
    assert settings.to_section()["GlandMarginMm"] == 3.0
    processor = ProcessorSettings.from_settings(settings)
    assert processor.gland_settings() == GlandSettings(enabled=True, margin_mm=3.0, required=True)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"GlandMarginMm": -1.0}, r"GlandMarginMm: must be a number of mm from 0 to 50"),
        ({"GlandMarginMm": 80}, r"GlandMarginMm: must be a number of mm from 0 to 50"),
        ({"GlandGate": "maybe"}, r"GlandGate: must be 'auto', 'on' or 'off'"),
        ({"GlandRequired": "yes"}, r"GlandRequired: expected bool"),
        ({"GlandGate": "off", "GlandRequired": True}, r"GlandRequired: is true but GlandGate is 'off'"),
        ({"GlandRuntime": "ort"}, r"GlandRuntime: must be 'auto', 'torch' or 'onnxruntime', got 'ort'"),
        ({"GlandRuntime": 1}, r"GlandRuntime: expected str"),
        (
            {"GlandPrecision": "fp16"},
            r"GlandPrecision: must be 'auto', 'float32' or 'bfloat16', got 'fp16'",
        ),
        ({"GlandPrecision": 32}, r"GlandPrecision: expected str"),
        (
            {"GlandRuntime": "onnxruntime", "GlandPrecision": "bfloat16"},
            r"GlandPrecision: is 'bfloat16' but GlandRuntime is 'onnxruntime'",
        ),
    ],
)
def test_bad_gate_values_are_refused_naming_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WorkerSettings.from_section({**QUEUE, **section})


def test_the_runtime_reaches_the_engine() -> None:
    assert WorkerSettings.from_section(QUEUE).gland_runtime == "auto"
    settings = WorkerSettings.from_section({**QUEUE, "GlandRuntime": "onnxruntime"})
    assert ProcessorSettings.from_settings(settings).gland_settings().runtime == "onnxruntime"
    with pytest.raises(ValueError, match="runtime must be one of"):
        ProcessorSettings(gland_runtime="ORT").gland_settings()


def test_the_precision_reaches_the_engine() -> None:
    assert WorkerSettings.from_section(QUEUE).gland_precision == "auto"
    settings = WorkerSettings.from_section({**QUEUE, "GlandPrecision": "float32"})
    assert settings.to_section()["GlandPrecision"] == "float32"
    assert ProcessorSettings.from_settings(settings).gland_settings().precision == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        ProcessorSettings(gland_precision="half").gland_settings()


def test_auto_follows_the_model_and_on_off_override_it(tmp_path: Path) -> None:
    other = str(tmp_path / "phantom-model")
    assert ProcessorSettings().gland_settings().enabled  # the packaged default model reads real studies
    assert not ProcessorSettings(model=other).gland_settings().enabled
    assert ProcessorSettings(model=other, gland_gate="on").gland_settings().enabled
    assert not ProcessorSettings(gland_gate="off").gland_settings().enabled
    with pytest.raises(ValueError, match="gland_gate"):
        ProcessorSettings(gland_gate="yes")
    with pytest.raises(ValueError, match="gland_margin_mm"):
        ProcessorSettings(gland_margin_mm=-2.0)


class _FailingGlandEngine:
    model_info: ClassVar[ModelInfo] = ModelInfo("m", "1", "0")

    def run(self, prepared: Any) -> Any:
        raise GlandModelError("the T2W volume is all zeros: there is no gland to find")


def test_the_engine_is_loaded_with_the_gate_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from lesion_engine.engine import Engine

    calls: list[dict[str, Any]] = []

    def from_artifact(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return _FailingGlandEngine()

    monkeypatch.setattr(Engine, "from_artifact", staticmethod(from_artifact))
    settings = ProcessorSettings.from_settings(
        WorkerSettings.from_section({**QUEUE, "GlandGate": "on", "GlandMarginMm": 7.5})
    )
    EngineProcessor(settings).engine()
    (kwargs,) = calls
    assert kwargs["gland"] == GlandSettings(enabled=True, margin_mm=7.5, required=False)


def test_a_required_gland_model_that_fails_fails_the_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lesion_engine.intake.preprocess

    make_study(tmp_path / "study")
    instances = [p.read_bytes() for p in sorted((tmp_path / "study").iterdir())]
    monkeypatch.setattr(lesion_engine.intake.preprocess, "prepare_study", lambda *args: object())
    processor = EngineProcessor(ProcessorSettings(gland_required=True))
    processor._engine = _FailingGlandEngine()  # type: ignore[assignment]
    outcome = processor(instances, ProcessingRequest(job_id=1, study_id="s", rule="r"))
    assert outcome.failed and outcome.reason is not None
    assert "gland model failed on this study" in outcome.reason and "all zeros" in outcome.reason
    assert outcome.report  # a failure SR says why, instead of retries
