"""Choosing one series per role and building its volume, with the reasons kept for the report.

A candidate whose volume cannot be built (missing slices, corrupt instance, ...) is rejected with the
reason and the next candidate is tried. The T2W choice is here; the diffusion choices (ADC map, high
b-value image) are in :mod:`lesion_engine.intake.diffusion_choice`.
"""

from __future__ import annotations

import logging

import SimpleITK as sitk

from lesion_engine.errors import (
    CorruptInstanceError,
    GeometryError,
    LesionAIError,
    NonAxialError,
    NoT2WError,
    StudyError,
)
from lesion_engine.intake.loading import LoadedStudy
from lesion_engine.intake.roles import classify_series, preference_key
from lesion_engine.intake.series import Series
from lesion_engine.intake.series_rules import SeriesRules
from lesion_engine.intake.study_report import ComputedImage, RoleChoice
from lesion_engine.intake.volumes import build_volume

logger = logging.getLogger(__name__)

__all__ = ["SeriesSelector", "series_label", "trace_b_values"]


def series_label(series: Series) -> str:
    """How messages name a series: its number and description."""
    return f"series {series.series_number} '{series.description}'"


def trace_b_values(series: Series) -> list[float]:
    """Distinct b-values of the series' trace (non-directional) images, ascending."""
    return sorted({f.b_value for f in series.frames if f.is_trace and f.b_value is not None})


class SeriesSelector:
    """Chooses series per role and builds their volumes; keeps every finding for the report.

    This class chooses the T2W series and holds what every choice needs (the verdict per series, the
    volumes built so far, the rejections); :class:`lesion_engine.intake.diffusion_choice.RoleSelector` adds the
    ADC map and the high b-value image.

    Parameters
    ----------
    loaded : LoadedStudy
        The study.
    rules : SeriesRules
        Series-selection rules.
    """

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
            raise GeometryError(f"{series_label(series)}: {exc}") from exc

    def _reject(self, series: Series, exc: LesionAIError) -> str:
        text = f"{series_label(series)}: rejected: {exc}"
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
                tag = f"{series_label(other)}" + (
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
                f"{series_label(s)} ({v.ignored})"
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
