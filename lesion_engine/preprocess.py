"""From a DICOM study to co-registered T2W, ADC and high b-value volumes on the T2W grid.

:func:`prepare_study` loads the study, classifies every series (:mod:`lesion_engine.roles`), chooses one
series per role and builds the volumes (:mod:`lesion_engine.volumes`). ADC and HBV on the T2W grid
(resampled in physical space) are computed when first read, so that a caller that needs them only on
another grid (the engine on a GPU, which resamples on the device) does not pay for them. A candidate
whose volume cannot be built (missing slices, corrupt instance, ...) is rejected with the reason and the
next candidate is tried. When the study holds no image at or above ``computed_b_value`` (1400 by
default), such an image is also computed from the lowest b-value image and the ADC map, and the report
says so.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from lesion_engine.acquisitions import DiffusionAcquisition, group_acquisitions
from lesion_engine.errors import (
    CorruptInstanceError,
    GeometryError,
    LesionAIError,
    NoADCError,
    NoDWIError,
    NonAxialError,
    NoT2WError,
    StudyError,
    WrongModalityError,
)
from lesion_engine.loading import LoadedStudy, Source, load_study
from lesion_engine.roles import SeriesVerdict, classify_series, plane_of, preference_key
from lesion_engine.series import Series
from lesion_engine.series_rules import SeriesRules, load_series_rules
from lesion_engine.volumes import build_volume, compute_high_b, resample_to

logger = logging.getLogger(__name__)

__all__ = [
    "ComputedImage",
    "PreparedStudy",
    "RoleChoice",
    "prepare_loaded_study",
    "prepare_study",
    "role_report",
]


def _label(series: Series) -> str:
    return f"series {series.series_number} '{series.description}'"


def _trace_b_values(series: Series) -> list[float]:
    """Distinct b-values of the series' trace (non-directional) images, ascending."""
    return sorted({f.b_value for f in series.frames if f.is_trace and f.b_value is not None})


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


@dataclass
class PreparedStudy:
    """A study ready for the model: volumes on the T2W grid and the record of how they were chosen.

    Attributes
    ----------
    study_instance_uid : str
        The study's UID.
    t2w : SimpleITK.Image
        float32 T2W volume (its grid is the study's reference grid).
    native : dict of str to SimpleITK.Image
        The chosen volumes on their own grids: ``t2w``, ``adc`` (10^-6 mm^2/s), ``hbv`` (the measured high
        b-value image, when one was chosen), and, when the study had no image at ``computed_b_value``,
        ``low_b`` and the computed ``high_b``.
    roles : dict of str to RoleChoice
        The choice per role.
    computed : ComputedImage or None
        How ``high_b`` was computed.
    loaded : LoadedStudy
        The loaded study (series, skipped and ignored inputs).
    verdicts : dict of str to SeriesVerdict
        Per SeriesInstanceUID, what was made of each series and why.
    warnings : list of str
        Things a user should know (skipped instances, unit conversions, ...).
    timings_s : dict of str to float
        Seconds per stage.
    """

    study_instance_uid: str
    t2w: sitk.Image
    native: dict[str, sitk.Image]
    roles: dict[str, RoleChoice]
    computed: ComputedImage | None
    loaded: LoadedStudy
    verdicts: dict[str, SeriesVerdict]
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in ("t2w", "adc"):
            if role not in self.native:
                raise ValueError(
                    f"a PreparedStudy needs the native {role!r} volume; native holds {sorted(self.native)}"
                )
        if "hbv" not in self.native and "high_b" not in self.native:
            raise ValueError(
                "a PreparedStudy needs a high b-value volume: native 'hbv' or a computed 'high_b'"
            )

    @functools.cached_property
    def adc(self) -> sitk.Image:
        """float32 ADC (10^-6 mm^2/s) on the T2W grid (resampled on first use)."""
        return resample_to(self.native["adc"], self.t2w)

    @functools.cached_property
    def high_b(self) -> sitk.Image | None:
        """The computed image at ``computed_b_value`` on the T2W grid; None when the study had one that high."""
        computed = self.native.get("high_b")
        return resample_to(computed, self.t2w) if computed is not None else None

    @functools.cached_property
    def hbv(self) -> sitk.Image:
        """float32 chosen high b-value image on the T2W grid (the computed one when none was measured)."""
        if "hbv" in self.native:
            return resample_to(self.native["hbv"], self.t2w)
        high_b = self.high_b
        if high_b is None:  # excluded by __post_init__
            raise ValueError("no high b-value volume")
        return high_b

    def report(self) -> dict[str, Any]:
        """JSON-ready report: series table, roles, skipped and ignored inputs, warnings."""
        return build_report(self.loaded, self.verdicts, self.roles, self.computed, self.warnings)


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


class _Selector:
    """Chooses series per role and builds their volumes; keeps every finding for the report."""

    def __init__(self, loaded: LoadedStudy, rules: SeriesRules) -> None:
        self.loaded = loaded
        self.rules = rules
        self.verdicts = {s.series_instance_uid: classify_series(s, rules) for s in loaded.series}
        self.roles: dict[str, RoleChoice] = {}
        self.native: dict[str, sitk.Image] = {}
        self.computed: ComputedImage | None = None
        self.warnings: list[str] = []
        self._volumes: dict[tuple[str, float | None], sitk.Image | GeometryError] = {}

    def candidates(self, role: str) -> list[Series]:
        found = [s for s in self.loaded.series if role in self.verdicts[s.series_instance_uid].candidate_for]
        return sorted(found, key=preference_key, reverse=True)

    def _volume(self, series: Series, b_value: float | None = None) -> sitk.Image:
        """The volume of a series (of one b-value), built once; a GeometryError is remembered too."""
        key = (series.series_instance_uid, b_value)
        cached = self._volumes.get(key)
        if cached is None:
            try:
                cached = self._build(series, b_value)
            except GeometryError as exc:
                cached = exc
            self._volumes[key] = cached
        if isinstance(cached, GeometryError):
            raise cached
        return cached

    def _buildable(self, options: list[tuple[Series, float | None]]) -> bool:
        """True when one of the options makes a volume (failures are recorded as rejections)."""
        for series, b_value in options:
            try:
                self._volume(series, b_value)
            except GeometryError as exc:
                self._reject(series, exc)
                continue
            return True
        return False

    def _build(self, series: Series, b_value: float | None) -> sitk.Image:
        frames = [
            f
            for f in series.frames
            if b_value is None or (f.is_trace and f.b_value is not None and abs(f.b_value - b_value) < 1e-3)
        ]
        try:
            return build_volume(
                series,
                frames,
                min_slices=self.rules.min_slices,
                spacing_tolerance=self.rules.slice_spacing_tolerance,
            )
        except CorruptInstanceError as exc:
            self.warnings.append(str(exc))
            raise GeometryError(f"{_label(series)}: {exc}") from exc

    def _reject(self, series: Series, exc: LesionAIError) -> str:
        text = f"{_label(series)}: rejected: {exc}"
        reasons = self.verdicts[series.series_instance_uid].reasons
        if f"rejected: {exc}" not in reasons:
            reasons.append(f"rejected: {exc}")
            logger.info("%s", text)
        return text

    def _choose(
        self,
        role: str,
        options: list[tuple[Series, float | None]],
        reason: str,
        ranking: str = "earlier acquisition",
    ) -> tuple[Series, float | None, sitk.Image, list[GeometryError]]:
        failures: list[GeometryError] = []
        for i, (series, b_value) in enumerate(options):
            try:
                image = self._volume(series, b_value)
            except GeometryError as exc:
                self._reject(series, exc)
                failures.append(exc)
                continue
            alternatives = []
            for other, other_b in options:
                if other is series and other_b == b_value:
                    continue
                tag = f"{_label(other)}" + (
                    f" b={other_b:g}" if other_b is not None and role == "hbv" else ""
                )
                status = (
                    "rejected, see its reason"
                    if options.index((other, other_b)) < i
                    else f"ranked lower: {ranking}"
                )
                alternatives.append(f"{tag} ({status})")
            verdict = self.verdicts[series.series_instance_uid]
            verdict.role = role if verdict.role is None else f"{verdict.role}+{role}"
            verdict.reasons.append(f"chosen as {role}: {reason}")
            self.roles[role] = RoleChoice(
                role,
                series.series_instance_uid,
                series.series_number,
                series.description,
                b_value,
                False,
                reason,
                tuple(alternatives),
            )
            self.native[role] = image
            return series, b_value, image, failures
        raise failures[0] if failures else StudyError(f"no candidate for {role}")

    def choose_t2w(self) -> None:
        options: list[tuple[Series, float | None]] = [(s, None) for s in self.candidates("t2w")]
        if not options:
            seen = [
                f"{_label(s)} ({v.ignored})"
                for s in self.loaded.series
                if (v := self.verdicts[s.series_instance_uid]).ignored and v.ignored.startswith("t2_")
            ]
            oblique = [
                text for text in seen if "t2_oblique" in text or "t2_sagittal" in text or "t2_coronal" in text
            ]
            if oblique and all("t2_oblique" in t for t in oblique):
                raise NonAxialError(
                    "no axial T2W series: the only T2 series are tilted too far from axial: "
                    + ", ".join(oblique)
                )
            raise NoT2WError(
                "no axial T2-weighted series found"
                + (f"; T2 series seen only in other planes: {', '.join(seen)}" if seen else "")
                + ". Send the axial T2W series, or adapt the t2w rule in the series rules if its name differs"
            )
        try:
            self._choose("t2w", options, "axial T2W; most recent acquisition among the candidates")
        except GeometryError as exc:
            raise type(exc)(f"no usable axial T2W series: {exc}") from exc

    def _dwi_options(self, series: Iterable[Series] | None = None) -> list[tuple[Series, float]]:
        chosen = self.candidates("dwi") if series is None else list(series)
        options = [(s, b) for s in chosen for b in _trace_b_values(s)]
        return sorted(options, key=lambda o: (o[1], *preference_key(o[0])), reverse=True)

    def choose_diffusion(self) -> None:
        """Choose the ADC map and the high b-value image, from one acquisition when the rules say so."""
        if self.rules.diffusion_source == "same_acquisition" and self._choose_one_acquisition():
            return
        self.choose_adc()
        self.choose_hbv()

    def _choose_one_acquisition(self) -> bool:
        """ADC and high b-value image of the best acquisition that supplies both; False when none does."""
        acquisitions = group_acquisitions(self.candidates("dwi"), self.candidates("adc"))
        complete = [a for a in acquisitions if a.adc and a.trace_b_values()]
        if not complete:
            if len(acquisitions) > 1:
                self.warnings.append(
                    "no diffusion acquisition supplies both an ADC map and a trace image: ADC and high "
                    "b-value image chosen independently"
                )
            return False
        t2w = self.loaded.series_by_uid(self.roles["t2w"].series_instance_uid)
        frame_of_reference = str(t2w.header.get("FrameOfReferenceUID", ""))
        rules = self.rules

        def rank(acq: DiffusionAcquisition) -> tuple[Any, ...]:
            top = max(acq.trace_b_values())
            same_frame = str(acq.adc[0].header.get("FrameOfReferenceUID", "")) == frame_of_reference
            return (
                same_frame,
                top >= rules.computed_b_value,
                top >= rules.hbv_min_b_value,
                top,
                *preference_key(acq.root),
            )

        ranked = sorted(complete, key=rank, reverse=True)
        for position, acq in enumerate(ranked):
            options = self._dwi_options(acq.dwi)
            high = [o for o in options if o[1] >= rules.hbv_min_b_value]
            low = [o for o in sorted(options, key=lambda o: o[1]) if o[1] < rules.hbv_min_b_value]
            if not self._buildable([(s, None) for s in acq.adc]):
                continue
            if not (self._buildable(list(high)) or self._buildable(list(low))):
                continue
            others = [a.label() for a in ranked if a is not acq]
            why = (
                f"from the {acq.label()}, which "
                + ("gives the highest b-value image" if position == 0 else "is the best usable one")
                + (f" (other acquisitions: {'; '.join(others)})" if others else "")
            )
            adc_reason = f"ADC map {why}" + self._link_note(acq, acq.adc)
            self.choose_adc(list(acq.adc), adc_reason)
            self.choose_hbv(options, f"; same acquisition as the ADC map ({acq.label()})")
            return True
        self.warnings.append(
            "no diffusion acquisition gives a usable ADC map and trace image together: ADC and high b-value "
            "image chosen independently"
        )
        return False

    @staticmethod
    def _link_note(acq: DiffusionAcquisition, members: tuple[Series, ...]) -> str:
        notes = [
            f"series {s.series_number}: {acq.links[s.series_instance_uid]}"
            for s in members
            if s.series_instance_uid in acq.links
        ]
        return f" [linked to the acquisition: {'; '.join(notes)}]" if notes else ""

    def choose_adc(self, candidates: list[Series] | None = None, reason: str | None = None) -> None:
        candidates = list(candidates) if candidates is not None else self.candidates("adc")
        if not candidates:
            raise NoADCError(
                "no ADC map found (no series with ADC in ImageType or SeriesDescription). Send the ADC series, "
                "or adapt the adc rule in the series rules"
            )
        t2w_uid = self.roles["t2w"].series_instance_uid
        frame_of_reference = str(self.loaded.series_by_uid(t2w_uid).header.get("FrameOfReferenceUID", ""))
        # Same frame of reference as the T2W first, then the documented preference.
        candidates.sort(
            key=lambda s: (
                str(s.header.get("FrameOfReferenceUID", "")) == frame_of_reference,
                *preference_key(s),
            ),
            reverse=True,
        )
        try:
            options: list[tuple[Series, float | None]] = [(s, None) for s in candidates]
            self._choose("adc", options, reason or "ADC map; most recent acquisition")
        except GeometryError as exc:
            raise NoADCError(f"no usable ADC map: {exc}") from exc
        self._check_adc_units()

    def _check_adc_units(self) -> None:
        values = sitk.GetArrayViewFromImage(self.native["adc"])
        positive = values[values > 0]
        p99 = float(np.percentile(positive, 99)) if positive.size else 0.0
        if p99 == 0.0:
            raise NoADCError(f"the ADC map ({self.roles['adc'].description!r}) holds no positive value")
        for limit, factor, unit in ((0.01, 1e6, "mm^2/s"), (10.0, 1e3, "10^-3 mm^2/s")):
            if p99 < limit:
                self.native["adc"] = self.native["adc"] * factor
                message = f"ADC values look like {unit} (99th percentile {p99:g}); scaled by {factor:g} to 10^-6 mm^2/s"
                self.warnings.append(message)
                logger.warning("%s", message)
                return

    def choose_hbv(self, options: list[tuple[Series, float]] | None = None, note: str = "") -> None:
        options = options if options is not None else self._dwi_options()
        high = [(s, b) for s, b in options if b >= self.rules.hbv_min_b_value]
        # Lowest b-value first; among equal b-values the documented preference order is kept (stable sort).
        low = sorted(options, key=lambda o: o[1])
        if high:
            try:
                self._choose(
                    "hbv",
                    list(high),
                    f"highest b-value trace image at or above b={self.rules.hbv_min_b_value:g}{note}",
                    "lower b-value or earlier acquisition",
                )
            except GeometryError as exc:
                raise NoDWIError(f"no usable high b-value diffusion image: {exc}") from exc
        if self.roles.get("hbv") and (self.roles["hbv"].b_value or 0) >= self.rules.computed_b_value:
            return
        # Compute an image at computed_b_value from the lowest b-value image and the ADC map.
        low_choice = self._low_b(low)
        if low_choice is None:
            if "hbv" in self.roles:
                self.warnings.append(
                    f"no low b-value image usable to compute b={self.rules.computed_b_value:g}; only the "
                    f"b={self.roles['hbv'].b_value:g} image is available"
                )
                return
            raise NoDWIError(
                f"no usable diffusion image: no trace image at or above b={self.rules.hbv_min_b_value:g}, and no "
                "low b-value image to compute one from. Send the DWI series"
                + (" (diffusion series seen but unusable)" if options else "")
            )
        series, b_low, image = low_choice
        self.native["low_b"] = image
        self.computed = ComputedImage(
            self.rules.computed_b_value,
            series.series_instance_uid,
            series.series_number,
            b_low,
            self.roles["adc"].series_instance_uid,
        )
        verdict = self.verdicts[series.series_instance_uid]
        verdict.role = "low_b" if verdict.role is None else f"{verdict.role}+low_b"
        verdict.reasons.append(f"b={b_low:g} image used to compute b={self.rules.computed_b_value:g}")
        if "hbv" not in self.roles:
            self.roles["hbv"] = RoleChoice(
                "hbv",
                series.series_instance_uid,
                series.series_number,
                series.description,
                self.rules.computed_b_value,
                True,
                f"no trace image at or above b={self.rules.hbv_min_b_value:g}: computed from b={b_low:g} and ADC"
                + note,
            )

    def _low_b(self, options: list[tuple[Series, float]]) -> tuple[Series, float, sitk.Image] | None:
        for series, b_value in options:
            if b_value >= self.rules.hbv_min_b_value:
                break
            try:
                return series, b_value, self._volume(series, b_value)
            except GeometryError as exc:
                self._reject(series, exc)
        return None


def prepare_loaded_study(loaded: LoadedStudy, rules: SeriesRules | None = None) -> PreparedStudy:
    """Choose roles, build and co-register the volumes of an already loaded study.

    See :func:`prepare_study`.
    """
    rules = rules if rules is not None else load_series_rules()
    started = time.perf_counter()
    selector = _Selector(loaded, rules)
    try:
        modalities = {s.modality for s in loaded.series}
        if "MR" not in modalities:
            raise WrongModalityError(
                f"not an MR study (modalities: {', '.join(sorted(m or '?' for m in modalities))}); "
                "the model reads biparametric prostate MR"
            )
        selector.choose_t2w()
        selector.choose_diffusion()
    except StudyError as exc:
        exc.report = build_report(
            loaded, selector.verdicts, selector.roles, selector.computed, selector.warnings
        )
        raise
    chosen = time.perf_counter()
    native = selector.native
    t2w = sitk.Cast(native["t2w"], sitk.sitkFloat32)
    if selector.computed is not None:
        native["high_b"] = compute_high_b(
            native["low_b"], selector.computed.low_b_value, native["adc"], rules.computed_b_value
        )
    # choose_hbv either chose a measured HBV or computed one (else it raised).
    if "hbv" not in native and "high_b" not in native:
        raise NoDWIError("internal error: no high b-value image was chosen or computed")
    done = time.perf_counter()
    for entry in loaded.skipped:
        selector.warnings.append(f"skipped {entry.source}: {entry.reason}")
    logger.info(
        "study %s: T2W %s, ADC %s, HBV %s%s",
        loaded.study_instance_uid,
        selector.roles["t2w"].series_instance_uid,
        selector.roles["adc"].series_instance_uid,
        selector.roles["hbv"].series_instance_uid,
        f" (+ computed b{rules.computed_b_value:g})" if selector.computed else "",
    )
    return PreparedStudy(
        study_instance_uid=loaded.study_instance_uid,
        t2w=t2w,
        native=native,
        roles=selector.roles,
        computed=selector.computed,
        loaded=loaded,
        verdicts=selector.verdicts,
        warnings=selector.warnings,
        timings_s={"select_and_build": chosen - started, "compute_high_b": done - chosen},
    )


def prepare_study(source: Source | Iterable[Source], rules: SeriesRules | None = None) -> PreparedStudy:
    """Load a DICOM study and turn it into co-registered T2W, ADC and HBV volumes on the T2W grid.

    Parameters
    ----------
    source : path, bytes, or an iterable of them
        A folder tree, files, or in-memory DICOM bytes (see :func:`lesion_engine.loading.load_study`).
    rules : SeriesRules, optional
        Series-selection rules; the packaged defaults when None.

    Returns
    -------
    PreparedStudy
        Volumes, role choices with reasons, and the report.

    Raises
    ------
    StudyError
        A subclass that says why the study cannot be used (no T2W, no ADC, no DWI, wrong modality, geometry).
        Its ``report`` attribute holds the series table gathered so far.
    """
    started = time.perf_counter()
    loaded = load_study(source)
    loaded_at = time.perf_counter()
    prepared = prepare_loaded_study(loaded, rules)
    prepared.timings_s = {"load": loaded_at - started, **prepared.timings_s}
    return prepared
