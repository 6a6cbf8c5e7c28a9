"""The Key Object Selection of one result (IHE AI Results: the Evidence Creator's KOS).

One KOS document (TID 2010, ``highdicom.ko``) per result set, so that a PACS that only knows key objects
can show what the AI made and where: it references the SEG, the SR, the result summary image, the
Parametric Map and the overlay images when written, and the T2W image at each lesion's index slice (its
largest area, the slice the SR's outline lies on). A negative study's KOS references the SR and the
summary image. Its title is "Of Interest" (DCM 113000, CID 7010), and its observer context names the
algorithm as the SR's does (the device observer: UID, name, manufacturer, model, serial number).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from lesion_engine.model.contour import index_slice
from lesion_engine.results.common import (
    ModelInfo,
    T2WGrid,
    UidFactory,
    contributing_equipment,
    copy_study_extras,
    device_and_dates,
)
from lesion_engine.results.protocols import LesionLike
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr import device_observer

logger = logging.getLogger(__name__)

__all__ = ["KOS_TITLE", "key_images", "write_kos"]

#: CID 7010 "Key Object Selection Document Title": "Of Interest".
KOS_TITLE = codes.DCM.OfInterest


def key_images(lesions: Sequence[LesionLike], grid: T2WGrid) -> list[Dataset]:
    """The T2W instances at the lesions' index slices, each once, in slice order."""
    slices = sorted({index_slice(lesion.mask) for lesion in lesions if lesion.mask.any()})
    seen: set[str] = set()
    out = []
    for k in slices:
        dataset, _ = grid.slice_sources[k]
        if str(dataset.SOPInstanceUID) not in seen:
            seen.add(str(dataset.SOPInstanceUID))
            out.append(dataset)
    return out


def _description(count: int, model: ModelInfo, settings: ResultSettings) -> str:
    """The document's description: the model, how many lesions were found, and the caption."""
    return (
        f"AI result ({model.name} {model.version}): "
        + (f"{count} lesion{'s' if count != 1 else ''}, " if count else "no lesion found, ")
        + f"{settings.caption}"
    )


def _drop_reference_concept_names(kos: Dataset) -> None:
    """Remove the concept names of the document's IMAGE and COMPOSITE items, in place.

    TID 2010 gives its IMAGE and COMPOSITE rows no concept name (PixelMed: "Purpose of Reference is
    forbidden"); highdicom names them "Source" (SCT 260753009), which PS3.3 allows in general.
    """
    for item in kos.ContentSequence:
        if item.ValueType in ("IMAGE", "COMPOSITE") and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence


def write_kos(
    results: Sequence[Dataset],
    lesions: Sequence[LesionLike],
    grid: T2WGrid,
    model: ModelInfo,
    settings: ResultSettings,
    uids: UidFactory,
    when: datetime.datetime,
) -> Dataset:
    """Build the Key Object Selection of one result set.

    Parameters
    ----------
    results : sequence of Dataset
        The result objects written for the study (SEG, SR, summary, Parametric Map, overlays).
    lesions : sequence of LesionLike
        The lesions: the T2W image at each one's index slice is referenced.
    grid : T2WGrid
        The T2W source instances.
    model : ModelInfo
        The model (named in the contributing equipment).
    settings : ResultSettings
        Series number and description, observer and product names.
    uids : UidFactory
        Derives the document's UIDs.
    when : datetime.datetime
        Time of the analysis.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument

    Raises
    ------
    ValueError
        When ``results`` is empty (there is always at least the SR).
    """
    if not results:
        raise ValueError("a Key Object Selection needs at least one result object (the SR)")
    referenced = [*results, *key_images(lesions, grid)]
    content = hd.ko.KeyObjectSelection(
        document_title=KOS_TITLE,
        referenced_objects=referenced,
        observer_device_context=device_observer(settings),
        description=_description(len(lesions), model, settings)[:1024],
    )
    reference = grid.datasets[0]
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=referenced,
        content=content,
        series_instance_uid=uids.uid(
            "kos", "series", settings.kos_series_number, settings.kos_series_description
        ),
        series_number=settings.kos_series_number,
        sop_instance_uid=uids.uid(
            "kos", "instance", settings.kos_series_number, settings.kos_series_description
        ),
        instance_number=1,
        **device_and_dates(settings, when, reference),
        contributing_equipment=contributing_equipment(settings, model, when),
        series_description=settings.kos_series_description,
    )
    _drop_reference_concept_names(kos)
    copy_study_extras(kos, reference)
    logger.info(
        "key object selection for study %s: %d object(s), %d key image(s)",
        grid.study_instance_uid,
        len(results),
        len(referenced) - len(results),
    )
    return kos
