"""The network input: the torch path (used on a GPU) equals the SimpleITK path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.model.model_input import PreprocessConfig, to_model_input, to_model_input_tensor
from training.evaluation.evaluate import prepared_from_images


def _assert_same_input(prepared: PreparedStudy, config: PreprocessConfig) -> None:
    reference = to_model_input(prepared, config)
    ours = to_model_input_tensor(prepared, config, "cpu")
    coverage = sitk.GetArrayFromImage(reference.grid).astype(bool)
    assert ours.images.shape == (3, *config.size_zyx) and ours.images.dtype.is_floating_point
    np.testing.assert_array_equal(ours.coverage.numpy(), coverage)
    assert coverage.mean() > 0
    for channel in range(3):
        expected = reference.images[channel]
        assert np.abs(expected).max() > 0.1  # a real image, not zeros
        assert np.abs(ours.images[channel].numpy() - expected).max() < 1e-4
    assert ours.grid.GetSize() == reference.grid.GetSize()
    assert np.allclose(ours.grid.GetOrigin(), reference.grid.GetOrigin())


@pytest.mark.fixture
def test_fixture_input_on_torch_equals_simpleitk(prostatex: Path) -> None:
    prepared = prepare_study(prostatex / "dicom")
    assert prepared.native.get("high_b") is not None  # the fixture's b1400 is computed
    _assert_same_input(prepared, PreprocessConfig())
    _assert_same_input(prepared, PreprocessConfig(hbv_source="native", size_zyx=(16, 96, 112)))


def _image(
    size_xyz: tuple[int, int, int], spacing: tuple[float, float, float], tilt_deg: float, seed: int
) -> sitk.Image:
    zz, yy, xx = np.meshgrid(*(np.linspace(0, 1, n) for n in size_xyz[::-1]), indexing="ij")
    noise = np.random.default_rng(seed).random(size_xyz[::-1])
    values = (1000 * (np.sin(6 * xx) * np.cos(5 * yy) + zz) + 300 * noise + 1200).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    angle = np.deg2rad(tilt_deg)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image.SetDirection(tuple(float(v) for v in rotation.ravel()))
    centre = np.array([0.0, 10.0, -5.0])
    extent = rotation @ (np.asarray(spacing) * (np.asarray(size_xyz) - 1) / 2)
    image.SetOrigin(tuple(float(v) for v in centre - extent))
    return image


def test_input_from_diffusion_in_another_orientation() -> None:
    # T2W tilted 8 degrees, diffusion 15 degrees: ADC and HBV are resampled obliquely onto the T2W grid
    t2w = _image((160, 150, 14), (0.7, 0.7, 3.5), 8.0, seed=1)
    adc = _image((70, 60, 16), (2.2, 2.2, 3.0), 15.0, seed=2)
    hbv = _image((70, 60, 16), (2.2, 2.2, 3.0), 15.0, seed=3)
    prepared = prepared_from_images("case", t2w, adc, hbv)
    _assert_same_input(prepared, PreprocessConfig(size_zyx=(16, 96, 96)))


def test_input_refuses_a_study_without_a_high_b_volume() -> None:
    t2w = _image((32, 32, 6), (1.0, 1.0, 3.0), 0.0, seed=1)
    with pytest.raises(ValueError, match="high b-value"):
        PreparedStudy(
            study_instance_uid="1.2.3",
            t2w=t2w,
            native={"t2w": t2w, "adc": t2w},
            roles={},
            computed=None,
            loaded=prepared_from_images("c", t2w, t2w, t2w).loaded,
            verdicts={},
        )
