"""Separable linear resampling between grids of one orientation: equal to SimpleITK's, on any device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lesion_engine.grid_resample import grid_map, resample_linear
from lesion_engine.model_input import PreprocessConfig, from_model_grid, model_grid


def _image(
    size_xyz: tuple[int, int, int], spacing: tuple[float, float, float], tilt_deg: float
) -> sitk.Image:
    image = sitk.Image(list(size_xyz), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin((-101.3, 37.2, -12.9))
    angle = np.deg2rad(tilt_deg)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]], dtype=np.float64
    )
    image.SetDirection(tuple(float(v) for v in rotation.ravel()))
    return image


@pytest.mark.parametrize(
    ("size_xyz", "spacing", "tilt"),
    [
        ((384, 384, 19), (0.5, 0.5, 3.0), 0.0),  # the fixture's T2W: odd slice count, half-way slices
        ((320, 320, 24), (0.5625, 0.5625, 3.6), 12.0),  # tilted, even slice count, other spacing
        ((257, 300, 5), (0.7, 0.6, 4.0), -7.0),  # odd matrix, few slices (the model grid extends beyond)
    ],
)
def test_model_grid_to_t2w_equals_simpleitk(
    size_xyz: tuple[int, int, int], spacing: tuple[float, float, float], tilt: float
) -> None:
    t2w = _image(size_xyz, spacing, tilt)
    grid = model_grid(t2w, PreprocessConfig())
    values = np.random.default_rng(3).random(grid.GetSize()[::-1]).astype(np.float32)
    expected = sitk.GetArrayFromImage(from_model_grid(values, grid, t2w))
    ours = resample_linear(torch.from_numpy(values), grid_map(grid, t2w)).numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-5
    assert (ours == 0).sum() == (expected == 0).sum()  # same voxels outside the model's field of view


def test_t2w_to_model_grid_equals_simpleitk_inside() -> None:
    t2w = _image((200, 180, 16), (0.6, 0.6, 3.0), 5.0)
    values = np.random.default_rng(4).random(t2w.GetSize()[::-1]).astype(np.float32)
    t2w = sitk.GetImageFromArray(values)
    t2w.CopyInformation(_image((200, 180, 16), (0.6, 0.6, 3.0), 5.0))
    grid = model_grid(t2w, PreprocessConfig(size_zyx=(14, 96, 96)))
    expected = sitk.GetArrayFromImage(
        sitk.Resample(t2w, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    ours = resample_linear(torch.from_numpy(values), grid_map(t2w, grid)).numpy()
    # Exactly half a voxel outside, SimpleITK's choice follows floating-point noise; everywhere else equal.
    inside = (expected != 0) & (ours != 0)
    assert inside.mean() > 0.9
    assert np.abs(ours - expected)[inside].max() < 1e-5


def test_other_orientations_are_refused() -> None:
    with pytest.raises(ValueError, match="same direction"):
        grid_map(_image((10, 10, 4), (1, 1, 3), 0.0), _image((10, 10, 4), (1, 1, 3), 20.0))
    with pytest.raises(ValueError, match="Z, Y, X"):
        resample_linear(
            torch.zeros(4, 4), grid_map(_image((4, 4, 2), (1, 1, 1), 0), _image((4, 4, 2), (1, 1, 1), 0))
        )


def test_fixture_grid_round_trip(prostatex: Path) -> None:
    from lesion_engine.preprocess import prepare_study

    t2w = prepare_study(prostatex / "dicom").t2w
    grid = model_grid(t2w, PreprocessConfig())
    ramp = np.fromfunction(lambda z, y, x: z + 0.1 * y + 0.01 * x, grid.GetSize()[::-1], dtype=np.float32)
    expected = sitk.GetArrayFromImage(from_model_grid(ramp, grid, t2w))
    ours = resample_linear(torch.from_numpy(ramp), grid_map(grid, t2w)).numpy()
    assert np.abs(ours - expected).max() < 1e-4
