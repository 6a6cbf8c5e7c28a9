"""Training cases from the PI-CAI public data set (images, picai_labels, marksheet, cross-validation splits).

Layout (as PI-CAI publishes it)::

    <images_root>/<patient>/<patient>_<study>_t2w.mha        axial T2W
    <images_root>/<patient>/<patient>_<study>_adc.mha        ADC map (10^-6 mm^2/s)
    <images_root>/<patient>/<patient>_<study>_hbv.mha        high b-value image
    <labels_root>/csPCa_lesion_delineations/human_expert/resampled/<patient>_<study>.nii.gz
    <labels_root>/csPCa_lesion_delineations/AI/Bosma22a/<patient>_<study>.nii.gz
    <labels_root>/anatomical_delineations/zonal_pz_tz/AI/<model>/<patient>_<study>.nii.gz   (optional)
    <labels_root>/clinical_information/marksheet.csv

Label values follow picai_labels: expert labels hold the ISUP grade (2..5) of each csPCa lesion, AI-derived
labels hold 1 for "ISUP >= 2" (grade unknown: such lesions get an unknown category, left out of the category
loss). ``label_source`` chooses: ``human`` (expert only), ``ai`` (AI-derived only) or ``human+ai`` (expert,
and the AI-derived label where the expert one is missing, or empty while the marksheet says csPCa; the PI-CAI
baseline does the same for the cases that were only recorded at case level). Cases whose marksheet says csPCa
but that have no lesion delineation left are skipped, because their lesions cannot be located.

PI-CAI delineates csPCa only: the cases carry no benign-mimic or indolent lesion masks, so on PI-CAI the
classifier's hard negatives come from the candidates of the current map only.

Cross-validation splits, in the two forms picai_baseline publishes:

* ``ds-config-train-fold-<k>.json`` / ``ds-config-valid-fold-<k>.json``: ``{"subject_list": [...]}``;
* nnU-Net's ``splits.json``: ``[{"train": [...], "val": [...]}, ...]``, one entry per fold.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from lesion_engine.model.model_config import PICAI_CROP
from lesion_engine.model.model_input import PreprocessConfig, resample_label, to_model_input_from_images
from training.datasets.cases import (
    LesionRecord,
    TrainingCase,
    components_as_lesions,
    lesion_centroid,
    target_category,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_SOURCES",
    "MarksheetRow",
    "PicaiLayout",
    "cspca_label_image",
    "find_picai_cases",
    "picai_case",
    "read_marksheet",
    "read_split",
]

LABEL_SOURCES: tuple[str, ...] = ("human", "ai", "human+ai")
SUBSETS: tuple[str, ...] = ("train", "valid")
_ZONE_MODELS = ("HeviAI23", "BDay23")


@dataclass(frozen=True)
class PicaiLayout:
    """Where the PI-CAI files are and which labels to use.

    Attributes
    ----------
    images_root : Path
        Folder with one sub-folder per patient holding the ``.mha`` images.
    labels_root : Path
        The picai_labels folder (with ``csPCa_lesion_delineations/`` and ``clinical_information/``).
    label_source : str
        ``human``, ``ai`` or ``human+ai`` (see the module docstring).
    ai_model : str
        Sub-folder of the AI-derived csPCa labels (``Bosma22a``).
    zonal_model : str or None
        Sub-folder of ``anatomical_delineations/zonal_pz_tz/AI/``; ``"auto"`` takes the first of
        HeviAI23, BDay23 that exists; None: no zonal masks.
    zone_values : (int, int)
        Values of the peripheral and transition zone in the zonal masks.
    marksheet : Path or None
        The marksheet; ``<labels_root>/clinical_information/marksheet.csv`` when None.
    """

    images_root: Path
    labels_root: Path
    label_source: str = "human+ai"
    ai_model: str = "Bosma22a"
    zonal_model: str | None = "auto"
    zone_values: tuple[int, int] = (1, 2)
    marksheet: Path | None = None

    def __post_init__(self) -> None:
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(
                f"PicaiLayout.label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}"
            )
        if len(self.zone_values) != 2 or self.zone_values[0] == self.zone_values[1]:
            raise ValueError(
                f"PicaiLayout.zone_values must be two different values (PZ, TZ), got {self.zone_values}"
            )
        if not self.ai_model:
            raise ValueError("PicaiLayout.ai_model must name the AI-derived label folder (e.g. Bosma22a)")

    @property
    def marksheet_path(self) -> Path:
        """The marksheet file."""
        return self.marksheet or self.labels_root / "clinical_information" / "marksheet.csv"

    def image_path(self, case_id: str, sequence: str) -> Path:
        """Path of a case's ``t2w``, ``adc`` or ``hbv`` image."""
        patient = case_id.split("_")[0]
        return self.images_root / patient / f"{case_id}_{sequence}.mha"

    def human_label_path(self, case_id: str) -> Path:
        """Path of the expert csPCa label resampled to the T2W."""
        return (
            self.labels_root
            / "csPCa_lesion_delineations"
            / "human_expert"
            / "resampled"
            / f"{case_id}.nii.gz"
        )

    def ai_label_path(self, case_id: str) -> Path:
        """Path of the AI-derived csPCa label."""
        return self.labels_root / "csPCa_lesion_delineations" / "AI" / self.ai_model / f"{case_id}.nii.gz"

    def zones_path(self, case_id: str) -> Path | None:
        """Path of the zonal mask, or None when there is none."""
        if self.zonal_model is None:
            return None
        base = self.labels_root / "anatomical_delineations" / "zonal_pz_tz" / "AI"
        models = _ZONE_MODELS if self.zonal_model == "auto" else (self.zonal_model,)
        for model in models:
            path = base / model / f"{case_id}.nii.gz"
            if path.is_file():
                return path
        return None


@dataclass(frozen=True)
class MarksheetRow:
    """The marksheet facts a training case needs.

    Attributes
    ----------
    case_id : str
        ``<patient_id>_<study_id>``.
    case_cspca : bool or None
        ``case_csPCa`` (YES/NO); None when empty.
    case_isup : int or None
        ``case_ISUP``.
    lesion_isup : tuple of int
        ``lesion_ISUP``, one value per biopsied lesion.
    center : str
        Acquisition centre.
    raw : dict
        The whole row.
    """

    case_id: str
    case_cspca: bool | None
    case_isup: int | None
    lesion_isup: tuple[int, ...]
    center: str
    raw: dict[str, str]


def _int_or_none(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def read_marksheet(path: Path) -> dict[str, MarksheetRow]:
    """Read a PI-CAI ``marksheet.csv`` into rows keyed by ``<patient>_<study>``.

    Raises
    ------
    ValueError
        When a required column (``patient_id``, ``study_id``, ``case_csPCa``) is missing.
    """
    rows: dict[str, MarksheetRow] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"patient_id", "study_id", "case_csPCa"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: marksheet lacks the column(s) {', '.join(sorted(missing))}")
        for row in reader:
            case_id = f"{row['patient_id'].strip()}_{row['study_id'].strip()}"
            flag = row.get("case_csPCa", "").strip().upper()
            lesion_isup = tuple(
                v
                for v in (_int_or_none(t) for t in (row.get("lesion_ISUP") or "").split(","))
                if v is not None
            )
            rows[case_id] = MarksheetRow(
                case_id=case_id,
                case_cspca=True if flag == "YES" else False if flag == "NO" else None,
                case_isup=_int_or_none(row.get("case_ISUP") or ""),
                lesion_isup=lesion_isup,
                center=(row.get("center") or "").strip(),
                raw=dict(row),
            )
    return rows


def read_split(path: Path, fold: int, subset: str = "train") -> list[str]:
    """Case ids of one fold of a PI-CAI cross-validation split.

    Parameters
    ----------
    path : Path
        A folder of ``ds-config-{train,valid}-fold-<k>.json`` files, one such file, or nnU-Net's
        ``splits.json``.
    fold : int
        Fold number (0..4 for PI-CAI).
    subset : str
        ``train`` or ``valid``.

    Returns
    -------
    list of str
        ``<patient>_<study>`` ids.

    Raises
    ------
    ValueError
        Unknown subset, a fold that the file does not have, or a file of another shape.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    if fold < 0:
        raise ValueError(f"fold must be >= 0, got {fold}")
    if path.is_dir():
        path = path / f"ds-config-{subset}-fold-{fold}.json"
        if not path.is_file():
            raise ValueError(f"split file {path} does not exist")
    data: Any = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "subject_list" in data:
        return [str(s) for s in data["subject_list"]]
    if isinstance(data, list):
        if fold >= len(data):
            raise ValueError(f"{path} has {len(data)} folds; fold {fold} does not exist")
        entry = data[fold]
        key = "train" if subset == "train" else "val"
        if not isinstance(entry, dict) or key not in entry:
            raise ValueError(
                f"{path}: fold {fold} has no {key!r} list (expected nnU-Net's splits.json format)"
            )
        return [str(s) for s in entry[key]]
    raise ValueError(f"{path}: expected {{'subject_list': [...]}} or a list of {{'train', 'val'}} folds")


def find_picai_cases(layout: PicaiLayout, subject_list: list[str] | None = None) -> list[str]:
    """Case ids that have all three images, in marksheet order (restricted to ``subject_list`` if given)."""
    marksheet = read_marksheet(layout.marksheet_path)
    wanted = list(marksheet) if subject_list is None else list(subject_list)
    unknown = [c for c in wanted if c not in marksheet]
    if unknown:
        logger.warning(
            "%d case(s) of the subject list are not in the marksheet, e.g. %s", len(unknown), unknown[0]
        )
    out = [c for c in wanted if all(layout.image_path(c, s).is_file() for s in ("t2w", "adc", "hbv"))]
    if len(out) < len(wanted):
        logger.warning(
            "%d of %d case(s) lack images under %s", len(wanted) - len(out), len(wanted), layout.images_root
        )
    return out


def _read_on(path: Path, reference: sitk.Image) -> sitk.Image:
    """Read a label; give it the T2W's geometry when it has the T2W's size (PI-CAI headers may differ slightly)."""
    label = sitk.ReadImage(str(path))
    if label.GetSize() == reference.GetSize():
        same = np.allclose(label.GetOrigin(), reference.GetOrigin(), atol=1e-2) and np.allclose(
            label.GetDirection(), reference.GetDirection(), atol=1e-3
        )
        if not same:
            logger.debug("%s: header differs from the T2W's; using the T2W geometry", path.name)
        label.CopyInformation(reference)
    return label


def cspca_label_image(
    layout: PicaiLayout, case_id: str, t2w: sitk.Image, row: MarksheetRow | None
) -> tuple[sitk.Image | None, str]:
    """The csPCa label of a case by ``layout.label_source`` (see the module docstring) and where it came from.

    Returns
    -------
    (image or None, source)
        The label on the T2W's geometry, or None when there is none; ``human_expert``, ``AI/<model>`` or
        ``none``.
    """
    human = layout.human_label_path(case_id)
    ai = layout.ai_label_path(case_id)
    if layout.label_source in ("human", "human+ai") and human.is_file():
        label = _read_on(human, t2w)
        empty = not np.any(sitk.GetArrayViewFromImage(label) > 0)
        positive = row is not None and row.case_cspca is True
        if not (layout.label_source == "human+ai" and empty and positive and ai.is_file()):
            return label, "human_expert"
    if layout.label_source in ("ai", "human+ai") and ai.is_file():
        return _read_on(ai, t2w), f"AI/{layout.ai_model}"
    return None, "none"


def _read_images(
    layout: PicaiLayout, case_id: str, config: PreprocessConfig
) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """A case's T2W, ADC and HBV images, as float32 (or in their stored type for the PI-CAI crop)."""
    # The PI-CAI crop resamples the images in their stored type, as the PI-CAI pipeline reads them.
    native = config.kind == PICAI_CROP and config.input_pixel_type == "dicom"
    pixel_type = sitk.sitkUnknown if native else sitk.sitkFloat32
    t2w = sitk.ReadImage(str(layout.image_path(case_id, "t2w")), pixel_type)
    adc = sitk.ReadImage(str(layout.image_path(case_id, "adc")), pixel_type)
    hbv = sitk.ReadImage(str(layout.image_path(case_id, "hbv")), pixel_type)
    return t2w, adc, hbv


def _case_label(
    layout: PicaiLayout, case_id: str, t2w: sitk.Image, row: MarksheetRow | None
) -> tuple[sitk.Image, str] | None:
    """A case's csPCa label and where it came from: an empty label when the marksheet says negative and
    there is none; None (with a warning) when there is none otherwise."""
    label, label_source = cspca_label_image(layout, case_id, t2w, row)
    if label is not None:
        return label, label_source
    if row is not None and row.case_cspca is False:
        empty = sitk.Image(t2w.GetSize(), sitk.sitkUInt8)
        empty.CopyInformation(t2w)
        return empty, "marksheet (negative)"
    logger.warning(
        "%s: no csPCa label (%s) and not negative by the marksheet; skipped",
        case_id,
        layout.label_source,
    )
    return None


def _zones_on_grid(
    layout: PicaiLayout, zones_path: Path | None, t2w: sitk.Image, grid: sitk.Image, shape: tuple[int, ...]
) -> NDArray[np.uint8]:
    """The zonal mask on the model grid, as 1 = PZ, 2 = TZ (all 0 without a mask)."""
    zones = np.zeros(shape, dtype=np.uint8)
    if zones_path is not None:
        raw = resample_label(_read_on(zones_path, t2w), grid)
        zones[raw == layout.zone_values[0]] = 1
        zones[raw == layout.zone_values[1]] = 2
    return zones


def _lesion_records(
    case_id: str, cspca: NDArray[np.int16], zones: NDArray[np.uint8] | None
) -> tuple[NDArray[np.int16], tuple[LesionRecord, ...]]:
    """The csPCa lesions of a label on the model grid: their index map (1-based) and their records.

    ``zones`` is the zonal mask, or None when the case has none (the lesions' zones are then unknown).
    """
    lesion_index = np.zeros(cspca.shape, dtype=np.int16)
    lesions: list[LesionRecord] = []
    for mask, isup in components_as_lesions(cspca):
        label_value = len(lesions) + 1
        lesion_index[mask] = label_value
        lesions.append(
            LesionRecord(
                lesion_id=f"{case_id}-{label_value}",
                kind="cspca",
                isup=isup,
                category=target_category("cspca", isup),
                label=label_value,
                center_zyx=lesion_centroid(mask),
                voxels=int(mask.sum()),
                zone=_zone_name(mask, zones) if zones is not None else None,
            )
        )
    return lesion_index, tuple(lesions)


def _case_meta(label_source: str, zones_path: Path | None, row: MarksheetRow | None) -> dict[str, Any]:
    """The ``meta`` of a PI-CAI training case: where its labels came from, and its marksheet facts."""
    return {
        "label_source": label_source,
        "zones_source": None if zones_path is None else zones_path.parent.name,
        "marksheet": None
        if row is None
        else {"case_csPCa": row.case_cspca, "case_ISUP": row.case_isup, "center": row.center},
    }


def picai_case(
    layout: PicaiLayout,
    case_id: str,
    config: PreprocessConfig,
    marksheet: dict[str, MarksheetRow] | None = None,
) -> TrainingCase | None:
    """Build the :class:`~training.datasets.cases.TrainingCase` of one PI-CAI case.

    Parameters
    ----------
    layout : PicaiLayout
        Where the files are.
    case_id : str
        ``<patient>_<study>``.
    config : PreprocessConfig
        The model grid and normalization (or the PI-CAI crop: the labels go onto the crop).
    marksheet : dict, optional
        The parsed marksheet (:func:`read_marksheet`); read from the layout when None.

    Returns
    -------
    TrainingCase or None
        None when the case cannot be used (no label, or csPCa by the marksheet without a delineation).
    """
    if marksheet is None:
        marksheet = read_marksheet(layout.marksheet_path)
    row = marksheet.get(case_id)
    t2w, adc, hbv = _read_images(layout, case_id, config)
    labelled = _case_label(layout, case_id, t2w, row)
    if labelled is None:
        return None
    label, label_source = labelled
    model_input = to_model_input_from_images(t2w, adc, hbv, config)
    grid = model_input.grid
    cspca = resample_label(label, grid).astype(np.int16)
    if row is not None and row.case_cspca is True and not np.any(cspca > 0):
        logger.warning(
            "%s: csPCa by the marksheet but no lesion delineated on the model grid; skipped", case_id
        )
        return None
    zones_path = layout.zones_path(case_id)
    zones = _zones_on_grid(layout, zones_path, t2w, grid, cspca.shape)
    lesion_index, lesions = _lesion_records(case_id, cspca, zones if zones_path is not None else None)
    return TrainingCase(
        case_id=case_id,
        images=model_input.images,
        cspca=cspca,
        zones=zones,
        lesion_index=lesion_index,
        lesions=lesions,
        has_zones=zones_path is not None,
        source="picai",
        meta=_case_meta(label_source, zones_path, row),
    )


def _zone_name(mask: NDArray[np.bool_], zones: NDArray[np.uint8]) -> str | None:
    values = zones[mask]
    values = values[values > 0]
    if values.size == 0:
        return None
    return {1: "pz", 2: "tz"}.get(int(np.bincount(values).argmax()))
