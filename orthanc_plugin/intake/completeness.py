"""When a study's inputs are complete: judged from headers, so that its jobs need not wait for StableAge.

Orthanc calls a study stable StableAge seconds (30 by default) after its last instance; most of that wait is
idle. The node knows from the headers which series the engine will read and what they should hold, so it
starts a study's jobs as soon as those series look complete:

* the engine's header-only role ranker (:mod:`lesion_engine.intake.header_roles`) names the T2W, ADC and
  diffusion candidates among a rule's input series; a study without a candidate for each role cannot be
  judged (StableAge decides);
* each candidate looks complete (:func:`check_series`): its slice positions along the normal cover a
  regular range without gaps, every b-value (diffusion) or temporal position holds every slice position
  the same number of times, and no header announces more images than arrived (ImagesInAcquisition,
  NumberOfTemporalPositions); a series Orthanc calls stable (STABLE_SERIES) counts as complete;
* none of the study's series received an instance for ``CompletenessQuietSeconds`` (but the node's own
  results, and a long series the engine ignores from its first header, such as DCE;
  :class:`~orthanc_plugin.intake.changes.ReceivingStudies`): positions say nothing of slices missing at either end
  of a stack, so a short quiet time is still needed, except for a series that already holds as many
  instances as its header announces (:func:`announced_images`): it counts as quiet at once.

The checks here are pure functions of the headers (:func:`check_series`, :func:`rank_inputs`,
:meth:`InputRoles.readiness`); the quiet time is watched, and the headers read from Orthanc, by
:class:`orthanc_plugin.intake.changes.ReceivingStudies` and :class:`orthanc_plugin.intake.changes.HeaderCache`, from the
plugin's own thread, never from Orthanc's callbacks. The engine's modules are imported on first use (they
bring SimpleITK into Orthanc's process only once a study is judged).
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from lesion_engine.intake.series import Frame, Series
    from lesion_engine.intake.series_rules import SeriesRules

logger = logging.getLogger(__name__)

__all__ = [
    "ENGINE_ROLES",
    "InputRoles",
    "InputSeries",
    "Readiness",
    "SeriesCheck",
    "announced_images",
    "check_series",
    "first_header_verdict",
    "rank_inputs",
]

#: The roles the engine needs a series for.
ENGINE_ROLES = ("t2w", "adc", "dwi")
#: Slice positions closer than this (mm) along the normal are one position.
_SAME_POSITION_MM = 0.05
#: Normals of one stack differ by less than this (cosine).
_PARALLEL = 0.999

CheckState = Literal["complete", "incomplete", "unknown"]


# -- one series ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesCheck:
    """Whether one series looks complete by its headers.

    Attributes
    ----------
    state : {"complete", "incomplete", "unknown"}
        ``incomplete``: images are missing (a gap, a short stack, fewer than announced); ``unknown``: the
        headers cannot tell (no geometry, one slice, irregular spacing, unreadable instances).
    reason : str
        Why, in words (for logs).
    """

    state: CheckState
    reason: str


def _levels(values: Sequence[float]) -> list[float]:
    """Distinct positions (mm): sorted values closer than :data:`_SAME_POSITION_MM` merged."""
    levels: list[float] = []
    for value in sorted(values):
        if not levels or value - levels[-1] > _SAME_POSITION_MM:
            levels.append(value)
    return levels


def _level_of(levels: list[float], value: float) -> int:
    index = bisect.bisect_right(levels, value + _SAME_POSITION_MM) - 1
    return max(index, 0)


def _announced(series: Series, frames: int, temporal: set[int]) -> SeriesCheck | None:
    """Fewer images than the headers announce (ImagesInAcquisition, NumberOfTemporalPositions), or None."""
    announced_images: set[int] = set()
    acquisitions: set[str] = set()
    announced_positions: set[int] = set()
    for instance in series.instances:
        ds = instance.dataset
        for keyword, into in (
            ("ImagesInAcquisition", announced_images),
            ("NumberOfTemporalPositions", announced_positions),
        ):
            value = ds.get(keyword)
            try:
                if value not in (None, ""):
                    into.add(int(value))
            except (TypeError, ValueError):
                continue
        acquisitions.add(str(ds.get("AcquisitionNumber", "")))
    if len(announced_images) == 1 and len(acquisitions) == 1:
        expected = next(iter(announced_images))
        if frames < expected:
            return SeriesCheck(
                "incomplete", f"{frames} of the {expected} images its headers announce (ImagesInAcquisition)"
            )
    if len(announced_positions) == 1:
        expected = next(iter(announced_positions))
        if expected > 1 and len(temporal) < expected:
            return SeriesCheck(
                "incomplete",
                f"{len(temporal)} of the {expected} temporal positions its headers announce "
                "(NumberOfTemporalPositions)",
            )
    return None


#: What tells a series' stacks apart: b-value (to 0.1 s/mm²), temporal position, directional, derived map.
_StackKey = tuple[float | None, int | None, bool, bool]


def _normal_offsets(frames: Sequence[Frame], normal: NDArray[np.float64]) -> list[float] | None:
    """Each frame's position along ``normal`` (mm).

    Returns None when a frame lies in another orientation or has no position.
    """
    offsets: list[float] = []
    for frame in frames:
        other = frame.normal
        if other is None or abs(float(other @ normal)) < _PARALLEL or frame.position is None:
            return None
        offsets.append(float(normal @ frame.position))
    return offsets


def _spacing_check(levels: list[float], step: float, tolerance: float) -> SeriesCheck | None:
    """Judge the gaps between neighbouring slice positions against the smallest one.

    Parameters
    ----------
    levels : list of float
        The distinct slice positions (mm), sorted.
    step : float
        The smallest gap between them (mm).
    tolerance : float
        How far (relative) a gap may be from a whole number of steps.

    Returns
    -------
    SeriesCheck or None
        ``unknown`` for an irregular spacing, ``incomplete`` for a missing slice position, None when the
        positions are regular without gaps.
    """
    gaps = [b - a for a, b in itertools.pairwise(levels)]
    for index, gap in enumerate(gaps):
        ratio = gap / step
        steps = round(ratio)
        if abs(ratio - steps) > tolerance * steps:
            return SeriesCheck("unknown", f"irregular slice spacing ({gap:.2f} mm beside {step:.2f} mm)")
        if steps >= 2:
            return SeriesCheck(
                "incomplete",
                f"no image at {steps - 1} slice position(s) between {levels[index]:.1f} and "
                f"{levels[index + 1]:.1f} mm along the normal",
            )
    return None


def _stacks(
    frames: Sequence[Frame], offsets: Sequence[float], levels: list[float]
) -> dict[_StackKey, Counter[int]]:
    """The images per slice position of each stack (b-value, temporal position, directional, map)."""
    stacks: dict[_StackKey, Counter[int]] = {}
    for frame, offset in zip(frames, offsets, strict=True):
        key = (
            None if frame.b_value is None else round(frame.b_value, 1),
            frame.temporal_index,
            frame.directional,
            frame.derived_map,
        )
        stacks.setdefault(key, Counter())[_level_of(levels, offset)] += 1
    return stacks


def _coverage_check(stacks: Mapping[_StackKey, Counter[int]], positions: int) -> SeriesCheck | None:
    """``incomplete`` when a stack misses a slice position or holds some more often than others, else None."""
    for key, counts in stacks.items():
        label = _stack_label(key, len(stacks))
        if len(counts) < positions:
            return SeriesCheck(
                "incomplete", f"{label}has images at {len(counts)} of the {positions} slice positions"
            )
        if min(counts.values()) != max(counts.values()):
            return SeriesCheck(
                "incomplete",
                f"{label}has {min(counts.values())} to {max(counts.values())} images per slice position",
            )
    return None


def check_series(series: Series, rules: SeriesRules, received: int | None = None) -> SeriesCheck:
    """Judge from its headers whether a series is complete (see the module docstring).

    Parameters
    ----------
    series : Series
        The series built from the headers of its instances (:mod:`lesion_engine.intake.series`).
    rules : SeriesRules
        The series-selection rules: ``slice_spacing_tolerance`` (relative) decides what a regular spacing
        is, ``min_slices`` how many positions a stack needs.
    received : int, optional
        Instances Orthanc holds for the series; more than ``series`` was built from means some headers
        were unreadable (``unknown``).

    Returns
    -------
    SeriesCheck
        ``complete`` with the positions and stacks found, ``incomplete`` naming what is missing, or
        ``unknown`` saying why the headers cannot tell.
    """
    if received is not None and len(series.instances) < received:
        unread = received - len(series.instances)
        return SeriesCheck("unknown", f"{unread} of its {received} instances have no usable header")
    frames = series.frames
    if not frames or not series.has_geometry:
        return SeriesCheck("unknown", "its images lack ImagePositionPatient/ImageOrientationPatient")
    normal = frames[0].normal
    if normal is None:
        return SeriesCheck("unknown", "its ImageOrientationPatient gives no slice normal")
    offsets = _normal_offsets(frames, normal)
    if offsets is None:
        return SeriesCheck("unknown", "its images lie in several orientations")
    levels = _levels(offsets)
    if len(levels) < max(rules.min_slices, 2):
        return SeriesCheck("unknown", f"{len(levels)} slice position(s): too few to judge coverage")
    step = min(b - a for a, b in itertools.pairwise(levels))
    spacing = _spacing_check(levels, step, rules.slice_spacing_tolerance)
    if spacing is not None:
        return spacing
    stacks = _stacks(frames, offsets, levels)
    coverage = _coverage_check(stacks, len(levels))
    if coverage is not None:
        return coverage
    temporal = {f.temporal_index for f in frames if f.temporal_index is not None}
    announced = _announced(series, len(frames), temporal)
    if announced is not None:
        return announced
    return SeriesCheck(
        "complete",
        f"{len(levels)} slice positions {step:.2f} mm apart"
        + (
            f", {len(stacks)} stacks (b-values/temporal positions) each covering them"
            if len(stacks) > 1
            else ""
        ),
    )


def _stack_label(key: _StackKey, stacks: int) -> str:
    if stacks == 1:
        return "the series "
    b_value, temporal, directional, derived = key
    parts = []
    if b_value is not None:
        parts.append(
            f"b={b_value:g}" + (" (directional)" if directional else "") + (" (map)" if derived else "")
        )
    if temporal is not None:
        parts.append(f"temporal position {temporal}")
    return "the stack " + (", ".join(parts) or "without b-value") + " "


# -- a rule's input series ------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSeries:
    """One input series of a rule, as the checks need it.

    Attributes
    ----------
    series_id : str
        Orthanc ID.
    series_instance_uid : str
        SeriesInstanceUID.
    instances : int
        Instances Orthanc holds for it.
    stable : bool
        Orthanc calls the series stable (no new instance for StableAge seconds).
    headers : sequence of (str, Dataset)
        Instance ID and header of every instance (of the first one only for a series
        :func:`first_header_verdict` ignores).
    """

    series_id: str
    series_instance_uid: str
    instances: int
    stable: bool
    headers: Sequence[tuple[str, Dataset]]


@dataclass(frozen=True)
class Readiness:
    """Whether a rule's inputs are complete enough to start its job before the study is stable.

    Attributes
    ----------
    ready : bool
        Start now.
    judged : bool
        False when completeness cannot be judged from the headers (the stable event decides).
    reason : str
        Why, in words.
    """

    ready: bool
    judged: bool
    reason: str


@dataclass(frozen=True)
class InputRoles:
    """What the headers say of a rule's input series: the engine's candidates and their completeness.

    Attributes
    ----------
    roles : mapping of str to tuple of str
        Orthanc IDs of the candidates of each of :data:`ENGINE_ROLES` (preferred first for ``t2w`` and
        ``adc``).
    checks : mapping of str to SeriesCheck
        Completeness of each candidate.
    counts : mapping of str to int
        Instances of each candidate and of each unreadable series.
    stable : frozenset of str
        Candidates Orthanc calls stable.
    unreadable : tuple of str
        Series none of whose headers could be used (their role is unknown).
    """

    roles: Mapping[str, tuple[str, ...]]
    checks: Mapping[str, SeriesCheck]
    counts: Mapping[str, int]
    stable: frozenset[str] = frozenset()
    unreadable: tuple[str, ...] = ()

    @property
    def engine_inputs(self) -> list[tuple[str, int]]:
        """The series the engine may read (the candidates, and series whose role is unknown) with their
        instance counts, sorted by ID: what identifies the work
        (:func:`orthanc_plugin.jobqueue.job_fingerprint`)."""
        return sorted(self.counts.items())

    def readiness(self) -> Readiness:
        """Whether the job may start before the study is stable (see the module docstring)."""
        missing = [role for role in ENGINE_ROLES if not self.roles.get(role)]
        if missing:
            return Readiness(
                False,
                False,
                f"no {' or '.join(missing)} candidate by the headers; waiting for the stable study",
            )
        unreadable = [s for s in self.unreadable if s not in self.stable]
        if unreadable:
            return Readiness(False, False, f"series {', '.join(unreadable)} have no usable header")
        waiting = [
            f"series {series_id}: {check.reason}"
            for series_id, check in sorted(self.checks.items())
            if check.state != "complete" and series_id not in self.stable
        ]
        if waiting:
            return Readiness(False, True, "; ".join(waiting))
        return Readiness(
            True,
            True,
            ", ".join(f"{role} {' '.join(self.roles[role])}" for role in ENGINE_ROLES) + " complete",
        )


def announced_images(dataset: Dataset) -> int | None:
    """The images a series' header says the series holds, or None when it does not say.

    ImagesInAcquisition (GE writes it for the whole series: slices x volumes of a diffusion series), times
    NumberOfTemporalPositions where that is above 1 (GE's fMRI counts one volume in ImagesInAcquisition).
    A series holding exactly this many instances is complete without a quiet time
    (:class:`orthanc_plugin.intake.changes.ReceivingStudies`); the judgement of all its headers follows.
    """
    counts = []
    for keyword in ("ImagesInAcquisition", "NumberOfTemporalPositions"):
        value = dataset.get(keyword)
        try:
            counts.append(int(value) if value not in (None, "") else None)
        except (TypeError, ValueError):
            counts.append(None)
    images, positions = counts
    if images is None or images < 1:
        return None
    return images * positions if positions is not None and positions > 1 else images


def first_header_verdict(dataset: Dataset, rules: SeriesRules | None = None) -> str | None:
    """Why the engine ignores a whole series from the header of one instance, or None (it may be an input).

    The verdicts of :data:`orthanc_plugin.intake.prefetch.HEADER_DECIDED` (DCE, localizers, sagittal T2, results,
    screenshots, ...), as the worker decides which series it fetches whole; a tilted series carrying a
    b-value tag is never decided from one image (it may still be an oblique diffusion series).
    """
    from lesion_engine.intake.header_roles import classify_headers
    from orthanc_plugin.intake.prefetch import HEADER_DECIDED

    verdict = classify_headers(str(dataset.get("SeriesInstanceUID", "")), [("first", dataset)], rules)
    if verdict.series is None:
        return None
    if verdict.ignored == "t2_oblique" and verdict.series.diffusion.ignored_b_values is not None:
        return None
    return verdict.ignored if verdict.ignored in HEADER_DECIDED else None


def rank_inputs(series: Sequence[InputSeries], rules: SeriesRules | None = None) -> InputRoles:
    """Rank a rule's input series by their headers and check the candidates' completeness.

    Parameters
    ----------
    series : sequence of InputSeries
        The rule's input series.
    rules : SeriesRules, optional
        The rule's series-selection rules; the engine's defaults when None.
    """
    from lesion_engine.intake.header_roles import UNREADABLE, SeriesHeaders, rank_roles
    from lesion_engine.intake.series_rules import load_series_rules

    rules = rules if rules is not None else load_series_rules()
    items = [SeriesHeaders(s, s.series_instance_uid, s.headers) for s in series if s.headers]
    ranked = rank_roles(items, rules)
    roles = {
        "t2w": tuple(s.series_id for s, _ in ranked.t2w),
        "adc": tuple(s.series_id for s, _ in ranked.adc),
        "dwi": tuple(s.series_id for s, _ in ranked.dwi),
    }
    checks: dict[str, SeriesCheck] = {}
    counts: dict[str, int] = {}
    stable: set[str] = set()
    unreadable = [s for s in series if not s.headers]
    for item, verdict in ranked.verdicts:
        if verdict.ignored == UNREADABLE:
            unreadable.append(item)
            continue
        if verdict.series is None or not verdict.candidate_for:
            continue
        checks[item.series_id] = check_series(verdict.series, rules, item.instances)
        counts[item.series_id] = item.instances
        if item.stable:
            stable.add(item.series_id)
    for item in unreadable:
        counts[item.series_id] = item.instances
        if item.stable:
            stable.add(item.series_id)
    return InputRoles(
        roles, checks, counts, frozenset(stable), tuple(sorted(s.series_id for s in unreadable))
    )
