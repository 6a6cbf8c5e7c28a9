"""What was chosen for each role and why, and the JSON-ready study report.

:class:`RoleChoice` records the series chosen for a role (T2W, ADC, HBV) with the reason and the other
candidates; :class:`ComputedImage` records a high b-value image the engine computed. The report (the
series table, the roles, skipped and ignored inputs, warnings) is what ``lesion-ai inspect`` prints and
what a :class:`~lesion_engine.errors.StudyError` carries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from lesion_engine.intake.loading import LoadedStudy
from lesion_engine.intake.roles import SeriesVerdict, plane_of
from lesion_engine.intake.series import Series

logger = logging.getLogger(__name__)

__all__ = ["ComputedImage", "RoleChoice", "build_report", "role_report", "series_row"]


@dataclass(frozen=True)
class RoleChoice:
    """The series chosen for a role, and why.

    Attributes
    ----------
    role : str
        ``t2w``, ``adc`` or ``hbv``.
    series_instance_uid, series_number, description
        The chosen series (for a computed HBV: the diffusion series it was computed from).
    b_value : float or None
        For ``hbv``: the b-value of the image used.
    computed : bool
        True when the image was computed by the engine rather than taken from the study.
    reason : str
        Why this series was chosen.
    alternatives : tuple of str
        Other candidates for the role, each with why it was not chosen.
    """

    role: str
    series_instance_uid: str
    series_number: int | None
    description: str
    b_value: float | None
    computed: bool
    reason: str
    alternatives: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "description": self.description,
            "b_value": self.b_value,
            "computed": self.computed,
            "reason": self.reason,
            "alternatives": list(self.alternatives),
        }


@dataclass(frozen=True)
class ComputedImage:
    """A high b-value image computed by the engine from a low b-value image and the ADC map."""

    b_value: float
    low_b_series_instance_uid: str
    low_b_series_number: int | None
    low_b_value: float
    adc_series_instance_uid: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "b_value": self.b_value,
            "computed": True,
            "series_instance_uid": self.low_b_series_instance_uid,
            "series_number": self.low_b_series_number,
            "low_b_value": self.low_b_value,
            "adc_series_instance_uid": self.adc_series_instance_uid,
            "method": "mono-exponential: S(b) = S(b_low) * exp(-(b - b_low) * ADC)",
        }


def series_row(series: Series, verdict: SeriesVerdict | None) -> dict[str, Any]:
    """One row of the series table (JSON-ready)."""
    first = series.frames[0] if series.frames else None
    n_positions = len({tuple(np.round(f.position, 2)) for f in series.frames if f.position is not None})
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "description": series.description,
        "modality": series.modality,
        "manufacturer": series.manufacturer,
        "sop_class": "enhanced" if "PerFrameFunctionalGroupsSequence" in series.header else "classic",
        "instances": len(series.instances),
        "frames": len(series.frames),
        "b_values": series.b_values,
        "rows": first.rows if first else None,
        "columns": first.columns if first else None,
        "slices": n_positions,
        "pixel_spacing": list(first.pixel_spacing) if first and first.pixel_spacing else None,
        "plane": plane_of(series),
        "candidate_for": sorted(verdict.candidate_for) if verdict else [],
        "role": verdict.role if verdict else None,
        "ignored": verdict.ignored if verdict else None,
        "reason": "; ".join(verdict.reasons) if verdict else "",
    }


def role_report(roles: dict[str, RoleChoice], computed: ComputedImage | None) -> dict[str, Any]:
    """The ``roles`` part of the study report (JSON-ready): the choice per role, and the computed image."""
    role_dict: dict[str, Any] = {name: choice.to_dict() for name, choice in roles.items()}
    if computed is not None:
        role_dict[f"hbv_b{computed.b_value:g}"] = computed.to_dict()
    return role_dict


def build_report(
    loaded: LoadedStudy,
    verdicts: dict[str, SeriesVerdict],
    roles: dict[str, RoleChoice],
    computed: ComputedImage | None,
    warnings: list[str],
) -> dict[str, Any]:
    """Assemble the JSON-ready study report (also used for unusable studies)."""
    return {
        "study_instance_uid": loaded.study_instance_uid,
        "series": [series_row(s, verdicts.get(s.series_instance_uid)) for s in loaded.series],
        "roles": role_report(roles, computed),
        "skipped_instances": [{"source": s.source, "reason": s.reason} for s in loaded.skipped],
        "ignored_objects": [
            {"source": o.source, "sop_class": o.sop_class_name, "modality": o.modality}
            for o in loaded.ignored
        ],
        "warnings": list(warnings),
    }
