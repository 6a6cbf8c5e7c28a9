"""What the engine found in one study: the lesions and the maps, on the T2W grid.

:class:`EngineResult` is what :meth:`lesion_engine.engine.Engine.run` returns; its :meth:`~EngineResult.to_json`
is the ``lesions.json`` document of ``lesion-ai infer``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

__all__ = ["OUTSIDE_PROSTATE", "SCHEMA_VERSION", "EngineResult", "Lesion", "ModelInfo"]

OUTSIDE_PROSTATE = "outside"
"""The zone of a lesion centred outside the prostate gland, beside it within the gate's margin: no zone of the
prostate, and no prostate anatomy in the SEG and the SR."""

SCHEMA_VERSION = "1.4"
"""Version of the ``lesions.json`` document (:meth:`EngineResult.to_json`)."""


class CardIdentity(Protocol):
    """What every model card tells of its model's identity."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def weights_sha256(self) -> str: ...


@dataclass(frozen=True)
class ModelInfo:
    """Name, version and weight digest of the model that produced a result (an engine's ``model_info``).

    Attributes
    ----------
    name, version : str
        The model card's name and version.
    sha256 : str
        The digest of the model's weights (hex).
    """

    name: str
    version: str
    sha256: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"ModelInfo.{f.name} must be non-empty text, got {value!r}")

    @classmethod
    def of_card(cls, card: CardIdentity) -> ModelInfo:
        """The identity a model card gives (any card kind: joint, PI-CAI U-Net, nnU-Net)."""
        return cls(card.name, card.version, card.weights_sha256)

    @classmethod
    def from_mapping(cls, model: Mapping[str, str]) -> ModelInfo:
        """Read and check a result's ``model`` mapping (``name``, ``version`` and ``sha256``).

        Raises
        ------
        ValueError
            ``model`` is not a mapping, or lacks one of the three.
        """
        if not isinstance(model, Mapping):
            raise ValueError("result.model must be a mapping with name, version and sha256")
        missing = [k for k in ("name", "version", "sha256") if not str(model.get(k) or "").strip()]
        if missing:
            raise ValueError(f"result.model lacks {', '.join(missing)}")
        return cls(str(model["name"]), str(model["version"]), str(model["sha256"]))

    def to_dict(self) -> dict[str, str]:
        """The ``name``, ``version`` and ``sha256`` mapping (a result's ``model``, JSON-ready)."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True)
class Lesion:
    """One detected lesion, on the T2W grid.

    Attributes
    ----------
    id : int
        1..n by decreasing probability.
    center_lps_mm : (x, y, z)
        Centre of mass of the mask in patient coordinates (DICOM LPS), mm.
    mask : ndarray of bool
        (Z, Y, X) on the T2W grid; the lesion's blob of the detection map.
    volume_ml : float
        Mask volume.
    max_diameter_mm : float
        Largest distance between the centres of two mask voxels.
    axial_diameter_mm : float
        Largest in-plane diameter on the index slice (the T2W slice where the lesion is largest), across
        the outer pixel edges: the lesion size PI-RADS reports, and the SR's "Long axis".
    probability : float
        Probability of clinically significant cancer (ISUP >= 2); for a detection-map model (an imported
        PI-CAI U-Net), the lesion's likelihood read from the detection map.
    category : int or None
        Suspicion category (PI-RADS-like, 2..5); None for a detection-map model, which has no classifier.
    zone : str or None
        ``pz`` or ``tz`` for a lesion centred in the prostate gland found by the anatomical gate (the zone most
        of its voxels are predicted in), :data:`OUTSIDE_PROSTATE` for one centred beside the gland, None (zone
        unknown) without a gland (gate off, its gland model failed, or a detection-map model) or when no
        voxel under the lesion is predicted in either zone.
    peak : float
        Highest localization-map value of the candidate.
    """

    id: int
    center_lps_mm: tuple[float, float, float]
    mask: NDArray[np.bool_]
    volume_ml: float
    max_diameter_mm: float
    axial_diameter_mm: float
    probability: float
    category: int | None
    zone: str | None
    peak: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the mask), as in ``lesions.json``."""
        return {
            "id": self.id,
            "center_lps_mm": [round(v, 3) for v in self.center_lps_mm],
            "volume_ml": round(self.volume_ml, 5),
            "max_diameter_mm": round(self.max_diameter_mm, 3),
            "axial_diameter_mm": round(self.axial_diameter_mm, 3),
            "probability": round(self.probability, 6),
            "category": self.category,
            "zone": self.zone,
        }


@dataclass
class EngineResult:
    """What the engine found in one study.

    Attributes
    ----------
    study_instance_uid : str
        The study.
    lesions : list of Lesion
        By decreasing probability.
    patient_score : float
        Highest lesion probability; 0 when there is no lesion.
    localization_map : SimpleITK.Image
        float32 lesion likelihood on the T2W grid (0 outside the model's field of view).
    detection_map : SimpleITK.Image
        float32 on the T2W grid: each lesion's blob holds its probability, 0 elsewhere; blobs do not touch
        (PI-CAI detection map).
    timings_s : dict of str to float
        Seconds per stage (see the module docstring).
    model : dict of str to str
        ``name``, ``version`` and ``sha256`` of the model's weights.
    series : dict of str to str
        SeriesInstanceUID read for ``t2w``, ``adc`` and ``hbv``.
    roles : dict
        The role choices with their reasons (as ``lesion-ai inspect`` reports them).
    warnings : list of str
        Things a user should know (from preparing the study and from the engine).
    gland_volume_ml : float or None
        Volume of the prostate gland found by the gland model (the anatomical gate); None without it.
    gland_mask : ndarray of bool or None
        (Z, Y, X) that gland on the T2W grid (the SR outlines it with its volume); None without it.
    gland_model : dict of str to str or None
        ``name``, ``version``, ``sha256`` and ``licence`` of the gland model; None without it.
    model_kind : str
        ``joint`` (localization and classification networks) or ``detection-map`` (an imported PI-CAI
        U-Net: likelihoods from the map, no category, no zone).
    """

    study_instance_uid: str
    lesions: list[Lesion]
    patient_score: float
    localization_map: sitk.Image
    detection_map: sitk.Image
    timings_s: dict[str, float]
    model: dict[str, str]
    series: dict[str, str]
    roles: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    gland_volume_ml: float | None = None
    gland_mask: NDArray[np.bool_] | None = None
    gland_model: dict[str, str] | None = None
    model_kind: str = "joint"

    def to_json(self) -> dict[str, Any]:
        """The ``lesions.json`` document (schema in ``lesion_engine/data/lesions.schema.json``)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "study_instance_uid": self.study_instance_uid,
            "model": {**self.model, "kind": self.model_kind},
            "series": dict(self.series),
            "patient_score": round(self.patient_score, 6),
            "gland_volume_ml": None if self.gland_volume_ml is None else round(self.gland_volume_ml, 3),
            "lesions": [lesion.to_dict() for lesion in self.lesions],
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "roles": self.roles,
            "warnings": list(self.warnings),
        }
