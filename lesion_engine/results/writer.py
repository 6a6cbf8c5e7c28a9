"""Entry points: the DICOM objects of one analysis result, or of a study that could not be processed."""

from __future__ import annotations

import datetime
import logging
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from lesion_engine.anatomy.gland_gate import gate_warnings
from lesion_engine.results.common import (
    ModelInfo,
    T2WGrid,
    UidFactory,
    check_result,
    copy_study_extras,
    t2w_grid,
)
from lesion_engine.results.failure import write_failure_objects
from lesion_engine.results.overlay import write_overlays
from lesion_engine.results.pmap import write_pmap
from lesion_engine.results.protocols import LesionLike, ResultLike
from lesion_engine.results.seg import write_seg
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.kos import write_kos
from lesion_engine.results.structured.sr import write_sr
from lesion_engine.results.structured.sr_gland import ProstateVolume, prostate_volume_of
from lesion_engine.results.summary import write_summary
from lesion_engine.results.value_limits import fit_text_values

logger = logging.getLogger(__name__)

__all__ = ["ResultObjects", "write_failure", "write_results"]


@dataclass
class ResultObjects:
    """The DICOM objects written for one result.

    Attributes
    ----------
    seg : Dataset or None
        The Segmentation (None for a negative study or when disabled).
    sr : Dataset
        The TID 1500 Measurement Report.
    pmap : Dataset or None
        The Parametric Map of the localization map, when enabled.
    sc : list of Dataset
        The Secondary Capture overlay images, when enabled.
    summary : Dataset or None
        The result summary image (:mod:`lesion_engine.results.summary`), when enabled (the default).
    kos : Dataset or None
        The Key Object Selection of the other objects and the lesions' key images
        (:mod:`lesion_engine.results.structured.kos`), when enabled (the default).
    timings_s : dict of str to float
        Seconds spent per object.
    """

    seg: Dataset | None
    sr: Dataset
    pmap: Dataset | None = None
    sc: list[Dataset] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    summary: Dataset | None = None
    kos: Dataset | None = None

    def all(self) -> list[Dataset]:
        """Every object, SEG first (the SR references it), the Key Object Selection last (it references
        the others)."""
        out = [d for d in (self.seg, self.sr, self.summary, self.pmap) if d is not None]
        return out + list(self.sc) + ([self.kos] if self.kos is not None else [])


@contextmanager
def _quiet_highdicom() -> Iterator[None]:
    # highdicom warns about person names of the source data (e.g. "ProstateX-0001"); they are copied as
    # they are, and the warning would only repeat for every object.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def _make_reproducible(dataset: Dataset, when: datetime.datetime) -> None:
    # The same analysis written twice gives the same bytes: instance creation, contribution and capture
    # times are the analysis time, not the moment of encoding, and the Dimension Organization UID that
    # highdicom draws at random derives from the object's own SOP Instance UID.
    dataset.InstanceCreationDate = when.strftime("%Y%m%d")
    dataset.InstanceCreationTime = when.strftime("%H%M%S.%f")
    for item in dataset.get("ContributingEquipmentSequence", []):  # highdicom adds its own, stamped now
        item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    if "DimensionOrganizationSequence" in dataset:
        uid = (
            f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{dataset.SOPInstanceUID}|DimensionOrganizationUID').int}"
        )
        for item in dataset.DimensionOrganizationSequence:
            item.DimensionOrganizationUID = uid
        for item in dataset.get("DimensionIndexSequence", []):
            item.DimensionOrganizationUID = uid
    if "TimeOfSecondaryCapture" in dataset:
        dataset.DateOfSecondaryCapture = when.strftime("%Y%m%d")
        dataset.TimeOfSecondaryCapture = when.strftime("%H%M%S.%f")


@dataclass(frozen=True)
class _Study:
    """What every object of one result is written from: the checked result on its T2W grid, and how the
    objects are named, identified and dated."""

    lesions: Sequence[LesionLike]
    patient_score: float
    grid: T2WGrid
    model: ModelInfo
    settings: ResultSettings
    uids: UidFactory
    when: datetime.datetime
    prostate: ProstateVolume | None
    warnings: list[str]

    @classmethod
    def of(
        cls,
        result: ResultLike,
        source_t2w_datasets: Sequence[Dataset],
        settings: ResultSettings,
        input_series_uids: Sequence[str] | None,
        when: datetime.datetime,
    ) -> _Study:
        """Check ``result`` against the T2W instances and derive the UIDs (see :func:`write_results`)."""
        model = ModelInfo.from_mapping(result.model)
        grid = t2w_grid(source_t2w_datasets)
        lesions = check_result(result, grid)
        series = sorted(set(input_series_uids or []) | {grid.series_instance_uid})
        return cls(
            lesions=lesions,
            patient_score=float(result.patient_score),
            grid=grid,
            model=model,
            settings=settings,
            uids=UidFactory(settings, [grid.study_instance_uid, *series, model.sha256]),
            when=when,
            prostate=prostate_volume_of(result, grid),
            warnings=gate_warnings([str(w) for w in getattr(result, "warnings", ())]),
        )


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[key]``."""
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start


def write_results(
    result: ResultLike,
    source_t2w_datasets: Sequence[Dataset],
    settings: ResultSettings | None = None,
    *,
    input_series_uids: Sequence[str] | None = None,
    analysis_time: datetime.datetime | None = None,
) -> ResultObjects:
    """Write the DICOM objects of one analysis result.

    Parameters
    ----------
    result : ResultLike
        The analysis result (lesions with masks on the T2W grid, patient score, model, ...); with
        ``gland_volume_ml``, ``gland_mask`` and ``gland_model`` (the engine's anatomical gate), the SR and
        the overlays report the prostate volume (:mod:`lesion_engine.results.structured.sr_gland`); the anatomical
        gate's warnings among its ``warnings`` (:func:`~lesion_engine.anatomy.gland_gate.gate_warnings`) are written
        in the SR and on the overlays.
    source_t2w_datasets : sequence of Dataset
        Every instance of the T2W series the masks lie on (pixel data is read only for overlays).
    settings : ResultSettings, optional
        Which objects to write and the product's names; defaults to ``ResultSettings()``.
    input_series_uids : sequence of str, optional
        SeriesInstanceUIDs of every input series (T2W, ADC, HBV); they and the model digest determine
        the UIDs written. Defaults to the T2W series alone.
    analysis_time : datetime.datetime, optional
        Time of the analysis (ContentDate/Time); defaults to now.

    Returns
    -------
    ResultObjects

    Raises
    ------
    ValueError
        The result does not fit the T2W instances (other study, mask shape, values out of range), or
        the instances are unusable as a grid.
    """
    settings = settings if settings is not None else ResultSettings()
    when = analysis_time if analysis_time is not None else datetime.datetime.now()
    study = _Study.of(result, source_t2w_datasets, settings, input_series_uids, when)
    with _quiet_highdicom():
        objects = _write_report(study)
        _write_images(study, result, objects)
    for dataset in objects.all():
        _make_reproducible(dataset, when)
        fit_text_values(dataset)
    if settings.write_kos:  # after the others are final: it references them
        _write_key_objects(study, objects)
    logger.info(
        "results for study %s: SEG %s, SR %s, pmap %s, %d overlay image(s)",
        study.grid.study_instance_uid,
        objects.seg.SOPInstanceUID if objects.seg is not None else None,
        objects.sr.SOPInstanceUID,
        objects.pmap.SOPInstanceUID if objects.pmap is not None else None,
        len(objects.sc),
    )
    return objects


def _write_report(study: _Study) -> ResultObjects:
    """The SEG of the lesions (when there are lesions and it is wanted), the SR that reports them, and the
    summary image (when wanted)."""
    timings: dict[str, float] = {}
    seg = None
    if study.lesions and study.settings.write_seg:
        with _timed(timings, "seg"):
            seg = write_seg(study.lesions, study.grid, study.model, study.settings, study.uids, study.when)
    with _timed(timings, "sr"):
        sr = write_sr(
            study.lesions,
            study.patient_score,
            seg,
            study.grid,
            study.model,
            study.settings,
            study.uids,
            study.when,
            prostate=study.prostate,
            warnings=study.warnings,
        )
        copy_study_extras(sr, study.grid.datasets[0])
    objects = ResultObjects(seg=seg, sr=sr, timings_s=timings)
    if study.settings.write_summary:
        with _timed(timings, "summary"):
            objects.summary = write_summary(
                study.lesions,
                study.patient_score,
                study.grid,
                study.model,
                study.settings,
                study.uids,
                study.when,
                prostate=study.prostate,
                warnings=study.warnings,
            )
    return objects


def _write_images(study: _Study, result: ResultLike, objects: ResultObjects) -> None:
    """Add the Parametric Map of the localization map and the overlay images to ``objects``, when wanted."""
    if study.settings.write_pmap:
        with _timed(objects.timings_s, "pmap"):
            objects.pmap = write_pmap(
                result.localization_map, study.grid, study.model, study.settings, study.uids, study.when
            )
    if study.settings.write_sc:
        with _timed(objects.timings_s, "sc"):
            objects.sc = write_overlays(
                study.lesions,
                study.grid,
                study.model,
                study.settings,
                study.uids,
                study.when,
                prostate=study.prostate,
                warnings=study.warnings,
            )


def _write_key_objects(study: _Study, objects: ResultObjects) -> None:
    """Add the Key Object Selection of the (final) other objects and the lesions' key images."""
    with _timed(objects.timings_s, "kos"):
        with _quiet_highdicom():
            objects.kos = write_kos(
                objects.all(), study.lesions, study.grid, study.model, study.settings, study.uids, study.when
            )
        _make_reproducible(objects.kos, study.when)
        fit_text_values(objects.kos)


def write_failure(
    study_datasets: Sequence[Dataset],
    reason: str,
    settings: ResultSettings | None = None,
    *,
    analysis_time: datetime.datetime | None = None,
) -> list[Dataset]:
    """Write the objects that tell a radiologist the AI did not analyse a study, and why.

    Parameters
    ----------
    study_datasets : sequence of Dataset
        Instances of the study (any; patient and study attributes are copied from the first image, and
        the UIDs derive from every SeriesInstanceUID).
    reason : str
        Why the study could not be processed, in words a radiologist can act on.
    settings : ResultSettings, optional
        Product names and whether a Secondary Capture image is written too.
    analysis_time : datetime.datetime, optional
        Time of the attempt; defaults to now.

    Returns
    -------
    list of Dataset
        A Comprehensive SR stating the reason, and (by default) a Secondary Capture image with the reason
        burned in.

    Raises
    ------
    ValueError
        No dataset, datasets of several studies, or an empty reason.
    """
    settings = settings if settings is not None else ResultSettings()
    when = analysis_time if analysis_time is not None else datetime.datetime.now()
    with _quiet_highdicom():
        objects = write_failure_objects(study_datasets, reason, settings, when)
    for dataset in objects:
        _make_reproducible(dataset, when)
        fit_text_values(dataset)
    return objects
