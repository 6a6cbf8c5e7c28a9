"""Which input series a worker need not fetch whole: decided from the header of their first instance.

The default routing rule hands the worker every MR series of a study, DCE among them (often more instances
than all other series together). The engine ignores such series from their headers alone (localizers, coil
reference scans, DCE, screenshots, non-MR objects, sagittal, coronal and oblique T2), so the worker fetches
their first instance, classifies it with the job's series rules, and skips the rest. Series whose role
depends on all their instances (diffusion b-values, for one) are always fetched whole; so is a tilted
series whose first header carries a b-value tag: one image with b = 0 cannot show that the series is no
diffusion series (the b > 0 images may follow), and an oblique diffusion series is still usable.
"""

from __future__ import annotations

import io
import logging

import pydicom

from lesion_engine.intake.header_roles import classify_headers
from lesion_engine.intake.series_rules import SeriesRules

logger = logging.getLogger(__name__)

__all__ = ["HEADER_DECIDED", "skippable_series"]

HEADER_DECIDED = frozenset(
    {
        "not_mr",
        "not_mr_image",
        "localizer",
        "coil_reference",
        "dce",
        "screenshot",
        "t2_sagittal",
        "t2_coronal",
        "t2_oblique",
    }
)
"""Ignore verdicts of :func:`lesion_engine.intake.roles.classify_series` that the first instance decides."""


def skippable_series(first_instance: bytes, rules: SeriesRules | None = None) -> str | None:
    """Why the rest of a series need not be fetched, or None when it must be.

    Parameters
    ----------
    first_instance : bytes
        The series' first instance (a DICOM file).
    rules : SeriesRules, optional
        The job's series-selection rules; the engine's defaults when None.

    Returns
    -------
    str or None
        The ignore verdict (e.g. ``"dce"``) when the engine would ignore the whole series; None when the
        series may be used, or when the instance cannot be read (then everything is fetched and the engine
        reports the problem).
    """
    try:
        dataset = pydicom.dcmread(io.BytesIO(first_instance), stop_before_pixels=True)
        verdict = classify_headers(str(dataset.get("SeriesInstanceUID", "")), [("first", dataset)], rules)
    except Exception as exc:  # an unreadable header: fetch it all and let the engine say what is wrong
        logger.debug("first instance not classified: %s", exc)
        return None
    if verdict.series is None:
        return None
    if verdict.ignored == "t2_oblique" and verdict.series.diffusion.ignored_b_values is not None:
        return None
    return verdict.ignored if verdict.ignored in HEADER_DECIDED else None
