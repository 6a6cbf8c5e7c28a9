"""Series roles: which series of a study may be the axial T2W, the ADC map or a diffusion series.

:func:`classify_series` looks at headers only and gives every series a :class:`SeriesVerdict`: a candidate
for some roles, or ignored, always with the reason. The choice among candidates (which needs pixel data to
prove that a candidate makes a volume) is made in :mod:`lesion_engine.intake.preprocess`.

Preference among candidates of one role (documented, deterministic): the most recent acquisition wins
(AcquisitionDateTime, else AcquisitionDate/Time, SeriesDate/Time, ContentDate/Time), then the higher
SeriesNumber, then the larger SeriesInstanceUID. A repeated acquisition is normally made because the
technologist judged the earlier one inadequate (motion, wrong coverage), so the latest is the one a
radiologist reads. For the high b-value image the highest b-value comes first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from pydicom.uid import EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage, MRImageStorage

from lesion_engine.intake.series import Series
from lesion_engine.intake.series_rules import SeriesRules
from lesion_engine.intake.volumes import tilt_from_axial_deg

logger = logging.getLogger(__name__)

__all__ = ["MR_SOP_CLASSES", "SeriesVerdict", "classify_series", "plane_of", "preference_key"]

MR_SOP_CLASSES = {
    str(MRImageStorage),
    str(EnhancedMRImageStorage),
    str(LegacyConvertedEnhancedMRImageStorage),
}
_PLANES = ("sagittal", "coronal", "axial")


@dataclass
class SeriesVerdict:
    """What the header-only classification made of one series.

    Attributes
    ----------
    candidate_for : set of str
        Roles the series may take: ``t2w``, ``adc``, ``dwi``.
    ignored : str or None
        Kind of ignored series (``localizer``, ``t2_sagittal``, ``coil_reference``, ``dce``, ...), or None.
    reasons : list of str
        Why, in words; selection appends its own findings (chosen, alternative, rejected and why).
    role : str or None
        The role finally given to the series (``t2w``, ``adc``, ``hbv``, ``low_b``), set by the selection.
    """

    candidate_for: set[str] = field(default_factory=set)
    ignored: str | None = None
    reasons: list[str] = field(default_factory=list)
    role: str | None = None


def plane_of(series: Series) -> str | None:
    """``axial``, ``sagittal`` or ``coronal`` from the dominant component of the slice normal."""
    normal = series.frames[0].normal if series.frames else None
    if normal is None:
        return None
    return _PLANES[int(np.argmax(np.abs(normal)))]


def preference_key(series: Series) -> tuple[str, int, str]:
    """Sort key of the documented preference: later acquisition, higher SeriesNumber, larger UID."""
    return (series.acquisition_key, series.series_number or -1, series.series_instance_uid)


def classify_series(series: Series, rules: SeriesRules) -> SeriesVerdict:
    """Classify one series from its headers (see the module docstring)."""
    verdict = SeriesVerdict()
    ds = series.header
    if series.modality != "MR":
        verdict.ignored = "not_mr"
        verdict.reasons.append(f"Modality is {series.modality or 'missing'}, not MR")
        return verdict
    if series.sop_class_uid not in MR_SOP_CLASSES:
        verdict.ignored = "not_mr_image"
        verdict.reasons.append("not an MR image object (e.g. a secondary capture screenshot)")
        return verdict
    for rule in rules.exclude:
        if rule.match.matches(ds):
            verdict.ignored = rule.kind
            verdict.reasons.append(f"{rule.kind} ({rule.match.explain(ds)} matches the {rule.kind} rule)")
            return verdict
    if not series.has_geometry:
        verdict.ignored = "no_geometry"
        verdict.reasons.append("images lack ImagePositionPatient/ImageOrientationPatient/PixelSpacing")
        return verdict
    plane = plane_of(series)

    adc_match = rules.adc.included_by(ds)
    if adc_match is not None and rules.adc.excluded_by(ds) is None:
        verdict.candidate_for.add("adc")
        verdict.reasons.append(f"ADC map ({adc_match.explain(ds)})")
        return verdict

    if series.diffusion.weighted:
        return _classify_diffusion(series, rules, verdict)
    if series.diffusion.ignored_b_values:
        verdict.reasons.append(series.diffusion.ignored_b_values)

    t2_match = rules.t2w.included_by(ds)
    if t2_match is not None and rules.t2w.excluded_by(ds) is None:
        if plane != "axial":
            verdict.ignored = f"t2_{plane}"
            verdict.reasons.append(f"T2 in the {plane} plane; the model reads the axial T2W")
            return verdict
        tilt = tilt_from_axial_deg(series.frames[0])
        if tilt is not None and tilt > rules.t2w_max_tilt_deg:
            verdict.ignored = "t2_oblique"
            verdict.reasons.append(
                f"T2 tilted {tilt:.1f} degrees from axial (more than t2w_max_tilt_deg = {rules.t2w_max_tilt_deg:g})"
            )
            return verdict
        verdict.candidate_for.add("t2w")
        verdict.reasons.append(
            f"axial T2 ({t2_match.explain(ds)}" + (f", tilt {tilt:.1f} deg)" if tilt is not None else ")")
        )
        return verdict

    verdict.ignored = "no_role"
    verdict.reasons.append("matches no role (not T2W, ADC or diffusion by the series rules)")
    return verdict


def _classify_diffusion(series: Series, rules: SeriesRules, verdict: SeriesVerdict) -> SeriesVerdict:
    """A diffusion-weighted series that is not an ADC map: a DWI candidate, or ignored with the reason."""
    ds = series.header
    evidence = series.diffusion.describe()
    excluded = rules.dwi.excluded_by(ds)
    if excluded is not None:
        verdict.ignored = "diffusion_map"
        verdict.reasons.append(
            f"diffusion-derived map, not a trace image ({excluded.explain(ds)} matches the dwi exclude rule)"
        )
        return verdict
    if rules.dwi.include and rules.dwi.included_by(ds) is None:
        verdict.ignored = "diffusion_not_included"
        verdict.reasons.append(
            f"diffusion-weighted ({evidence}) but matches none of the dwi include rules of the series rules"
        )
        return verdict
    trace_b = sorted({f.b_value for f in series.frames if f.is_trace and f.b_value is not None})
    if not trace_b:
        verdict.ignored = "diffusion_directional"
        verdict.reasons.append(
            f"diffusion-weighted ({evidence}) but no trace image with a b-value: only directional images "
            "or derived maps"
        )
        return verdict
    verdict.candidate_for.add("dwi")
    sources = sorted({f.b_value_source for f in series.frames if f.b_value_source})
    directional = sorted({f.b_value for f in series.frames if f.directional and f.b_value is not None})
    maps = sum(1 for f in series.frames if f.derived_map)
    verdict.reasons.append(
        f"diffusion, trace b = {', '.join(f'{b:g}' for b in trace_b)} (from {', '.join(sources)}; "
        f"evidence: {evidence})"
        + (
            f"; directional images at b = {', '.join(f'{b:g}' for b in directional)} not used"
            if directional
            else ""
        )
        + (f"; {maps} derived map image(s) (ADC/FA) inside the series not used" if maps else "")
    )
    return verdict
