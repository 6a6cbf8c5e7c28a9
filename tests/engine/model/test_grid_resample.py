"""Separable linear resampling between grids of one orientation: equal to SimpleITK's, on any device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from lesion_engine.model.grid_resample import (
    coverage_mask,
    grid_map,
    resample_affine_linear,
    resample_linear,
    resample_nearest,
)
from lesion_engine.model.model_input import PreprocessConfig, from_model_grid, model_grid


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
    from lesion_engine.intake.preprocess import prepare_study

    t2w = prepare_study(prostatex / "dicom").t2w
    grid = model_grid(t2w, PreprocessConfig())
    ramp = np.fromfunction(lambda z, y, x: z + 0.1 * y + 0.01 * x, grid.GetSize()[::-1], dtype=np.float32)
    expected = sitk.GetArrayFromImage(from_model_grid(ramp, grid, t2w))
    ours = resample_linear(torch.from_numpy(ramp), grid_map(grid, t2w)).numpy()
    assert np.abs(ours - expected).max() < 1e-4


def _rotated(
    values: NDArray[np.float32] | None,
    size_xyz: tuple[int, int, int],
    spacing: tuple[float, float, float],
    angles_deg: tuple[float, float, float],
    origin: tuple[float, float, float],
) -> sitk.Image:
    """An image with direction cosines rotated about x, then y, then z."""
    if values is None:
        values = np.random.default_rng(7).random(size_xyz[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    image.SetDirection(tuple(float(v) for v in (rz @ ry @ rx).ravel()))
    return image


@pytest.mark.parametrize(
    ("source_angles", "target_angles"),
    [
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),  # same orientation, other spacing and origin (the usual DWI)
        ((13.0, 0.0, 0.0), (-5.0, 0.0, 0.0)),  # both tilted about x, differently
        ((4.0, 11.0, -7.0), (0.0, -3.0, 20.0)),  # oblique in every direction
    ],
)
def test_affine_linear_equals_simpleitk(
    source_angles: tuple[float, float, float], target_angles: tuple[float, float, float]
) -> None:
    source = _rotated(None, (64, 50, 12), (2.1, 2.0, 3.5), source_angles, (-60.0, -40.0, -20.0))
    target = _rotated(
        np.zeros((22, 180, 200), dtype=np.float32),
        (200, 180, 22),
        (0.6, 0.6, 3.0),
        target_angles,
        (-55.0, -50.0, -25.0),
    )
    expected = sitk.GetArrayFromImage(
        sitk.Resample(source, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    ours = resample_affine_linear(torch.from_numpy(sitk.GetArrayFromImage(source)), source, target).numpy()
    assert ours.shape == expected.shape == (22, 180, 200)
    assert 0.2 < (expected != 0).mean() < 1.0  # part of the target lies outside the source
    np.testing.assert_array_equal(ours == 0, expected == 0)
    assert np.abs(ours - expected).max() < 1e-5


def test_affine_linear_on_the_fixture_equals_simpleitk(prostatex: Path) -> None:
    from lesion_engine.intake.preprocess import prepare_study

    prepared = prepare_study(prostatex / "dicom")
    adc = prepared.native["adc"]
    ours = resample_affine_linear(
        torch.from_numpy(sitk.GetArrayFromImage(adc).astype(np.float32)), adc, prepared.t2w
    ).numpy()
    expected = sitk.GetArrayFromImage(prepared.adc)  # SimpleITK, through resample_to
    assert np.abs(ours - expected).max() <= 1e-6 * float(expected.max())


def test_affine_linear_refuses_a_wrong_shape() -> None:
    source = _rotated(None, (8, 6, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"source grid is \(Z, Y, X\) \(4, 6, 8\)"):
        resample_affine_linear(torch.zeros(4, 8, 6), source, source)


def _half_way(mapping_axis_positions: NDArray[np.float64]) -> NDArray[np.bool_]:
    fraction = mapping_axis_positions - np.floor(mapping_axis_positions)
    return np.abs(fraction - 0.5) < 1e-6


@pytest.mark.parametrize("tilt", [0.0, 9.0])
def test_nearest_equals_simpleitk_away_from_half_way_points(tilt: float) -> None:
    # 19 slices of 3.6 mm on a grid of 3 mm: three T2W slices lie half-way between two of the grid's
    t2w = _image((384, 384, 19), (0.5, 0.5, 3.6), tilt)
    grid = model_grid(t2w, PreprocessConfig())
    labels = np.zeros(grid.GetSize()[::-1], dtype=np.uint16)
    labels[5:12, 40:70, 50:90] = 3
    labels[8:10, 20:25, 20:30] = 7
    labels[0, 0, 0] = 1  # a corner of the grid
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(grid)
    expected = sitk.GetArrayFromImage(
        sitk.Resample(image, t2w, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    )
    mapping = grid_map(grid, t2w)
    ours, box = resample_nearest(labels, mapping)
    assert ours.dtype == labels.dtype and ours.shape == expected.shape
    assert box is not None
    outside = np.ones(ours.shape, dtype=bool)
    outside[box] = False
    assert not ours[outside].any()  # the box holds every blob
    # Where a T2W voxel centre lies half-way between two grid voxels, either is right; elsewhere equal.
    ties = np.zeros(ours.shape, dtype=bool)
    for dim, axis in enumerate(mapping.axes):
        position = axis.lower + axis.weight
        shape = [1, 1, 1]
        shape[dim] = -1
        ties |= _half_way(position).reshape(shape)
    assert ties.any(axis=(1, 2)).sum() == 3  # slices 4, 9 and 14
    np.testing.assert_array_equal(ours[~ties], expected[~ties])
    assert {3, 7, 1} <= set(np.unique(ours).tolist())


def test_nearest_of_an_empty_map() -> None:
    t2w = _image((40, 40, 6), (1.0, 1.0, 3.0), 0.0)
    mapping = grid_map(model_grid(t2w, PreprocessConfig(size_zyx=(4, 16, 16))), t2w)
    out, box = resample_nearest(np.zeros((4, 16, 16), dtype=np.uint8), mapping)
    assert box is None and out.shape == (6, 40, 40) and not out.any()
    with pytest.raises(ValueError, match="Z, Y, X"):
        resample_nearest(np.zeros((16, 16), dtype=np.uint8), mapping)


@pytest.mark.parametrize("slices", [19, 20, 5])
def test_coverage_mask_equals_simpleitk(slices: int) -> None:
    t2w = _image((300, 320, slices), (0.55, 0.55, 3.3), 6.0)
    grid = model_grid(t2w, PreprocessConfig())
    ones = sitk.Image(t2w.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(t2w)
    expected = sitk.GetArrayFromImage(
        sitk.Resample(ones, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ).astype(bool)
    ours = coverage_mask(grid_map(t2w, grid)).numpy()
    assert expected.sum() > 0 and ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)
