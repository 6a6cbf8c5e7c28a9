"""DICOM results that radiologists open in their viewers.

* :func:`write_results`: SEG (one segment per lesion), TID 1500 Comprehensive 3D SR, and optionally a
  Parametric Map of the localization map and a Secondary Capture overlay series;
* :func:`write_failure`: an SR and a Secondary Capture image saying that the AI did not analyse a study,
  and why.

Every object copies the patient and study attributes of the source, names the product as equipment and
the AI model as Contributing Equipment, and has UIDs derived from the input series, the model's digest
and the settings, so re-processing a study gives the same objects.

The writers (:mod:`lesion_engine.results.writer`, which needs highdicom and SimpleITK) are imported on first
use, so that reading :class:`ResultSettings` (as the node's settings do, inside Orthanc) imports neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lesion_engine.results.protocols import LesionLike, ResultLike
from lesion_engine.results.settings import PRODUCT_NAME, ResultSettings

if TYPE_CHECKING:
    from lesion_engine.results.writer import ResultObjects, write_failure, write_results

__all__ = [
    "PRODUCT_NAME",
    "LesionLike",
    "ResultLike",
    "ResultObjects",
    "ResultSettings",
    "write_failure",
    "write_results",
]

_WRITER_NAMES = frozenset({"ResultObjects", "write_failure", "write_results"})


def __getattr__(name: str) -> Any:
    """The writers' names, imported from :mod:`lesion_engine.results.writer` on first use."""
    if name in _WRITER_NAMES:
        return getattr(importlib.import_module("lesion_engine.results.writer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
