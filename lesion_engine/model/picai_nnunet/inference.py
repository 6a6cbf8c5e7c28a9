"""nnU-Net v1 inference as ``nnUNet_predict`` runs it, in NumPy, SciPy and PyTorch.

Each step is nnU-Net 1.7.0's own, with the same operations in the same order and dtypes, so that the numbers
are nnU-Net's (the tests compare every step with nnU-Net itself):

1. :func:`preprocess`: ``GenericPreprocessor.preprocess_test_case``: crop to the bounding box of the nonzero
   voxels of any channel (holes filled), the axes transposed, NaN set to 0, resampled to the plans' spacing
   (in float64: per slice with order 3 in-plane and order 0 along the low-resolution axis when a spacing is
   more than 3 times anisotropic, else order 3 in 3D; skimage's ``resize`` with ``mode='edge'``, no
   anti-aliasing, clipped to the input's range), then normalised per channel (:data:`~NnunetPlans`'s schemes).
2. :func:`predict_softmax`: ``predict_3D`` with sliding windows: the input padded to at least the patch
   size, windows at steps of half a patch, each window's softmax averaged over the 8 mirrorings (``1/8``
   times each), multiplied by the Gaussian importance map (sigma 1/8 of the patch), summed and divided by the
   summed map (no map when there is one window).
3. The folds' softmaxes summed in order and divided by their count (``predict_cases``).
4. :func:`export_softmax`: ``save_segmentation_nifti_from_softmax`` with ``--save_npz``: the axes transposed
   back, resampled to the cropped original shape (order 1 in-plane, order 0 along the separate axis by
   default), stored as float16 (the ``.npz``), then (PI-CAI's ``save_softmax_nifti_from_softmax``) the
   foreground channel placed into the original extent, 0 outside the crop.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.model.picai_nnunet.plans import NnunetPlans

logger = logging.getLogger(__name__)

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "CropInfo",
    "export_softmax",
    "gaussian_importance_map",
    "predict_softmax",
    "preprocess",
    "resample_data",
    "sliding_window_steps",
]

ANISOTROPY_THRESHOLD = 3
"""nnU-Net's ``RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD``."""
MIRROR_AXES = (0, 1, 2)
"""``default_3D_augmentation_params['mirror_axes']``: test-time mirroring along all three axes."""
Box = list[list[int]]


@dataclass(frozen=True)
class CropInfo:
    """Where the network's array sits in the original scan (nnU-Net's ``properties``).

    Attributes
    ----------
    original_shape : (z, y, x)
        ``original_size_of_raw_data``.
    bbox : [[z0, z1], [y0, y1], [x0, x1]]
        ``crop_bbox``: the nonzero crop.
    cropped_shape : (z, y, x)
        ``size_after_cropping``.
    original_spacing : (z, y, x)
        ``original_spacing`` as nnU-Net read it.
    """

    original_shape: tuple[int, int, int]
    bbox: Box
    cropped_shape: tuple[int, int, int]
    original_spacing: tuple[float, float, float]


# ---------------------------------------------------------------------------------------------- resampling
def _resize(
    image: NDArray[np.float64], shape: Sequence[int] | NDArray[Any], order: int
) -> NDArray[np.float64]:
    """skimage's ``resize(image, shape, order, mode='edge', anti_aliasing=False)`` of a float64 array."""
    factors = np.divide(image.shape, shape)
    zoom = [1 / f for f in factors]
    out: NDArray[np.float64] = ndimage.zoom(image, zoom, order=order, mode="nearest", cval=0, grid_mode=True)
    low, high = np.asarray(np.min(image)), np.asarray(np.max(image))
    np.clip(out, low, high, out=out)
    return out


def _lowres_axis(spacing: Sequence[float] | NDArray[Any]) -> NDArray[np.intp]:
    """``get_lowres_axis``."""
    axis: NDArray[np.intp] = np.where(max(spacing) / np.array(spacing) == 1)[0]
    return axis


def _separate_z(spacing: Sequence[float] | NDArray[Any]) -> bool:
    """``get_do_separate_z``."""
    return bool((np.max(spacing) / np.min(spacing)) > ANISOTROPY_THRESHOLD)


def resample_data(
    data: NDArray[np.generic],
    new_shape: Sequence[int],
    axis: NDArray[np.intp] | None,
    order: int,
    do_separate_z: bool,
    order_z: int = 0,
) -> NDArray[np.generic]:
    """nnU-Net's ``resample_data_or_seg`` of data (not a segmentation), (C, Z, Y, X), in its dtype."""
    dtype = data.dtype
    shape = np.array(data[0].shape)
    target = np.array(new_shape)
    if not np.any(shape != target):
        return data
    values = data.astype(float)
    if not do_separate_z:
        resized = [_resize(values[c], target, order)[None] for c in range(values.shape[0])]
        stacked: NDArray[np.generic] = np.vstack(resized).astype(dtype)
        return stacked
    if axis is None or len(axis) != 1:
        raise ValueError("only one anisotropic axis is supported")
    lowres = int(axis[0])
    inplane = target[[i for i in range(3) if i != lowres]]
    channels = []
    for c in range(values.shape[0]):
        slices = [
            _resize(np.take(values[c], index, axis=lowres), inplane, order) for index in range(shape[lowres])
        ]
        stack = np.stack(slices, lowres)
        if shape[lowres] != target[lowres]:
            rows, cols, dims = int(target[0]), int(target[1]), int(target[2])
            orig_rows, orig_cols, orig_dims = stack.shape
            row_scale = float(orig_rows) / rows
            col_scale = float(orig_cols) / cols
            dim_scale = float(orig_dims) / dims
            map_rows, map_cols, map_dims = np.mgrid[:rows, :cols, :dims]
            map_rows = row_scale * (map_rows + 0.5) - 0.5
            map_cols = col_scale * (map_cols + 0.5) - 0.5
            map_dims = dim_scale * (map_dims + 0.5) - 0.5
            coords = np.array([map_rows, map_cols, map_dims])
            channels.append(ndimage.map_coordinates(stack, coords, order=order_z, mode="nearest")[None])
        else:
            channels.append(stack[None])
    out: NDArray[np.generic] = np.vstack(channels).astype(dtype)
    return out


# ------------------------------------------------------------------------------------------- preprocessing
def _nonzero_bbox(data: NDArray[np.float32]) -> Box:
    """``create_nonzero_mask`` (any channel nonzero, holes filled) and ``get_bbox_from_mask``."""
    mask = np.zeros(data.shape[1:], dtype=bool)
    for c in range(data.shape[0]):
        mask = mask | (data[c] != 0)
    mask = ndimage.binary_fill_holes(mask)
    coords = np.where(mask != 0)
    if coords[0].size == 0:
        raise ValueError("every voxel of every input is 0: nothing to predict on")
    return [[int(np.min(c)), int(np.max(c)) + 1] for c in coords]


def _typed(plans: NnunetPlans, channel: int) -> dict[str, Any]:
    """The channel's intensity properties as the pickle held them (their types steer NumPy's arithmetic)."""
    values = plans.intensity_properties[channel] or {}
    types = plans.intensity_types[channel] or {}
    return {
        key: value if types.get(key, "float") == "float" else np.dtype(types[key]).type(value)
        for key, value in values.items()
    }


def _normalise(data: NDArray[np.float32], plans: NnunetPlans) -> None:
    """``GenericPreprocessor.resample_and_normalize``'s normalisation, in place (no nonzero mask)."""
    for c in range(len(data)):
        scheme = plans.normalization_schemes[c]
        properties = _typed(plans, c)
        if scheme == "CT":
            data[c] = np.clip(data[c], properties["percentile_00_5"], properties["percentile_99_5"])
            data[c] = (data[c] - properties["mean"]) / properties["sd"]
        elif scheme == "CT2":
            lower, upper = properties["percentile_00_5"], properties["percentile_99_5"]
            mask = (data[c] > lower) & (data[c] < upper)
            data[c] = np.clip(data[c], lower, upper)
            mn = data[c][mask].mean()
            sd = data[c][mask].std()
            data[c] = (data[c] - mn) / sd
        elif scheme == "noNorm":
            pass
        else:
            mn = data[c].mean()
            std = data[c].std()
            data[c] = (data[c] - mn) / (std + 1e-8)


def preprocess(
    data: NDArray[np.float32], spacing_zyx: Sequence[float], plans: NnunetPlans
) -> tuple[NDArray[np.float32], CropInfo]:
    """Step 1 (see the module docstring): the network's input (C, Z, Y, X) float32 and where it came from.

    Parameters
    ----------
    data : ndarray (C, Z, Y, X) float32
        The channels as nnU-Net loads them (``sitk.GetArrayFromImage``, stacked, float32).
    spacing_zyx : (z, y, x)
        The first channel's spacing as nnU-Net reads it.
    plans : NnunetPlans
    """
    if data.ndim != 4 or data.shape[0] != len(plans.modalities):
        raise ValueError(f"expected ({len(plans.modalities)}, Z, Y, X) input channels, got {data.shape}")
    original_shape = (int(data.shape[1]), int(data.shape[2]), int(data.shape[3]))
    bbox = _nonzero_bbox(data)
    box = tuple(slice(low, high) for low, high in bbox)
    cropped = np.vstack([data[c][box][None] for c in range(data.shape[0])])
    cropped_shape = (int(cropped.shape[1]), int(cropped.shape[2]), int(cropped.shape[3]))
    forward = list(plans.transpose_forward)
    cropped = cropped.transpose((0, *[i + 1 for i in forward]))
    spacing = np.array([float(s) for s in spacing_zyx])[forward]
    cropped[np.isnan(cropped)] = 0
    target = np.array(plans.target_spacing)
    shape = np.array(cropped[0].shape)
    new_shape = np.round((spacing / target).astype(float) * shape).astype(int)
    if _separate_z(spacing):
        do_separate_z, axis = True, _lowres_axis(spacing)
    elif _separate_z(target):
        do_separate_z, axis = True, _lowres_axis(target)
    else:
        do_separate_z, axis = False, None
    if axis is not None and len(axis) in (2, 3):
        do_separate_z = False
    resampled = resample_data(cropped, new_shape, axis, 3, do_separate_z, order_z=0)
    _normalise(resampled, plans)  # type: ignore[arg-type]
    out: NDArray[np.float32] = resampled.astype(np.float32)
    info = CropInfo(
        original_shape=original_shape,
        bbox=bbox,
        cropped_shape=cropped_shape,
        original_spacing=(float(spacing_zyx[0]), float(spacing_zyx[1]), float(spacing_zyx[2])),
    )
    return out, info


# ---------------------------------------------------------------------------------------- sliding windows
def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> NDArray[np.float32]:
    """``SegmentationNetwork._get_gaussian``."""
    tmp = np.zeros(patch_size)
    tmp[tuple(i // 2 for i in patch_size)] = 1
    gaussian = ndimage.gaussian_filter(tmp, [i * sigma_scale for i in patch_size], 0, mode="constant", cval=0)
    gaussian = gaussian / np.max(gaussian) * 1
    out: NDArray[np.float32] = gaussian.astype(np.float32)
    out[out == 0] = np.min(out[out != 0])
    return out


def sliding_window_steps(
    patch_size: Sequence[int], image_size: Sequence[int], step_size: float
) -> list[list[int]]:
    """``SegmentationNetwork._compute_steps_for_sliding_window``."""
    target = [i * step_size for i in patch_size]
    num_steps = [
        int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target, patch_size, strict=True)
    ]
    steps = []
    for dim in range(len(patch_size)):
        max_step = image_size[dim] - patch_size[dim]
        actual = max_step / (num_steps[dim] - 1) if num_steps[dim] > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(num_steps[dim])])
    return steps


def _pad(data: NDArray[np.float32], patch_size: Sequence[int]) -> tuple[NDArray[np.float32], list[slice]]:
    """batchgenerators' ``pad_nd_image(data, patch_size, 'constant', {'constant_values': 0}, True)``."""
    old = np.array(data.shape[-len(patch_size) :])
    new = np.array([max(patch_size[i], old[i]) for i in range(len(patch_size))])
    difference = new - old
    below = difference // 2
    above = difference // 2 + difference % 2
    pads = [[0, 0]] + [list(p) for p in zip(below, above, strict=True)]
    padded = data if not (any(below) or any(above)) else np.pad(data, pads, "constant", constant_values=0)
    slicer = [slice(0, data.shape[0])] + [
        slice(int(lo), int(padded.shape[i + 1] - hi))
        for i, (lo, hi) in enumerate(zip(below, above, strict=True))
    ]
    return padded, slicer


_MIRRORS: tuple[tuple[int, tuple[int, ...]], ...] = (
    (0, ()),
    (1, (4,)),
    (2, (3,)),
    (3, (4, 3)),
    (4, (2,)),
    (5, (4, 2)),
    (6, (3, 2)),
    (7, (4, 3, 2)),
)
"""``_internal_maybe_mirror_and_pred_3D``'s mirrorings, in its order (all taken for mirror axes 0, 1, 2)."""


def _mirrored_prediction(
    network: torch.nn.Module,
    x: torch.Tensor,
    classes: int,
    do_mirroring: bool,
    mult: torch.Tensor | None,
) -> torch.Tensor:
    """``_internal_maybe_mirror_and_pred_3D`` (all three mirror axes), the mirrorings run as one batch.

    The network normalises each sample on its own (instance norm), so a batch of the eight mirrorings gives
    each the prediction it has alone; the softmaxes are summed in the reference's order.
    """
    mirrors = _MIRRORS if do_mirroring else _MIRRORS[:1]
    num_results = 2 ** len(MIRROR_AXES) if do_mirroring else 1
    batch = torch.cat([torch.flip(x, dims) if dims else x for _, dims in mirrors])
    predictions = torch.softmax(network(batch), 1)
    result = torch.zeros([1, classes, *x.shape[2:]], dtype=torch.float, device=x.device)
    for index, (_, dims) in enumerate(mirrors):
        pred = predictions[index : index + 1]
        result += 1 / num_results * (torch.flip(pred, dims) if dims else pred)
    if mult is not None:
        result[:, :] *= mult
    return result


@contextlib.contextmanager
def _precision(device: torch.device, mixed_precision: bool) -> Iterator[None]:
    """``predict_3D``'s ``autocast()`` (CUDA float16) when asked for; on the CPU it changes nothing, as
    ``torch.cuda.amp.autocast`` does not there."""
    if mixed_precision and device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            yield
    else:
        yield


def predict_softmax(
    network: torch.nn.Module,
    data: NDArray[np.float32],
    plans: NnunetPlans,
    *,
    step_size: float = 0.5,
    do_mirroring: bool = True,
    use_gaussian: bool = True,
    mixed_precision: bool = True,
) -> NDArray[np.float32]:
    """Step 2: one fold's class probabilities (classes, Z, Y, X) float32 on the preprocessed grid.

    ``predict_3D(..., use_sliding_window=True, use_gaussian=True, all_in_gpu=False)`` as
    ``nnUNet_predict`` calls it: padded, windowed, mirrored, weighted, then unpadded.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    patch = list(plans.patch_size)
    device = next(network.parameters()).device
    padded, slicer = _pad(data, patch)
    steps = sliding_window_steps(patch, padded.shape[1:], step_size)
    tiles = math.prod(len(s) for s in steps)
    classes = plans.num_classes
    if use_gaussian and tiles > 1:
        gaussian_np = gaussian_importance_map(patch)
        gaussian: torch.Tensor | None = torch.from_numpy(gaussian_np).to(device)
        add_for_count: NDArray[np.float32] = gaussian_np
    else:
        gaussian = None
        add_for_count = np.ones(padded.shape[1:], dtype=np.float32)
    aggregated = np.zeros([classes, *padded.shape[1:]], dtype=np.float32)
    counts = np.zeros([classes, *padded.shape[1:]], dtype=np.float32)
    with torch.no_grad(), _precision(device, mixed_precision):
        for z in steps[0]:
            for y in steps[1]:
                for x in steps[2]:
                    window = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                    tile = torch.from_numpy(np.ascontiguousarray(padded[(None, slice(None), *window)])).to(
                        device
                    )
                    predicted = _mirrored_prediction(network, tile, classes, do_mirroring, gaussian)[0]
                    aggregated[(slice(None), *window)] += predicted.cpu().numpy()
                    counts[(slice(None), *window)] += add_for_count
    unpad = tuple([slice(0, classes), *slicer[1:]])
    probabilities: NDArray[np.float32] = aggregated[unpad] / counts[unpad]
    return probabilities


# ------------------------------------------------------------------------------------------------- export
def export_softmax(softmax: NDArray[np.float32], info: CropInfo, plans: NnunetPlans) -> NDArray[np.float32]:
    """Step 4: the foreground probability (Z, Y, X) float32 on the original scan's grid.

    ``softmax`` is the fold mean (classes, Z, Y, X) on the preprocessed grid (still transposed forward).
    """
    backward = list(plans.transpose_backward)
    softmax = softmax.transpose([0] + [i + 1 for i in backward])
    target = info.cropped_shape
    if np.any([i != j for i, j in zip(np.array(softmax.shape[1:]), np.array(target), strict=True)]):
        if plans.force_separate_z is None:
            if _separate_z(info.original_spacing):
                do_separate_z, axis = True, _lowres_axis(info.original_spacing)
            elif _separate_z(plans.target_spacing):
                do_separate_z, axis = True, _lowres_axis(plans.target_spacing)
            else:
                do_separate_z, axis = False, None
        else:
            do_separate_z = plans.force_separate_z
            axis = _lowres_axis(info.original_spacing) if do_separate_z else None
        if axis is not None and len(axis) != 1:
            do_separate_z = False
        resampled = resample_data(
            softmax, target, axis, plans.export_order, do_separate_z, order_z=plans.export_order_z
        )
    else:
        resampled = softmax
    # nnU-Net stores the resampled softmax as float16 (--save_npz); process.py reads it back as float32.
    foreground = np.array(resampled.astype(np.float16)[1]).astype("float32")
    out = np.zeros(info.original_shape, dtype=np.float32)
    bbox = [list(b) for b in info.bbox]
    for c in range(3):
        bbox[c][1] = int(np.min((bbox[c][0] + foreground.shape[c], info.original_shape[c])))
    out[bbox[0][0] : bbox[0][1], bbox[1][0] : bbox[1][1], bbox[2][0] : bbox[2][1]] = foreground
    return out
