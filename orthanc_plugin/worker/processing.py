"""The one place where the node calls the lesion engine: DICOM bytes in, DICOM result bytes out.

Workers call a *processor*: by default :class:`EngineProcessor` (the engine and the DICOM result writers,
imported lazily so that the plugin inside Orthanc never imports torch); a site or a test may name another
one (``module:factory``). A processor turns a job's input instances into result objects:

* the study was analysed: the result objects of each output the rule asks for
  (:class:`~lesion_engine.results.outputs.Output`: SEG when lesions were found, SR, Parametric Map, Secondary
  Capture), written by :func:`lesion_engine.results.dicom_outputs.write_outputs`, the call the CLI makes too;
* the study cannot be analysed (no T2W, wrong modality, no model, ...): a failure SR (and Secondary Capture
  image) saying why, and ``failed=True`` with the reason, a permanent failure of the job.

Any other exception is left to the worker, which retries the job (transient).
"""

from __future__ import annotations

import importlib
import io
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pydicom
from pydicom.dataset import Dataset

from lesion_engine.anatomy.gland_settings import GlandSettings
from lesion_engine.results.outputs import DEFAULT_OUTPUTS, Output
from lesion_engine.results.settings import ResultSettings
from orthanc_plugin.jobqueue import JobPayload
from orthanc_plugin.node.settings import GLAND_GATES, WorkerSettings, one_of, setting_default

if TYPE_CHECKING:
    from lesion_engine.engine import AnyEngine
    from lesion_engine.intake.series_rules import SeriesRules
    from orthanc_plugin.models.shadow import StudyEvidence

logger = logging.getLogger(__name__)

__all__ = [
    "EngineProcessor",
    "ProcessingOutcome",
    "ProcessingRequest",
    "Processor",
    "ProcessorSettings",
    "encode",
    "headers_of",
    "load_processor",
    "process_study",
    "warm_up",
]


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
    outputs : tuple of Output
        Result objects wanted.
    series_rules : SeriesRules or None
        The rule's series-selection rules, as read from the job (None: the engine's defaults).
    model : str
        The model identity the job was queued for.
    """

    job_id: int
    study_id: str
    rule: str
    outputs: tuple[Output, ...] = DEFAULT_OUTPUTS
    series_rules: SeriesRules | None = None
    model: str = ""

    def __post_init__(self) -> None:
        if not all(isinstance(output, Output) for output in self.outputs):
            raise TypeError(
                f"ProcessingRequest.outputs must be Output members, got {self.outputs!r}; convert names "
                "with lesion_engine.results.outputs.parse_outputs"
            )

    @classmethod
    def from_payload(cls, job_id: int, payload: JobPayload) -> ProcessingRequest:
        """Build from a job's payload."""
        return cls(
            job_id=job_id,
            study_id=payload.study,
            rule=payload.rule,
            outputs=payload.outputs,
            series_rules=payload.series_rules,
            model=payload.model,
        )


@dataclass(frozen=True)
class ProcessingOutcome:
    """What a processor made of a study: its results by output, or the report of why it could not be
    analysed.

    Build with :meth:`analysed` or :meth:`could_not_analyse`.

    Attributes
    ----------
    objects : mapping of Output to tuple of bytes
        The results (DICOM Part 10 files) of each output asked for (a negative study has no SEG object).
    failed : bool
        True when the study could not be analysed.
    reason : str or None
        Why it could not be analysed.
    report : tuple of bytes
        The failure report (DICOM Part 10 files) saying why; empty when none could be written.
    model : dict
        ``name``, ``version``, ``sha256`` of the model used (empty when none was).
    details : dict
        JSON-ready summary for the job record (lesion count, patient score, timings, roles).
    evidence : StudyEvidence or None
        What the model found, for comparing models (:mod:`orthanc_plugin.models.shadow`); None when the processor
        gives none.
    """

    objects: Mapping[Output, tuple[bytes, ...]] = field(default_factory=dict)
    failed: bool = False
    reason: str | None = None
    report: tuple[bytes, ...] = ()
    model: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    evidence: StudyEvidence | None = None

    def __post_init__(self) -> None:
        if self.failed and (not self.reason or self.objects):
            raise ValueError("a failed ProcessingOutcome needs a reason and has no result objects")
        if not self.failed and (self.reason or self.report):
            raise ValueError("a ProcessingOutcome with a reason or a failure report must be failed")
        if not all(isinstance(output, Output) for output in self.objects):
            raise TypeError(f"ProcessingOutcome.objects must be keyed by Output, got {list(self.objects)!r}")

    @classmethod
    def analysed(
        cls,
        objects: Mapping[Output, Sequence[bytes]],
        model: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
        evidence: StudyEvidence | None = None,
    ) -> ProcessingOutcome:
        """The study was analysed: its result objects per output."""
        return cls(
            objects={output: tuple(items) for output, items in objects.items()},
            model=dict(model or {}),
            details=dict(details or {}),
            evidence=evidence,
        )

    @classmethod
    def could_not_analyse(cls, reason: str, report: Sequence[bytes]) -> ProcessingOutcome:
        """The study cannot be analysed (a permanent failure of the job): why, and the report saying so."""
        return cls(failed=True, reason=reason, report=tuple(report))

    def to_store(self) -> list[bytes]:
        """Every object to store into the study (and forward): the results in the order of
        :class:`~lesion_engine.results.outputs.Output`, or the failure report."""
        return [data for output in Output for data in self.objects.get(output, ())] + list(self.report)


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
    """How a worker builds its processor: the node's settings that the engine needs (:meth:`from_settings`).

    Every default is the node setting's (:class:`~orthanc_plugin.node.settings.WorkerSettings`, whose gate
    fields take theirs from the engine's :class:`~lesion_engine.anatomy.gland_settings.GlandSettings`).

    Attributes
    ----------
    model : str or None
        Model artifact folder; None: the engine's packaged default.
    device : str or None
        Device for the engine (``cpu``, ``cuda``, ...); None: automatic.
    threads : int or None
        CPU threads for the engine; None: all.
    result_settings : ResultSettings
        The result writers' settings.
    gland_gate : str
        The anatomical gate: ``auto`` (the engine's default for the model), ``on`` or ``off``.
    gland_margin_mm : float
        The gate's margin around the gland, mm.
    gland_required : bool
        Whether a gland model that cannot load or run, or finds an implausible gland, fails the study (else
        it is analysed ungated).
    gland_min_ml, gland_max_ml : float
        The plausible prostate volumes (the engine's :class:`~lesion_engine.anatomy.gland_settings.GlandSettings`
        checks them).
    gland_runtime : str
        What runs the gland model: ``auto``, ``torch`` or ``onnxruntime`` (checked by
        :class:`~lesion_engine.anatomy.gland_settings.GlandSettings`).
    gland_precision : str
        The gland model's arithmetic in torch: ``auto``, ``float32`` or ``bfloat16`` (checked by
        :class:`~lesion_engine.anatomy.gland_settings.GlandSettings`).
    """

    model: str | None = setting_default("model")
    device: str | None = setting_default("device")
    threads: int | None = setting_default("threads")
    result_settings: ResultSettings = field(default_factory=ResultSettings)
    gland_gate: str = setting_default("gland_gate")
    gland_margin_mm: float = setting_default("gland_margin_mm")
    gland_required: bool = setting_default("gland_required")
    gland_min_ml: float = setting_default("gland_min_ml")
    gland_max_ml: float = setting_default("gland_max_ml")
    gland_runtime: str = setting_default("gland_runtime")
    gland_precision: str = setting_default("gland_precision")

    def __post_init__(self) -> None:
        if not isinstance(self.result_settings, ResultSettings):
            raise TypeError(
                "ProcessorSettings.result_settings must be a ResultSettings (read a mapping with "
                f"ResultSettings.from_mapping), got {type(self.result_settings).__name__}"
            )
        if self.gland_gate not in GLAND_GATES:
            raise ValueError(
                f"ProcessorSettings.gland_gate must be {one_of(GLAND_GATES)}, got {self.gland_gate!r}"
            )
        problem = GlandSettings.margin_problem(self.gland_margin_mm)
        if problem is not None:
            raise ValueError(f"ProcessorSettings.gland_margin_mm {problem}")
        if not isinstance(self.gland_required, bool):
            raise ValueError(f"ProcessorSettings.gland_required must be a bool, got {self.gland_required!r}")

    def gland_settings(self) -> GlandSettings:
        """The engine's :class:`~lesion_engine.anatomy.gland_settings.GlandSettings` of these settings (``auto``: on
        for the packaged default model, off for another artifact).
        """
        from lesion_engine.engine import gate_on_by_default

        enabled = GLAND_GATES[self.gland_gate]
        return GlandSettings(
            enabled=gate_on_by_default(self.model) if enabled is None else enabled,
            margin_mm=self.gland_margin_mm,
            required=self.gland_required,
            min_volume_ml=self.gland_min_ml,
            max_volume_ml=self.gland_max_ml,
            runtime=self.gland_runtime,
            precision=self.gland_precision,
        )

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> ProcessorSettings:
        """The processor settings of the node's settings (``Model``, ``Device``, ``Threads``,
        ``ResultSettings``, ``GlandGate``, ``GlandMarginMm``, ``GlandRequired``, ``GlandMinMl``,
        ``GlandMaxMl``, ``GlandRuntime``, ``GlandPrecision``)."""
        return cls(
            model=settings.model,
            device=settings.device,
            threads=settings.threads,
            result_settings=settings.result_settings,
            gland_gate=settings.gland_gate,
            gland_margin_mm=settings.gland_margin_mm,
            gland_required=settings.gland_required,
            gland_min_ml=settings.gland_min_ml,
            gland_max_ml=settings.gland_max_ml,
            gland_runtime=settings.gland_runtime,
            gland_precision=settings.gland_precision,
        )


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


class EngineProcessor:
    """The real processor: lesion engine + DICOM result writers (the model is loaded on first use).

    Parameters
    ----------
    settings : ProcessorSettings
        Model, device and result settings.
    """

    def __init__(self, settings: ProcessorSettings) -> None:
        self.settings = settings
        self._engine: AnyEngine | None = None
        self._warm = False
        self._lock = threading.RLock()

    def engine(self) -> AnyEngine:
        """The loaded engine (loads the model on first call)."""
        with self._lock:
            if self._engine is None:
                from lesion_engine.engine import load_engine

                self._engine = load_engine(
                    self.settings.model,
                    self.settings.device,
                    threads=self.settings.threads,
                    gland=self.settings.gland_settings(),
                )
                logger.info("model loaded: %s", self._engine.model_info)
            return self._engine

    def warm_up(self) -> float:
        """Load the model and run its networks once on zeros, so that the first study does not wait for
        either (a worker calls this when it starts); a job that comes meanwhile waits for it.

        Returns
        -------
        float
            Seconds taken.

        Raises
        ------
        ModelArtifactError, ConfigError
            The model cannot be loaded (the first job says so in its failure report).
        """
        started = time.monotonic()
        with self._lock:  # reentrant: engine() takes it too (and a subclass's engine() may build another)
            if not self._warm:
                self.engine().warm_up()
                self._warm = True
        return time.monotonic() - started

    def failure(self, instances: Sequence[bytes], reason: str) -> list[bytes]:
        """Failure report objects (see :func:`lesion_engine.results.writer.write_failure`); empty when none can be
        written (no readable instance, or the writer fails: logged)."""
        from lesion_engine.results.writer import write_failure

        datasets = headers_of(instances)
        if not datasets:
            logger.warning("no readable instance: no failure report can be written")
            return []
        studies = {str(ds.StudyInstanceUID) for ds in datasets}
        if len(studies) > 1:
            datasets = [ds for ds in datasets if str(ds.StudyInstanceUID) == sorted(studies)[0]]
        try:
            return [encode(ds) for ds in write_failure(datasets, reason, self.settings.result_settings)]
        except Exception:  # the failure stays recorded on the job even when no report can be written
            logger.exception("the failure report could not be written")
            return []

    def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
        """Analyse one study (see the module docstring)."""
        from lesion_engine.anatomy.gland_card import GlandModelError
        from lesion_engine.errors import ConfigError, ModelArtifactError, StudyError
        from lesion_engine.intake.preprocess import prepare_study
        from lesion_engine.results.dicom_outputs import write_outputs
        from orthanc_plugin.models.shadow import StudyEvidence

        try:
            prepared = prepare_study(list(instances), request.series_rules)
        except StudyError as exc:
            reason = str(exc)
            return ProcessingOutcome.could_not_analyse(reason, self.failure(instances, reason))
        try:
            engine = self.engine()
        except (ModelArtifactError, ConfigError) as exc:
            reason = f"the AI model is not available on this node: {exc}"
            return ProcessingOutcome.could_not_analyse(reason, self.failure(instances, reason))
        try:
            result = engine.run(prepared)
        except GlandModelError as exc:  # GlandRequired: the gland model failed on this study
            reason = f"the anatomical gate's gland model failed on this study: {exc}"
            return ProcessingOutcome.could_not_analyse(reason, self.failure(instances, reason))
        written = write_outputs(prepared, result, request.outputs, self.settings.result_settings)
        return ProcessingOutcome.analysed(
            {output: [encode(ds) for ds in datasets] for output, datasets in written.items()},
            model=result.model,
            details={
                "lesions": len(result.lesions),
                "patient_score": round(float(result.patient_score), 4),
                "series": dict(result.series),
                "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
                "warnings": list(result.warnings),
            },
            evidence=StudyEvidence.from_result(result),
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


def warm_up(processor: Processor) -> bool:
    """Load the processor's model ahead of the first job, where it can (its ``warm_up``); a failure is
    logged, and the first job reports it. Returns whether it warmed up."""
    warm = getattr(processor, "warm_up", None)
    if warm is None:
        return False
    try:
        seconds = warm()
    except Exception as exc:  # the first job loads it again and says what is wrong in its failure report
        logger.warning("the model could not be loaded ahead of the first job: %s", exc)
        return False
    logger.info("model loaded and warmed up ahead of the first job in %.1f s", seconds)
    return True
