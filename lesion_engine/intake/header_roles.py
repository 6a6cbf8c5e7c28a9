"""Series roles from headers alone: which series may be the T2W, the ADC map or a diffusion series, and
which candidate of each role is preferred, before any pixel data is read.

Given the headers of each series (all its instances, or only the first one: what a caller has at hand),
:func:`classify_headers` builds the series and classifies it with :func:`lesion_engine.intake.roles.classify_series`,
and :func:`rank_roles` ranks the candidates of each role by :func:`lesion_engine.intake.roles.preference_key`
(most recent acquisition, then higher SeriesNumber, then larger SeriesInstanceUID). The final choice also
needs the volumes to be buildable, which only :mod:`lesion_engine.intake.preprocess` checks; for the diffusion
role the candidates are listed in the callers' order, since the choice among them depends on the b-values
of every instance.

Used by the node to show an administrator which series would get which role (``POST rules/test``) and to
decide which series a worker need not fetch whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydicom.dataset import Dataset

from lesion_engine.intake.roles import SeriesVerdict, classify_series, preference_key
from lesion_engine.intake.series import Series, build_series
from lesion_engine.intake.series_rules import SeriesRules, load_series_rules

logger = logging.getLogger(__name__)

__all__ = ["UNREADABLE", "HeaderVerdict", "RankedRoles", "SeriesHeaders", "classify_headers", "rank_roles"]

#: The ``ignored`` kind of a series none of whose headers could be read.
UNREADABLE = "unreadable"

K = TypeVar("K")


@dataclass(frozen=True)
class HeaderVerdict:
    """What the headers of one series say about its role.

    Attributes
    ----------
    series : Series or None
        The series built from the headers; None when none of them could be used.
    candidate_for : frozenset of str
        Roles the series may take: ``t2w``, ``adc``, ``dwi``.
    ignored : str or None
        Why the series is ignored (``localizer``, ``dce``, ``t2_sagittal``, ..., :data:`UNREADABLE`), or None.
    reasons : tuple of str
        Why, in words (for an unreadable series: why its instances were left out).
    """

    series: Series | None
    candidate_for: frozenset[str]
    ignored: str | None
    reasons: tuple[str, ...]

    @classmethod
    def of(cls, series: Series, verdict: SeriesVerdict) -> HeaderVerdict:
        """From the engine's verdict on a built series."""
        return cls(series, frozenset(verdict.candidate_for), verdict.ignored, tuple(verdict.reasons))


def classify_headers(
    series_instance_uid: str, headers: Sequence[tuple[str, Dataset]], rules: SeriesRules | None = None
) -> HeaderVerdict:
    """Classify one series from the headers of some or all of its instances.

    Parameters
    ----------
    series_instance_uid : str
        The series' UID.
    headers : sequence of (str, Dataset)
        Where each header comes from (for messages) and the header (pixel data not needed).
    rules : SeriesRules, optional
        The series-selection rules; the engine's defaults when None.

    Returns
    -------
    HeaderVerdict
        ``ignored`` is :data:`UNREADABLE` when no header could be used (``reasons``: why, at most three).
    """
    built, bad = build_series(series_instance_uid, list(headers))
    if built is None:
        return HeaderVerdict(None, frozenset(), UNREADABLE, tuple(reason for _, reason in bad[:3]))
    return HeaderVerdict.of(
        built, classify_series(built, rules if rules is not None else load_series_rules())
    )


@dataclass(frozen=True)
class SeriesHeaders(Generic[K]):
    """The headers of one series, with the caller's handle of the series.

    Attributes
    ----------
    key : K
        What the caller wants back in the ranking (an ID, a description, ...).
    series_instance_uid : str
        The series' UID.
    headers : sequence of (str, Dataset)
        As for :func:`classify_headers`.
    """

    key: K
    series_instance_uid: str
    headers: Sequence[tuple[str, Dataset]]


@dataclass(frozen=True)
class RankedRoles(Generic[K]):
    """The header-only classification of a study's series.

    Attributes
    ----------
    verdicts : tuple of (K, HeaderVerdict)
        Every series, in the callers' order.
    t2w, adc : tuple of (K, Series)
        The candidates of the role, preferred first.
    dwi : tuple of (K, Series)
        The diffusion candidates, in the callers' order.
    """

    verdicts: tuple[tuple[K, HeaderVerdict], ...]
    t2w: tuple[tuple[K, Series], ...]
    adc: tuple[tuple[K, Series], ...]
    dwi: tuple[tuple[K, Series], ...]


def rank_roles(series: Sequence[SeriesHeaders[K]], rules: SeriesRules | None = None) -> RankedRoles[K]:
    """Classify each series from its headers and rank the candidates of each role.

    Parameters
    ----------
    series : sequence of SeriesHeaders
        The study's series.
    rules : SeriesRules, optional
        The series-selection rules; the engine's defaults when None.
    """
    rules = rules if rules is not None else load_series_rules()
    verdicts: list[tuple[K, HeaderVerdict]] = []
    candidates: dict[str, list[tuple[K, Series]]] = {"t2w": [], "adc": [], "dwi": []}
    for item in series:
        verdict = classify_headers(item.series_instance_uid, item.headers, rules)
        verdicts.append((item.key, verdict))
        if verdict.series is not None:
            for role in sorted(verdict.candidate_for):
                candidates[role].append((item.key, verdict.series))

    def preferred_first(found: list[tuple[K, Series]]) -> tuple[tuple[K, Series], ...]:
        return tuple(sorted(found, key=lambda c: preference_key(c[1]), reverse=True))

    return RankedRoles(
        verdicts=tuple(verdicts),
        t2w=preferred_first(candidates["t2w"]),
        adc=preferred_first(candidates["adc"]),
        dwi=tuple(candidates["dwi"]),
    )
