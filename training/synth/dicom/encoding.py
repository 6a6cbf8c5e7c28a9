"""Pixel data encodings: uncompressed, RLE, JPEG-LS, JPEG 2000 (all lossless) and JPEG Lossless SV1.

RLE, JPEG-LS and JPEG 2000 use pydicom's encoders (pylibjpeg-rle, pyjpegls, pylibjpeg-openjpeg). pydicom has
no JPEG Lossless (process 14, selection value 1) encoder, so that one runs DCMTK's ``dcmcjpeg`` once per
series on a temporary multi-frame object and takes its per-frame fragments.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RLELossless,
)

logger = logging.getLogger(__name__)

__all__ = ["TRANSFER_SYNTAXES", "DcmtkMissingError", "encode_frames_dcmtk", "set_pixel_data"]

TRANSFER_SYNTAXES: dict[str | None, UID] = {
    None: ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg-lossless": JPEGLosslessSV1,
}

DCMCJPEG = "dcmcjpeg"

PixelArray = NDArray[Any]
"""Stored pixel values: uint16 grey or uint8 (RGB) arrays."""


class DcmtkMissingError(RuntimeError):
    """``dcmcjpeg`` (DCMTK) is needed for JPEG Lossless and is not on PATH."""


def encode_frames_dcmtk(frames: PixelArray, bits_stored: int) -> list[bytes]:
    """Encode frames as JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1) with ``dcmcjpeg``.

    Parameters
    ----------
    frames
        ``(n, rows, columns)`` grey or ``(n, rows, columns, 3)`` RGB pixel values.
    bits_stored
        Bits Stored of the data (the JPEG sample precision follows it).

    Returns
    -------
    list of bytes
        One JPEG codestream per frame.

    Raises
    ------
    DcmtkMissingError
        When ``dcmcjpeg`` is not installed.
    RuntimeError
        When ``dcmcjpeg`` fails.
    """
    exe = shutil.which(DCMCJPEG)
    if exe is None:
        raise DcmtkMissingError(
            "compress='jpeg-lossless' needs DCMTK's dcmcjpeg on PATH (Debian/Ubuntu: apt-get install dcmtk); "
            "pydicom has no JPEG Lossless encoder"
        )
    rgb = frames.ndim == 4
    ds = Dataset()
    ds.SOPClassUID = (
        MultiFrameTrueColorSecondaryCaptureImageStorage
        if rgb
        else MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    )
    ds.SOPInstanceUID = "2.25.1"
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.NumberOfFrames = int(frames.shape[0])
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if frames.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with tempfile.TemporaryDirectory(prefix="synth-jpeg-") as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        ds.save_as(src, enforce_file_format=True)
        result = subprocess.run(
            [exe, "+e1", "+un", "-q", str(src), str(dst)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not dst.exists():
            raise RuntimeError(f"dcmcjpeg failed ({result.returncode}): {result.stderr.strip()}")
        out = pydicom.dcmread(dst)
    return [bytes(f) for f in generate_frames(out.PixelData, number_of_frames=frames.shape[0])]


def set_pixel_data(
    ds: Dataset,
    pixels: PixelArray,
    compress: str | None,
    encoded: list[bytes] | None = None,
) -> None:
    """Put ``pixels`` into ``ds`` with the transfer syntax of ``compress``.

    The Image Pixel attributes (rows, columns, bits, photometric interpretation, number of frames) must be set
    already. ``ds.file_meta`` is created or updated.

    Parameters
    ----------
    ds
        The dataset.
    pixels
        ``(rows, columns[, 3])`` for one frame or ``(frames, rows, columns[, 3])``.
    compress
        ``None``, ``"rle"``, ``"jpegls"``, ``"jpeg2000"`` or ``"jpeg-lossless"``.
    encoded
        For ``"jpeg-lossless"``: the frames' codestreams from :func:`encode_frames_dcmtk` (computed here when
        not given).
    """
    tsuid = TRANSFER_SYNTAXES[compress]
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    arr = np.ascontiguousarray(pixels)
    if compress is None:
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OB" if arr.dtype == np.uint8 else "OW"
        ds.file_meta.TransferSyntaxUID = tsuid
    elif compress == "jpeg-lossless":
        frames = arr if (arr.ndim == 4 or (arr.ndim == 3 and not _is_rgb(ds))) else arr[None]
        codestreams = encoded if encoded is not None else encode_frames_dcmtk(frames, int(ds.BitsStored))
        ds.PixelData = encapsulate(codestreams, has_bot=False)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = tsuid
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(tsuid, arr, generate_instance_uid=False)
    ds.LossyImageCompression = "00"


def _is_rgb(ds: Dataset) -> bool:
    return int(ds.get("SamplesPerPixel", 1)) == 3
