"""One training case on the model grid, its lesions, and its ``.npz`` cache file.

A :class:`TrainingCase` holds everything the training loop needs, already on the model grid
(:func:`lesion_engine.model.model_input.model_grid`), so that epochs never redo DICOM or resampling work:

* ``images``: float32 (3, Z, Y, X), the network input (T2W, ADC, HBV) from
  :func:`lesion_engine.model.model_input.to_model_input`;
* ``cspca``: int16 (Z, Y, X), the clinically significant cancer label: the lesion's ISUP grade (2..5) per
  voxel, ``1`` where the grade is unknown (PI-CAI's AI-derived labels), 0 elsewhere;
* ``zones``: uint8 (Z, Y, X), 0 background / 1 peripheral zone / 2 transition zone (all 0 and
  ``has_zones`` False when the case has no zonal mask);
* ``lesion_index``: int16 (Z, Y, X), 0 background, ``i`` inside ``lesions[i - 1]``: every lesion of every
  kind, the benign mimics included, so that the classifier sees them as hard negatives;
* ``lesions``: one :class:`LesionRecord` per lesion with its kind and target suspicion category.

Target suspicion category (PI-RADS-like, 2..5) of a lesion, see :func:`target_category`:

==========================================  ========
lesion                                      category
==========================================  ========
no lesion (background), BPH, prostatitis    2
indolent cancer (ISUP 1)                    3
clinically significant cancer, ISUP 2       4
clinically significant cancer, ISUP >= 3    5
csPCa of unknown grade (AI-derived label)   unknown (``-1``: left out of the category loss)
==========================================  ========
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = [
    "BENIGN_KINDS",
    "CACHE_FORMAT_VERSION",
    "LESION_KINDS",
    "UNKNOWN",
    "LesionRecord",
    "TrainingCase",
    "category_index",
    "components_as_lesions",
    "grid_points_lps",
    "lesion_centroid",
    "load_case",
    "save_case",
    "target_category",
]

LESION_KINDS: tuple[str, ...] = ("cspca", "indolent", "bph", "prostatitis")
"""Lesion kinds: clinically significant cancer, indolent cancer (ISUP 1) and two benign mimics."""

BENIGN_KINDS: frozenset[str] = frozenset({"bph", "prostatitis"})
"""Kinds that are benign mimics of cancer."""

UNKNOWN = -1
"""Value of an unknown ISUP grade or category (left out of the losses that need it)."""

CATEGORIES: tuple[int, ...] = (2, 3, 4, 5)
"""The suspicion categories, in the order of the classifier's category logits."""

CACHE_FORMAT_VERSION = 1
"""Version of the ``.npz`` layout written by :func:`save_case`."""


def target_category(kind: str, isup: int) -> int:
    """Target suspicion category (2..5) of a lesion, or :data:`UNKNOWN` (see the module docstring).

    Parameters
    ----------
    kind : str
        One of :data:`LESION_KINDS`, or ``"background"`` for a location without a lesion.
    isup : int
        ISUP grade group (0..5), or :data:`UNKNOWN`.

    Returns
    -------
    int
        2, 3, 4 or 5; :data:`UNKNOWN` for a csPCa lesion of unknown grade.
    """
    if kind == "background" or kind in BENIGN_KINDS:
        return 2
    if kind == "indolent":
        return 3
    if kind == "cspca":
        if isup == UNKNOWN:
            return UNKNOWN
        if isup < 2 or isup > 5:
            raise ValueError(f"a csPCa lesion has ISUP 2..5, got {isup}")
        return 4 if isup == 2 else 5
    raise ValueError(f"unknown lesion kind {kind!r}; expected one of {LESION_KINDS} or 'background'")


def category_index(category: int) -> int:
    """Index of a category (2..5) among the classifier's category logits (0..3); ``-1`` stays ``-1``."""
    if category == UNKNOWN:
        return UNKNOWN
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES} or {UNKNOWN}, got {category}")
    return category - CATEGORIES[0]


@dataclass(frozen=True)
class LesionRecord:
    """One ground-truth lesion of a case, on the model grid.

    Attributes
    ----------
    lesion_id : str
        Identifier within the case (from the source's truth, or the component number).
    kind : str
        One of :data:`LESION_KINDS`.
    isup : int
        ISUP grade group (0 for benign mimics), or :data:`UNKNOWN`.
    category : int
        Target suspicion category (:func:`target_category`).
    label : int
        Value of this lesion in the case's ``lesion_index`` map (1-based position in ``lesions``).
    center_zyx : (float, float, float)
        Centre of mass in model-grid voxel coordinates.
    voxels : int
        Voxels of the lesion's mask on the model grid.
    zone : str or None
        ``"pz"``, ``"tz"`` or None when not known.
    """

    lesion_id: str
    kind: str
    isup: int
    category: int
    label: int
    center_zyx: tuple[float, float, float]
    voxels: int
    zone: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in LESION_KINDS:
            raise ValueError(f"LesionRecord.kind must be one of {LESION_KINDS}, got {self.kind!r}")
        if self.label < 1:
            raise ValueError(f"LesionRecord.label must be >= 1, got {self.label}")

    @property
    def is_cspca(self) -> bool:
        """Whether the lesion is a clinically significant cancer."""
        return self.kind == "cspca"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "lesion_id": self.lesion_id,
            "kind": self.kind,
            "isup": self.isup,
            "category": self.category,
            "label": self.label,
            "center_zyx": list(self.center_zyx),
            "voxels": self.voxels,
            "zone": self.zone,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LesionRecord:
        """Inverse of :meth:`to_dict`."""
        c = data["center_zyx"]
        return cls(
            lesion_id=str(data["lesion_id"]),
            kind=str(data["kind"]),
            isup=int(data["isup"]),
            category=int(data["category"]),
            label=int(data["label"]),
            center_zyx=(float(c[0]), float(c[1]), float(c[2])),
            voxels=int(data["voxels"]),
            zone=None if data.get("zone") is None else str(data["zone"]),
        )


@dataclass
class TrainingCase:
    """A labelled case on the model grid (see the module docstring for the arrays).

    Attributes
    ----------
    case_id : str
        ``<patient>_<study>``.
    images : ndarray
        float32 (3, Z, Y, X).
    cspca : ndarray
        int16 (Z, Y, X) ISUP values of csPCa lesions (1: grade unknown), 0 elsewhere.
    zones : ndarray
        uint8 (Z, Y, X) 0/1/2.
    lesion_index : ndarray
        int16 (Z, Y, X) 1-based index into ``lesions``.
    lesions : tuple of LesionRecord
        Every lesion of the case.
    has_zones : bool
        Whether ``zones`` holds a real zonal mask.
    source : str
        ``"synthetic"`` or ``"picai"``.
    meta : dict
        JSON-ready extra facts (vendor, label source, ...).
    """

    case_id: str
    images: NDArray[np.float32]
    cspca: NDArray[np.int16]
    zones: NDArray[np.uint8]
    lesion_index: NDArray[np.int16]
    lesions: tuple[LesionRecord, ...]
    has_zones: bool
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"TrainingCase.images must be (C, Z, Y, X), got shape {self.images.shape}")
        shape = self.images.shape[1:]
        for name in ("cspca", "zones", "lesion_index"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"TrainingCase.{name} has shape {getattr(self, name).shape}, expected {shape} (the images')"
                )
        for i, lesion in enumerate(self.lesions, start=1):
            if lesion.label != i:
                raise ValueError(f"TrainingCase.lesions[{i - 1}].label must be {i}, got {lesion.label}")

    @property
    def is_cspca(self) -> bool:
        """Case-level truth: whether the case has a clinically significant cancer."""
        return bool(np.any(self.cspca > 0)) or any(lesion.is_cspca for lesion in self.lesions)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) of the model grid."""
        z, y, x = self.images.shape[1:]
        return (int(z), int(y), int(x))


def save_case(case: TrainingCase, path: Path) -> Path:
    """Write a case as one compressed ``.npz`` (arrays plus a JSON header; no pickled objects).

    The file is written next to its final name and renamed, so a reader never sees half a file.
    """
    header = {
        "format_version": CACHE_FORMAT_VERSION,
        "case_id": case.case_id,
        "lesions": [lesion.to_dict() for lesion in case.lesions],
        "has_zones": case.has_zones,
        "source": case.source,
        "meta": case.meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez_compressed(
        tmp,
        images=case.images.astype(np.float32),
        cspca=case.cspca.astype(np.int16),
        zones=case.zones.astype(np.uint8),
        lesion_index=case.lesion_index.astype(np.int16),
        header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
    )
    os.replace(tmp, path)
    return path


def load_case(path: Path) -> TrainingCase:
    """Read a case written by :func:`save_case` (never unpickles anything).

    Raises
    ------
    ValueError
        When the file is not a case cache of the current format.
    """
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(bytes(data["header"]).decode("utf-8"))
        if header.get("format_version") != CACHE_FORMAT_VERSION:
            raise ValueError(
                f"{path}: cache format {header.get('format_version')!r}, expected {CACHE_FORMAT_VERSION}"
            )
        return TrainingCase(
            case_id=str(header["case_id"]),
            images=data["images"].astype(np.float32),
            cspca=data["cspca"].astype(np.int16),
            zones=data["zones"].astype(np.uint8),
            lesion_index=data["lesion_index"].astype(np.int16),
            lesions=tuple(LesionRecord.from_dict(d) for d in header["lesions"]),
            has_zones=bool(header["has_zones"]),
            source=str(header["source"]),
            meta=dict(header.get("meta", {})),
        )


def grid_points_lps(grid: sitk.Image) -> NDArray[np.float64]:
    """Physical (LPS, mm) coordinates of every voxel centre of ``grid``, shape (Z, Y, X, 3)."""
    size_x, size_y, size_z = grid.GetSize()
    spacing = np.asarray(grid.GetSpacing(), dtype=np.float64)
    origin = np.asarray(grid.GetOrigin(), dtype=np.float64)
    direction = np.asarray(grid.GetDirection(), dtype=np.float64).reshape(3, 3)
    zz, yy, xx = np.meshgrid(np.arange(size_z), np.arange(size_y), np.arange(size_x), indexing="ij")
    index_xyz = np.stack([xx, yy, zz], axis=-1).astype(np.float64) * spacing
    points: NDArray[np.float64] = index_xyz @ direction.T + origin
    return points


def lesion_centroid(mask: NDArray[np.bool_]) -> tuple[float, float, float]:
    """Centre of mass (z, y, x) of a non-empty mask."""
    points = np.argwhere(mask)
    if points.size == 0:
        raise ValueError("cannot take the centre of an empty mask")
    mean = points.mean(axis=0)
    return (float(mean[0]), float(mean[1]), float(mean[2]))


def components_as_lesions(cspca: NDArray[np.integer[Any]]) -> list[tuple[NDArray[np.bool_], int]]:
    """Split a csPCa label into lesions: 3D connected components (26-neighbourhood) and their ISUP.

    The ISUP of a component is its highest value; a component whose values are all ``1`` (PI-CAI's
    AI-derived "ISUP >= 2") gets :data:`UNKNOWN`.

    Returns
    -------
    list of (mask, isup)
        Largest component first.
    """
    labelled, count = ndimage.label(cspca > 0, structure=np.ones((3, 3, 3), dtype=bool))
    out: list[tuple[NDArray[np.bool_], int]] = []
    for value in range(1, count + 1):
        mask: NDArray[np.bool_] = labelled == value
        top = int(cspca[mask].max())
        out.append((mask, top if top >= 2 else UNKNOWN))
    out.sort(key=lambda item: -int(item[0].sum()))
    return out
