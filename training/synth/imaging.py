"""Pixel data of every series of a study: contrasts, bias fields, noise, derived maps and quantization."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from training.synth.config import case_rng
from training.synth.conventions import vendor_info
from training.synth.mr_signal import (
    BiasField,
    adc_fit,
    dce_contrast,
    dti_b_values,
    dti_contrast,
    dwi_contrast,
    fractional_anisotropy,
    pd_contrast,
    rician,
    sample_grid,
    t2_contrast,
)
from training.synth.phantom import Phantom
from training.synth.protocol import SeriesPlan, StudyPlan

logger = logging.getLogger(__name__)

__all__ = ["FrameInfo", "SeriesImages", "synthesize"]

FloatArray = NDArray[np.float64]

_T2_SCALE = 1000.0
_DWI_SCALE = 800.0
_DCE_SCALE = 900.0
_PD_SCALE = 1200.0
_FA_SCALE = 1000.0  # FA maps store FA x 1000, as scanners write them


@dataclass(frozen=True)
class FrameInfo:
    """Where one frame belongs: stack (grid index), slice in the stack, b-value, time point, and for a
    directional DTI image the (0-based) index of its gradient direction in ``SeriesPlan.directions``."""

    grid_index: int
    slice_index: int
    b_value: int | None = None
    temporal_index: int | None = None
    time_offset_s: float = 0.0
    direction_index: int | None = None


@dataclass(frozen=True)
class SeriesImages:
    """Stored pixel values of one series and how to turn them into real values.

    Attributes
    ----------
    stored
        ``(frames, rows, columns)`` uint16, or ``(frames, rows, columns, 3)`` uint8 for RGB.
    frames
        One :class:`FrameInfo` per frame, same order.
    slope, intercept
        Real value = stored * slope + intercept.
    bits_stored
        Bits Stored of the pixel data.
    """

    stored: NDArray[np.uint16] | NDArray[np.uint8]
    frames: tuple[FrameInfo, ...]
    slope: float
    intercept: float
    bits_stored: int

    @property
    def rgb(self) -> bool:
        """Whether the pixels are RGB (a screenshot)."""
        return self.stored.ndim == 4


def _quantize(real: FloatArray, slope: float, intercept: float, bits: int) -> NDArray[np.uint16]:
    stored = np.rint((real - intercept) / slope)
    return np.clip(stored, 0, 2**bits - 1).astype(np.uint16)


def _rescale(series: SeriesPlan, rng: np.random.Generator) -> tuple[float, float]:
    slope = float(np.round(rng.uniform(1.0, 1.5) if series.kind == "adc" else rng.uniform(0.7, 2.5), 6))
    intercept = 0.0 if series.kind == "adc" or rng.random() < 0.5 else float(-np.round(rng.uniform(5, 50), 1))
    return (slope, intercept) if series.style.rescaled else (1.0, 0.0)


def _frames_for(volumes: list[FloatArray], b_values: tuple[int, ...] | None = None) -> list[FrameInfo]:
    """Frame descriptions of single-stack volumes, volume-major (one volume per b-value if given)."""
    out: list[FrameInfo] = []
    for v, vol in enumerate(volumes):
        b = b_values[v] if b_values is not None else None
        out += [FrameInfo(0, k, b_value=b) for k in range(vol.shape[0])]
    return out


class _Synth:
    def __init__(self, study: StudyPlan, ph: Phantom) -> None:
        self.study = study
        self.ph = ph
        self.plan = study.plan
        self.noise = self.plan.noise
        self.bits = vendor_info(self.plan.vendor).bits_stored
        self.cache: dict[str, FloatArray] = {}

    def rng(self, series: SeriesPlan, stream: int) -> np.random.Generator:
        return case_rng(self.plan.seed, self.plan.case_index, 1000 + 10 * series.number + stream)

    def bias(self, series: SeriesPlan, strength: float = 1.0) -> BiasField:
        return BiasField.draw(
            self.rng(series, 1), self.ph.gland_centre + np.array([0.0, 40.0, 0.0]), strength
        )

    def finish(self, series: SeriesPlan, real: list[FloatArray], frames: list[FrameInfo]) -> SeriesImages:
        slope, intercept = _rescale(series, self.rng(series, 2))
        stored = np.concatenate([_quantize(v, slope, intercept, self.bits) for v in real], axis=0)
        return SeriesImages(stored, tuple(frames), slope, intercept, self.bits)

    def structural(
        self, series: SeriesPlan, scale: float, sigma: float, bias_strength: float = 1.0
    ) -> SeriesImages:
        contrast = pd_contrast if series.kind == "coil_reference" else t2_contrast
        gain = float(self.rng(series, 3).uniform(0.85, 1.15))
        real: list[FloatArray] = []
        frames: list[FrameInfo] = []
        noise_rng = self.rng(series, 0)
        for gi, grid in enumerate(series.grids):
            key = f"{series.kind}:{gi}:{grid}"
            if key not in self.cache:
                self.cache[key] = sample_grid(self.ph, grid, contrast)[0]
            clean = self.cache[key] * self.bias(series, bias_strength).on_grid(grid) * scale * gain
            real.append(rician(clean, sigma * self.noise, noise_rng))
            frames += [FrameInfo(gi, k) for k in range(grid.size[2])]
        return self.finish(series, real, frames)

    def acquired(self, root: SeriesPlan) -> FloatArray:
        """Noisy magnitudes of an acquired diffusion series, one volume per b-value (or direction)."""
        if root.key not in self.cache:
            grid = root.grids[0]
            if root.kind == "dti":
                contrast = dti_contrast(root.b_values[-1], root.directions)
            else:
                contrast = dwi_contrast(root.b_values)
            clean = sample_grid(self.ph, grid, contrast)
            field = self.bias(root).on_grid(grid)
            self.cache[root.key] = rician(
                clean * field[None] * _DWI_SCALE, 6.0 * self.noise, self.rng(root, 0)
            )
        return self.cache[root.key]

    def mddw_acquired(self, root: SeriesPlan) -> tuple[FloatArray, list[tuple[int, int | None]]]:
        """Noisy magnitudes of a Siemens multi-direction (MDDW) scan and what each volume is: (b-value,
        direction index; None at b = 0). Each b > 0 is measured along every direction of the scan."""
        layout: list[tuple[int, int | None]] = []
        effective: list[float] = []
        for b in root.b_values:
            if b == 0:
                layout.append((0, None))
                effective.append(0.0)
                continue
            along = dti_b_values(float(b), root.directions)[1:]
            layout += [(b, d) for d in range(len(root.directions))]
            effective += [float(v) for v in along]
        if root.key not in self.cache:
            grid = root.grids[0]
            clean = sample_grid(self.ph, grid, dwi_contrast(effective))
            field = self.bias(root).on_grid(grid)
            self.cache[root.key] = rician(
                clean * field[None] * _DWI_SCALE, 6.0 * self.noise, self.rng(root, 0)
            )
        return self.cache[root.key], layout

    def mddw(self, series: SeriesPlan) -> SeriesImages:
        """A series of an MDDW scan: its directional images, its TRACEW (the geometric mean over the
        directions at each b-value), its ADC map or its calculated-b images."""
        root = next(s for s in self.study.series if s.acquisition == series.acquisition and s.kind == "dti")
        noisy, layout = self.mddw_acquired(root)
        if series.kind == "dti":
            frames: list[FrameInfo] = []
            for b, direction in layout:
                frames += [
                    FrameInfo(0, k, b_value=b, direction_index=direction) for k in range(noisy.shape[1])
                ]
            return self.finish(series, list(noisy), frames)
        trace = []
        for b in root.b_values:
            volumes = [i for i, (vb, _) in enumerate(layout) if vb == b]
            trace.append(np.exp(np.log(np.maximum(noisy[volumes], 1.0)).mean(axis=0)))
        if series.kind == "dwi":
            return self.finish(series, trace, _frames_for(trace, root.b_values))
        adc, ln_s0, fg = adc_fit(np.stack(trace), root.b_values, background=0.1 * _DWI_SCALE)
        if series.kind == "adc":
            return self.finish(series, [adc], _frames_for([adc]))
        adc_mm = adc * 1e-6
        vols = [np.where(fg, np.exp(ln_s0 - b * adc_mm), 0.0) for b in series.b_values]
        return self.finish(series, vols, _frames_for(vols, series.b_values))

    def diffusion(self, series: SeriesPlan) -> SeriesImages:
        if self.study.plan.dwi_scheme == "mddw" and series.acquisition == "dwi":
            return self.mddw(series)
        root = self.study.by_key(series.acquisition)
        noisy = self.acquired(root)
        if root.kind == "dti":
            return self.tensor(series, root, noisy)
        if series.kind == "dwi":
            vols = [noisy[i] for i in range(noisy.shape[0])]
            return self.finish(series, vols, _frames_for(vols, root.b_values))
        adc, ln_s0, fg = adc_fit(noisy, root.b_values, background=0.1 * _DWI_SCALE)
        if series.kind == "adc":
            return self.finish(series, [adc], _frames_for([adc]))
        adc_mm = adc * 1e-6
        vols = [np.where(fg, np.exp(ln_s0 - b * adc_mm), 0.0) for b in series.b_values]
        return self.finish(series, vols, _frames_for(vols, series.b_values))

    def tensor(self, series: SeriesPlan, root: SeriesPlan, noisy: FloatArray) -> SeriesImages:
        """A DTI series (b = 0 volume, then one per direction) or its TRACEW, ADC or FA map."""
        b = root.b_values[-1]
        if series.kind == "dti":
            vols = [noisy[i] for i in range(noisy.shape[0])]
            frames = [FrameInfo(0, k, b_value=0) for k in range(noisy.shape[1])]
            for d in range(len(root.directions)):
                frames += [FrameInfo(0, k, b_value=b, direction_index=d) for k in range(noisy.shape[1])]
            return self.finish(series, vols, frames)
        trace = np.exp(np.log(np.maximum(noisy[1:], 1.0)).mean(axis=0))
        if series.kind == "trace":
            return self.finish(series, [trace], _frames_for([trace], (b,)))
        adc, _, fg = adc_fit(np.stack([noisy[0], trace]), (0, b), background=0.1 * _DWI_SCALE)
        if series.kind == "adc":
            return self.finish(series, [adc], _frames_for([adc]))
        fa = fractional_anisotropy(noisy[0], noisy[1:], float(b), root.directions)
        return self.finish(series, [np.where(fg, fa * _FA_SCALE, 0.0)], _frames_for([fa]))

    def dynamic(self, series: SeriesPlan) -> SeriesImages:
        grid = series.grids[0]
        clean = sample_grid(self.ph, grid, dce_contrast(series.times_s))
        field = self.bias(series).on_grid(grid)
        noise_rng = self.rng(series, 0)
        vols = [
            rician(clean[t] * field * _DCE_SCALE, 8.0 * self.noise, noise_rng) for t in range(clean.shape[0])
        ]
        frames: list[FrameInfo] = []
        for t, time in enumerate(series.times_s):
            frames += [FrameInfo(0, k, temporal_index=t, time_offset_s=time) for k in range(grid.size[2])]
        return self.finish(series, vols, frames)

    def screenshot(self, series: SeriesPlan, t2w: SeriesImages) -> SeriesImages:
        size = 64 if self.plan.profile == "small" else 512
        n_slices = self.study.by_key("t2w").grids[0].size[2]
        img = t2w.stored[n_slices // 2].astype(np.float64)
        lo, hi = np.percentile(img, [1, 99.5])
        gray = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
        rows = (np.arange(size) * gray.shape[0] / size).astype(int)
        cols = (np.arange(size) * gray.shape[1] / size).astype(int)
        g8 = (gray[np.ix_(rows, cols)] * 255).astype(np.uint8)
        rgb = np.repeat(g8[:, :, None], 3, axis=2)
        border = max(1, size // 64)
        rgb[:border, :, :] = (255, 200, 0)
        rgb[-border:, :, :] = (255, 200, 0)
        c = size // 2
        rgb[c - border : c + border, c - size // 8 : c + size // 8] = (255, 0, 0)
        rgb[c - size // 8 : c + size // 8, c - border : c + border] = (255, 0, 0)
        return SeriesImages(rgb[None], (FrameInfo(0, 0),), 1.0, 0.0, 8)


def synthesize(study: StudyPlan, ph: Phantom) -> dict[str, SeriesImages]:
    """Pixel data of every series of ``study`` (keyed by series key).

    Parameters
    ----------
    study
        The study plan.
    ph
        The phantom it images.

    Returns
    -------
    dict
        Series key -> :class:`SeriesImages`.
    """
    s = _Synth(study, ph)
    out: dict[str, SeriesImages] = {}
    for series in study.series:
        if series.kind in ("localizer", "t2_sag", "t2_cor", "t2w"):
            out[series.key] = s.structural(
                series, _T2_SCALE * (0.9 if series.kind == "localizer" else 1.0), 12.0
            )
        elif series.kind == "coil_reference":
            out[series.key] = s.structural(series, _PD_SCALE, 10.0, bias_strength=2.5)
        elif series.kind in ("dwi", "adc", "calc", "dti", "trace", "fa"):
            out[series.key] = s.diffusion(series)
        elif series.kind == "dce":
            out[series.key] = s.dynamic(series)
    for series in study.series:
        if series.kind == "screenshot":
            out[series.key] = s.screenshot(series, out["t2w"])
    logger.debug("synthesized %d series", len(out))
    return out
