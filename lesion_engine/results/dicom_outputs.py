"""From one engine result to the DICOM outputs asked for: the one call the CLI and the node share.

:func:`write_outputs` takes the prepared study and the engine's result, writes the requested outputs
(:class:`~lesion_engine.results.outputs.Output`) with :func:`lesion_engine.results.writer.write_results` and returns
them keyed by output. The UIDs written derive from :func:`input_series_uids` (with the model's digest and
the result settings), so the same study gives the same objects wherever it is analysed.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Collection

from pydicom.dataset import Dataset

from lesion_engine.intake.preprocess import PreparedStudy
from lesion_engine.model.result_types import EngineResult
from lesion_engine.results.outputs import Output
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.writer import write_results

logger = logging.getLogger(__name__)

__all__ = ["input_series_uids", "t2w_datasets", "write_outputs"]


def input_series_uids(prepared: PreparedStudy, result: EngineResult) -> list[str]:
    """The SeriesInstanceUIDs of the input series that seed the deterministic result UIDs.

    Parameters
    ----------
    prepared : PreparedStudy
        The study the result was computed from (part of the signature so that the rule may use it).
    result : EngineResult
        The engine's result.

    Returns
    -------
    list of str
        The distinct series read for ``t2w``, ``adc`` and ``hbv`` (``result.series``), sorted.
    """
    del prepared  # the rule needs only the result's series today
    return sorted(set(result.series.values()))


def t2w_datasets(prepared: PreparedStudy) -> list[Dataset]:
    """Every instance (header, pixel data deferred) of the study's chosen T2W series."""
    t2w_uid = prepared.roles["t2w"].series_instance_uid
    return [instance.dataset for instance in prepared.loaded.series_by_uid(t2w_uid).instances]


def write_outputs(
    prepared: PreparedStudy,
    result: EngineResult,
    outputs: Collection[Output],
    settings: ResultSettings | None = None,
    *,
    analysis_time: datetime.datetime | None = None,
) -> dict[Output, list[Dataset]]:
    """Write the requested DICOM outputs of one result.

    Parameters
    ----------
    prepared : PreparedStudy
        The study the result was computed from (its T2W instances are the grid of every object).
    result : EngineResult
        The engine's result for ``prepared``.
    outputs : collection of Output
        The outputs wanted (see :func:`lesion_engine.results.outputs.parse_outputs` for names).
    settings : ResultSettings, optional
        Product names, series numbers, UID root, ...; defaults to ``ResultSettings()``. Its ``write_seg``,
        ``write_pmap``, ``write_sc`` and ``write_kos`` switches are ignored: ``outputs`` decides (on a copy).
    analysis_time : datetime.datetime, optional
        Time of the analysis written into the objects; defaults to now.

    Returns
    -------
    dict of Output to list of Dataset
        Only the requested outputs are keys. ``SEG``: one Segmentation, or an empty list for a negative
        study; ``SR``: one Measurement Report, and the summary image (``write_summary``, the default); ``PMAP``: one Parametric Map; ``SC``: the overlay images
        (possibly none).

    Raises
    ------
    TypeError
        ``outputs`` holds something that is not an :class:`Output`.
    ValueError
        The result does not fit the study's T2W instances.
    """
    wanted = set(outputs)
    strange = [item for item in wanted if not isinstance(item, Output)]
    if strange:
        raise TypeError(
            f"outputs must be Output members, got {strange!r}; convert names with "
            "lesion_engine.results.outputs.parse_outputs"
        )
    base = settings if settings is not None else ResultSettings()
    chosen = dataclasses.replace(
        base,
        write_seg=Output.SEG in wanted,
        write_pmap=Output.PMAP in wanted,
        write_sc=Output.SC in wanted,
        write_kos=Output.KOS in wanted,
    )
    objects = write_results(
        result,
        t2w_datasets(prepared),
        chosen,
        input_series_uids=input_series_uids(prepared, result),
        analysis_time=analysis_time,
    )
    written: dict[Output, list[Dataset]] = {
        Output.SEG: [objects.seg] if objects.seg is not None else [],
        # The summary image is the SR's companion (as the failure notice is the failure SR's).
        Output.SR: [objects.sr, *([objects.summary] if objects.summary is not None else [])],
        Output.PMAP: [objects.pmap] if objects.pmap is not None else [],
        Output.SC: list(objects.sc),
        Output.KOS: [objects.kos] if objects.kos is not None else [],
    }
    return {output: written[output] for output in Output if output in wanted}
