"""What the result writers read from an analysis result.

The writers do not import the engine: any object with these attributes will do (the engine's result,
or a small dataclass in a test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["LesionLike", "ResultLike"]


@runtime_checkable
class LesionLike(Protocol):
    """One detected lesion.

    Attributes
    ----------
    id : int
        1..n, unique within the result.
    center_lps_mm : sequence of 3 float
        Centre in patient coordinates (LPS, mm).
    mask : ndarray of bool, shape (Z, Y, X)
        The lesion on the T2W grid; slice k is the k-th T2W slice along the slice normal.
    volume_ml : float
        Volume in millilitres.
    max_diameter_mm : float
        Largest extent in millimetres.
    probability : float
        Probability of clinically significant cancer, 0..1.
    category : int or None
        Suspicion category (PI-RADS-like), 2..5; None for a detection-map model (no classifier).
    zone : str or None
        ``"pz"``, ``"tz"`` or None when unknown.
    """

    @property
    def id(self) -> int: ...

    @property
    def center_lps_mm(self) -> Sequence[float]: ...

    @property
    def mask(self) -> NDArray[np.bool_]: ...

    @property
    def volume_ml(self) -> float: ...

    @property
    def max_diameter_mm(self) -> float: ...

    @property
    def probability(self) -> float: ...

    @property
    def category(self) -> int | None: ...

    @property
    def zone(self) -> str | None: ...


@runtime_checkable
class ResultLike(Protocol):
    """The analysis result of one study.

    Attributes
    ----------
    lesions : sequence of LesionLike
        The lesions found (empty for a negative study).
    patient_score : float
        Patient-level likelihood of clinically significant cancer, 0..1.
    localization_map : SimpleITK.Image or None
        float32 lesion likelihood map on the T2W grid.
    model : mapping
        ``name``, ``version`` and ``sha256`` of the model weights.
    study_instance_uid : str
        The analysed study.
    """

    @property
    def lesions(self) -> Sequence[LesionLike]: ...

    @property
    def patient_score(self) -> float: ...

    @property
    def localization_map(self) -> Any: ...

    @property
    def model(self) -> Mapping[str, str]: ...

    @property
    def study_instance_uid(self) -> str: ...
