"""The store gate of a job started early: its results are stored only once its study has stayed as it was.

The node may start a study's job before the study's quiet time (``CompletenessQuietSeconds``) has passed,
once none of its series received an instance for ``CompletenessEarlyStartSeconds``
(:class:`~orthanc_plugin.intake.changes.ReceivingStudies`): the analysis then runs while the quiet time
passes. Such a job carries a :class:`StoreGate` in its payload (key :data:`STORE_GATE_KEY`): when the quiet
time ends (``not_before``, seconds since the epoch) and the instance count of each series the judgement saw
(``series``). Before it stores anything, the worker waits for ``not_before`` and compares the study with
the gate (:meth:`StoreGate.changes`):

* the same: the results are stored, as those of any job;
* changed (an instance more or less, or a new series that is not the node's own): nothing is stored and
  the job ends *withdrawn* (:data:`~orthanc_plugin.jobqueue.model.WITHDRAWN`). The node judges the study
  again once it is quiet: a job for other inputs replaces this one; the same job is queued again.

While a job runs, a later judgement of its study that asks for the same job moves its gate
(:meth:`~orthanc_plugin.jobqueue.JobQueue.enqueue`): a new snapshot and a later ``not_before``, or no gate
at all when the study is judged stable. So images that arrive in a series the job does not read (the job
is the same) cost a wait, not a second analysis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lesion_engine.errors import LesionAIError

logger = logging.getLogger(__name__)

__all__ = ["STORE_GATE_KEY", "StoreGate", "StoreGateError"]

#: The payload key of a job's store gate (absent: the results are stored as soon as they are made).
STORE_GATE_KEY = "store_gate"


class StoreGateError(LesionAIError, ValueError):
    """A store gate that is not a valid document (the message names the key)."""


@dataclass(frozen=True)
class StoreGate:
    """When a job started early may store its results (see the module docstring).

    Attributes
    ----------
    not_before : float
        When the study's quiet time ends, seconds since the epoch.
    series : mapping of str to int
        Orthanc ID and instance count of each series the judgement saw (the node's own series and those
        that may go on receiving excepted).
    any_count : tuple of str
        Series that may go on receiving (the node's own results, a long series the engine ignores from its
        first header, such as DCE): present or not, any count.
    own_manufacturer : str
        The node's own Manufacturer: a new series of it (another rule's results) is no change.
    """

    not_before: float
    series: Mapping[str, int]
    any_count: tuple[str, ...] = ()
    own_manufacturer: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.not_before, bool) or not isinstance(self.not_before, int | float):
            raise StoreGateError(f"store gate, key 'not_before': expected seconds, got {self.not_before!r}")
        if not math.isfinite(self.not_before) or self.not_before < 0:
            raise StoreGateError(
                f"store gate, key 'not_before': expected seconds >= 0, got {self.not_before!r}"
            )
        if not isinstance(self.series, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in self.series.items()
        ):
            raise StoreGateError(
                f"store gate, key 'series': expected an object of series ID to instance count, got {self.series!r}"
            )
        if not all(isinstance(s, str) and s for s in self.any_count):
            raise StoreGateError(
                f"store gate, key 'any_count': expected a list of series IDs, got {self.any_count!r}"
            )
        if not isinstance(self.own_manufacturer, str):
            raise StoreGateError(
                f"store gate, key 'own_manufacturer': expected text, got {self.own_manufacturer!r}"
            )
        object.__setattr__(self, "series", MappingProxyType(dict(self.series)))
        object.__setattr__(self, "any_count", tuple(self.any_count))

    def to_json(self) -> dict[str, Any]:
        """The gate as stored in a job's payload (JSON-ready)."""
        return {
            "not_before": self.not_before,
            "series": dict(sorted(self.series.items())),
            "any_count": sorted(self.any_count),
            "own_manufacturer": self.own_manufacturer,
        }

    @classmethod
    def from_json(cls, data: object) -> StoreGate:
        """Read a stored gate.

        Raises
        ------
        StoreGateError
            A key is unknown, missing or of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise StoreGateError(f"store gate: expected a JSON object, got {type(data).__name__}")
        known = {"not_before", "series", "any_count", "own_manufacturer"}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise StoreGateError(f"store gate: unknown key(s) {', '.join(map(repr, unknown))}")
        for key in ("not_before", "series"):
            if key not in data:
                raise StoreGateError(f"store gate: key {key!r} is missing")
        any_count = data.get("any_count") or []
        if not isinstance(any_count, list):
            raise StoreGateError(
                f"store gate, key 'any_count': expected a list of series IDs, got {any_count!r}"
            )
        return cls(
            not_before=data["not_before"],
            series=data["series"],
            any_count=tuple(any_count),
            own_manufacturer=data.get("own_manufacturer", "") or "",
        )

    @classmethod
    def of_payload(cls, payload: Mapping[str, Any]) -> StoreGate | None:
        """The gate of a stored payload; None when it has none."""
        data = payload.get(STORE_GATE_KEY)
        return None if data is None else cls.from_json(data)

    def changes(self, study_series: Sequence[Mapping[str, Any]]) -> str | None:
        """What changed in the study since the gate's snapshot; None when nothing did.

        Parameters
        ----------
        study_series : sequence of mapping
            The study's series as Orthanc lists them (``GET /studies/{id}/series``: ``ID``, ``Instances``,
            ``MainDicomTags``).

        Returns
        -------
        str or None
            The first change found, in words (for the job's reason), or None.
        """
        seen = set()
        for series in study_series:
            series_id = str(series.get("ID", ""))
            seen.add(series_id)
            count = len(series.get("Instances") or ())
            if series_id in self.any_count:
                continue
            if series_id in self.series:
                if count != self.series[series_id]:
                    return f"series {series_id} holds {count} instance(s), not {self.series[series_id]}"
                continue
            manufacturer = str((series.get("MainDicomTags") or {}).get("Manufacturer", "")).strip()
            if not (self.own_manufacturer and manufacturer == self.own_manufacturer):
                return f"series {series_id} ({count} instance(s)) arrived"
        for series_id in sorted(set(self.series) - seen):
            return f"series {series_id} is gone"
        return None
