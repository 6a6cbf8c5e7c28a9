"""The result summary: one Secondary Capture image that any viewer shows, positive study or negative.

A negative study has no SEG, and viewers show an SR without measurements as nothing (OHIF: an empty
viewport, "Measurements (0)"). The summary makes the result visible everywhere: one text image with "No
lesion found" (or the lesions found, with category and likelihood), the prostate volume, the patient-level
score, the model, the anatomical gate's warnings and the research-use notice. Its SeriesDescription says
the verdict too (``ResultSettings.summary_series_description``, ``{result}`` replaced), so that a study
browser's list of series shows it before the image is opened. It holds no patient data in its pixels
(BurnedInAnnotation NO): the study's identity comes from its header, copied from the T2W series.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

from pydicom.dataset import Dataset

from lesion_engine.results.common import (
    ModelInfo,
    T2WGrid,
    UidFactory,
    category_text,
    contributing_equipment,
    text_image,
)
from lesion_engine.results.drawing import text_panel
from lesion_engine.results.protocols import LesionLike
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr_gland import ProstateVolume, prostate_line

logger = logging.getLogger(__name__)

__all__ = ["summary_headline", "write_summary"]

#: Lesions listed one by one on the image; more are counted.
_LISTED = 8
#: SeriesDescription is LO (64 characters at most).
_LO = 64


def summary_headline(lesions: Sequence[LesionLike]) -> str:
    """The verdict in a few words: ``no lesion found`` or ``N lesion(s) found``."""
    if not lesions:
        return "no lesion found"
    return f"{len(lesions)} lesion{'s' if len(lesions) != 1 else ''} found"


#: The zone of a lesion in words.
_ZONES = {"pz": "peripheral zone", "tz": "transition zone", "outside": "outside the prostate"}


def _lesion_line(lesion: LesionLike) -> str:
    zone = getattr(lesion, "zone", None)
    zone = f", {_ZONES.get(str(zone), str(zone))}" if zone else ""
    return (
        f"Lesion {int(lesion.id)}: {category_text(lesion, 'category ')}likelihood {float(lesion.probability):.2f}, "
        f"{float(lesion.max_diameter_mm):.0f} mm{zone}"
    )


def write_summary(
    lesions: Sequence[LesionLike],
    patient_score: float,
    grid: T2WGrid,
    model: ModelInfo,
    settings: ResultSettings,
    uids: UidFactory,
    when: datetime.datetime,
    prostate: ProstateVolume | None = None,
    warnings: Sequence[str] = (),
) -> Dataset:
    """Build the summary image of one result.

    Parameters
    ----------
    lesions : sequence of LesionLike
        The lesions reported (none for a negative study).
    patient_score : float
        The patient-level score.
    grid : T2WGrid
        The T2W source instances (patient and study attributes come from the middle one).
    model : ModelInfo
        The model that made the result.
    settings : ResultSettings
        Series number and description, caption and the product's names.
    uids : UidFactory
        Derives the image's UIDs.
    when : datetime.datetime
        Time of the analysis.
    prostate : ProstateVolume, optional
        The prostate gland measured by the anatomical gate.
    warnings : sequence of str
        What a radiologist must know about the result (the anatomical gate's failures).

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sc.SCImage`` (MONOCHROME2, 512 x 512).
    """
    headline = summary_headline(lesions)
    lines: list[tuple[str, int]] = [("AI RESULT SUMMARY", 26), (headline[0].upper() + headline[1:], 30)]
    lines += [(_lesion_line(lesion), 17) for lesion in lesions[:_LISTED]]
    if len(lesions) > _LISTED:
        lines.append((f"... and {len(lesions) - _LISTED} more (see the SEG and the SR)", 17))
    volume = (
        prostate_line(prostate) if prostate is not None else "Prostate volume: not measured (no gland model)"
    )
    lines.append((volume, 17))
    lines.append((f"Patient-level score: {float(patient_score):.2f}", 17))
    lines.append((f"Model: {model.name} {model.version}".encode("ascii", "replace").decode(), 17))
    lines += [(f"Warning: {warning}", 16) for warning in warnings]
    lines.append((settings.caption, 16))
    lines.append((f"{settings.manufacturer} {settings.software_versions}", 13))
    reference, _ = grid.slice_sources[grid.shape[0] // 2]
    description = settings.summary_series_description.replace("{result}", headline)[:_LO]
    image = text_image(
        reference,
        text_panel(lines),
        settings,
        when,
        series_instance_uid=uids.uid("summary", "series", settings.summary_series_number, description),
        series_number=settings.summary_series_number,
        sop_instance_uid=uids.uid("summary", "instance", settings.summary_series_number, description),
        series_description=description,
        equipment=contributing_equipment(settings, model, when),
    )
    image.ImageComments = f"{headline}; {volume}; {settings.caption}"[:10240]
    logger.info("summary image for study %s: %s", grid.study_instance_uid, headline)
    return image
