"""The PI-CAI U-Net's pre- and post-processing, with the reference's numbers and less work.

The reference (``process.py``; :mod:`lesion_engine.model.picai_unet.config` lists its steps) resamples every
scan whole to 3 x 0.5 x 0.5 mm, crops it, resamples ADC and HBV onto the cropped T2W, and later resamples
all three scans whole again only to learn the T2W's resampled size. Here:

* each scan is resampled whole and cropped, as the reference does (``crop_resampling='whole'``), or only
  its crop is computed (``crop``: the same B-spline interpolation at the same points, 0 where the
  reference pads, but ITK computes the points along its scan lines, so they differ in the last bits; the
  reference truncates values of integer series, so that a few voxels differ by 1: a deliberate
  difference, off by default); the resampled T2W's size is computed, not resampled for;
* ADC and HBV then go onto the cropped T2W as in the reference (``diffusion_resampling='reference'``), or
  straight from their own grids (``direct``: one interpolation, a deliberate difference);
* a series that SimpleITK reads from DICOM as integers is resampled in that integer type, as the
  reference sees it after picai_prep's ``dcm2mha`` (``input_pixel_type='dicom'``);
* the normalisation is the reference's ``z_score_norm`` expression for expression;
* the probability map goes back onto the T2W grid exactly as the reference does it (``crop_or_pad``, then a
  B-spline resampling in the index frame of the resampled T2W), and the candidates are extracted with
  :func:`lesion_engine.model.picai_unet.candidates.extract_dynamic` (report_guided_annotation's, bit for bit).

Arrays are (z, y, x); SimpleITK sizes, spacings and indices are (x, y, z).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from lesion_engine.intake.preprocess import PreparedStudy
from lesion_engine.intake.series import Series
from lesion_engine.model.picai_unet.candidates import extract_dynamic
from lesion_engine.model.picai_unet.config import PicaiPipeline

logger = logging.getLogger(__name__)

__all__ = [
    "CropGrid",
    "DetectionMaps",
    "crop_grid",
    "crop_or_pad",
    "detection_maps",
    "dicom_pixel_type",
    "network_input",
    "resampled_size",
    "role_images",
    "z_score_norm",
]

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class CropGrid:
    """The crop of a scan resampled to the pipeline's spacing (picai_prep's ``centre_crop_or_pad``).

    Attributes
    ----------
    resampled_size : (x, y, z)
        Size of the whole scan resampled to the spacing (``resample_img``'s rounding).
    offset : (x, y, z)
        Index in the resampled scan of the crop's first voxel (negative where the crop pads).
    grid : SimpleITK.Image
        An image with the crop's geometry (its pixels are not used).
    """

    resampled_size: Triple
    offset: Triple
    grid: sitk.Image
    whole: sitk.Image

    def cut(self, resampled: sitk.Image) -> sitk.Image:
        """The crop of the whole resampled scan, as picai_prep's ``crop_or_pad`` cuts it (a slice, then a
        constant pad of 0)."""
        return _cut(resampled, self.resampled_size, self.grid.GetSize(), self.offset)

    def padded(self) -> tuple[slice, slice, slice] | None:
        """The (z, y, x) boxes of the crop that lie inside the resampled scan; None when all of it does."""
        size = self.grid.GetSize()
        inside = []
        whole = True
        for axis in (2, 1, 0):
            low = max(0, -self.offset[axis])
            high = min(size[axis], self.resampled_size[axis] - self.offset[axis])
            whole = whole and low == 0 and high == size[axis]
            inside.append(slice(low, max(low, high)))
        return None if whole else (inside[0], inside[1], inside[2])


def resampled_size(image: sitk.Image, spacing_zyx: Sequence[float]) -> Triple:
    """Size (x, y, z) of ``image`` resampled to ``spacing_zyx``, rounded as picai_prep's ``resample_img``."""
    out_spacing = list(spacing_zyx)[::-1]
    size = [
        int(np.round(n * (spacing_in / spacing_out)))
        for n, spacing_in, spacing_out in zip(image.GetSize(), image.GetSpacing(), out_spacing, strict=True)
    ]
    return (size[0], size[1], size[2])


def crop_grid(image: sitk.Image, config: PicaiPipeline) -> CropGrid:
    """The crop of ``image`` resampled to ``config.spacing_zyx`` (origin and direction kept), centre
    cropped or padded to ``config.matrix_zyx``, as picai_prep computes it."""
    size = resampled_size(image, config.spacing_zyx)
    matrix = list(config.matrix_zyx)[::-1]
    offset = []
    for n, m in zip(size, matrix, strict=True):
        offset.append(-((m - n) // 2) if n < m else math.floor((n - m) / 2.0))
    # The crop's geometry as picai_prep computes it (a slice, then a constant pad, of the resampled scan),
    # on an empty image of the resampled scan's size: the same arithmetic gives the same origin to the last
    # bit, and the reference truncates values at sample positions, where the last bit can matter.
    whole = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    whole.SetOrigin(image.GetOrigin())
    whole.SetDirection(image.GetDirection())
    whole.SetSpacing([float(v) for v in list(config.spacing_zyx)[::-1]])
    triple = (offset[0], offset[1], offset[2])
    return CropGrid(size, triple, _cut(whole, size, matrix, triple), whole)


def _cut(
    resampled: sitk.Image, size: Sequence[int], matrix: Sequence[int], offset: Sequence[int]
) -> sitk.Image:
    """picai_prep's ``crop_or_pad`` of a SimpleITK image (sizes and offsets (x, y, z))."""
    slicer = tuple(
        slice(o, o + m) if n >= m else slice(None) for n, m, o in zip(size, matrix, offset, strict=True)
    )
    pad = sitk.ConstantPadImageFilter()
    pad.SetPadLowerBound([-o if n < m else 0 for n, m, o in zip(size, matrix, offset, strict=True)])
    pad.SetPadUpperBound([m - n + o if n < m else 0 for n, m, o in zip(size, matrix, offset, strict=True)])
    pad.SetConstant(0)
    out: sitk.Image = pad.Execute(resampled[slicer])
    return out


def _resample(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """B-spline onto ``grid``, 0 outside, in ``image``'s pixel type (as ResampleImageFilter's defaults)."""
    out: sitk.Image = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkBSpline, 0.0)
    return out


def _on_crop(image: sitk.Image, crop: CropGrid, whole: bool) -> sitk.Image:
    """``image`` resampled onto its crop, 0 where the reference pads: resampled whole then cut as the
    reference does (``whole``), or computed on the crop only."""
    if whole:
        return crop.cut(_resample(image, crop.whole))
    out = _resample(image, crop.grid)
    inside = crop.padded()
    if inside is None:
        return out
    values = sitk.GetArrayFromImage(out)
    kept = np.zeros_like(values)
    kept[inside] = values[inside]
    padded = sitk.GetImageFromArray(kept)
    padded.CopyInformation(out)
    return padded


def dicom_pixel_type(header: Dataset | None) -> int:
    """The SimpleITK pixel type a series is read in from DICOM: an unsigned or signed integer type for
    integer pixels without rescaling (8 or 16 bits), float64 with a rescale, else float32."""
    if header is None:
        return int(sitk.sitkFloat32)
    try:
        slope = float(header.get("RescaleSlope", 1) or 1)
        intercept = float(header.get("RescaleIntercept", 0) or 0)
        bits = int(header.get("BitsAllocated", 0))
        signed = int(header.get("PixelRepresentation", 0)) == 1
    except (TypeError, ValueError):
        return int(sitk.sitkFloat32)
    if slope != 1.0 or intercept != 0.0:
        return int(sitk.sitkFloat64)  # SimpleITK applies the rescale in double
    if header.get("FloatPixelData") is not None:
        return int(sitk.sitkFloat32)
    types = {(8, False): sitk.sitkUInt8, (8, True): sitk.sitkInt8}
    types.update({(16, False): sitk.sitkUInt16, (16, True): sitk.sitkInt16})
    return int(types.get((bits, signed), sitk.sitkFloat32))


def _as_read(image: sitk.Image, pixel_type: int) -> sitk.Image:
    """``image`` (float32) in ``pixel_type``: an integer type when every value is exactly representable, or
    float64 (our float32 values: SimpleITK rescales in double, so these differ in the 8th digit)."""
    if pixel_type == sitk.sitkFloat32:
        return image
    if pixel_type == sitk.sitkFloat64:
        cast: sitk.Image = sitk.Cast(image, sitk.sitkFloat64)
        return cast
    values = sitk.GetArrayViewFromImage(image)
    info = np.iinfo(sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_type)).dtype)
    if values.size and (
        not np.array_equal(values, np.round(values)) or values.min() < info.min or values.max() > info.max
    ):
        logger.debug("values are not integers of the DICOM type: kept as float32")
        return image
    out: sitk.Image = sitk.Cast(image, pixel_type)
    return out


def role_images(prepared: PreparedStudy, config: PicaiPipeline) -> list[sitk.Image]:
    """T2W, ADC and HBV (the chosen high b-value image, else the computed one) on their own grids, as the
    reference reads them (see the module docstring).

    With ``input_pixel_type='dicom'``, a series the study holds is given as SimpleITK reads it from DICOM
    (picai_prep's ``dcm2mha``): in its integer pixel type, and, for single-frame instances, with the slice
    spacing SimpleITK computes (first to last slice position / (n - 1); our loader takes the median gap, which
    can differ in the eighth digit: enough to move an interpolated value across an integer, which the
    reference then truncates).
    """
    images = [prepared.native["t2w"], prepared.native["adc"], prepared.native.get("hbv")]
    if images[2] is None:
        images[2] = prepared.native["high_b"]
    out = []
    for role, image in zip(("t2w", "adc", "hbv"), images, strict=True):
        if image is None:  # excluded above: PreparedStudy holds hbv or high_b
            raise ValueError("no high b-value volume")
        choice = prepared.roles.get(role)
        measured = role != "hbv" or "hbv" in prepared.native
        if config.input_pixel_type != "dicom" or choice is None or not measured or choice.computed:
            out.append(image)
            continue
        series = prepared.loaded.series_by_uid(choice.series_instance_uid)
        read = _as_read(image, dicom_pixel_type(series.header))
        geometry = _simpleitk_geometry(series, choice.b_value if role == "hbv" else None, image)
        if geometry is not None:
            read = sitk.Image(read)  # a copy: the prepared study's volume is left as it is
            read.SetOrigin(geometry[0])
            read.SetSpacing(geometry[1])
            read.SetDirection(geometry[2])
        out.append(read)
    return out


Geometry = tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]


def _simpleitk_geometry(series: Series, b_value: float | None, image: sitk.Image) -> Geometry | None:
    """Origin, spacing and direction of ``image`` as SimpleITK's DICOM series reader gives them.

    SimpleITK takes the direction and the in-plane spacing from the first slice as GDCM reads its header,
    and the slice spacing as the distance from the first to the last slice position over n - 1. Ours agree
    to the 15th digit (the slice spacing to the 8th: our loader takes the median gap). The reference
    truncates interpolated values to integers, and a value at a sample position moves across an integer
    with such differences; so the two headers are read by SimpleITK itself (written to a temporary file:
    it reads files only). None when that is not possible (multi-frame instances, other counts): ours stay.
    """
    chosen = [
        f
        for f in series.frames
        if f.position is not None and (b_value is None or (f.is_trace and f.b_value == b_value))
    ]
    if len(chosen) < 2 or any(f.frame is not None for f in chosen) or len(chosen) != image.GetSize()[2]:
        return None
    normal = chosen[0].normal
    if normal is None:
        return None
    chosen.sort(key=lambda f: float(np.asarray(f.position, dtype=np.float64) @ normal))
    headers = []
    try:
        with tempfile.TemporaryDirectory(prefix="lesion-ai-header-") as folder:
            for n, frame in enumerate((chosen[0], chosen[-1])):
                path = Path(folder) / f"{n}.dcm"
                pydicom.dcmwrite(path, series.instances[frame.instance].dataset, enforce_file_format=True)
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(path))
                reader.ReadImageInformation()
                headers.append((reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection()))
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        logger.debug("SimpleITK cannot read the series' headers (%s): our geometry is kept", exc)
        return None
    (first, spacing, direction), (last, _, _) = headers
    gap = float(np.linalg.norm(np.asarray(last) - np.asarray(first)) / (len(chosen) - 1))
    return tuple(first), (float(spacing[0]), float(spacing[1]), gap), tuple(direction)


def z_score_norm(image: NDArray[np.generic], percentile: float) -> NDArray[np.float32]:
    """picai_baseline's ``z_score_norm``: clip at the percentile and its mirror, then z-score (0 when flat)."""
    values = image.astype(np.float32)
    lower_bnd = np.percentile(values, 100 - percentile)
    upper_bnd = np.percentile(values, percentile)
    values = np.clip(values, lower_bnd, upper_bnd)
    mean = np.mean(values)
    std = np.std(values)
    if std > 0:
        out: NDArray[np.float32] = (values - mean) / std
        return out
    zero: NDArray[np.float32] = values * 0.0
    return zero


def network_input(
    images: Sequence[sitk.Image], config: PicaiPipeline
) -> tuple[NDArray[np.float32], CropGrid]:
    """The networks' input (3, Z, Y, X) float32 and the T2W's crop (steps 1 and 2 of the pipeline)."""
    crop = crop_grid(images[0], config)

    def channel(index: int) -> NDArray[np.float32]:
        """Scan ``index`` on the T2W's crop, normalized (independent of the other scans)."""
        image = images[index]
        whole = config.crop_resampling == "whole"
        if index == 0:
            scan = _on_crop(image, crop, whole)
        elif config.diffusion_resampling == "reference":
            scan = _resample(_on_crop(image, crop_grid(image, config), whole), crop.grid)
        else:
            scan = _resample(image, crop.grid)
        return z_score_norm(
            np.expand_dims(sitk.GetArrayFromImage(scan), axis=0), config.normalization_percentile
        )

    # The scans at once: ITK's B-spline coefficients are computed on one thread per resampling, and SimpleITK
    # lets go of the GIL, so three chains fill the CPUs better than one after another (the same operations on
    # each scan, so the same numbers).
    with ThreadPoolExecutor(max_workers=len(images), thread_name_prefix="picai-input") as pool:
        channels = list(pool.map(channel, range(len(images))))
    return np.vstack(channels).astype(np.float32, copy=False), crop


def crop_or_pad(array: NDArray[np.generic], size: Sequence[int]) -> NDArray[np.generic]:
    """picai_prep's ``crop_or_pad`` of a numpy array: centre crop or zero pad to ``size``."""
    padding = [[0, 0] for _ in size]
    slicer = [slice(None)] * len(size)
    for i, (n, m) in enumerate(zip(array.shape, size, strict=True)):
        if n < m:
            padding[i][0] = (m - n) // 2
            padding[i][1] = m - n - padding[i][0]
        else:
            start = int(np.floor((n - m) / 2.0))
            slicer[i] = slice(start, start + m)
    out: NDArray[np.generic] = np.pad(array[tuple(slicer)], padding, constant_values=0)
    return out


@dataclass(frozen=True)
class DetectionMaps:
    """What the pipeline makes of the ensemble's map, on the T2W grid (Z, Y, X).

    Attributes
    ----------
    probability : ndarray of float32
        The likelihood map (the reference's input to the candidate extraction).
    detection : ndarray of float32
        Each retained candidate's blob holds its likelihood, 0 elsewhere (the reference's detection map).
    blobs : ndarray of int
        Each retained candidate's blob holds its extraction index, 0 elsewhere.
    """

    probability: NDArray[np.float32]
    detection: NDArray[np.float32]
    blobs: NDArray[np.int_]


def detection_maps(
    ensemble: NDArray[np.float32],
    t2w: sitk.Image,
    crop: CropGrid,
    config: PicaiPipeline,
    allowed: NDArray[np.bool_] | None = None,
) -> DetectionMaps:
    """Steps 6 to 8: the crop and resampling undone, candidates extracted, the weak ones removed.

    ``allowed`` (Z, Y, X) on the T2W grid, when given, is where candidates may lie (the anatomical gate):
    the map is 0 elsewhere before the extraction.
    """
    size_zyx = list(crop.resampled_size)[::-1]
    image = sitk.GetImageFromArray(crop_or_pad(ensemble, size_zyx))
    image.SetSpacing(list(config.spacing_zyx)[::-1])
    # resample_img(image, out_spacing=T2W spacing): origin 0 and identity direction, as the reference does.
    out_spacing = [float(s) for s in t2w.GetSpacing()]
    out_size = [
        int(np.round(n * (spacing_in / spacing_out)))
        for n, spacing_in, spacing_out in zip(image.GetSize(), image.GetSpacing(), out_spacing, strict=True)
    ]
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(out_spacing)
    resampler.SetSize(out_size)
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetOutputOrigin(image.GetOrigin())
    resampler.SetTransform(sitk.Transform())
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetInterpolator(sitk.sitkBSpline)
    probability = sitk.GetArrayFromImage(resampler.Execute(image))
    if allowed is not None:
        probability = probability * crop_or_pad(allowed, probability.shape).astype(probability.dtype)
    detection, _, blobs = extract_dynamic(probability, config.extraction)
    if config.weak_candidate_divisor:
        # The reference writes max / 5: the same division (a Python float divisor stays weak in NumPy 2).
        weak = detection < (np.max(detection) / config.weak_candidate_divisor)
        detection[weak] = 0
        blobs[weak] = 0
    shape = sitk.GetArrayViewFromImage(t2w).shape
    return DetectionMaps(
        probability=np.asarray(crop_or_pad(probability, shape), dtype=np.float32),
        detection=np.asarray(crop_or_pad(detection, shape), dtype=np.float32),
        blobs=np.asarray(crop_or_pad(blobs, shape)),
    )
