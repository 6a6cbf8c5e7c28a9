"""From a DICOM study to co-registered T2W, ADC and high b-value volumes on the T2W grid.

:func:`prepare_study` loads the study, classifies every series (:mod:`lesion_engine.intake.roles`), chooses one
series per role (:mod:`lesion_engine.intake.series_selection` for the T2W, :mod:`lesion_engine.intake.diffusion_choice`
for the ADC map and the high b-value image) and builds the volumes (:mod:`lesion_engine.intake.volumes`). ADC
and HBV on the T2W grid (resampled in physical space) are computed when first read, so that a caller that
needs them only on another grid (the engine on a GPU, which resamples on the device) does not pay for
them. A candidate whose volume cannot be built (missing slices, corrupt instance, ...) is rejected with
the reason and the next candidate is tried. When the study holds no image at or above
``computed_b_value`` (1400 by default), such an image is also computed from the lowest b-value image and
the ADC map, and the report says so (:mod:`lesion_engine.intake.study_report`; :class:`RoleChoice`,
:class:`ComputedImage` and :func:`role_report` are importable from here too).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

from lesion_engine.errors import (
    GeometryError,
    NoDWIError,
    NoEligibleSeriesError,
    StudyError,
    WrongModalityError,
)
from lesion_engine.intake.diffusion_choice import RoleSelector
from lesion_engine.intake.loading import LoadedStudy, Source, invalid_value_error, load_study
from lesion_engine.intake.roles import SeriesVerdict
from lesion_engine.intake.series_rules import SeriesRules, load_series_rules
from lesion_engine.intake.study_report import ComputedImage, RoleChoice, build_report, role_report
from lesion_engine.intake.volumes import compute_high_b, resample_to

logger = logging.getLogger(__name__)

__all__ = [
    "ComputedImage",
    "PreparedStudy",
    "RoleChoice",
    "prepare_loaded_study",
    "prepare_study",
    "role_report",
]


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


def prepare_loaded_study(loaded: LoadedStudy, rules: SeriesRules | None = None) -> PreparedStudy:
    """Choose roles, build and co-register the volumes of an already loaded study.

    See :func:`prepare_study`.
    """
    rules = rules if rules is not None else load_series_rules()
    started = time.perf_counter()
    selector = RoleSelector(loaded, rules)
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
        report = build_report(loaded, selector.verdicts, selector.roles, selector.computed, selector.warnings)
        if loaded.invalid and isinstance(exc, NoEligibleSeriesError | GeometryError):
            named = invalid_value_error(loaded.invalid, str(exc).split(". ")[0])
            named.report = report
            raise named from exc
        exc.report = report
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
    for problem in loaded.invalid:
        selector.warnings.append(f"left out for an invalid value: {problem}")
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
        A folder tree, files, or in-memory DICOM bytes (see :func:`lesion_engine.intake.loading.load_study`).
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
