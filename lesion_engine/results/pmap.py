"""Parametric Map of the localization map: the per-voxel lesion likelihood on the T2W grid (float)."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from lesion_engine.results.common import (
    NO_UNITS,
    ModelInfo,
    T2WGrid,
    UidFactory,
    contributing_equipment,
    device_and_dates,
    set_body_part,
)
from lesion_engine.results.settings import ResultSettings

logger = logging.getLogger(__name__)

__all__ = ["write_pmap"]


def write_pmap(
    localization_map: Any,
    grid: T2WGrid,
    model: ModelInfo,
    settings: ResultSettings,
    uids: UidFactory,
    when: datetime.datetime,
) -> Dataset | None:
    """Build the Parametric Map of the localization map.

    Parameters
    ----------
    localization_map : SimpleITK.Image or None
        float32 map on the T2W grid (size (X, Y, Z) = (columns, rows, slices)); None: no map is written.
    grid : T2WGrid
        The T2W source instances.
    model : ModelInfo
        The model that produced the map.
    settings : ResultSettings
        Names and numbers of the product.
    uids : UidFactory
        Derives the map's UIDs.
    when : datetime.datetime
        Time of the analysis.

    Returns
    -------
    pydicom.Dataset or None
        A ``highdicom.pm.ParametricMap``, or None when the result has no map.

    Raises
    ------
    ValueError
        The map's size differs from the T2W grid, or it holds values that are not finite.
    """
    if localization_map is None:
        logger.warning("no localization map in the result: no Parametric Map written")
        return None
    values = np.asarray(sitk.GetArrayFromImage(localization_map), dtype=np.float32)
    if values.shape != grid.shape:
        raise ValueError(
            f"localization map shape {values.shape} differs from the T2W grid {grid.shape} (Z, Y, X)"
        )
    if not np.isfinite(values).all():
        raise ValueError("the localization map holds values that are not finite")
    low, high = float(values.min()), float(values.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="LIKELIHOOD",
        lut_explanation="AI lesion likelihood (localization map)",
        unit=NO_UNITS,
        value_range=(min(low, 0.0), max(high, 1.0)),
        slope=1.0,
        intercept=0.0,
    )
    pmap = hd.pm.ParametricMap(
        source_images=grid.datasets,
        pixel_array=values[np.asarray(grid.frame_slices)],
        series_instance_uid=uids.uid("pmap", "series"),
        series_number=settings.pmap_series_number,
        sop_instance_uid=uids.uid("pmap", "instance"),
        instance_number=1,
        **device_and_dates(settings, when, grid.datasets[0]),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_description="AI lesion likelihood map, research use only",
        content_label="AI_LIKELIHOOD",
        contributing_equipment=contributing_equipment(settings, model, when),
        series_description=settings.pmap_series_description,
    )
    set_body_part(pmap, grid.datasets[0])
    logger.info("Parametric Map %s on T2W series %s", pmap.SOPInstanceUID, grid.series_instance_uid)
    return pmap
