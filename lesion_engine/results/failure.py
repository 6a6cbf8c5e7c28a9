"""Failure result: objects that say the AI did not analyse a study, and why.

A radiologist who sees no AI result must be able to tell "the AI found nothing" from "the AI did not run".
For a study that could not be processed the node therefore writes a Comprehensive SR stating the reason,
and (by default) a Secondary Capture image with the reason burned in, which every viewer shows.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from lesion_engine.results.common import (
    CAD_SUMMARY,
    FINDING,
    NOT_RUN,
    UidFactory,
    copy_study_extras,
    device_and_dates,
    evidence_headers,
    text_image,
)
from lesion_engine.results.drawing import text_panel
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr import observation_context

logger = logging.getLogger(__name__)

__all__ = ["failure_text", "write_failure_objects"]

_REPORT_TITLE = codes.LN.DiagnosticImagingReport
_MAX_REASON = 4000


def failure_text(reason: str) -> str:
    """The sentence written into the failure SR and image."""
    return (
        f"AI analysis NOT performed: {reason.strip()}. "
        "No AI result exists for this study: read it without AI support."
    )


def _reference(datasets: Sequence[Dataset]) -> Dataset:
    for ds in datasets:
        if "PixelData" in ds or "Rows" in ds:
            return ds
    return datasets[0]


def _check(study_datasets: Sequence[Dataset], reason: str) -> None:
    if not study_datasets:
        raise ValueError("a failure result needs at least one dataset of the study")
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in study_datasets}
    if len(studies) != 1 or "" in studies:
        raise ValueError(f"the datasets must belong to one study (found {len(studies)} StudyInstanceUIDs)")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("a failure result needs a reason")


def _failure_sr(
    reference: Dataset, text: str, settings: ResultSettings, uids: UidFactory, when: datetime.datetime
) -> Dataset:
    root = hd.sr.ContainerContentItem(name=_REPORT_TITLE, template_id=None)
    content = hd.sr.ContentSequence(is_root=False)
    content.extend(observation_context(settings))
    content.append(
        hd.sr.CodeContentItem(
            name=CAD_SUMMARY, value=NOT_RUN, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    content.append(
        hd.sr.TextContentItem(
            name=FINDING, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    root.ContentSequence = content
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence_headers([reference]),
        content=root,
        series_instance_uid=uids.uid("failure-sr", "series"),
        series_number=settings.failure_series_number,
        sop_instance_uid=uids.uid("failure-sr", "instance"),
        instance_number=1,
        **device_and_dates(settings, when, reference),
        is_complete=True,
        is_final=False,
        record_evidence=False,
        series_description=settings.failure_series_description,
    )
    copy_study_extras(sr, reference)
    return sr


def _failure_sc(
    reference: Dataset, text: str, settings: ResultSettings, uids: UidFactory, when: datetime.datetime
) -> Dataset:
    pixels = text_panel(
        [
            ("AI ANALYSIS NOT PERFORMED", 30),
            (text, 20),
            (settings.caption, 16),
            (f"{settings.manufacturer} {settings.software_versions}", 14),
        ]
    )
    return text_image(
        reference,
        pixels,
        settings,
        when,
        series_instance_uid=uids.uid("failure-sc", "series"),
        series_number=settings.failure_sc_series_number,
        sop_instance_uid=uids.uid("failure-sc", "instance"),
        series_description=settings.failure_sc_series_description,
    )


def write_failure_objects(
    study_datasets: Sequence[Dataset], reason: str, settings: ResultSettings, when: datetime.datetime
) -> list[Dataset]:
    """Build the failure SR (and Secondary Capture image); see :func:`lesion_engine.results.writer.write_failure`."""
    _check(study_datasets, reason)
    reason = reason.strip()[:_MAX_REASON]
    reference = _reference(study_datasets)
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in study_datasets})
    uids = UidFactory(settings, [str(reference.StudyInstanceUID), *series, "failure", reason])
    text = failure_text(reason)
    out = [_failure_sr(reference, text, settings, uids, when)]
    if settings.write_failure_sc:
        out.append(_failure_sc(reference, text, settings, uids, when))
    logger.info(
        "failure result for study %s: %s",
        reference.StudyInstanceUID,
        ", ".join(str(ds.SOPInstanceUID) for ds in out),
    )
    return out
