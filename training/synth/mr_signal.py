"""MR contrast simulation: sampling the phantom on a grid, signal models, bias field, noise, ADC fitting.

Signals are in arbitrary scanner units. Diffusion follows the mono-exponential model
``S_b = S0 * exp(-b * ADC)``; the ADC map and calculated high-b images are derived from the noisy DWI
images the way a scanner does it (log-linear least squares over all acquired b-values, extrapolation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from training.synth.geometry import Grid
from training.synth.phantom import Phantom, TissueProperties

logger = logging.getLogger(__name__)

__all__ = [
    "BiasField",
    "Contrast",
    "adc_fit",
    "dce_contrast",
    "dti_b_values",
    "dti_contrast",
    "dwi_contrast",
    "fractional_anisotropy",
    "oversample_for",
    "pd_contrast",
    "rician",
    "sample_grid",
    "t2_contrast",
]

FloatArray = NDArray[np.float64]
Contrast = Callable[[TissueProperties], FloatArray]
"""Maps tissue properties (arrays of shape ``S``) to signals of shape ``(m, *S)`` (``m`` channels)."""

ADC_UNIT = 1e-6  # ADC values are in 1e-6 mm2/s


def oversample_for(grid: Grid, target_mm: float = 1.5, cap: int = 2) -> tuple[int, int, int]:
    """Sub-samples per voxel along each axis so that sub-voxels are at most about ``target_mm`` wide."""
    extents = (grid.spacing[0], grid.spacing[1], grid.thickness)
    return tuple(min(cap, max(1, int(np.ceil(e / target_mm - 1e-6)))) for e in extents)  # type: ignore[return-value]


def sample_grid(
    phantom: Phantom, grid: Grid, contrast: Contrast, oversample: tuple[int, int, int] | None = None
) -> FloatArray:
    """Noise-free signal of ``contrast`` on ``grid``, averaged over sub-voxels (partial volume).

    Returns
    -------
    numpy.ndarray
        Shape ``(m, slices, rows, columns)``.
    """
    over = oversample if oversample is not None else oversample_for(grid)
    out: FloatArray | None = None
    for k in range(grid.size[2]):
        lat = grid.lattice(k, over)  # points (n_sub, rows, cols, 3)
        sig = contrast(phantom.properties(lat.points, lat))  # (m, n_sub, rows, cols)
        plane = sig.mean(axis=1)
        if out is None:
            out = np.zeros((plane.shape[0], *grid.shape))
        out[:, k] = plane
    assert out is not None
    return out


def t2_contrast(props: TissueProperties) -> FloatArray:
    """T2-weighted (TSE) signal."""
    return props.t2[None]


def pd_contrast(props: TissueProperties) -> FloatArray:
    """Proton-density weighted signal (coil reference scans)."""
    return props.pd[None]


def dwi_contrast(b_values: Sequence[float]) -> Contrast:
    """Diffusion-weighted trace signal at each b-value (s/mm2), channels in the order given."""
    bs = np.asarray(b_values, dtype=np.float64)

    def contrast(props: TissueProperties) -> FloatArray:
        adc = props.adc * ADC_UNIT
        return np.asarray(props.s0[None] * np.exp(-bs.reshape((-1,) + (1,) * adc.ndim) * adc[None]))

    return contrast


DTI_AXIS: tuple[float, float, float] = (0.0, 0.0, 1.0)
"""Principal diffusion axis of the phantom's (mildly anisotropic) tissue: head-feet, along the urethra."""
DTI_ANISOTROPY = 0.3
"""Relative excess diffusivity along :data:`DTI_AXIS` (eigenvalues ``ADC (1 + a)`` and ``ADC (1 - a / 2)``)."""


def dti_b_values(b_value: float, directions: Sequence[Sequence[float]]) -> NDArray[np.float64]:
    """Effective isotropic b-values of a DTI scan: b = 0, then ``b_value`` along each gradient direction.

    Diffusivity along unit direction ``g`` is ``ADC (1 + a P2(g . axis))`` with ``P2(x) = (3 x^2 - 1) / 2``,
    whose mean over a balanced direction set is 0: the geometric mean of the directional images is the trace
    image ``S0 exp(-b ADC)``.
    """
    g = np.asarray(directions, dtype=np.float64)
    axis = np.asarray(DTI_AXIS, dtype=np.float64)
    p2 = (3.0 * (g @ axis) ** 2 - 1.0) / 2.0
    return np.concatenate([[0.0], b_value * (1.0 + DTI_ANISOTROPY * p2)])


def dti_contrast(b_value: float, directions: Sequence[Sequence[float]]) -> Contrast:
    """DTI signal: the b = 0 image, then one image per gradient direction (see :func:`dti_b_values`)."""
    return dwi_contrast([float(b) for b in dti_b_values(b_value, directions)])


def fractional_anisotropy(
    b0: FloatArray, directional: FloatArray, b_value: float, directions: Sequence[Sequence[float]]
) -> FloatArray:
    """Fractional anisotropy (0..1) from a b = 0 image and six or more directional images.

    Least-squares fit of the diffusion tensor to the apparent diffusivities ``-ln(S_g / S_0) / b``, then
    ``FA = sqrt(1/2) sqrt((l1-l2)^2 + (l2-l3)^2 + (l3-l1)^2) / sqrt(l1^2 + l2^2 + l3^2)``.

    Parameters
    ----------
    b0
        b = 0 magnitudes, shape ``S``.
    directional
        Magnitudes along each direction, shape ``(n, *S)``.
    b_value
        Their b-value (s/mm2).
    directions
        The ``n`` unit gradient directions.
    """
    g = np.asarray(directions, dtype=np.float64)
    design = np.stack(
        [
            g[:, 0] ** 2,
            g[:, 1] ** 2,
            g[:, 2] ** 2,
            2 * g[:, 0] * g[:, 1],
            2 * g[:, 0] * g[:, 2],
            2 * g[:, 1] * g[:, 2],
        ],
        axis=1,
    )
    d_app = (np.log(np.maximum(b0, 1.0))[None] - np.log(np.maximum(directional, 1.0))) / b_value
    coef = np.linalg.pinv(design) @ d_app.reshape(len(g), -1)  # (6, voxels)
    xx, yy, zz, xy, xz, yz = coef
    tensor = np.stack(
        [np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2
    )
    lam = np.linalg.eigvalsh(tensor)  # (voxels, 3)
    num = (lam[:, 0] - lam[:, 1]) ** 2 + (lam[:, 1] - lam[:, 2]) ** 2 + (lam[:, 2] - lam[:, 0]) ** 2
    den = np.maximum((lam**2).sum(axis=1), 1e-30)
    fa = np.clip(np.sqrt(0.5 * num / den), 0.0, 1.0)
    return np.asarray(fa.reshape(b0.shape), dtype=np.float64)


def dce_contrast(times_s: Sequence[float], injection_s: float = 15.0) -> Contrast:
    """Fat-suppressed T1-weighted signal at each time point of a contrast-enhanced dynamic series."""
    ts = np.asarray(times_s, dtype=np.float64)

    def contrast(props: TissueProperties) -> FloatArray:
        t = np.maximum(ts - injection_s, 0.0).reshape((-1,) + (1,) * props.t1w.ndim)
        curve = props.enh[None] * (1.0 - np.exp(-t / props.tin[None])) * np.exp(-t / props.tout[None])
        return np.asarray(props.t1w[None] * (1.0 + curve))

    return contrast


@dataclass(frozen=True)
class BiasField:
    """Smooth multiplicative receive-coil field ``exp(g . u + u^T Q u)``, ``u = (p - centre) / 100 mm``."""

    centre: tuple[float, float, float]
    gradient: tuple[float, float, float]
    quadratic: tuple[float, float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator, centre: FloatArray, strength: float = 1.0) -> BiasField:
        """A random field of the given strength around ``centre``."""
        g = rng.normal(0.0, 0.25 * strength, 3)
        q = -np.abs(rng.normal(0.0, 0.3 * strength, 3))
        return cls(
            tuple(float(v) for v in centre),  # type: ignore[arg-type]
            (float(g[0]), float(g[1]), float(g[2])),
            (float(q[0]), float(q[1]), float(q[2])),
        )

    def on_grid(self, grid: Grid) -> FloatArray:
        """The field at the voxel centres of ``grid``, shape ``(slices, rows, columns)``."""
        out = np.empty(grid.shape)
        for k in range(grid.size[2]):
            u = (grid.slice_points(k)[0] - np.asarray(self.centre)) / 100.0
            arg = u @ np.asarray(self.gradient) + (u * u) @ np.asarray(self.quadratic)
            out[k] = np.exp(arg)
        return out


def rician(signal: FloatArray, sigma: float, rng: np.random.Generator) -> FloatArray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``."""
    if sigma <= 0:
        return np.asarray(signal, dtype=np.float64)
    re = signal + rng.normal(0.0, sigma, signal.shape)
    im = rng.normal(0.0, sigma, signal.shape)
    return np.asarray(np.sqrt(re * re + im * im), dtype=np.float64)


def adc_fit(
    images: FloatArray, b_values: Sequence[float], background: float
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
    """Log-linear least-squares fit of ``S_b = S0 exp(-b ADC)`` per voxel, like a scanner's ADC map.

    Parameters
    ----------
    images
        DWI magnitudes, shape ``(n_b, ...)``.
    b_values
        The b-values (s/mm2) of the first axis.
    background
        Voxels whose lowest-b signal is below this are background (ADC 0, as scanners write it).

    Returns
    -------
    tuple
        ``(adc in 1e-6 mm2/s, ln S0, foreground mask)``.
    """
    bs = np.asarray(b_values, dtype=np.float64)
    logs = np.log(np.maximum(images, 1.0))
    b_mean = bs.mean()
    db = bs - b_mean
    slope = np.tensordot(db, logs - logs.mean(axis=0), axes=(0, 0)) / float(db @ db)
    intercept = logs.mean(axis=0) - slope * b_mean
    adc = np.clip(-slope / ADC_UNIT, 0.0, 4000.0)
    fg = images[int(np.argmin(bs))] >= background
    adc = np.where(fg, adc, 0.0)
    return adc, intercept, fg
