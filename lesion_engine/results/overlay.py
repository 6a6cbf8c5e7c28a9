"""Secondary Capture series: T2W slices with coloured lesion outlines, labels and a caption burned in.

For viewers (and PACS) that show neither SEG nor SR: every reader sees where the AI found what, and the
caption says that it is an AI result for review, not a diagnosis.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from lesion_engine.model.contour import outline_pixels
from lesion_engine.results.common import (
    LESION_COLORS,
    ModelInfo,
    T2WGrid,
    UidFactory,
    category_text,
    contributing_equipment,
    copy_study_extras,
    device_and_dates,
    set_body_part,
)
from lesion_engine.results.drawing import draw_lines, font, wrap
from lesion_engine.results.protocols import LesionLike
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr_gland import ProstateVolume, prostate_line

logger = logging.getLogger(__name__)

__all__ = ["WARNING_BACKGROUND", "patient_orientation", "source_image_item", "write_overlays"]

_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def patient_orientation(direction: NDArray[np.float64]) -> str:
    """The PatientOrientation letter of a direction (LPS): its main axis and sign."""
    axis = int(np.argmax(np.abs(direction)))
    return _LETTERS[axis][0] if direction[axis] > 0 else _LETTERS[axis][1]


def source_image_item(dataset: Dataset, frame: int | None) -> Dataset:
    """An item of SourceImageSequence referencing one source image (or one frame of it)."""
    item = Dataset()
    item.ReferencedSOPClassUID = dataset.SOPClassUID
    item.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame + 1
    return item


#: The background of a warning's lines: dark red, unlike any lesion colour and any grey.
WARNING_BACKGROUND = (150, 0, 0)


def _slice_pixels(grid: T2WGrid, k: int) -> NDArray[np.float32]:
    dataset, frame = grid.slice_sources[k]
    array = np.asarray(dataset.pixel_array)
    if frame is not None:
        array = array[frame]
    return array.astype(np.float32)


def _grey(pixels: NDArray[np.float32], low: float, high: float) -> NDArray[np.uint8]:
    scaled = (pixels - low) / max(high - low, 1e-6) * 255.0
    return np.asarray(np.clip(scaled, 0, 255), dtype=np.uint8)


def _render(
    pixels: NDArray[np.float32],
    window: tuple[float, float],
    lesions: Sequence[LesionLike],
    k: int,
    caption: str,
    header: str,
    note: str | None = None,
    warnings: Sequence[str] = (),
) -> NDArray[np.uint8]:
    grey = _grey(pixels, *window)
    rgb = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    labels: list[tuple[str, tuple[int, int], tuple[int, int, int]]] = []
    for number, lesion in enumerate(lesions, start=1):
        mask = np.asarray(lesion.mask[k], dtype=bool)
        if not mask.any():
            continue
        colour = LESION_COLORS[(number - 1) % len(LESION_COLORS)]
        rgb[outline_pixels(mask, width=2)] = colour
        rows, cols = np.nonzero(mask)
        labels.append(
            (
                f"{int(lesion.id)}: {category_text(lesion, 'cat ')}p={float(lesion.probability):.2f}",
                (int(cols.max()) + 4, max(int(rows.min()) - 14, 0)),
                colour,
            )
        )
    image = Image.fromarray(rgb, mode="RGB")
    height, width = grey.shape
    size = max(10, min(16, width // 32))
    face = font(size)
    for text, (x, y), colour in labels:
        x = min(x, max(width - int(face.getlength(text)) - 4, 0))
        draw_lines(image, [text], (x, y), face, colour, background=(0, 0, 0))
    top = [header, *(wrap(note, face, width - 8) if note else [])]
    draw_lines(image, top, (4, 4), face, (255, 255, 255), background=(0, 0, 0))
    if warnings:
        below = 4 + len(top) * (size + 4)
        lines = [line for warning in warnings for line in wrap(f"Warning: {warning}", face, width - 8)]
        draw_lines(image, lines, (4, below), face, (255, 255, 255), background=WARNING_BACKGROUND)
    lines = wrap(caption, face, width - 8)
    y = height - len(lines) * (size + 4) - 4
    draw_lines(image, lines, (4, y), face, (255, 255, 0), background=(0, 0, 0))
    return np.asarray(image, dtype=np.uint8)


def write_overlays(
    lesions: Sequence[LesionLike],
    grid: T2WGrid,
    model: ModelInfo,
    settings: ResultSettings,
    uids: UidFactory,
    when: datetime.datetime,
    prostate: ProstateVolume | None = None,
    warnings: Sequence[str] = (),
) -> list[Dataset]:
    """Build the overlay series: one RGB Secondary Capture image per T2W slice shown.

    Parameters
    ----------
    lesions : sequence of LesionLike
        The lesions (colours follow their order, as in the SEG).
    grid : T2WGrid
        The T2W source instances, with pixel data.
    model : ModelInfo
        The model that found the lesions.
    settings : ResultSettings
        ``sc_all_slices`` chooses every slice or only those with a lesion; names, numbers, caption.
    uids : UidFactory
        Derives the images' UIDs.
    when : datetime.datetime
        Time of the analysis.
    prostate : ProstateVolume, optional
        The prostate gland: its volume is written under the header of every image.
    warnings : sequence of str
        What a radiologist must know about the result (the anatomical gate's failures), written in white
        on dark red under the header of every image.

    Returns
    -------
    list of pydicom.Dataset
        ``highdicom.sc.SCImage`` objects (none for a negative study unless ``sc_all_slices``).
    """
    slices = [
        k
        for k in range(grid.shape[0])
        if settings.sc_all_slices or any(bool(np.asarray(lesion.mask[k]).any()) for lesion in lesions)
    ]
    if not slices:
        return []
    volume = np.stack([_slice_pixels(grid, k) for k in range(grid.shape[0])])
    low, high = (float(v) for v in np.percentile(volume, [0.5, 99.5]))
    orientation = (patient_orientation(grid.row_dir), patient_orientation(grid.col_dir))
    equipment = contributing_equipment(settings, model, when)
    name = f"{model.name} {model.version}"
    out: list[Dataset] = []
    for number, k in enumerate(slices, start=1):
        dataset, frame = grid.slice_sources[k]
        header = f"AI lesions - {name} - slice {k + 1}/{grid.shape[0]}"
        note = prostate_line(prostate) if prostate is not None else None
        rgb = _render(volume[k], (low, high), lesions, k, settings.caption, header, note, warnings)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=dataset,
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=uids.uid("sc", "series"),
            series_number=settings.sc_series_number,
            sop_instance_uid=uids.uid("sc", "instance", k),
            instance_number=number,
            **device_and_dates(settings, when, dataset),
            patient_orientation=orientation,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=equipment,
            series_description=settings.sc_series_description,
        )
        image.BurnedInAnnotation = "NO"
        image.DerivationDescription = "T2W slice with AI lesion outlines burned in; not for diagnosis"
        image.SourceImageSequence = [source_image_item(dataset, frame)]
        copy_study_extras(image, dataset)
        set_body_part(image, dataset)
        out.append(image)
    logger.info("%d overlay image(s) for T2W series %s", len(out), grid.series_instance_uid)
    return out
