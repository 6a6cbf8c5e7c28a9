"""The study plan: which series a case has, in which order, with which numbers, times, UIDs and grids.

Diffusion series come in acquisitions: the standard DWI (key ``dwi``) with its ADC map and, optionally, a
calculated high-b series; optionally an extra acquisition after it on the same grid, a separate high-b scan
(``dwi_high_b`` with ``adc_high_b``) or a multi-direction scan (``dti`` with ``dti_trace``, ``dti_adc`` and
``dti_fa``). Every diffusion series names its acquisition (:attr:`SeriesPlan.acquisition`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from training.synth.config import CasePlan, case_rng
from training.synth.conventions import SeriesStyle, series_style, vendor_info
from training.synth.geometry import Grid, oblique_axes
from training.synth.phantom import Phantom

logger = logging.getLogger(__name__)

__all__ = ["ACQUISITION_VARIANTS", "DTI_DIRECTIONS", "SeriesPlan", "StudyPlan", "plan_study", "uid_for"]

UID_NAMESPACE = "lesion-ai synthetic bpMRI"

Vec3 = tuple[float, float, float]

_S = 0.5**0.5
DTI_DIRECTIONS: tuple[Vec3, ...] = (
    (_S, 0.0, _S),
    (-_S, 0.0, _S),
    (0.0, _S, _S),
    (0.0, _S, -_S),
    (_S, _S, 0.0),
    (-_S, _S, 0.0),
)
"""Gradient directions (LPS unit vectors) of a DTI scan: the classic six-direction scheme."""

ACQUISITION_VARIANTS: dict[str, str] = {"dwi": "", "dwi_high_b": "high_b", "dti": "dti"}
"""Key of the acquired series of each diffusion acquisition -> its naming variant (see ``series_style``)."""


def uid_for(plan: CasePlan, *parts: object) -> str:
    """A UID that depends only on the seed, the case index and ``parts``.

    It is the ``2.25`` form of a name-based (version 5) UUID, so that it is both deterministic and unique.
    """
    name = "|".join([UID_NAMESPACE, str(plan.seed), str(plan.case_index), *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


@dataclass(frozen=True)
class SeriesPlan:
    """One series of the study.

    Attributes
    ----------
    kind
        One of ``conventions.SERIES_KINDS``.
    key
        Unique name within the study (``t2w``, ``t2w_repeat``, ``localizer_2``, ...).
    number
        Series Number.
    uid
        Series Instance UID.
    style
        Vendor look of the series.
    grids
        Its slice stacks (three for a 3-plane localizer, none for a screenshot).
    b_values
        b-values of DWI and calculated series (fitted b-values for an ADC map).
    times_s
        Time points of a dynamic series (seconds after its start).
    acquisition_time, series_time
        Seconds after midnight of the study day.
    duration_s
        Acquisition duration.
    acquisition
        For diffusion series and maps: the key of the acquired series of their diffusion acquisition
        (``dwi``, ``dwi_high_b`` or ``dti``); empty for other series.
    directions
        Gradient directions of a DTI series (its b > 0 images, one volume per direction).
    flagged_directional
        Trace images or a map that Siemens flags DIRECTIONAL nevertheless (the outputs of an MDDW scan).
    """

    kind: str
    key: str
    number: int
    uid: str
    style: SeriesStyle
    grids: tuple[Grid, ...]
    b_values: tuple[int, ...]
    times_s: tuple[float, ...]
    acquisition_time: float
    series_time: float
    duration_s: float
    acquisition: str = ""
    directions: tuple[Vec3, ...] = ()
    flagged_directional: bool = False


@dataclass(frozen=True)
class StudyPlan:
    """Study-level facts and the series of one case, in acquisition order."""

    plan: CasePlan
    study_uid: str
    frame_of_reference_uid: str
    patient_name: str
    patient_age: int
    patient_weight: float
    patient_size: float
    accession: str
    study_date: dt.date
    study_time: float
    series: tuple[SeriesPlan, ...]

    def by_key(self, key: str) -> SeriesPlan:
        """The series with ``key``."""
        for s in self.series:
            if s.key == key:
                return s
        raise KeyError(key)

    def has(self, key: str) -> bool:
        """Whether the study has a series with ``key``."""
        return any(s.key == key for s in self.series)

    def of_acquisition(self, acquisition: str, kind: str) -> SeriesPlan | None:
        """The series of ``kind`` of diffusion acquisition ``acquisition``, if it has one."""
        return next((s for s in self.series if s.acquisition == acquisition and s.kind == kind), None)


# Sizes per profile: (columns, rows, slices or None for "enough to cover the gland"), spacing, thickness.
_GEOMETRY: dict[str, dict[str, tuple[tuple[int, int, int | None], tuple[float, float, float], float]]] = {
    "small": {
        "localizer": ((48, 48, 3), (8.3333, 8.3333, 10.5), 7.0),
        "t2_sag": ((40, 40, 6), (4.0, 4.0, 5.0), 4.0),
        "t2_cor": ((40, 40, 6), (4.0, 4.0, 5.0), 4.0),
        "t2w": ((96, 96, None), (1.25, 1.25, 3.0), 3.0),
        "dwi": ((40, 48, None), (3.0, 3.0, 3.0), 3.0),
        "coil_reference": ((32, 32, 8), (4.0, 4.0, 5.0), 5.0),
        "dce": ((32, 32, 8), (4.0, 4.0, 4.0), 4.0),
    },
    "full": {
        "localizer": ((256, 256, 5), (1.5625, 1.5625, 10.5), 7.0),
        "t2_sag": ((320, 320, 19), (0.5625, 0.5625, 3.6), 3.0),
        "t2_cor": ((320, 320, 15), (0.6, 0.6, 3.0), 3.0),
        "t2w": ((384, 384, None), (0.5, 0.5, 3.0), 3.0),
        "dwi": ((84, 128, None), (2.0, 2.0, 3.0), 3.0),
        "coil_reference": ((128, 128, 16), (1.5, 1.5, 3.0), 3.0),
        "dce": ((128, 128, 16), (1.5, 1.5, 3.5), 3.5),
    },
}
_SLICE_LIMITS = {"small": (12, 16), "full": (19, 31)}
_MARGIN_MM = 5.0
_DCE_TIMES = {"small": (0.0, 45.0, 120.0), "full": (0.0, 20.0, 40.0, 60.0, 120.0, 240.0)}
_DURATION = {
    "localizer": 25.0,
    "coil_reference": 20.0,
    "t2_sag": 190.0,
    "t2_cor": 175.0,
    "t2w": 250.0,
    "dwi": 290.0,
    "dti": 420.0,
    "dce": 300.0,
}
# Derived diffusion series: offset of the series time after the source's, and series number offsets.
_DERIVED_SERIES_TIME = {"trace": 0.15, "adc": 0.2, "calc": 0.25, "fa": 0.3}
_GE_DERIVED_NUMBER = {"adc": 0, "calc": 1, "trace": 1, "fa": 2}
_PHILIPS_DERIVED_NUMBER = {"adc": 1, "calc": 2, "trace": 2, "fa": 3}


def _covering_slices(
    ph: Phantom, normal: np.ndarray, centre: np.ndarray, spacing: float, limits: tuple[int, int]
) -> tuple[int, float]:
    """Slice count and spacing of a stack centred at ``centre`` that covers the gland with margin.

    The spacing grows (in 0.1 mm steps) when the largest allowed count does not suffice.
    """
    lo, hi = ph.extent_along(normal)
    mid = float(np.asarray(centre) @ normal)
    half = max(mid - lo, hi - mid) + _MARGIN_MM
    n = 2 * math.ceil(half / spacing - 1e-9) + 1
    if n > limits[1]:
        spacing = max(spacing, math.ceil(10.0 * 2.0 * half / (limits[1] - 1)) / 10.0)
        n = limits[1]
    return max(limits[0], n), spacing


def _stack(
    ph: Phantom,
    profile: str,
    kind: str,
    axes: tuple[tuple[float, float, float], tuple[float, float, float]],
    centre: np.ndarray,
    offset_normal: float = 0.0,
) -> Grid:
    (cols, rows, n), spacing, thick = _GEOMETRY[profile][kind]
    normal = np.cross(axes[0], axes[1])
    normal = normal / np.linalg.norm(normal)
    c = np.asarray(centre, dtype=np.float64) + offset_normal * normal
    if n is None:
        n, dz = _covering_slices(ph, normal, c, spacing[2], _SLICE_LIMITS[profile])
        if dz != spacing[2]:
            spacing = (spacing[0], spacing[1], dz)
            thick = dz
    return Grid.centred(c, (cols, rows, n), spacing, axes, thick)


def _localizer_grids(profile: str, centre: np.ndarray, sag_only: bool) -> tuple[Grid, ...]:
    (cols, rows, n), spacing, thick = _GEOMETRY[profile]["localizer"]
    planes = {
        "sag": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
        "cor": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
        "tra": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    }
    names = ("sag",) if sag_only else ("sag", "cor", "tra")
    assert n is not None
    return tuple(Grid.centred(centre, (cols, rows, n), spacing, planes[p], thick) for p in names)


def _numbering(vendor: str, kinds: list[str]) -> list[int]:
    """Series numbers in acquisition order, by vendor habit.

    Siemens and the standard convention number every series in order; GE numbers the series derived from
    a diffusion scan ``100 x`` its number plus an index; Philips numbers acquisitions ``100 x n + 1`` and
    their derived series just after.
    """
    numbers: list[int] = []
    acquired = 0
    last_dwi = 0
    for kind in kinds:
        if kind in _DERIVED_SERIES_TIME:
            if vendor == "ge":
                numbers.append(last_dwi * 100 + _GE_DERIVED_NUMBER[kind])
            elif vendor == "philips":
                numbers.append(last_dwi + _PHILIPS_DERIVED_NUMBER[kind])
            else:
                acquired += 1
                numbers.append(acquired)
            continue
        if kind == "screenshot" and vendor == "ge":
            numbers.append(999)
            continue
        acquired += 1
        number = acquired * 100 + 1 if vendor == "philips" else acquired
        numbers.append(number)
        if kind in ("dwi", "dti"):
            last_dwi = number
    return numbers


@dataclass(frozen=True)
class _SeriesEntry:
    """A series of the study before numbering and timing.

    Attributes
    ----------
    kind, key
        As in :class:`SeriesPlan`.
    grids
        Its slice stacks.
    acquisition
        Key of the acquired series of its diffusion acquisition; empty for other series.
    """

    kind: str
    key: str
    grids: tuple[Grid, ...]
    acquisition: str = ""


@dataclass(frozen=True)
class _Placement:
    """Drawn placement of a case's stacks (LPS mm): centres and offsets along the slice normal."""

    t2_centre: NDArray[np.float64]
    t2_offset: float
    dwi_centre: NDArray[np.float64]
    dwi_offset: float
    isocentre: NDArray[np.float64]
    sagittal_localizer_centre: NDArray[np.float64]


@dataclass(frozen=True)
class _SeriesTiming:
    """When a series was acquired and created (seconds after midnight) and how long it took (seconds)."""

    acquisition_time: float
    series_time: float
    duration_s: float


def _draw_placement(rng: np.random.Generator, gland_centre: NDArray[np.float64]) -> _Placement:
    """Draw the placement of the axial T2W and DWI stacks and of the localizers around the gland.

    Parameters
    ----------
    rng
        The study's random stream (its first draws).
    gland_centre
        Centre of the prostate (LPS mm).

    Returns
    -------
    _Placement
        The drawn placement.
    """
    t2_jitter = rng.uniform(-1, 1, 3)
    dwi_jitter = rng.uniform(-1, 1, 3)
    isocentre = np.round(rng.uniform(-5, 5, 3), 1)
    sagittal_centre = gland_centre + rng.uniform(-5, 5, 3)
    return _Placement(
        t2_centre=gland_centre + np.array([t2_jitter[0] * 8, t2_jitter[1] * 8, 0.0]),
        t2_offset=float(t2_jitter[2] * 2.0),
        dwi_centre=gland_centre + np.array([dwi_jitter[0] * 8, dwi_jitter[1] * 8, 0.0]),
        dwi_offset=float(dwi_jitter[2] * 3.0),
        isocentre=isocentre,
        sagittal_localizer_centre=sagittal_centre,
    )


def _localizer_entries(plan: CasePlan, placement: _Placement) -> list[_SeriesEntry]:
    """The localizer series: a 3-plane one at the isocentre, optionally a second (3-plane or sagittal)."""
    entries = [
        _SeriesEntry("localizer", "localizer", _localizer_grids(plan.profile, placement.isocentre, False))
    ]
    if plan.n_localizers == 2:
        sagittal = plan.second_localizer_sagittal
        centre = placement.sagittal_localizer_centre if sagittal else placement.isocentre
        entries.append(
            _SeriesEntry("localizer", "localizer_2", _localizer_grids(plan.profile, centre, sagittal))
        )
    return entries


def _extra_diffusion(extra: str, grids: tuple[Grid, ...]) -> list[_SeriesEntry]:
    """Series of the extra diffusion acquisition ``extra`` (on the standard DWI's ``grids``), in order."""
    if extra == "high_b":
        return [
            _SeriesEntry("dwi", "dwi_high_b", grids, "dwi_high_b"),
            _SeriesEntry("adc", "adc_high_b", grids, "dwi_high_b"),
        ]
    if extra == "dti":
        return [
            _SeriesEntry("dti", "dti", grids, "dti"),
            _SeriesEntry("trace", "dti_trace", grids, "dti"),
            _SeriesEntry("adc", "dti_adc", grids, "dti"),
            _SeriesEntry("fa", "dti_fa", grids, "dti"),
        ]
    return []


def _diffusion_entries(plan: CasePlan, grids: tuple[Grid, ...]) -> list[_SeriesEntry]:
    """The diffusion series on the DWI ``grids``: the standard acquisition, then the extra one, if any."""
    entries: list[_SeriesEntry] = []
    # An MDDW scan's own (directional) images come first; its TRACEW, ADC and CALC follow.
    if plan.dwi_scheme == "mddw":
        entries.append(_SeriesEntry("dti", "dwi_directions", grids, "dwi"))
    entries.append(_SeriesEntry("dwi", "dwi", grids, "dwi"))
    entries.append(_SeriesEntry("adc", "adc", grids, "dwi"))
    if plan.calc_b_values:
        entries.append(_SeriesEntry("calc", "calc", grids, "dwi"))
    return entries + _extra_diffusion(plan.extra_dwi, grids)


def _series_entries(plan: CasePlan, ph: Phantom, placement: _Placement) -> list[_SeriesEntry]:
    """Every series of the study with its geometry, in acquisition order.

    Parameters
    ----------
    plan
        The resolved case.
    ph
        Its phantom (the stacks cover the gland).
    placement
        The drawn placement of the stacks.

    Returns
    -------
    list of _SeriesEntry
        The series, in acquisition order.
    """
    profile = plan.profile
    tra = oblique_axes("tra", plan.tilt_deg)
    gc = ph.gland_centre
    entries = _localizer_entries(plan, placement)
    coil = _SeriesEntry("coil_reference", "coil_reference", (_stack(ph, profile, "coil_reference", tra, gc),))
    if plan.coil_reference and plan.coil_reference_early:
        entries.append(coil)
    for kind, plane in (("t2_sag", "sag"), ("t2_cor", "cor")):
        entries.append(
            _SeriesEntry(kind, kind, (_stack(ph, profile, kind, oblique_axes(plane, plan.tilt_deg), gc),))
        )
    t2_grid = _stack(ph, profile, "t2w", tra, placement.t2_centre, placement.t2_offset)
    entries.append(_SeriesEntry("t2w", "t2w", (t2_grid,)))
    dwi_grid = _stack(ph, profile, "dwi", tra, placement.dwi_centre, placement.dwi_offset)
    entries += _diffusion_entries(plan, (dwi_grid,))
    if plan.repeat_t2:
        entries.append(_SeriesEntry("t2w", "t2w_repeat", (t2_grid,)))
    if plan.coil_reference and not plan.coil_reference_early:
        entries.append(coil)
    if plan.dce:
        entries.append(_SeriesEntry("dce", "dce", (_stack(ph, profile, "dce", tra, gc),)))
    if plan.screenshot:
        entries.append(_SeriesEntry("screenshot", "screenshot", ()))
    return entries


def _series_timings(
    entries: list[_SeriesEntry], rng: np.random.Generator, start: float
) -> list[_SeriesTiming]:
    """Times of every series, the scanner's clock starting at ``start`` (seconds after midnight).

    Acquired series follow each other with a drawn duration and pause; series derived from a diffusion
    acquisition (ADC, calculated, TRACEW, FA) are computed near the end of it and created just after it; a
    screenshot is taken at the current clock.

    Parameters
    ----------
    entries
        The series, in acquisition order.
    rng
        The study's random stream.
    start
        Start of the first acquisition.

    Returns
    -------
    list of _SeriesTiming
        One per entry, rounded as written.
    """
    clock = start
    timings: list[_SeriesTiming] = []
    source_times: dict[str, tuple[float, float, float]] = {}  # acquisition -> start, duration, series time
    for entry in entries:
        if entry.kind in _DERIVED_SERIES_TIME:
            begin, source_duration, source_series_time = source_times[entry.acquisition]
            acq = begin + 0.75 * source_duration
            series_time = source_series_time + _DERIVED_SERIES_TIME[entry.kind]
            duration = 0.0
        elif entry.kind == "screenshot":
            acq = clock
            duration = 0.0
            series_time = clock + 5.0
        else:
            duration = _DURATION[entry.kind] * float(rng.uniform(0.9, 1.1))
            acq = clock
            series_time = clock + duration + float(rng.uniform(5, 20))
            clock = series_time + float(rng.uniform(15, 60))
            if entry.acquisition:
                source_times[entry.acquisition] = (acq, duration, series_time)
        timings.append(_SeriesTiming(round(acq, 4), round(series_time, 4), round(duration, 3)))
    return timings


def _series_b_values(plan: CasePlan, kind: str, acquisition: str) -> tuple[int, ...]:
    """b-values of a series: its images' (DWI, calculated, DTI, TRACEW) or those fitted (ADC, FA maps)."""
    if not acquisition:
        return ()
    if acquisition == "dwi":
        return plan.calc_b_values if kind == "calc" else plan.b_values
    if kind == "trace":
        return plan.extra_b_values[-1:]
    return plan.extra_b_values


def _series_plan(plan: CasePlan, entry: _SeriesEntry, number: int, timing: _SeriesTiming) -> SeriesPlan:
    """The complete plan of one series: its vendor style, b-values, directions, UID and times.

    Parameters
    ----------
    plan
        The resolved case.
    entry
        The series and its geometry.
    number
        Its Series Number.
    timing
        Its times.

    Returns
    -------
    SeriesPlan
        The series.
    """
    kind, acquisition = entry.kind, entry.acquisition
    mddw = plan.dwi_scheme == "mddw"
    b_values = _series_b_values(plan, kind, acquisition)
    variant = "mddw" if mddw and acquisition == "dwi" else ACQUISITION_VARIANTS.get(acquisition, "")
    directions = DTI_DIRECTIONS if variant in ("dti", "mddw") else ()
    style = series_style(
        plan.vendor,
        kind,
        b_values if kind != "trace" else plan.extra_b_values,
        plan.calc_b_values,
        second_localizer=entry.key == "localizer_2" and plan.second_localizer_sagittal,
        variant=variant,
        n_directions=len(directions),
    )
    return SeriesPlan(
        kind=kind,
        key=entry.key,
        number=number,
        uid=uid_for(plan, "series", entry.key),
        style=style,
        grids=entry.grids,
        b_values=b_values,
        times_s=_DCE_TIMES[plan.profile] if kind == "dce" else (),
        acquisition_time=timing.acquisition_time,
        series_time=timing.series_time,
        duration_s=timing.duration_s,
        acquisition=acquisition,
        directions=directions if kind == "dti" else (),
        flagged_directional=mddw and acquisition == "dwi" and kind in ("dwi", "adc", "calc"),
    )


def plan_study(plan: CasePlan, ph: Phantom) -> StudyPlan:
    """Lay out the study of a case: series list, numbering, times, UIDs and geometry.

    Parameters
    ----------
    plan
        The resolved case.
    ph
        Its phantom (the axial series are placed around the gland).

    Returns
    -------
    StudyPlan
        The study.
    """
    rng = case_rng(plan.seed, plan.case_index, 3)
    entries = _series_entries(plan, ph, _draw_placement(rng, ph.gland_centre))
    numbers = _numbering(plan.vendor, [entry.kind for entry in entries])
    study_time = float(rng.integers(7 * 3600, 17 * 3600)) + float(np.round(rng.random(), 3))
    timings = _series_timings(entries, rng, study_time + 60.0)
    series = tuple(
        _series_plan(plan, entry, number, timing)
        for entry, number, timing in zip(entries, numbers, timings, strict=True)
    )
    info = vendor_info(plan.vendor)
    logger.debug("study of case %d: %d series (%s)", plan.case_index, len(series), info.manufacturer)
    return StudyPlan(
        plan=plan,
        study_uid=uid_for(plan, "study"),
        frame_of_reference_uid=uid_for(plan, "frame-of-reference"),
        patient_name=f"SYNTH^CASE{plan.case_index + 1:04d}",
        patient_age=int(rng.integers(50, 81)),
        patient_weight=float(np.round(rng.uniform(65, 110), 0)),
        patient_size=float(np.round(rng.uniform(1.65, 1.95), 2)),
        accession=f"SYN{plan.seed % 1000:03d}{plan.case_index:06d}",
        study_date=dt.date(2015, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3000))),
        study_time=study_time,
        series=series,
    )
