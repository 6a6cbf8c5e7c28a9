"""The gland network's arithmetic (``GlandSettings.precision``): validated, resolved from the CPU's own
flags, and in bfloat16 the same gland as in float32 on real T2-weighted series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lesion_engine.anatomy import gland as gland_module
from lesion_engine.anatomy.gland import (
    GlandModel,
    GlandSettings,
    load_gland_model,
    native_bfloat16_cpu,
    resolve_precision,
)
from lesion_engine.anatomy.gland_card import read_gland_card, resolve_weights
from lesion_engine.anatomy.gland_gate import judge_gland

#: The least Dice between the bfloat16 and float32 masks of one T2W (measured: 0.991 to 0.9997).
MIN_DICE = 0.99


def test_bad_precisions_are_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"precision must be one of auto, float32, bfloat16, got 'fp16'"):
        GlandSettings(precision="fp16")
    with pytest.raises(ValueError, match=r"with the runtime onnxruntime .* set the runtime to torch or auto"):
        GlandSettings(runtime="onnxruntime", precision="bfloat16")
    card = read_gland_card()
    with pytest.raises(ValueError, match="gland precision must be one of"):
        GlandModel(card, resolve_weights(card), precision="half")


def test_auto_takes_bfloat16_only_for_torch_on_a_cpu_with_bfloat16_instructions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gland_module, "native_bfloat16_cpu", lambda: True)
    assert resolve_precision("auto", "auto", use_cuda=False) == "bfloat16"
    assert resolve_precision("auto", "torch", use_cuda=False) == "bfloat16"
    assert resolve_precision("auto", "onnxruntime", use_cuda=False) == "float32"
    assert resolve_precision("auto", "torch", use_cuda=True) == "float32"
    assert resolve_precision("float32", "torch", use_cuda=False) == "float32"
    monkeypatch.setattr(gland_module, "native_bfloat16_cpu", lambda: False)
    assert resolve_precision("auto", "torch", use_cuda=False) == "float32"
    assert resolve_precision("bfloat16", "torch", use_cuda=False) == "bfloat16"  # asked for: not coerced


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc/cpuinfo")
def test_the_cpu_check_agrees_with_the_kernels_cpu_flags() -> None:
    """The kernel's own word on the CPU: bfloat16 instructions are AVX512-BF16 or AMX-BF16."""
    flags = _cpu_flags()
    assert flags, "no flags line in /proc/cpuinfo"
    assert native_bfloat16_cpu() == bool(flags & {"avx512_bf16", "amx_bf16"})


def _series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image: sitk.Image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    return image


def _moved(
    image: sitk.Image, degrees: float, shift_mm: tuple[float, float, float], scale: float
) -> sitk.Image:
    """The image turned about its axis, shifted and its intensities scaled: the same anatomy, placed and
    weighted otherwise."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    transform = sitk.Euler3DTransform(centre, 0.0, 0.0, float(np.deg2rad(degrees)), shift_mm)
    out = sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0) * scale
    moved: sitk.Image = sitk.Cast(out, sitk.sitkFloat32)
    return moved


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.mark.fixture
@pytest.mark.slow
def test_bfloat16_finds_the_float32_gland_on_real_t2_series(prostatex_series: dict[int, Path]) -> None:
    """On the fixture's four T2-weighted series (two axial, sagittal, coronal) and two moved copies of its
    axial one, the bfloat16 network's gland is float32's within Dice 0.99, judged alike by the gate, and it
    did run in bfloat16 (its logits are not float32's)."""
    settings = GlandSettings(required=True)
    models = {}
    for precision in ("float32", "bfloat16"):
        model, _ = load_gland_model(GlandSettings(required=True, precision=precision), threads=2)
        assert model is not None and model.precision == precision
        models[precision] = model
    axial = _series(prostatex_series[6])
    volumes = {
        number: axial if number == 6 else _series(prostatex_series[number]) for number in (6, 10, 4, 5)
    }
    volumes[61] = _moved(axial, 8.0, (6.0, -9.0, 4.0), 2.5)
    volumes[62] = _moved(axial, -12.0, (-10.0, 5.0, -6.0), 0.4)
    found = 0
    for name, t2w in volumes.items():
        single, half = (models[p].segment(t2w) for p in ("float32", "bfloat16"))
        assert single.mask.any() == half.mask.any(), name
        if single.mask.any():
            found += 1
            assert _dice(single.mask, half.mask) >= MIN_DICE, name
        plausible = [not judge_gland(s.mask, s.volume_ml, settings) for s in (single, half)]
        assert plausible[0] == plausible[1], name
    assert found >= 5  # the glands were found, so the masks were compared
    window = (
        np.random.default_rng(0).standard_normal((1, 1, *read_gland_card().window_xyz)).astype(np.float32)
    )
    logits = {p: m.network_logits(window) for p, m in models.items()}
    assert not np.array_equal(logits["float32"], logits["bfloat16"])
