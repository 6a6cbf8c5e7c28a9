"""Diffusion b-values, wherever a vendor put them.

The tags and conventions are those dcm2niix reads (its source is the most trusted record of them):

- Enhanced MR: DiffusionBValue in the frame's MR Diffusion functional group (MRDiffusionSequence, per-frame
  or shared); Philips also keeps the frame's b-value in its private (2001,xx03), directly in the per-frame
  item or in its private per-frame sequence (2005,xx0F), read when the standard group holds none;
- GE: private (0043,xx39) under creator ``GEMS_PARM_01``, first value, modulo 10^9 (multi-b and synthetic-b
  series store b + 10^9 there, issue 602 of dcm2niix). It is read before the standard DiffusionBValue,
  which GE leaves out on b = 0 images, and only on EPI series (ScanningSequence EP): GE writes the group on
  every MR series, and non-EPI series may carry any value there;
- DiffusionBValue (0018,9087) at the top level: Philips, Canon/Toshiba (which omit it on b = 0 images),
  Siemens XA, GE RX27+;
- Siemens: private (0019,xx0C) under creator ``SIEMENS MR HEADER``, then SequenceName such as ``*ep_b800t``
  or ``ep_b1000#1``;
- Philips: private (2001,xx03) under creator ``Philips Imaging DD 001`` (FL);
- UIH: private (0065,xx09) under creator ``Image Private Header`` (FD, "BActualValue").

Private elements are always read through their private creator, never by a fixed element number.
Whether a b-value means diffusion weighting (a b-value of 0 does not) is decided per series, in
:mod:`lesion_engine.intake.diffusion`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

__all__ = ["BValue", "b_value_of"]

#: Where a b-value was found: one of the source names below.
BValue = tuple[float, str]

_GE_OFFSET = 1_000_000_000
_SIEMENS_SEQUENCE_NAME = re.compile(r"ep_b(\d+)(t|#\d+)?$", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?")


def _number(value: Any) -> float | None:
    """Return the first number held by a DICOM value (numeric, string, bytes or multi-valued)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1", errors="replace").strip("\x00 ")
    if isinstance(value, str):
        match = _NUMBER.search(value)
        return float(match.group(0)) if match else None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        items = list(value)
        return _number(items[0]) if items else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _private(ds: Dataset, group: int, creator: str, offset: int) -> Any:
    """Return the value of a private element, found through its private creator, or None."""
    try:
        block = ds.private_block(group, creator)
    except KeyError:
        return None
    tag = block.get_tag(offset)
    if tag not in ds:
        return None
    return ds[tag].value


def _standard(ds: Dataset) -> float | None:
    if "DiffusionBValue" in ds:
        return _number(ds.DiffusionBValue)
    seq = ds.get("MRDiffusionSequence")
    if seq:
        item = seq[0]
        if "DiffusionBValue" in item:
            return _number(item.DiffusionBValue)
    return None


def _siemens(ds: Dataset) -> BValue | None:
    value = _number(_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0C))
    if value is not None:
        return value, "siemens-private(0019,xx0C)"
    name = str(ds.get("SequenceName", "") or "")
    match = _SIEMENS_SEQUENCE_NAME.search(name.strip())
    if match:
        return float(match.group(1)), "SequenceName"
    return None


def _is_epi(ds: Dataset) -> bool:
    value = ds.get("ScanningSequence")
    if value is None:
        return False
    items = [value] if isinstance(value, str) else list(value)
    return any("EP" in str(v).upper().split("\\") for v in items)


def _ge(ds: Dataset) -> BValue | None:
    value = _number(_private(ds, 0x0043, "GEMS_PARM_01", 0x39))
    if value is None or not _is_epi(ds):
        return None
    if value >= 0:
        value = float(int(value) % _GE_OFFSET)
    return value, "ge-private(0043,xx39)"


def _philips(ds: Dataset) -> BValue | None:
    value = _number(_private(ds, 0x2001, "Philips Imaging DD 001", 0x03))
    if value is None:
        return None
    return value, "philips-private(2001,xx03)"


def _philips_frame(frame_group: Dataset) -> BValue | None:
    """Philips Enhanced: (2001,xx03) in the per-frame item, or in its private per-frame sequence."""
    found = _philips(frame_group)
    if found is not None:
        return found
    try:
        block = frame_group.private_block(0x2005, "Philips MR Imaging DD 005")
    except KeyError:
        return None
    tag = block.get_tag(0x0F)
    if tag not in frame_group or frame_group[tag].VR != "SQ" or not frame_group[tag].value:
        return None
    return _philips(frame_group[tag].value[0])


def _uih(ds: Dataset) -> BValue | None:
    value = _number(_private(ds, 0x0065, "Image Private Header", 0x09))
    if value is None:
        return None
    return value, "uih-private(0065,xx09)"


def b_value_of(
    ds: Dataset, frame_group: Dataset | None = None, shared_group: Dataset | None = None
) -> BValue | None:
    """Return the b-value of an image (or of one frame of an Enhanced MR image) and where it was found.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance (top-level dataset).
    frame_group : pydicom.dataset.Dataset, optional
        The frame's item of PerFrameFunctionalGroupsSequence, for multi-frame objects.
    shared_group : pydicom.dataset.Dataset, optional
        The item of SharedFunctionalGroupsSequence, for multi-frame objects.

    Returns
    -------
    tuple of (float, str) or None
        The b-value in s/mm^2 and the name of its source, or None when no source holds one.
    """
    for group in (frame_group, shared_group):
        if group is not None:
            value = _standard(group)
            if value is not None:
                return value, "MRDiffusionSequence"
    if frame_group is not None:
        philips = _philips_frame(frame_group)
        if philips is not None and philips[0] >= 0:
            return philips
    ge = _ge(ds)
    if ge is not None and ge[0] >= 0:
        return ge
    value = _standard(ds)
    if value is not None:
        return value, "DiffusionBValue"
    for reader in (_siemens, _philips, _uih):
        found = reader(ds)
        if found is not None:
            if found[0] < 0:
                logger.warning("ignoring negative b-value %s from %s", found[0], found[1])
                continue
            return found
    return None
