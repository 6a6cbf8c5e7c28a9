"""Lesion measurements on an image grid (lesion_engine.model.measurements): centre and volume."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from numpy.typing import NDArray

from lesion_engine import engine
from lesion_engine.model.measurements import axial_diameter_mm, center_lps_mm, max_diameter_mm, volume_ml


def _image() -> sitk.Image:
    image = sitk.Image(10, 8, 6, sitk.sitkUInt8)
    image.SetSpacing((0.5, 0.5, 3.0))
    image.SetOrigin((-10.0, 20.0, 5.0))
    return image


def test_centre_and_volume_of_a_box() -> None:
    image = _image()
    mask: NDArray[np.bool_] = np.zeros((6, 8, 10), dtype=bool)
    mask[1:3, 2:4, 4:8] = True  # 2 x 2 x 4 voxels
    assert volume_ml(mask, image) == pytest.approx(16 * 0.5 * 0.5 * 3.0 / 1000.0)
    # Centre of mass of the voxel indices (z 1.5, y 2.5, x 5.5), in LPS mm.
    assert center_lps_mm(mask, image) == pytest.approx((-10.0 + 5.5 * 0.5, 20.0 + 2.5 * 0.5, 5.0 + 1.5 * 3.0))
    box = (slice(1, 3), slice(2, 4), slice(4, 8))
    assert center_lps_mm(mask, image, box) == center_lps_mm(mask, image)
    assert volume_ml(mask, image, box) == volume_ml(mask, image)


def test_empty_and_misfit_masks() -> None:
    image = _image()
    empty: NDArray[np.bool_] = np.zeros((6, 8, 10), dtype=bool)
    assert volume_ml(empty, image) == 0.0
    with pytest.raises(ValueError, match="no centre"):
        center_lps_mm(empty, image)
    with pytest.raises(ValueError, match="differs"):
        volume_ml(np.zeros((8, 6, 10), dtype=bool), image)


def test_engine_keeps_the_measurement_names() -> None:
    assert engine.max_diameter_mm is max_diameter_mm
    assert engine.axial_diameter_mm is axial_diameter_mm
