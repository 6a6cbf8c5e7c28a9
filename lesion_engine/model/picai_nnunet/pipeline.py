"""The PI-CAI nnU-Net algorithm's pipeline around nnU-Net (its ``process.py``), on a prepared study.

``process.py`` of ``picai_nnunet_semi_supervised_gc_algorithm``:

1. picai_prep's ``Sample(scans=[t2w, adc, hbv]).preprocess()`` with default settings: ADC and HBV resampled
   onto the T2W (B-spline, in their own pixel type, 0 outside), then written as NIfTI (``scan_000<k>.nii.gz``),
   which nnU-Net reads back: the values unchanged, the spacing as float32 (NIfTI's ``pixdim``);
2. ``nnUNet_predict`` (:mod:`lesion_engine.model.picai_nnunet.inference`): 5 folds, mirroring, ``--save_npz``;
3. the softmax's foreground put back into the T2W's extent (``save_softmax_nifti_from_softmax``);
4. the map outside the central 20 x 384 x 384 voxels set to 0 (``crop_or_pad`` there and back);
5. report_guided_annotation's dynamic candidate extraction (``extract_lesion_candidates(threshold='dynamic')``):
   the detection map; the case-level likelihood is its maximum. (No blur and no removal of weak candidates,
   unlike the U-Net's pipeline.)

:class:`~lesion_engine.model.picai_nnunet.config.NnunetPipeline` holds the settings (the reference's by default).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from lesion_engine.intake.preprocess import PreparedStudy
from lesion_engine.model.picai_nnunet.config import NnunetPipeline
from lesion_engine.model.picai_unet.candidates import extract_dynamic
from lesion_engine.model.picai_unet.config import PicaiPipeline
from lesion_engine.model.picai_unet.pipeline import crop_or_pad, role_images

logger = logging.getLogger(__name__)

__all__ = ["NnunetMaps", "NnunetPipeline", "nnunet_channels", "nnunet_maps"]

_REFERENCE = (
    "process.py of DIAGNijmegen/picai_nnunet_semi_supervised_gc_algorithm (nnUNet_predict, nnunet 1.7.0)"
)


def nifti_spacing(image: sitk.Image) -> tuple[float, float, float]:
    """The spacing (z, y, x) nnU-Net reads from ``image`` written as NIfTI: float32, as ``pixdim`` holds it."""
    x, y, z = (float(np.float32(s)) for s in image.GetSpacing())
    return (z, y, x)


def nnunet_channels(
    prepared: PreparedStudy,
) -> tuple[NDArray[np.float32], tuple[float, float, float], sitk.Image]:
    """Step 1: the channels (3, Z, Y, X) float32 and the spacing (z, y, x) as nnU-Net reads them, and the T2W.

    The series are taken as SimpleITK reads them from DICOM (as the PI-CAI archive's conversion does; see
    :func:`lesion_engine.model.picai_unet.pipeline.role_images`), ADC and HBV resampled onto the T2W as picai_prep's
    ``Sample.resample_to_first_scan`` does.
    """
    t2w, *diffusion = role_images(prepared, PicaiPipeline())
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(t2w)
    resampler.SetInterpolator(sitk.sitkBSpline)
    scans = [t2w, *(resampler.Execute(scan) for scan in diffusion)]
    data = np.vstack([sitk.GetArrayFromImage(scan)[None] for scan in scans]).astype(np.float32)
    return data, nifti_spacing(t2w), t2w


@dataclass(frozen=True)
class NnunetMaps:
    """The pipeline's maps on the T2W grid (Z, Y, X).

    Attributes
    ----------
    probability : ndarray of float32
        The ensemble's map, 0 outside the central crop (the extraction's input).
    detection : ndarray of float32
        Each candidate's blob holds its likelihood, 0 elsewhere (the reference's detection map).
    blobs : ndarray of int
        Each candidate's blob holds its extraction index, 0 elsewhere.
    """

    probability: NDArray[np.float32]
    detection: NDArray[np.float32]
    blobs: NDArray[np.int_]


def nnunet_maps(
    probability: NDArray[np.float32],
    pipeline: NnunetPipeline,
    allowed: NDArray[np.bool_] | None = None,
) -> NnunetMaps:
    """Steps 4 and 5 on the ensemble's map on the T2W grid; ``allowed`` (the anatomical gate), when given, is
    where candidates may lie (the map is 0 elsewhere before the extraction)."""
    size: Sequence[int] = probability.shape
    cropped = np.asarray(
        crop_or_pad(crop_or_pad(probability, pipeline.central_crop_zyx), size), dtype=np.float32
    )
    if allowed is not None:
        cropped = cropped * allowed.astype(cropped.dtype)
    detection, _, blobs = extract_dynamic(cropped, pipeline.extraction)
    return NnunetMaps(
        probability=cropped,
        detection=np.asarray(detection, dtype=np.float32),
        blobs=np.asarray(blobs),
    )
