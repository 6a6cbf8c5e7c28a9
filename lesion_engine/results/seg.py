"""DICOM Segmentation of the lesions: BINARY, one segment per lesion, on the T2W series."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from lesion_engine.results.common import (
    ABNORMAL_STRUCTURE,
    AI_FAMILY,
    LESION,
    LESION_COLORS,
    OUTSIDE_PROSTATE,
    PROSTATE,
    ZONE_CODES,
    ModelInfo,
    T2WGrid,
    UidFactory,
    algorithm_identity,
    category_text,
    contributing_equipment,
    device_and_dates,
)
from lesion_engine.results.protocols import LesionLike
from lesion_engine.results.settings import ResultSettings

logger = logging.getLogger(__name__)

__all__ = ["segment_label", "tracking_id", "write_seg"]


def tracking_id(lesion: LesionLike) -> str:
    """Human-readable tracking identifier of a lesion, shared by SEG and SR."""
    return f"Lesion {int(lesion.id)}"


def segment_label(lesion: LesionLike) -> str:
    """Segment label shown by viewers: lesion number, category and probability."""
    return f"Lesion {int(lesion.id)}: {category_text(lesion, 'category ')}p={float(lesion.probability):.2f}"


def _segment_description(
    number: int, lesion: LesionLike, algorithm: hd.AlgorithmIdentificationSequence, uids: UidFactory
) -> hd.seg.SegmentDescription:
    """The description of one lesion's segment: label, colour, tracking and anatomy.

    Parameters
    ----------
    number : int
        The segment number (from 1); picks the display colour.
    lesion : LesionLike
        The lesion the segment holds.
    algorithm : highdicom.AlgorithmIdentificationSequence
        The algorithm that found the lesion.
    uids : UidFactory
        Derives the tracking UID (equal to the SR's volumetric group's).

    Returns
    -------
    highdicom.seg.SegmentDescription
    """
    rgb = LESION_COLORS[(number - 1) % len(LESION_COLORS)]
    zone = ZONE_CODES.get(lesion.zone) if lesion.zone else None
    outside = lesion.zone == OUTSIDE_PROSTATE
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment_label(lesion),
        segmented_property_category=ABNORMAL_STRUCTURE,
        segmented_property_type=LESION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=uids.uid("lesion", int(lesion.id)),
        tracking_id=tracking_id(lesion),
        anatomic_regions=None if outside else [PROSTATE],
        primary_anatomic_structures=[zone] if zone is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )


def _pixel_array(lesions: Sequence[LesionLike], grid: T2WGrid) -> NDArray[np.uint8]:
    """The lesion masks as a (frames, rows, columns, segments) uint8 array, frames in source frame order."""
    stacked = np.stack([np.asarray(lesion.mask, dtype=bool) for lesion in lesions], axis=-1)
    frames: NDArray[np.uint8] = stacked[np.asarray(grid.frame_slices)].astype(np.uint8)
    return frames


def write_seg(
    lesions: Sequence[LesionLike],
    grid: T2WGrid,
    model: ModelInfo,
    settings: ResultSettings,
    uids: UidFactory,
    when: datetime.datetime,
) -> Dataset:
    """Build the Segmentation of the lesions.

    Parameters
    ----------
    lesions : sequence of LesionLike
        At least one lesion, masks on the T2W grid (checked by the caller).
    grid : T2WGrid
        The T2W source instances in grid order.
    model : ModelInfo
        The model that found the lesions.
    settings : ResultSettings
        Names and numbers of the product.
    uids : UidFactory
        Derives the SEG's UIDs and the tracking UIDs.
    when : datetime.datetime
        Time of the analysis (ContentDate/ContentTime).

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.seg.Segmentation``.
    """
    if not lesions:
        raise ValueError("a Segmentation needs at least one lesion")
    name, version = algorithm_identity(settings, model)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=name, family=AI_FAMILY, version=version, source=settings.algorithm_source
    )
    descriptions = [
        _segment_description(number, lesion, algorithm, uids)
        for number, lesion in enumerate(lesions, start=1)
    ]
    pixel_array = _pixel_array(lesions, grid)
    reference = grid.datasets[0]
    seg = hd.seg.Segmentation(
        source_images=grid.datasets,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.uid("seg", "series"),
        series_number=settings.seg_series_number,
        sop_instance_uid=uids.uid("seg", "instance"),
        instance_number=1,
        **device_and_dates(settings, when, reference),
        content_description="AI lesion segmentation, research use only",
        content_label="AI_LESIONS",
        content_creator_name=None,
        omit_empty_frames=True,
        contributing_equipment=contributing_equipment(settings, model, when),
        series_description=settings.seg_series_description,
    )
    logger.info(
        "SEG %s: %d segment(s) on T2W series %s",
        seg.SOPInstanceUID,
        len(descriptions),
        grid.series_instance_uid,
    )
    return seg
