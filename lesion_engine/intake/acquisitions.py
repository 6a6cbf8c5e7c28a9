"""Diffusion acquisitions: which ADC maps and calculated images were derived from which diffusion scan.

Real protocols hold several diffusion acquisitions: a standard multi-b scan with its ADC map and a
scanner-calculated high-b image, a separate high-b scan with its own ADC, a multi-direction scan with its
TRACEW, ADC and FA maps. The ADC map and the high b-value image the model reads should come from one
acquisition (same scan, no patient motion in between), so the engine groups the diffusion series of a study
into acquisitions before it chooses.

A diffusion series (DWI trace series or ADC map) is *derived from* a DWI series when they lie on the same
grid (frame of reference, orientation, pixel spacing, matrix and slice positions) and the headers link
them, strongest evidence first:

1. an explicit reference: ReferencedSeriesSequence, SourceImageSequence, ReferencedImageSequence or
   DerivationImageSequence names the DWI series or one of its images (the grid may then differ);
2. the description of the derived series contains the description of the DWI series (Siemens
   ``ep2d_diff_tra`` -> ``ep2d_diff_tra_ADC``, ``ep2d_diff_tra_CALC_BVAL``);
3. its AcquisitionTime lies within the DWI series' acquisition (derived series keep the source's time);
4. GE numbering: derived series are numbered ``100 x`` the source's SeriesNumber plus a small index;
5. for an ADC map only: the DWI series on its grid with the nearest lower SeriesNumber.

A DWI series is taken as derived (a calculated image) only when it holds a single b-value, is marked
DERIVED in ImageType or CALC in its description, and evidence 1 to 4 links it; every other DWI series is
an acquisition of its own. An ADC map that links to no DWI series is an acquisition of its own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from lesion_engine.intake.roles import preference_key
from lesion_engine.intake.series import Series

logger = logging.getLogger(__name__)

__all__ = ["DiffusionAcquisition", "group_acquisitions", "same_grid"]

_POSITION_TOLERANCE_MM = 0.05
_DIRECTION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class DiffusionAcquisition:
    """One diffusion scan and the series derived from it.

    Attributes
    ----------
    root : Series
        The acquired DWI series, or an ADC map linked to no DWI series.
    dwi : tuple of Series
        DWI trace series of the acquisition (the root first when it is one).
    adc : tuple of Series
        ADC maps of the acquisition, in the documented preference order.
    links : dict of str to str
        Per SeriesInstanceUID of a derived series, the evidence linking it to the root.
    """

    root: Series
    dwi: tuple[Series, ...]
    adc: tuple[Series, ...]
    links: dict[str, str]

    def trace_b_values(self) -> list[float]:
        """Distinct b-values of the acquisition's trace images, ascending."""
        return sorted({f.b_value for s in self.dwi for f in s.frames if f.is_trace and f.b_value is not None})

    def label(self) -> str:
        """The acquisition in words, e.g. ``acquisition of series 7 'ep2d_diff_tra'``."""
        return f"acquisition of series {self.root.series_number} '{self.root.description}'"


def _grid(series: Series) -> tuple[str, np.ndarray, np.ndarray, tuple[int, int], np.ndarray] | None:
    frames = [f for f in series.frames if f.position and f.orientation and f.pixel_spacing]
    if not frames:
        return None
    first = frames[0]
    positions = np.unique(np.round(np.asarray([f.position for f in frames], dtype=np.float64), 3), axis=0)
    order = np.lexsort(positions.T[::-1])
    return (
        str(series.header.get("FrameOfReferenceUID", "") or ""),
        np.asarray(first.orientation, dtype=np.float64),
        np.asarray(first.pixel_spacing, dtype=np.float64),
        (first.rows, first.columns),
        positions[order],
    )


def same_grid(a: Series, b: Series) -> bool:
    """True when both series sample the same grid: frame of reference, orientation, spacing, slices."""
    ga, gb = _grid(a), _grid(b)
    if ga is None or gb is None:
        return False
    if ga[0] != gb[0] or ga[3] != gb[3] or ga[4].shape != gb[4].shape:
        return False
    return bool(
        np.allclose(ga[1], gb[1], atol=_DIRECTION_TOLERANCE)
        and np.allclose(ga[2], gb[2], atol=1e-3)
        and np.allclose(ga[4], gb[4], atol=_POSITION_TOLERANCE_MM)
    )


def _referenced_uids(series: Series) -> set[str]:
    """Series and SOP Instance UIDs that the series' headers reference as their source."""
    found: set[str] = set()
    ds = series.header
    containers = [ds]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        containers.append(shared[0])
    for container in containers:
        for name in ("ReferencedSeriesSequence", "SourceImageSequence", "ReferencedImageSequence"):
            for item in container.get(name) or []:
                for key in ("SeriesInstanceUID", "ReferencedSOPInstanceUID"):
                    if item.get(key):
                        found.add(str(item.get(key)))
        for item in container.get("DerivationImageSequence") or []:
            for source in item.get("SourceImageSequence") or []:
                if source.get("ReferencedSOPInstanceUID"):
                    found.add(str(source.ReferencedSOPInstanceUID))
    return found


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text).strip().lower()


def _seconds(value: object) -> float | None:
    text = str(value or "").strip()
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?", text)
    if not match:
        return None
    h, m, s, frac, _ = match.groups()
    return int(h) * 3600 + int(m or 0) * 60 + int(s or 0) + float(frac or 0.0)


def _instance_times(ds: Dataset) -> list[float]:
    """Acquisition times (seconds of the day) of an instance: per frame for Enhanced MR objects."""
    times = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        content = item.get("FrameContentSequence")
        if content:
            times.append(_seconds(str(content[0].get("FrameAcquisitionDateTime", "") or "")[8:]))
    times.append(_seconds(ds.get("AcquisitionTime")))
    times.append(_seconds(str(ds.get("AcquisitionDateTime", "") or "")[8:]))
    return [t for t in times if t is not None]


def _acquisition_span(series: Series) -> tuple[float, float] | None:
    times = [t for i in series.instances for t in _instance_times(i.dataset)]
    return (min(times), max(times)) if times else None


def _link(derived: Series, source: Series, *, is_adc: bool) -> tuple[int, str] | None:
    """Strength and words of the evidence that ``derived`` was made from ``source`` (None: no link)."""
    source_uids = {source.series_instance_uid} | {
        str(i.dataset.get("SOPInstanceUID", "")) for i in source.instances
    }
    if _referenced_uids(derived) & source_uids:
        return 5, "its header references the DWI series' images"
    if not same_grid(derived, source):
        return None
    src_desc, der_desc = _norm(source.description), _norm(derived.description)
    if len(src_desc) >= 3 and src_desc in der_desc and der_desc != src_desc:
        return 4, f"same grid, and its description contains '{source.description}'"
    span = _acquisition_span(source)
    times = _acquisition_span(derived)
    if span is not None and times is not None and span[0] - 1.0 <= times[0] <= span[1] + 1.0:
        return 3, "same grid, and its AcquisitionTime lies within the DWI series' acquisition"
    n_src, n_der = source.series_number, derived.series_number
    if n_src is not None and n_der is not None and n_src > 0 and n_der // 100 == n_src and n_der >= 100:
        return 2, f"same grid, and GE numbering ({n_der} = 100 x {n_src} + index)"
    if not is_adc:
        return None
    if n_src is not None and n_der is not None and n_src < n_der:
        return 1, "same grid, nearest lower SeriesNumber"
    return None


def _looks_calculated(series: Series) -> bool:
    image_type = series.image_type
    return bool(image_type and image_type[0] == "DERIVED") or "calc" in series.description.lower()


def group_acquisitions(dwi: Sequence[Series], adc: Sequence[Series]) -> list[DiffusionAcquisition]:
    """Group a study's DWI and ADC candidate series into diffusion acquisitions (see the module docstring).

    Parameters
    ----------
    dwi : sequence of Series
        The study's DWI candidates (trace series).
    adc : sequence of Series
        The study's ADC candidates.

    Returns
    -------
    list of DiffusionAcquisition
        Every candidate belongs to exactly one acquisition.
    """
    parent: dict[str, tuple[Series, str]] = {}
    for series in dwi:
        trace_b = {f.b_value for f in series.frames if f.is_trace}
        if len(trace_b) != 1 or not _looks_calculated(series):
            continue
        best = _best_source(series, [s for s in dwi if s is not series], is_adc=False, strongest=2)
        if best is not None:
            parent[series.series_instance_uid] = best
    roots = [s for s in dwi if s.series_instance_uid not in parent]
    # A chain (calculated from calculated) resolves to the acquired root.
    for uid, (source, why) in list(parent.items()):
        seen = {uid}
        while source.series_instance_uid in parent and source.series_instance_uid not in seen:
            seen.add(source.series_instance_uid)
            source = parent[source.series_instance_uid][0]
        parent[uid] = (source, why)
    for series in adc:
        best = _best_source(series, roots, is_adc=True, strongest=1)
        if best is not None:
            parent[series.series_instance_uid] = best
    acquisitions = []
    for root in [*roots, *(s for s in adc if s.series_instance_uid not in parent)]:
        members = [s for s in dwi if parent.get(s.series_instance_uid, (None,))[0] is root]
        adcs = [s for s in adc if parent.get(s.series_instance_uid, (None,))[0] is root]
        is_adc_root = root in adc
        acquisitions.append(
            DiffusionAcquisition(
                root=root,
                dwi=tuple([] if is_adc_root else [root, *members]),
                adc=tuple(sorted([root] if is_adc_root else adcs, key=preference_key, reverse=True)),
                links={s.series_instance_uid: parent[s.series_instance_uid][1] for s in [*members, *adcs]},
            )
        )
    for acq in acquisitions:
        logger.debug(
            "%s: DWI %s, ADC %s",
            acq.label(),
            [s.series_number for s in acq.dwi],
            [s.series_number for s in acq.adc],
        )
    return acquisitions


def _best_source(
    derived: Series, sources: Sequence[Series], *, is_adc: bool, strongest: int
) -> tuple[Series, str] | None:
    scored = []
    for source in sources:
        link = _link(derived, source, is_adc=is_adc)
        if link is not None and link[0] >= strongest:
            scored.append((link[0], preference_key(source), source, link[1]))
    if not scored:
        return None
    # Strongest evidence; among equals (nearest lower SeriesNumber) the latest source before it.
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    if scored[0][0] == 1:
        below = [item for item in scored if item[0] == 1]
        below.sort(key=lambda item: item[2].series_number or 0, reverse=True)
        return below[0][2], below[0][3]
    return scored[0][2], scored[0][3]
