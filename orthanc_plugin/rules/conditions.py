"""What a routing rule tests: conditions on attribute texts, and the match alternatives built from them.

Rules read studies and series through :class:`StudyView` and :class:`SeriesView` (the node implements
them over Orthanc's REST API, tests with plain objects). See :mod:`orthanc_plugin.rules` for the forms a
condition takes in the rules file.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from lesion_engine.config.safe_regex import SafePattern

logger = logging.getLogger(__name__)

__all__ = [
    "SERIES_PSEUDO_ATTRIBUTES",
    "STUDY_PSEUDO_ATTRIBUTES",
    "AlternativeMatch",
    "Condition",
    "Conditions",
    "SeriesView",
    "StudyView",
]

#: Attributes computed by the node rather than read from DICOM headers.
STUDY_PSEUDO_ATTRIBUTES = frozenset({"ModalitiesInStudy"})
SERIES_PSEUDO_ATTRIBUTES = frozenset(
    {"RemoteAET", "RemoteIP", "CalledAET", "SOPClassUID", "NumberOfSeriesRelatedInstances"}
)


class StudyView(Protocol):
    """What rule evaluation reads of a study (the node implements it over Orthanc's REST API)."""

    def study_attribute(self, keyword: str) -> str | None:
        """Text of a study-level attribute (multi-valued joined by a backslash), None when absent."""
        ...

    @property
    def series(self) -> Sequence[SeriesView]:
        """The study's candidate input series (the node's own results already left out)."""
        ...


class SeriesView(Protocol):
    """What rule evaluation reads of a series."""

    @property
    def series_id(self) -> str:
        """Orthanc ID of the series."""
        ...

    def attribute(self, keyword: str) -> str | None:
        """Text of a series-level attribute, None when absent."""
        ...


def _values(text: str | None) -> list[str]:
    return [] if text is None else [v.strip() for v in text.split("\\")]


@dataclass(frozen=True)
class Condition:
    """One test of an attribute's text.

    Attributes
    ----------
    kind : str
        ``regex`` (searched in the whole text), ``in`` (one of the values equals one of ``values``),
        ``range`` (one of the values is a number within ``low``..``high``), ``cidr`` (the value is an IP
        address within one of ``networks``) or ``not`` (``inner`` does not hold).
    """

    kind: Literal["regex", "in", "range", "cidr", "not"]
    pattern: SafePattern | None = None
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    inner: Condition | None = None

    def test(self, text: str | None) -> bool:
        """True when the attribute's text (None: absent) meets the condition."""
        if self.kind == "not":
            assert self.inner is not None
            return not self.inner.test(text)
        if self.kind == "regex":
            assert self.pattern is not None
            return self.pattern.search(text or "")
        values = _values(text)
        if self.kind == "in":
            return any(v in self.values for v in values) or (not values and "" in self.values)
        if self.kind == "range":
            for v in values:
                try:
                    number = float(v)
                except ValueError:
                    continue
                if (self.low is None or number >= self.low) and (self.high is None or number <= self.high):
                    return True
            return False
        for v in values:
            try:
                address = ipaddress.ip_address(v)
            except ValueError:
                continue
            if any(address in network for network in self.networks):
                return True
        return False

    def describe(self) -> str:
        """Readable form, e.g. ``~/(?i)prostat/`` or ``in [MR]``."""
        if self.kind == "not":
            assert self.inner is not None
            return f"not ({self.inner.describe()})"
        if self.kind == "regex":
            assert self.pattern is not None
            return f"~/{self.pattern.pattern}/"
        if self.kind == "in":
            return f"in [{', '.join(self.values)}]"
        if self.kind == "range":
            return f"in range [{'' if self.low is None else f'{self.low:g}'}, {'' if self.high is None else f'{self.high:g}'}]"
        return f"in networks [{', '.join(str(n) for n in self.networks)}]"


Conditions = tuple[tuple[str, Condition], ...]


def _all_hold(conditions: Conditions, get: Callable[[str], str | None]) -> bool:
    return all(condition.test(get(keyword)) for keyword, condition in conditions)


#: Attributes whose values identify the patient: a reason names them without their value.
_IDENTIFYING = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "OtherPatientIDs",
        "OtherPatientNames",
        "AccessionNumber",
    }
)
_SHOWN_CHARS = 64


def _shown(keyword: str, text: str | None) -> str:
    """An attribute's value as a reason shows it: absent, withheld (identifying) or quoted (shortened)."""
    if text is None:
        return "absent"
    if keyword in _IDENTIFYING:
        return "(value not shown)"
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


def _first_failure(conditions: Conditions, get: Callable[[str], str | None]) -> str | None:
    for keyword, condition in conditions:
        text = get(keyword)
        if not condition.test(text):
            return f"{keyword} is {_shown(keyword, text)}, not {condition.describe()}"
    return None


@dataclass(frozen=True)
class AlternativeMatch:
    """One way a rule can match (every part must hold)."""

    study: Conditions = ()
    series: Conditions = ()
    has_series: tuple[Conditions, ...] = ()

    def input_series(self, study: StudyView) -> list[SeriesView] | None:
        """The input series when this alternative matches ``study``, else None."""
        return self._match(study)[0]

    def why_not(self, study: StudyView) -> str | None:
        """Why this alternative does not match ``study`` (its first failing part), or None when it does."""
        return self._match(study)[1]

    def _match(self, study: StudyView) -> tuple[list[SeriesView] | None, str | None]:
        """(the input series, None) when this alternative matches, else (None, the first failing part)."""
        failed = _first_failure(self.study, study.study_attribute)
        if failed is not None:
            return None, f"study: {failed}"
        inputs = [s for s in study.series if _all_hold(self.series, s.attribute)]
        if not inputs:
            if not study.series:
                return None, "the study has no series to read"
            first = _first_failure(self.series, study.series[0].attribute)
            return None, f"none of its {len(study.series)} series matches (the first: {first})"
        for required in self.has_series:
            if not any(_all_hold(required, s.attribute) for s in inputs):
                wanted = ", ".join(f"{k} {c.describe()}" for k, c in required)
                return None, f"no input series has {wanted}"
        return inputs, None

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "study": {k: c.describe() for k, c in self.study},
            "series": {k: c.describe() for k, c in self.series},
            "has_series": [{k: c.describe() for k, c in entry} for entry in self.has_series],
        }
