"""DICOM results that radiologists open in their viewers.

* :func:`write_results`: SEG (one segment per lesion), TID 1500 Comprehensive 3D SR, and optionally a
  Parametric Map of the localization map and a Secondary Capture overlay series;
* :func:`write_failure`: an SR and a Secondary Capture image saying that the AI did not analyse a study,
  and why.

Every object copies the patient and study attributes of the source, names the product as equipment and
the AI model as Contributing Equipment, and has UIDs derived from the input series, the model's digest
and the settings, so re-processing a study gives the same objects.
"""

from __future__ import annotations

from lesion_engine.results.protocols import LesionLike, ResultLike
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import ResultObjects, write_failure, write_results

__all__ = [
    "LesionLike",
    "ResultLike",
    "ResultObjects",
    "ResultSettings",
    "write_failure",
    "write_results",
]
