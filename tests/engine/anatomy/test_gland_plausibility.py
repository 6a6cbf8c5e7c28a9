"""The anatomical gate judges its gland before it removes anything, and says so where a radiologist looks.

A gland model that fails (a few voxels of "gland", several pieces, a gland cut by the field of view) must
never turn a study silently negative. Crafted masks check each rule; the crafted case runs the real engine on
the real fixture with a gland model that returns a 0.03 ml gland; the found case is what the packaged
whole-gland model really gives on a small synthetic study of ``lesion-ai synth`` (nothing at all).
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from lesion_engine.anatomy.gland import GlandSegmentation, GlandSettings
from lesion_engine.anatomy.gland_card import GlandModelError, read_gland_card
from lesion_engine.anatomy.gland_gate import find_gland, gate_warnings, judge_gland
from lesion_engine.engine import Engine
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.model.result_types import EngineResult
from lesion_engine.results.dicom_outputs import write_outputs
from lesion_engine.results.outputs import Output
from lesion_engine.results.overlay import WARNING_BACKGROUND
from lesion_engine.results.settings import ResultSettings
from orthanc_plugin.worker.processing import EngineProcessor, ProcessingRequest, ProcessorSettings
from training.synth import SynthConfig, generate_case

WHEN = datetime.datetime(2026, 1, 2, 3, 4, 5)
SPACING_ZYX = (3.0, 0.5, 0.5)


def _grid(shape: tuple[int, int, int] = (20, 160, 160)) -> sitk.Image:
    image = sitk.Image(shape[2], shape[1], shape[0], sitk.sitkFloat32)
    image.SetSpacing(SPACING_ZYX[::-1])
    return image


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=np.float64)
    d2 = sum(((a - c) * s) ** 2 for a, c, s in zip((z, y, x), centre, SPACING_ZYX, strict=True))
    return np.asarray(d2 <= radius_mm**2)


def _ml(mask: np.ndarray) -> float:
    return float(mask.sum()) * float(np.prod(SPACING_ZYX)) / 1000.0


def test_each_rule_of_a_plausible_gland() -> None:
    settings = GlandSettings()
    shape = (20, 160, 160)
    gland = _ball(shape, (10, 80, 80), 20.0)  # about 33 ml, well inside the field of view
    assert 25 < _ml(gland) < 40 and judge_gland(gland, _ml(gland), settings) == []
    tiny = _ball(shape, (10, 80, 80), 2.0)
    [problem] = judge_gland(tiny, _ml(tiny), settings)
    assert f"its volume is {_ml(tiny):.2f} ml" in problem and "10 to 300 ml" in problem
    two = _ball(shape, (10, 50, 50), 15.0) | _ball(shape, (10, 110, 110), 15.0)
    assert any("2 separate parts" in p for p in judge_gland(two, _ml(two), settings))
    cut = _ball(shape, (0, 80, 80), 20.0)
    assert any(
        "cut off by the field of view (at the first slice)" in p for p in judge_gland(cut, _ml(cut), settings)
    )
    edge = _ball(shape, (10, 80, 0), 20.0)
    assert any("in-plane border" in p for p in judge_gland(edge, _ml(edge), settings))
    roomy = GlandSettings(min_volume_ml=0.001, max_volume_ml=5000)
    assert judge_gland(tiny, _ml(tiny), roomy) == []
    for low, high in ((300, 10), (-1, 10), (True, 10)):
        with pytest.raises(ValueError, match="min_volume_ml and max_volume_ml"):
            GlandSettings(min_volume_ml=low, max_volume_ml=high)


class _GlandModel:
    """A gland model that finds the given mask (the engine's GlandModel interface, without ONNX)."""

    def __init__(self, mask_for: Any) -> None:
        self.mask_for = mask_for
        self.card = read_gland_card()

    def segment(self, t2w: sitk.Image) -> GlandSegmentation:
        mask = self.mask_for(t2w)
        volume = float(mask.sum()) * float(np.prod(t2w.GetSpacing())) / 1000.0
        return GlandSegmentation(mask=mask, volume_ml=volume, seconds=0.01, passes=1)

    def warm_up(self) -> float:
        return 0.0


def _tiny_gland(t2w: sitk.Image) -> np.ndarray:
    columns, rows, depth = (int(n) for n in t2w.GetSize())
    mask = np.zeros((depth, rows, columns), dtype=bool)
    z, y, x = depth // 2, rows // 2, columns // 2
    mask[z, y - 1 : y + 2, x - 1 : x + 2] = True
    return mask


def test_find_gland_refuses_an_implausible_gland_and_says_why() -> None:
    t2w = _grid()
    warnings: list[str] = []
    model: Any = _GlandModel(_tiny_gland)
    assert find_gland(model, GlandSettings(), t2w, warnings) is None
    [warning] = gate_warnings(warnings)
    assert "implausible" in warning and "0.01 ml" in warning and "not gated" in warning
    with pytest.raises(GlandModelError, match="implausible"):
        find_gland(model, GlandSettings(required=True), t2w, [])
    plausible: Any = _GlandModel(
        lambda image: _ball(sitk.GetArrayViewFromImage(image).shape, (10, 80, 80), 20.0)
    )
    region = find_gland(plausible, GlandSettings(), t2w, warnings := [])
    assert region is not None and warnings == []


def _texts(dataset: Any) -> list[str]:
    return [str(e.value) for e in dataset.iterall() if e.VR in ("UT", "LT", "ST")]


def _check_shown(prepared: PreparedStudy, result: EngineResult) -> None:
    """The gate's warning is in lesions.json, the SR and every overlay image."""
    [warning] = gate_warnings(result.warnings)
    assert warning in result.to_json()["warnings"]
    settings = ResultSettings(sc_all_slices=True)
    objects = write_outputs(prepared, result, [Output.SR, Output.SC], settings, analysis_time=WHEN)
    assert f"Warning: {warning}" in _texts(objects[Output.SR][0])
    quiet = dataclasses.replace(result, warnings=[w for w in result.warnings if w != warning])
    plain = write_outputs(prepared, quiet, [Output.SC], settings, analysis_time=WHEN)[Output.SC]
    shown = objects[Output.SC]
    assert len(shown) == len(plain) > 0
    red = [_reddish(im.pixel_array) for im in shown]
    assert all(n > 100 for n in red), red
    assert not any(_reddish(im.pixel_array) for im in plain)


def _reddish(rgb: np.ndarray) -> int:
    """Pixels of the warning's background (no lesion colour and no grey is this dark red)."""
    return int((rgb == WARNING_BACKGROUND).all(axis=-1).sum())


@pytest.mark.fixture
@pytest.mark.slow
def test_crafted_failure_on_the_real_fixture_is_shown(prostatex: Path) -> None:
    prepared = prepare_study(prostatex / "dicom")
    engine = Engine.from_artifact(None, "cpu")
    engine.gland = _GlandModel(_tiny_gland)  # type: ignore[assignment]
    result = engine.run(prepared)
    assert result.gland_volume_ml is None
    _check_shown(prepared, result)
    # The job's analysis details (the admin page shows them) carry the warning too.
    processor = EngineProcessor(ProcessorSettings())
    processor._engine = engine
    instances = [p.read_bytes() for p in sorted((prostatex / "dicom").rglob("*.dcm"))]
    outcome = processor(instances, ProcessingRequest(job_id=1, study_id="s", rule="r"))
    assert not outcome.failed
    assert gate_warnings(outcome.details["warnings"]) == gate_warnings(result.warnings)
    engine.gland_settings = GlandSettings(required=True)
    with pytest.raises(GlandModelError, match="implausible"):
        engine.run(prepared)
    failed = processor(instances, ProcessingRequest(job_id=2, study_id="s", rule="r"))
    assert failed.failed and failed.reason is not None and "implausible" in failed.reason
    assert failed.report  # a failure report says why


@pytest.mark.slow
def test_the_packaged_gland_model_failing_on_a_synthetic_study_is_shown(tmp_path: Path) -> None:
    case = generate_case(tmp_path, 0, seed=3, config=SynthConfig(vendor="siemens", lesion_kinds=("cspca",)))
    prepared = prepare_study(case / "dicom")
    result = Engine.from_artifact(None, "cpu").run(prepared)
    [warning] = gate_warnings(result.warnings)
    # Nothing at all, or a few voxels: either way the gate says it failed.
    assert "found no prostate gland" in warning or "outside the plausible 10 to 300 ml" in warning
    assert result.gland_volume_ml is None
    _check_shown(prepared, result)
