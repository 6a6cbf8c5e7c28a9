"""Text values copied from the source images into results, cut to their Value Representation's length.

Patient and study attributes (PatientName, StudyDescription, InstitutionName, ...) are copied from the
source instances into every result object so that the study stays consistent. A sender may write values
longer than DICOM allows (PS3.5 Table 6.2-1); copied as they are, they make the results invalid, and some
archives refuse them. They are cut to the maximum length of their VR, and the cut is logged by keyword
(never the value: it may be PHI).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

logger = logging.getLogger(__name__)

__all__ = ["MAX_TEXT_LENGTH", "fit_text_values"]

MAX_TEXT_LENGTH = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "PN": 64}
"""Maximum characters per value (PN: per component group) of the text VRs that are cut."""


def _elements(dataset: Dataset) -> Iterator[DataElement]:
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from _elements(item)
        else:
            yield element


def _cut_person_name(value: object) -> str | None:
    text = str(value)
    groups = text.split("=")
    if all(len(group) <= MAX_TEXT_LENGTH["PN"] for group in groups):
        return None
    return "=".join(group[: MAX_TEXT_LENGTH["PN"]] for group in groups)


def _cut_text(value: object, limit: int) -> str | None:
    text = str(value)
    return text[:limit] if len(text) > limit else None


def fit_text_values(dataset: Dataset) -> list[str]:
    """Cut every over-long SH, LO, ST, LT and PN value of ``dataset`` (sequences included) in place.

    Returns
    -------
    list of str
        Keywords (or tags) of the elements that were cut; empty when every value fitted.
    """
    cut: list[str] = []
    for element in _elements(dataset):
        limit = MAX_TEXT_LENGTH.get(str(element.VR))
        if limit is None or element.value in (None, ""):
            continue
        values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
        changed = False
        fitted: list[object] = []
        for value in values:
            new = _cut_person_name(value) if element.VR == "PN" else _cut_text(value, limit)
            if new is not None:
                changed = True
                fitted.append(PersonName(new) if element.VR == "PN" else new)
            else:
                fitted.append(value)
        if changed:
            element.value = fitted if len(fitted) > 1 else fitted[0]
            cut.append(element.keyword or str(element.tag))
    if cut:
        logger.warning(
            "object %s: %d value(s) longer than their VR allows were cut: %s",
            dataset.get("SOPInstanceUID", "?"),
            len(cut),
            ", ".join(sorted(set(cut))),
        )
    return cut
