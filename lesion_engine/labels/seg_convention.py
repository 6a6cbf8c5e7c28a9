"""How a radiologist's DICOM Segmentation (SEG) states its grades, and how the node's own SEGs are told apart.

Shared by the node (which records the SEGs radiologists send back as labels, reading headers as Orthanc's
JSON) and by training (which reads them with pydicom): standard library only, so that it can be imported
inside Orthanc.

Convention: each lesion segment states its grade in its SegmentLabel or SegmentDescription (0062,0006),
case-insensitive:

* ``ISUP 3`` (also ``ISUP grade 3``, ``ISUP=3``, ``GG 3``): the histopathological ISUP grade group 0..5;
* ``PI-RADS 4`` (also ``PIRADS 4``, ``PI-RADS v2.1 4``): the radiologist's PI-RADS category 1..5.

A SEG is the node's own result (never a label) when its Manufacturer is the node's, or when a Contributing
Equipment item names the node and no segment was drawn manually or semi-automatically
(:func:`node_made`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

__all__ = ["HeaderLike", "node_made", "parse_grade"]

_ISUP = re.compile(r"\b(?:ISUP(?:\s*grade(?:\s*group)?)?|GG)\s*[:=]?\s*([0-5])\b", re.IGNORECASE)
_PIRADS = re.compile(
    r"\bPI-?RADS(?:\s*v?\d(?:\.\d)?(?=\s))?\s*(?:category\s*)?[:=]?\s*([1-5])\b", re.IGNORECASE
)
#: Segment algorithm types that say a person drew (or corrected) the segment.
_BY_HAND = frozenset({"MANUAL", "SEMIAUTOMATIC"})


class HeaderLike(Protocol):
    """A DICOM header read by keyword: a pydicom ``Dataset`` or Orthanc's simplified-tags JSON (a dict;
    sequences are lists of such headers)."""

    def get(self, key: str, default: Any = None, /) -> Any:
        """The value of attribute ``key`` (a DICOM keyword), or ``default``."""
        ...


def parse_grade(text: str) -> tuple[int | None, int | None]:
    """The (ISUP, PI-RADS) stated in a segment's text by the module's convention; None where absent.

    Parameters
    ----------
    text : str
        SegmentLabel and SegmentDescription of one segment.

    Returns
    -------
    (int or None, int or None)
        ISUP grade group 0..5 and PI-RADS category 1..5.
    """
    isup = _ISUP.search(text)
    pirads = _PIRADS.search(text)
    return (int(isup.group(1)) if isup else None, int(pirads.group(1)) if pirads else None)


def _items(header: HeaderLike, keyword: str) -> Iterable[HeaderLike]:
    value = header.get(keyword, None)
    if value is None or isinstance(value, str | bytes):
        return ()
    return [item for item in value if hasattr(item, "get")]


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def node_made(header: HeaderLike, node_manufacturers: tuple[str, ...]) -> str | None:
    """Why a SEG is the node's own result (never a label), or None when a person made it.

    Parameters
    ----------
    header : HeaderLike
        The SEG's header (pydicom or Orthanc JSON).
    node_manufacturers : tuple of str
        Manufacturer names of the node's results.

    Returns
    -------
    str or None
        The reason, e.g. ``made by the node (Manufacturer 'Lesion AI')``.
    """
    names = {n.strip().casefold() for n in node_manufacturers if n.strip()}
    manufacturer = _text(header.get("Manufacturer", ""))
    if manufacturer.casefold() in names:
        return f"made by the node (Manufacturer {manufacturer!r})"
    contributors = [
        _text(item.get("Manufacturer", "")) for item in _items(header, "ContributingEquipmentSequence")
    ]
    ours = [c for c in contributors if c.casefold() in names]
    algorithm_types = {
        _text(s.get("SegmentAlgorithmType", "")).upper() for s in _items(header, "SegmentSequence")
    }
    if ours and not algorithm_types & _BY_HAND:
        return f"made by the node (Contributing Equipment {ours[0]!r}, no manual segment)"
    return None
