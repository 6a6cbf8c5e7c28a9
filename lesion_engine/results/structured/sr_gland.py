"""The prostate volume in the results, as radiologists report it: one number in mL, with its method.

When the engine ran its anatomical gate, the result carries the gland the gland model found
(``gland_volume_ml``, ``gland_mask`` on the T2W grid, ``gland_model``). The SR then holds:

* a TID 1411 (volumetric) measurement group, after the lesions' groups: Tracking Identifier
  ``Prostate gland`` with its own Tracking UID; finding and finding site Prostate (SCT 41216001); as its
  region, the gland's outline on each T2W slice it covers (SCOORD POLYLINEs, "Image Region"); one NUM
  "Volume" (SCT 118565006) in mL (UCUM ``ml``, one decimal), method "Sum of segmented voxel method for volume"
  (DCM 126030), with the gland model (name, version) as its algorithm identification (TID 4019): the
  volume is that of the automated segmentation, not an ellipsoid estimate. As in the lesions' groups, the NUM
  is INFERRED FROM the outline on the gland's largest slice (OHIF's SR loader reads a group's geometry
  there) and a Comment (DCM 121106) names it: ``Prostate gland, 26.5 ml (AI gland segmentation)``;
* a line in the report's document-level Qualitative Evaluations, with the lesion count and the patient
  score: ``Prostate volume: 26.5 ml (automated segmentation by the gland model TAPS ... 1.1.2)``.

The Secondary Capture overlays carry the same line. Without a gland (gate off, or no gland found) there
is neither group nor line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import highdicom as hd
import numpy as np
from numpy.typing import NDArray

from lesion_engine.model.contour import index_slice, outline
from lesion_engine.results.common import (
    MILLILITRE,
    PROSTATE,
    VOLUME,
    VOXEL_SUM_METHOD,
    T2WGrid,
    UidFactory,
)
from lesion_engine.results.structured.sr_lesion import (
    image_region,
    inferred_from,
    source_coordinates,
    with_comment,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PROSTATE_TRACKING_ID",
    "ProstateVolume",
    "prostate_group",
    "prostate_label",
    "prostate_line",
    "prostate_volume_of",
    "reported_ml",
]

PROSTATE_TRACKING_ID = "Prostate gland"
_FALLBACK_MODEL = "the gland model"


@dataclass(frozen=True)
class ProstateVolume:
    """The prostate gland of one result, as the writers report it.

    Attributes
    ----------
    volume_ml : float
        The gland's volume in mL (> 0).
    mask : ndarray of bool
        (Z, Y, X) the gland on the T2W grid (not empty).
    model_name, model_version : str
        The gland model that segmented it.
    """

    volume_ml: float
    mask: NDArray[np.bool_]
    model_name: str
    model_version: str

    def __post_init__(self) -> None:
        if not isinstance(self.volume_ml, int | float | np.floating) or isinstance(self.volume_ml, bool):
            raise TypeError(f"the prostate volume must be a number of mL, got {self.volume_ml!r}")
        if not math.isfinite(float(self.volume_ml)) or self.volume_ml <= 0:
            raise ValueError(f"the prostate volume must be a positive number of mL, got {self.volume_ml}")
        if self.mask.dtype != np.bool_ or self.mask.ndim != 3 or not self.mask.any():
            raise ValueError("the prostate gland mask must be a non-empty 3D boolean array on the T2W grid")

    @property
    def algorithm(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 of the gland model (name and version, at most 64 characters each)."""
        return hd.sr.AlgorithmIdentification(name=self.model_name[:64], version=self.model_version[:64])


def prostate_volume_of(result: Any, grid: T2WGrid) -> ProstateVolume | None:
    """The prostate gland of a result, or None when it has none.

    The result's ``gland_volume_ml``, ``gland_mask`` and ``gland_model`` are read when present (the
    engine's :class:`~lesion_engine.model.result_types.EngineResult` has them; other results may lack them).

    Raises
    ------
    ValueError
        The result gives a volume without a mask, or a mask that is not on the T2W grid, or a volume that
        is not a positive number.
    """
    volume = getattr(result, "gland_volume_ml", None)
    if volume is None:
        return None
    mask = getattr(result, "gland_mask", None)
    if mask is None:
        raise ValueError(
            "result.gland_volume_ml is given without result.gland_mask: the SR outlines the gland it "
            "measures; give the gland's mask on the T2W grid, or no volume"
        )
    mask = np.asarray(mask)
    if mask.shape != grid.shape:
        raise ValueError(f"result.gland_mask has shape {mask.shape}, the T2W grid is {grid.shape}")
    model: Mapping[str, str] = getattr(result, "gland_model", None) or {}
    return ProstateVolume(
        volume_ml=volume,
        mask=mask,
        model_name=str(model.get("name") or _FALLBACK_MODEL),
        model_version=str(model.get("version") or "unknown"),
    )


def reported_ml(volume_ml: float) -> float:
    """The volume as reported (NUM value and words): mL to one decimal, as radiologists report it."""
    return round(float(volume_ml), 1)


def _ml(volume_ml: float) -> str:
    return f"{reported_ml(volume_ml):.1f} ml"


def prostate_label(prostate: ProstateVolume) -> str:
    """The group's Comment (OHIF's label): ``"Prostate gland, 26.5 ml (AI gland segmentation)"``."""
    return f"{PROSTATE_TRACKING_ID}, {_ml(prostate.volume_ml)} (AI gland segmentation)"


def prostate_line(prostate: ProstateVolume) -> str:
    """The prostate volume in words, for the report's text and the overlays (ASCII)."""
    model = f"{prostate.model_name} {prostate.model_version}".encode("ascii", "replace").decode()
    return f"Prostate volume: {_ml(prostate.volume_ml)} (automated segmentation by the gland model {model})"


def prostate_group(
    prostate: ProstateVolume, grid: T2WGrid, uids: UidFactory, outline_kind: str = "scoord"
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The TID 1411 group of the prostate volume (see the module docstring).

    Parameters
    ----------
    prostate : ProstateVolume
        The gland.
    grid : T2WGrid
        The T2W source instances (the outlines are SCOORDs on them).
    uids : UidFactory
        Derives the group's Tracking UID.
    outline_kind : str
        The coordinates the volume is INFERRED FROM: ``"scoord"`` (on the T2W image) or ``"scoord3d"``;
        the group's region is always made of SCOORDs (TID 1411 takes no SCOORD3D image region).
    """
    k = index_slice(prostate.mask)
    slices = [k, *(z for z in range(prostate.mask.shape[0]) if z != k and prostate.mask[z].any())]
    outlines = {z: outline(prostate.mask[z]) for z in slices}
    regions = [cast(hd.sr.ImageRegion, image_region(outlines[z], z, grid, "scoord")) for z in slices]
    volume = hd.sr.Measurement(
        name=VOLUME,
        value=reported_ml(prostate.volume_ml),
        unit=MILLILITRE,
        method=VOXEL_SUM_METHOD,
        algorithm_id=prostate.algorithm,
    )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("prostate-gland"), identifier=PROSTATE_TRACKING_ID
        ),
        referenced_regions=regions,
        finding_type=PROSTATE,
        finding_sites=[hd.sr.FindingSite(PROSTATE)],
        measurements=[volume],
    )
    inferred_from(volume, source_coordinates(outlines[k], k, grid, outline_kind))
    with_comment(group, prostate_label(prostate))
    logger.debug("SR group of the prostate gland: %d slice(s), largest %d", len(slices), k)
    return group
