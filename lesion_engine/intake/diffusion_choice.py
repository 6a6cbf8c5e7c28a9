"""Choosing the diffusion inputs: the ADC map and the high b-value image (measured or computed).

With ``diffusion_source: same_acquisition`` (the default rules) both come from the best diffusion
acquisition that supplies both (:mod:`lesion_engine.intake.acquisitions`); otherwise, or when none does, each is
chosen on its own. When the study holds no image at or above ``computed_b_value``, one is computed from
the lowest b-value image and the ADC map, and the choice says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import SimpleITK as sitk

from lesion_engine.errors import GeometryError, NoADCError, NoDWIError
from lesion_engine.intake.acquisitions import DiffusionAcquisition, group_acquisitions
from lesion_engine.intake.roles import preference_key
from lesion_engine.intake.series import Series
from lesion_engine.intake.series_selection import SeriesSelector, trace_b_values
from lesion_engine.intake.study_report import ComputedImage, RoleChoice

logger = logging.getLogger(__name__)

__all__ = ["RoleSelector"]


class RoleSelector(SeriesSelector):
    """A :class:`~lesion_engine.intake.series_selection.SeriesSelector` that also chooses the diffusion inputs."""

    def _dwi_options(self, series: Iterable[Series] | None = None) -> list[tuple[Series, float]]:
        chosen = self.candidates("dwi") if series is None else list(series)
        options = [(s, b) for s in chosen for b in trace_b_values(s)]
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
