"""The one place where the node calls the lesion engine: DICOM bytes in, DICOM result bytes out.

Workers call a *processor*: by default :class:`EngineProcessor` (the engine and the DICOM result writers,
imported lazily so that the plugin inside Orthanc never imports torch); a site or a test may name another
one (``module:factory``). A processor turns a job's input instances into result objects:

* the study was analysed: SEG (when lesions were found), SR, and the optional Parametric Map and
  Secondary Capture series the rule asks for;
* the study cannot be analysed (no T2W, wrong modality, no model, ...): a failure SR (and Secondary Capture
  image) saying why, and ``failed=True`` with the reason, a permanent failure of the job.

Any other exception is left to the worker, which retries the job (transient).
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pydicom
from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from lesion_engine.engine import Engine
    from lesion_engine.series_rules import SeriesRules

logger = logging.getLogger(__name__)

__all__ = [
    "EngineProcessor",
    "ProcessingOutcome",
    "ProcessingRequest",
    "Processor",
    "ProcessorSettings",
    "default_artifact",
    "encode",
    "headers_of",
    "load_processor",
    "model_identity",
    "process_study",
]

_SOP_PREFIXES = {
    "seg": ("1.2.840.10008.5.1.4.1.1.66.4",),
    "sr": ("1.2.840.10008.5.1.4.1.1.88.",),
    "pmap": ("1.2.840.10008.5.1.4.1.1.30",),
    "sc": ("1.2.840.10008.5.1.4.1.1.7",),
}


@dataclass(frozen=True)
class ProcessingRequest:
    """What a processor needs to know of the job.

    Attributes
    ----------
    job_id : int
        The queue's job ID (for logs).
    study_id : str
        Orthanc ID of the study.
    rule : str
        The routing rule.
    outputs : tuple of str
        Result objects wanted: ``seg``, ``sr``, ``pmap``, ``sc``.
    series_rules : dict or None
        The rule's series-selection overrides (None: the engine's defaults).
    series_rules_source : str or None
        Where the overrides came from (for messages).
    model : str
        The model identity the job was queued for.
    """

    job_id: int
    study_id: str
    rule: str
    outputs: tuple[str, ...] = ("seg", "sr")
    series_rules: dict[str, Any] | None = None
    series_rules_source: str | None = None
    model: str = ""

    @classmethod
    def from_payload(cls, job_id: int, payload: dict[str, Any]) -> ProcessingRequest:
        """Build from a job's payload."""
        return cls(
            job_id=job_id,
            study_id=str(payload.get("study", "")),
            rule=str(payload.get("rule", "")),
            outputs=tuple(payload.get("outputs") or ("seg", "sr")),
            series_rules=payload.get("series_rules"),
            series_rules_source=payload.get("series_rules_source"),
            model=str(payload.get("model", "")),
        )


@dataclass
class ProcessingOutcome:
    """What a processor made of a study.

    Attributes
    ----------
    objects : list of bytes
        DICOM Part 10 files to store into the study (and forward).
    failed : bool
        True when the study could not be analysed; ``objects`` then holds the failure report.
    reason : str or None
        Why it failed.
    model : dict
        ``name``, ``version``, ``sha256`` of the model used (empty when none was).
    details : dict
        JSON-ready summary for the job record (lesion count, patient score, timings, roles).
    """

    objects: list[bytes]
    failed: bool = False
    reason: str | None = None
    model: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Processor(Protocol):
    """Turns a job's input instances into result objects (see the module docstring)."""

    def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
        """Process one study."""
        ...

    def failure(self, instances: Sequence[bytes], reason: str) -> list[bytes]:
        """Failure report objects for a study that could not be processed (may be empty)."""
        ...


@dataclass(frozen=True)
class ProcessorSettings:
    """How a worker builds its processor.

    Attributes
    ----------
    model : str or None
        Model artifact folder; None: the engine's packaged default.
    device : str or None
        Device for the engine (``cpu``, ``cuda``, ...); None: automatic.
    threads : int or None
        CPU threads for the engine; None: all.
    result_settings : dict
        Fields of :class:`lesion_engine.results.ResultSettings`.
    """

    model: str | None = None
    device: str | None = None
    threads: int | None = None
    result_settings: dict[str, Any] = field(default_factory=dict)


def encode(dataset: Dataset) -> bytes:
    """A dataset as DICOM Part 10 bytes."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def headers_of(instances: Sequence[bytes]) -> list[Dataset]:
    """Headers (no pixel data) of the instances that parse as DICOM."""
    out = []
    for data in instances:
        try:
            out.append(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True))
        except Exception as exc:  # a corrupt instance: skipped, the engine reports it
            logger.debug("unreadable instance skipped: %s", exc)
    return [ds for ds in out if "StudyInstanceUID" in ds]


def _wanted(dataset: Dataset, outputs: Sequence[str]) -> bool:
    sop = str(dataset.get("SOPClassUID", ""))
    for output, prefixes in _SOP_PREFIXES.items():
        if sop.startswith(prefixes):
            return output in outputs
    return True


def series_rules_of(request: ProcessingRequest) -> SeriesRules | None:
    """The job's series-selection rules (its rule's overrides), or None for the engine's defaults."""
    if not request.series_rules:
        return None
    from lesion_engine.series_rules import series_rules_from_document
    from lesion_engine.yamlconfig import YamlDocument

    source = request.series_rules_source or f"series_rules of rule {request.rule!r}"
    return series_rules_from_document(YamlDocument(source, request.series_rules, {}))


class EngineProcessor:
    """The real processor: lesion engine + DICOM result writers (the model is loaded on first use).

    Parameters
    ----------
    settings : ProcessorSettings
        Model, device and result settings.
    """

    def __init__(self, settings: ProcessorSettings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        """The loaded engine (loads the model on first call)."""
        with self._lock:
            if self._engine is None:
                from lesion_engine.engine import Engine

                self._engine = Engine.from_artifact(
                    self.settings.model, self.settings.device, threads=self.settings.threads
                )
                logger.info("model loaded: %s", self._engine.model_info)
            return self._engine

    def _result_settings(self, outputs: Sequence[str]) -> Any:
        from lesion_engine.results import ResultSettings

        values = dict(self.settings.result_settings)
        values.update(write_seg="seg" in outputs, write_pmap="pmap" in outputs, write_sc="sc" in outputs)
        return ResultSettings.from_mapping(values)

    def failure(self, instances: Sequence[bytes], reason: str) -> list[bytes]:
        """Failure report objects (see :func:`lesion_engine.results.write_failure`); empty when none can be
        written (no readable instance, or the writer fails: logged)."""
        from lesion_engine.results import ResultSettings, write_failure

        datasets = headers_of(instances)
        if not datasets:
            logger.warning("no readable instance: no failure report can be written")
            return []
        studies = {str(ds.StudyInstanceUID) for ds in datasets}
        if len(studies) > 1:
            datasets = [ds for ds in datasets if str(ds.StudyInstanceUID) == sorted(studies)[0]]
        settings = ResultSettings.from_mapping(self.settings.result_settings)
        try:
            return [encode(ds) for ds in write_failure(datasets, reason, settings)]
        except Exception:  # the failure stays recorded on the job even when no report can be written
            logger.exception("the failure report could not be written")
            return []

    def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
        """Analyse one study (see the module docstring)."""
        from lesion_engine.errors import ConfigError, ModelArtifactError, StudyError
        from lesion_engine.preprocess import prepare_study
        from lesion_engine.results import write_results

        try:
            prepared = prepare_study(list(instances), series_rules_of(request))
        except StudyError as exc:
            reason = str(exc)
            return ProcessingOutcome(self.failure(instances, reason), failed=True, reason=reason)
        try:
            engine = self.engine()
        except (ModelArtifactError, ConfigError) as exc:
            reason = f"the AI model is not available on this node: {exc}"
            return ProcessingOutcome(self.failure(instances, reason), failed=True, reason=reason)
        result = engine.run(prepared)
        t2w_uid = prepared.roles["t2w"].series_instance_uid
        t2w = [instance.dataset for instance in prepared.loaded.series_by_uid(t2w_uid).instances]
        objects = write_results(
            result,
            t2w,
            self._result_settings(request.outputs),
            input_series_uids=sorted(set(result.series.values())),
        )
        datasets = [ds for ds in objects.all() if _wanted(ds, request.outputs)]
        return ProcessingOutcome(
            [encode(ds) for ds in datasets],
            model=dict(result.model),
            details={
                "lesions": len(result.lesions),
                "patient_score": round(float(result.patient_score), 4),
                "series": dict(result.series),
                "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
            },
        )


def load_processor(spec: str | None, settings: ProcessorSettings) -> Processor:
    """The processor named by ``spec`` (``module:factory``), or the engine when None.

    The factory is called with the :class:`ProcessorSettings` and returns a :class:`Processor`.
    """
    if spec is None:
        return EngineProcessor(settings)
    module_name, _, attribute = spec.partition(":")
    factory: Callable[[ProcessorSettings], Processor] = getattr(
        importlib.import_module(module_name), attribute
    )
    return factory(settings)


def process_study(
    instances: Sequence[bytes], request: ProcessingRequest, processor: Processor | None = None
) -> ProcessingOutcome:
    """Process one study with ``processor`` (the engine with default settings when None)."""
    return (processor if processor is not None else EngineProcessor(ProcessorSettings()))(instances, request)


def default_artifact() -> Path:
    """Folder of the engine's packaged default model (found without importing the engine)."""
    return Path(str(files("lesion_engine").joinpath("data/models/default")))


def model_identity(model: str | None, processor: str | None = None, override: str | None = None) -> str:
    """Identity of the model a job will use, without loading it (no torch): part of each job's key.

    Parameters
    ----------
    model : str or None
        Model artifact folder (None: the packaged default).
    processor : str or None
        A non-default processor: its name is the identity.
    override : str or None
        An explicit identity (configuration ``ModelIdentity``).

    Returns
    -------
    str
        ``name:version:sha256-prefix`` from the artifact's card, or ``none`` when no model is installed.
    """
    if override:
        return override
    if processor:
        return f"processor:{processor}"
    folder = Path(model) if model else default_artifact()
    card = folder / "model.json" if folder.is_dir() else folder
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "none"
    return f"{data.get('name', '?')}:{data.get('version', '?')}:{str(data.get('weights_sha256', ''))[:16]}"
