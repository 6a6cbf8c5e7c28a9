"""Data augmentation for bpMRI on the model grid, applied identically to image channels and label maps.

Spatial (one transform for everything; linear interpolation for images, nearest neighbour for labels):

* left-right flip (the model grid's x axis is the T2W's row direction, left-right on axial scans);
* small in-plane rotation about the slice normal and in-plane scaling (slices are thick, so nothing tilts
  across slices).

The spatial transform is sampled directly on the output crop (:func:`augment_crop`), so rotating a crop
costs no more than cutting it and never brings in the crop's own zero border.

Intensity (images only, inside the field of view, i.e. where a channel is non-zero):

* per-channel scale and shift;
* gamma on T2W and HBV;
* a smooth multiplicative bias field (low-order polynomial, as from coil sensitivity) on T2W and HBV;
* Gaussian noise, or Rician-like noise on the magnitude channels (T2W, HBV).

ADC is a quantitative map: it gets only a mild scale and noise. Everything is drawn from the
``numpy.random.Generator`` passed in, so a given generator state always gives the same result.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = ["AugmentConfig", "SpatialParams", "augment_crop", "augment_intensity", "sample_spatial"]

Triple = tuple[int, int, int]
MAGNITUDE_CHANNELS: tuple[int, ...] = (0, 2)
"""T2W and HBV: magnitude images (bias field, gamma and Rician noise apply)."""


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(
            f"AugmentConfig.{name} must be (min, max) with {low} <= min <= max <= {high}, got {value!r}"
        )


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (probabilities per sample; ranges are uniform).

    Attributes
    ----------
    p_flip : float
        Probability of a left-right flip.
    p_rotate : float
        Probability of an in-plane rotation.
    rotation_deg : (float, float)
        Rotation range in degrees.
    p_scale : float
        Probability of in-plane scaling.
    scale : (float, float)
        Scale range (> 1 enlarges the anatomy).
    p_intensity : float
        Probability of the per-channel scale and shift.
    intensity_scale, intensity_shift : (float, float)
        Ranges of the multiplicative and additive change (normalized units).
    p_gamma : float
        Probability of a gamma change (T2W, HBV).
    gamma : (float, float)
        Gamma range.
    p_bias : float
        Probability of a bias field (T2W, HBV).
    bias_strength : float
        Standard deviation of the bias polynomial's coefficients (log scale).
    p_noise : float
        Probability of noise.
    noise_std : (float, float)
        Range of the noise standard deviation (normalized units).
    p_rician : float
        Given noise, probability that it is Rician-like on the magnitude channels.
    """

    p_flip: float = 0.5
    p_rotate: float = 0.5
    rotation_deg: tuple[float, float] = (-12.0, 12.0)
    p_scale: float = 0.4
    scale: tuple[float, float] = (0.9, 1.12)
    p_intensity: float = 0.7
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.8, 1.25)
    p_bias: float = 0.3
    bias_strength: float = 0.12
    p_noise: float = 0.3
    noise_std: tuple[float, float] = (0.0, 0.08)
    p_rician: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "p_flip",
            "p_rotate",
            "p_scale",
            "p_intensity",
            "p_gamma",
            "p_bias",
            "p_noise",
            "p_rician",
        ):
            _check_prob(name, getattr(self, name))
        _check_range("rotation_deg", self.rotation_deg, -45.0, 45.0)
        _check_range("scale", self.scale, 0.5, 2.0)
        _check_range("intensity_scale", self.intensity_scale, 0.1, 10.0)
        _check_range("intensity_shift", self.intensity_shift, -5.0, 5.0)
        _check_range("gamma", self.gamma, 0.1, 10.0)
        _check_range("noise_std", self.noise_std, 0.0, 5.0)
        if not 0.0 <= self.bias_strength <= 1.0:
            raise ValueError(f"AugmentConfig.bias_strength must be in [0, 1], got {self.bias_strength!r}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """A configuration that changes nothing."""
        return cls(
            p_flip=0.0, p_rotate=0.0, p_scale=0.0, p_intensity=0.0, p_gamma=0.0, p_bias=0.0, p_noise=0.0
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SpatialParams:
    """One drawn spatial transform."""

    flip: bool
    angle_deg: float
    scale: float

    @property
    def is_identity(self) -> bool:
        """Whether the transform changes nothing."""
        return not self.flip and self.angle_deg == 0.0 and self.scale == 1.0


def sample_spatial(config: AugmentConfig, rng: np.random.Generator) -> SpatialParams:
    """Draw a spatial transform (always the same number of draws, whatever the probabilities)."""
    u = rng.random(3)
    angle = float(rng.uniform(*config.rotation_deg))
    scale = float(rng.uniform(*config.scale))
    return SpatialParams(
        flip=bool(u[0] < config.p_flip),
        angle_deg=angle if u[1] < config.p_rotate else 0.0,
        scale=scale if u[2] < config.p_scale else 1.0,
    )


def _matrix(params: SpatialParams) -> NDArray[np.float64]:
    """Output-to-input voxel matrix (z, y, x): rotation and scaling in-plane, then the flip."""
    theta = np.deg2rad(params.angle_deg)
    c, s = np.cos(theta), np.sin(theta)
    in_plane = np.array([[c, -s], [s, c]]) / params.scale
    matrix = np.eye(3)
    matrix[1:, 1:] = in_plane
    if params.flip:
        matrix[:, 2] *= -1.0
    return matrix


def augment_crop(
    images: NDArray[np.float32],
    labels: dict[str, NDArray[Any]],
    origin: Triple,
    size: Triple,
    config: AugmentConfig | None,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float32], dict[str, NDArray[Any]]]:
    """Cut a crop out of a case and augment it, images and labels alike.

    Parameters
    ----------
    images : ndarray
        (C, Z, Y, X) float32.
    labels : dict of str to ndarray
        (Z, Y, X) integer maps (csPCa, zones, lesion index, ...).
    origin : (z, y, x)
        First voxel of the crop in the case; the crop may reach past the case's border (zero-filled).
    size : (z, y, x)
        Crop size.
    config : AugmentConfig or None
        None: cut only.
    rng : numpy.random.Generator
        Source of every random choice.

    Returns
    -------
    (images, labels)
        The crop's (C, *size) images and (*size) labels, same dtypes as given.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (C, Z, Y, X), got shape {images.shape}")
    params = sample_spatial(config, rng) if config is not None else SpatialParams(False, 0.0, 1.0)
    if params.is_identity:
        out_images = _cut(images, origin, size)
        out_labels = {k: _cut(v[None], origin, size)[0] for k, v in labels.items()}
    else:
        matrix = _matrix(params)
        centre_out = (np.asarray(size, dtype=np.float64) - 1.0) / 2.0
        centre_in = np.asarray(origin, dtype=np.float64) + centre_out
        offset = centre_in - matrix @ centre_out
        out_images = np.stack(
            [
                ndimage.affine_transform(
                    ch, matrix, offset, output_shape=size, order=1, mode="constant", cval=0.0
                )
                for ch in images
            ]
        ).astype(np.float32)
        out_labels = {
            k: ndimage.affine_transform(
                v, matrix, offset, output_shape=size, order=0, mode="constant", cval=0
            ).astype(v.dtype)
            for k, v in labels.items()
        }
    if config is not None:
        out_images = augment_intensity(out_images, config, rng)
    return out_images, out_labels


def _cut(array: NDArray[Any], origin: Triple, size: Triple) -> NDArray[Any]:
    """(C, *size) window of a (C, Z, Y, X) array starting at ``origin``, zero-filled outside."""
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    src, dst = [], []
    for o, s, n in zip(origin, size, array.shape[1:], strict=True):
        lo, hi = max(o, 0), min(o + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


def _bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> NDArray[np.float32]:
    """exp of a random second-order polynomial over the volume (smooth, mean about 1)."""
    z, y, x = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    terms = [xx, yy, zz, xx * yy, xx * zz, yy * zz, xx * xx, yy * yy, zz * zz]
    coefficients = rng.normal(0.0, strength, len(terms))
    log_field = np.zeros(shape, dtype=np.float32)
    for c, t in zip(coefficients, terms, strict=True):
        log_field += np.float32(c) * t
    field: NDArray[np.float32] = np.exp(log_field).astype(np.float32)
    return field


def augment_intensity(
    images: NDArray[np.float32], config: AugmentConfig, rng: np.random.Generator
) -> NDArray[np.float32]:
    """Intensity augmentation of (C, Z, Y, X) images inside the field of view (see the module docstring)."""
    out = images.astype(np.float32, copy=True)
    inside = np.any(out != 0.0, axis=0)
    if not inside.any():
        return out
    n_channels = out.shape[0]
    # Fixed number of draws per call, so that the stream does not depend on which branches run.
    u = rng.random(5)
    scales = np.asarray(
        rng.uniform(config.intensity_scale[0], config.intensity_scale[1], size=n_channels), dtype=np.float64
    )
    shifts = np.asarray(
        rng.uniform(config.intensity_shift[0], config.intensity_shift[1], size=n_channels), dtype=np.float64
    )
    gammas = np.asarray(rng.uniform(config.gamma[0], config.gamma[1], size=n_channels), dtype=np.float64)
    noise_std = float(rng.uniform(*config.noise_std))
    rician = bool(rng.random() < config.p_rician)
    bias_seed = int(rng.integers(2**31))
    noise_seed = int(rng.integers(2**31))
    magnitude = [c for c in MAGNITUDE_CHANNELS if c < n_channels]
    if u[0] < config.p_bias:
        field = _bias_field(out.shape[1:], config.bias_strength, np.random.default_rng(bias_seed))
        for c in magnitude:
            low = float(out[c][inside].min())
            out[c] = np.where(inside, (out[c] - low) * field + low, out[c])
    if u[1] < config.p_gamma:
        for c in magnitude:
            values = out[c][inside]
            low, high = float(values.min()), float(values.max())
            if high - low > 1e-6:
                norm = np.clip((out[c] - low) / (high - low), 0.0, 1.0)
                out[c] = np.where(inside, norm ** np.float32(gammas[c]) * (high - low) + low, out[c])
    if u[2] < config.p_intensity:
        for c in range(n_channels):
            if c in magnitude:
                out[c] = np.where(inside, out[c] * np.float32(scales[c]) + np.float32(shifts[c]), out[c])
            else:  # quantitative (ADC): a mild scale only
                mild = 1.0 + (scales[c] - 1.0) * 0.5
                out[c] = np.where(inside, out[c] * np.float32(mild), out[c])
    if u[3] < config.p_noise and noise_std > 0:
        noise_rng = np.random.default_rng(noise_seed)
        for c in range(n_channels):
            n1 = noise_rng.normal(0.0, noise_std, out.shape[1:]).astype(np.float32)
            if rician and c in magnitude:
                n2 = noise_rng.normal(0.0, noise_std, out.shape[1:]).astype(np.float32)
                low = float(out[c][inside].min())
                magnitude_values = out[c] - low
                noisy = np.sqrt((magnitude_values + n1) ** 2 + n2**2) + low
                out[c] = np.where(inside, noisy, out[c])
            else:
                out[c] = np.where(inside, out[c] + n1, out[c])
    return out.astype(np.float32)
