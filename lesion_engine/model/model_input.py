"""The model grid: a fixed physical field of view, resampled and normalized for the networks.

The grid has the T2W's orientation, a fixed spacing and a fixed size, and is centred on the centre of the
T2W volume (prostate protocols centre the axial field of view on the gland). Channels, in this order:

0. T2W, z-score normalized over the voxels the T2W covers;
1. ADC, divided by ``adc_scale`` (absolute ADC values carry meaning, so no per-study normalization);
2. HBV, z-score normalized; by default the b1400 image (the computed one when the study has no b >= 1400).

Arrays are (channel, z, y, x); SimpleITK images are (x, y, z).

:func:`to_model_input` resamples with SimpleITK on the CPU. :func:`to_model_input_tensor` computes the same
values with torch on any device (the engine uses it on a GPU): the diffusion images go onto the T2W grid
(:func:`~lesion_engine.model.grid_resample.resample_affine_linear`), then everything onto the model grid
(:func:`~lesion_engine.model.grid_resample.resample_linear`); both follow SimpleITK's linear interpolation, so the
two paths agree within float32 rounding.

With the PI-CAI crop (``PreprocessConfig.kind == "picai"``, a model whose localization network is the PI-CAI
U-Net) the input is that U-Net's own: :func:`lesion_engine.model.picai_unet.pipeline.network_input` (B-spline
onto its crop of the T2W resampled to its spacing, percentile-clipped z-score per channel; HBV = the study's
high b-value image, else the computed one). The crop is the model grid; its coverage is the part of the
crop that lies inside the resampled T2W. :func:`to_model_input_tensor` computes it on the CPU and moves it
to the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from lesion_engine.intake.preprocess import PreparedStudy
from lesion_engine.intake.volumes import box_grid, index_box, resample_to, same_grid
from lesion_engine.model.grid_resample import coverage_mask, grid_map, resample_affine_linear, resample_linear
from lesion_engine.model.model_config import PICAI_CROP, PreprocessConfig
from lesion_engine.model.picai_unet.pipeline import crop_grid, network_input, role_images

logger = logging.getLogger(__name__)

__all__ = [
    "ModelInput",
    "PreprocessConfig",
    "TensorInput",
    "from_model_grid",
    "model_grid",
    "normalize_channels",
    "resample_label",
    "to_model_input",
    "to_model_input_from_images",
    "to_model_input_tensor",
]


@dataclass
class ModelInput:
    """Network input of one study.

    Attributes
    ----------
    images : ndarray
        float32 (3, Z, Y, X): T2W, ADC, HBV on the model grid, normalized.
    grid : SimpleITK.Image
        An image with the model grid's geometry (its values are the T2W coverage mask, 0/1).
    """

    images: NDArray[np.float32]
    grid: sitk.Image


@dataclass(frozen=True)
class TensorInput:
    """Network input of one study as tensors on a device (:func:`to_model_input_tensor`).

    Attributes
    ----------
    images : torch.Tensor
        float32 (3, Z, Y, X): T2W, ADC, HBV on the model grid, normalized.
    coverage : torch.Tensor
        bool (Z, Y, X): the model-grid voxels inside the T2W volume.
    grid : SimpleITK.Image
        An image with the model grid's geometry (its pixel values are not used).
    """

    images: torch.Tensor
    coverage: torch.Tensor
    grid: sitk.Image


def model_grid(t2w: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """The model grid for a T2W volume: T2W orientation, fixed spacing and size, centred on the T2W."""
    size = t2w.GetSize()
    centre_index = [(s - 1) / 2.0 for s in size]
    centre = np.asarray(t2w.TransformContinuousIndexToPhysicalPoint(centre_index))
    direction = np.asarray(t2w.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing_xyz = np.asarray(config.spacing_zyx[::-1], dtype=np.float64)
    size_xyz = np.asarray(config.size_zyx[::-1], dtype=np.int64)
    origin = centre - direction @ (spacing_xyz * (size_xyz - 1) / 2.0)
    grid = sitk.Image([int(v) for v in size_xyz], sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(v) for v in spacing_xyz))
    grid.SetOrigin(tuple(float(v) for v in origin))
    grid.SetDirection(tuple(float(v) for v in direction.ravel()))
    return grid


def _resample(image: sitk.Image, grid: sitk.Image, interpolator: int, pixel_type: int) -> sitk.Image:
    out: sitk.Image = sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, pixel_type)
    return out


def resample_label(label: sitk.Image, grid: sitk.Image) -> NDArray[np.int16]:
    """Resample a label image (masks, zones, ISUP values) onto a grid with nearest neighbour; (Z, Y, X)."""
    out = _resample(sitk.Cast(label, sitk.sitkInt16), grid, sitk.sitkNearestNeighbor, sitk.sitkInt16)
    return sitk.GetArrayFromImage(out).astype(np.int16)


def _zscore(values: NDArray[np.float32], mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    inside = values[mask]
    if inside.size == 0:
        return np.zeros_like(values)
    mean = float(inside.mean())
    std = float(inside.std())
    out = (values - np.float32(mean)) / np.float32(std if std > 1e-6 else 1.0)
    out[~mask] = 0.0
    return out.astype(np.float32)


def normalize_channels(
    t2w: NDArray[np.float32],
    adc: NDArray[np.float32],
    hbv: NDArray[np.float32],
    coverage: NDArray[np.bool_],
    config: PreprocessConfig,
) -> NDArray[np.float32]:
    """Normalize resampled T2W, ADC and HBV arrays (Z, Y, X) into the (3, Z, Y, X) network input."""
    adc_scaled = np.clip(adc, 0.0, None) / np.float32(config.adc_scale)
    adc_scaled[~coverage] = 0.0
    return np.stack([_zscore(t2w, coverage), adc_scaled.astype(np.float32), _zscore(hbv, coverage)]).astype(
        np.float32
    )


def to_model_input_from_images(
    t2w: sitk.Image, adc: sitk.Image, hbv: sitk.Image, config: PreprocessConfig
) -> ModelInput:
    """Network input from T2W, ADC and HBV images (any grids; resampled in physical space).

    With the PI-CAI crop, the images are resampled in their own pixel type (as the PI-CAI pipeline reads
    them): pass integer images to reproduce what it sees of integer DICOM series or ``.mha`` files.
    """
    if config.kind == PICAI_CROP:
        return _picai_input([t2w, adc, hbv], config)
    grid = model_grid(t2w, config)
    ones = sitk.Image(t2w.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(t2w)
    coverage_image = _resample(ones, grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8)
    coverage = sitk.GetArrayFromImage(coverage_image).astype(bool)
    arrays = [
        sitk.GetArrayFromImage(_resample(image, grid, sitk.sitkLinear, sitk.sitkFloat32)).astype(np.float32)
        for image in (t2w, adc, hbv)
    ]
    return ModelInput(normalize_channels(arrays[0], arrays[1], arrays[2], coverage, config), coverage_image)


def _picai_input(images: list[sitk.Image], config: PreprocessConfig) -> ModelInput:
    """The PI-CAI U-Net's input on its crop; the crop's pixels say where it lies inside the resampled T2W."""
    array, crop = network_input(images, config.picai_pipeline())
    inside = crop.padded()
    coverage = np.zeros(array.shape[1:], dtype=np.uint8)
    coverage[inside if inside is not None else (slice(None),) * 3] = 1
    grid = sitk.GetImageFromArray(coverage)
    grid.CopyInformation(crop.grid)
    return ModelInput(array, grid)


def to_model_input(prepared: PreparedStudy, config: PreprocessConfig) -> ModelInput:
    """Network input of a prepared study (see the module docstring for the channels)."""
    if config.kind == PICAI_CROP:
        pipeline = config.picai_pipeline()
        model = _picai_input(role_images(prepared, pipeline), config)
        # The inputs are read as SimpleITK reads the series (their geometry differs from our loader's in the
        # 8th to 15th digit); the model grid is placed on our T2W's geometry, so that the engine's mappings
        # between it and the T2W grid meet the voxels exactly, on the CPU and on a GPU alike.
        model.grid.CopyInformation(crop_grid(prepared.t2w, pipeline).grid)
        return model
    # ADC and HBV go onto the T2W grid, then onto the model grid; only the box of the T2W grid that the second
    # interpolation reads is computed (the same values, within float rounding, at half the cost on the fixture).
    box = _t2w_box(prepared.t2w, model_grid(prepared.t2w, config))
    adc, hbv = (resample_to(prepared.native[role], box) for role in ("adc", _hbv_volume(prepared, config)))
    return to_model_input_from_images(prepared.t2w, adc, hbv, config)


def _t2w_box(t2w: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """An empty image of the part of the T2W grid that linear interpolation onto ``grid`` reads, two voxels more
    on each side (ITK interpolates up to half a voxel beyond an image's last voxel); the whole T2W grid when
    ``grid`` lies outside it."""
    low, high = index_box(t2w, grid, margin=2)
    return t2w if np.any(high <= low) else box_grid(t2w, low, high)


def _hbv_volume(prepared: PreparedStudy, config: PreprocessConfig) -> str:
    """Which native volume is the HBV channel: ``high_b`` (computed) or ``hbv`` (measured)."""
    # A PreparedStudy holds at least one of the two.
    measured = "hbv" in prepared.native
    if "high_b" in prepared.native and (config.hbv_source == "b1400" or not measured):
        return "high_b"
    return "hbv"


def _zscore_tensor(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.float()
    count = weights.sum().clamp(min=1.0)
    mean = (values * weights).sum() / count
    std = torch.sqrt((((values - mean) * weights) ** 2).sum() / count)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (values - mean) / std * weights


def _tensor(image: sitk.Image, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32, copy=False)).to(device)


def to_model_input_tensor(
    prepared: PreparedStudy, config: PreprocessConfig, device: torch.device | str
) -> TensorInput:
    """Network input of a prepared study, computed with torch on ``device`` (see the module docstring).

    Reads the T2W and the native diffusion volumes only; the T2W-grid images of ``prepared`` are not used
    (nor computed). The PI-CAI crop (B-spline resampling, percentiles) has no torch version: it is computed
    on the CPU by :func:`to_model_input` and moved to ``device``.
    """
    device = torch.device(device)
    if config.kind == PICAI_CROP:
        on_cpu = to_model_input(prepared, config)
        coverage = torch.from_numpy(sitk.GetArrayFromImage(on_cpu.grid).astype(bool)).to(device)
        return TensorInput(
            images=torch.from_numpy(on_cpu.images).to(device), coverage=coverage, grid=on_cpu.grid
        )
    t2w = prepared.t2w
    on_t2w = [_tensor(t2w, device)]
    for image in (prepared.native["adc"], prepared.native[_hbv_volume(prepared, config)]):
        values = _tensor(image, device)
        if same_grid(image, t2w):  # as volumes.resample_to: no resampling
            on_t2w.append(values)
        else:
            on_t2w.append(resample_affine_linear(values, image, t2w))
    grid = model_grid(t2w, config)
    mapping = grid_map(t2w, grid)
    coverage = coverage_mask(mapping, device)
    t2w_m, adc_m, hbv_m = (resample_linear(values, mapping) for values in on_t2w)
    adc_scaled = adc_m.clamp(min=0.0) / config.adc_scale * coverage
    images = torch.stack([_zscore_tensor(t2w_m, coverage), adc_scaled, _zscore_tensor(hbv_m, coverage)])
    return TensorInput(images=images, coverage=coverage, grid=grid)


def from_model_grid(
    array: NDArray[Any], grid: sitk.Image, reference: sitk.Image, *, interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Resample a (Z, Y, X) array on the model grid back onto ``reference``'s grid (e.g. the T2W)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(grid)
    pixel_type = sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else image.GetPixelID()
    return _resample(image, reference, interpolator, pixel_type)
