"""Augmentation keeps images and labels aligned, is deterministic, and validates its settings."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.datasets.augment import AugmentConfig, augment_crop, augment_intensity

SHAPE = (12, 64, 64)


def _phantom() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Three channels with two bright blobs off-centre, and their label."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    blob_a = ((zz - 6) / 2.5) ** 2 + ((yy - 22) / 6.0) ** 2 + ((xx - 40) / 6.0) ** 2 <= 1.0
    blob_b = ((zz - 5) / 2.0) ** 2 + ((yy - 44) / 5.0) ** 2 + ((xx - 20) / 4.0) ** 2 <= 1.0
    label = blob_a.astype(np.int16) * 3 + blob_b.astype(np.int16) * 2
    base = np.where(label > 0, 5.0, 1.0).astype(np.float32)
    images = np.stack([base, base * 0.5, base * 2.0]).astype(np.float32)
    return images, {"cspca": label, "lesion_index": (label > 0).astype(np.int16) + blob_b}


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.asarray(ndimage.center_of_mass(mask))


@pytest.mark.parametrize("seed", range(6))
def test_spatial_augmentation_keeps_alignment(seed: int) -> None:
    images, labels = _phantom()
    config = AugmentConfig(p_flip=0.5, p_rotate=1.0, rotation_deg=(-15, 15), p_scale=1.0, p_intensity=0.0,
                           p_gamma=0.0, p_bias=0.0, p_noise=0.0)  # fmt: skip
    out_images, out_labels = augment_crop(
        images, labels, (2, 8, 8), (8, 48, 48), config, np.random.default_rng(seed)
    )
    assert out_images.shape == (3, 8, 48, 48) and out_images.dtype == np.float32
    assert out_labels["cspca"].dtype == np.int16
    assert set(np.unique(out_labels["cspca"])) <= {0, 2, 3}  # nearest neighbour: no new label values
    for value in (2, 3):
        mask = out_labels["cspca"] == value
        if mask.sum() < 10:
            continue
        bright = out_images[0] > 3.0
        # the label sits on the bright blob: high overlap and the same centre
        overlap = (mask & bright).sum() / mask.sum()
        assert overlap > 0.8
        blob = ndimage.label(bright)[0]
        component = blob == np.bincount(blob[mask]).argmax()
        assert np.allclose(_centroid(mask), _centroid(component), atol=1.0)
    # every channel moved the same way
    assert np.array_equal(out_images[1] > 1.5, out_images[0] > 3.0)
    assert np.array_equal(out_images[2] > 6.0, out_images[0] > 3.0)


def test_flip_is_left_right_and_identity_is_a_plain_crop() -> None:
    images, labels = _phantom()
    flip_only = AugmentConfig(p_flip=1.0, p_rotate=0.0, p_scale=0.0, p_intensity=0.0, p_gamma=0.0, p_bias=0.0,
                              p_noise=0.0)  # fmt: skip
    out_images, out_labels = augment_crop(
        images, labels, (0, 0, 0), SHAPE, flip_only, np.random.default_rng(0)
    )
    assert np.array_equal(out_labels["cspca"], labels["cspca"][:, :, ::-1])
    assert np.allclose(out_images, images[:, :, :, ::-1])
    plain_images, plain_labels = augment_crop(
        images, labels, (2, 8, 8), (8, 48, 48), None, np.random.default_rng(0)
    )
    none_images, _ = augment_crop(
        images, labels, (2, 8, 8), (8, 48, 48), AugmentConfig.none(), np.random.default_rng(0)
    )
    assert np.array_equal(none_images, plain_images)
    assert np.array_equal(plain_images, images[:, 2:10, 8:56, 8:56])
    assert np.array_equal(plain_labels["cspca"], labels["cspca"][2:10, 8:56, 8:56])
    # a crop reaching past the border is zero-filled
    edge_images, _ = augment_crop(images, labels, (8, 40, 40), (8, 32, 32), None, np.random.default_rng(0))
    assert edge_images.shape == (3, 8, 32, 32) and np.all(edge_images[:, 4:] == 0)


def test_augmentation_is_deterministic_given_the_generator() -> None:
    images, labels = _phantom()
    config = AugmentConfig(p_flip=0.5, p_rotate=1.0, p_scale=1.0, p_intensity=1.0, p_gamma=1.0, p_bias=1.0,
                           p_noise=1.0)  # fmt: skip
    a = augment_crop(images, labels, (2, 8, 8), (8, 48, 48), config, np.random.default_rng(42))
    b = augment_crop(images, labels, (2, 8, 8), (8, 48, 48), config, np.random.default_rng(42))
    c = augment_crop(images, labels, (2, 8, 8), (8, 48, 48), config, np.random.default_rng(43))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1]["cspca"], b[1]["cspca"])
    assert not np.array_equal(a[0], c[0])


def test_intensity_augmentation_stays_inside_the_field_of_view() -> None:
    images, _ = _phantom()
    images[:, :2] = 0.0  # slices outside the T2W's coverage
    config = AugmentConfig(p_intensity=1.0, p_gamma=1.0, p_bias=1.0, p_noise=1.0, noise_std=(0.05, 0.1))
    out = augment_intensity(images, config, np.random.default_rng(1))
    assert np.all(out[:, :2] == 0.0)
    assert np.all(np.isfinite(out)) and not np.array_equal(out, images)
    # the lesion stays brighter than its surroundings on every channel
    lesion = images[0] > 3.0
    for c in range(3):
        assert out[c][lesion].mean() > out[c][~lesion & (images[0] > 0)].mean()


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="p_flip"):
        AugmentConfig(p_flip=1.5)
    with pytest.raises(ValueError, match="rotation_deg"):
        AugmentConfig(rotation_deg=(10.0, -10.0))
    with pytest.raises(ValueError, match="bias_strength"):
        AugmentConfig(bias_strength=2.0)
