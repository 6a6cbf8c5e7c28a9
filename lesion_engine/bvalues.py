"""Diffusion b-values, wherever a vendor put them.

Order of precedence (the first source that yields a number wins):

1. DiffusionBValue (0018,9087), top level or in the Enhanced MR diffusion functional group
   (MRDiffusionSequence) of the frame;
2. Siemens: private (0019,xx0C) under creator ``SIEMENS MR HEADER``, then SequenceName such as
   ``*ep_b800t``;
3. GE: private (0043,xx39) under creator ``GEMS_PARM_01``, first value, stored as b + 10^9 on many scanners;
4. Philips: private (2001,xx03) under creator ``Philips Imaging DD 001``.

Private elements are always read through their private creator, never by a fixed element number.
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
_SIEMENS_SEQUENCE_NAME = re.compile(r"ep_b(\d+)t?$", re.IGNORECASE)
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


def _ge(ds: Dataset) -> BValue | None:
    value = _number(_private(ds, 0x0043, "GEMS_PARM_01", 0x39))
    if value is None:
        return None
    if value >= _GE_OFFSET:
        value -= _GE_OFFSET
    return value, "ge-private(0043,xx39)"


def _philips(ds: Dataset) -> BValue | None:
    value = _number(_private(ds, 0x2001, "Philips Imaging DD 001", 0x03))
    if value is None:
        return None
    return value, "philips-private(2001,xx03)"


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
    value = _standard(ds)
    if value is not None:
        return value, "DiffusionBValue"
    for reader in (_siemens, _ge, _philips):
        found = reader(ds)
        if found is not None:
            if found[0] < 0:
                logger.warning("ignoring negative b-value %s from %s", found[0], found[1])
                continue
            return found
    return None
