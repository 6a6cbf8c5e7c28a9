"""A study as Orthanc stores it: the loop guard, rule evaluation and the jobs it asks for.

The loop guard keeps the node from processing its own results (which re-trigger Orthanc's stable-study
event when they are stored into the study): a series is never an input when its SOP class is a result or
non-image class (SEG, SR, Parametric Map, Secondary Capture, presentation states, ...), when its
Manufacturer is the node's own, or when the study's record (metadata) lists it as a result of the node.

A job is identified by the series the engine may read (:func:`payload_for`), judged from their headers
(:mod:`orthanc_plugin.intake.completeness`). When they change (more instances, another candidate series), the new
job replaces the earlier ones of its study and rule (:class:`ResultReplacement`): their results are deleted
from the study before the new job may run, so that a study never holds two live result sets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from orthanc_plugin.intake.changes import HeaderCache
from orthanc_plugin.intake.completeness import InputRoles, InputSeries, first_header_verdict, rank_inputs
from orthanc_plugin.jobqueue import (
    Job,
    JobDocumentError,
    JobPayload,
    JobProgress,
    JobQueue,
    JobState,
    NewJob,
    job_fingerprint,
)
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApi, RestApiError, quote_id
from orthanc_plugin.rules import RoutingRule, RoutingRules, RuleMatch

logger = logging.getLogger(__name__)

__all__ = [
    "NON_INPUT_SOP_CLASS_PREFIXES",
    "OrthancSeries",
    "OrthancStudy",
    "ResultReplacement",
    "StudyPlan",
    "StudyRecord",
    "engine_inputs",
    "job_for",
    "payload_for",
    "plan_study",
]

#: SOP classes that are never inputs (results of this or another AI, reports, screenshots, ...).
#: A different concept from :data:`lesion_engine.results.outputs.SOP_CLASS_UIDS` (the exact classes this node's
#: engine writes): these prefixes cover whole families, whoever wrote the object (surface segmentations,
#: every kind of SR, key object selections, presentation states, encapsulated PDFs of other AIs and
#: reporting systems), so that nothing but an image series reaches the rules.
NON_INPUT_SOP_CLASS_PREFIXES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.66": "segmentation or raw data",
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.30": "parametric map",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return "\\".join(_text(v) or "" for v in value if not isinstance(v, dict))
    if isinstance(value, dict):
        return None
    return str(value)


@dataclass
class StudyRecord:
    """What the node recorded on a study (study metadata): jobs finished and the result series it stored.

    Attributes
    ----------
    processed : dict
        Job key -> ``{rule, model, status, job, time, reason}``.
    result_series : list of str
        Orthanc IDs of the series the node stored into the study.
    """

    processed: dict[str, dict[str, Any]] = field(default_factory=dict)
    result_series: list[str] = field(default_factory=list)

    @classmethod
    def from_text(cls, text: str | bytes | None) -> StudyRecord:
        """Parse the metadata value (an empty record when absent or unreadable)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError:
            logger.warning("ignoring an unreadable study record")
            return cls()
        if not isinstance(data, dict):
            return cls()
        processed = data.get("processed")
        result_series = data.get("result_series")
        return cls(
            processed=dict(processed) if isinstance(processed, dict) else {},
            result_series=[str(s) for s in result_series] if isinstance(result_series, list) else [],
        )

    def to_text(self) -> str:
        """Serialized form stored as the metadata value."""
        return json.dumps(
            {"version": 1, "processed": self.processed, "result_series": sorted(set(self.result_series))},
            sort_keys=True,
        )


class OrthancSeries:
    """A series read from Orthanc (:class:`orthanc_plugin.rules.SeriesView`).

    Main DICOM tags come with ``/series/{id}``; other attributes are read lazily from the first
    instance's tags, and the origin (``RemoteAET``, ``RemoteIP``, ``CalledAET``) and SOP class from its
    metadata.
    """

    def __init__(self, api: RestApi, data: dict[str, Any]) -> None:
        self.api = api
        self.series_id: str = data["ID"]
        self.main: dict[str, Any] = data.get("MainDicomTags", {})
        self.instances: list[str] = list(data.get("Instances", []))
        #: Orthanc calls the series stable (no new instance for StableAge seconds).
        self.is_stable = bool(data.get("IsStable", False))
        self._metadata: dict[str, str] | None = None
        self._tags: dict[str, Any] | None = None

    def metadata(self) -> dict[str, str]:
        """Metadata of the first instance (empty when the series has none)."""
        if self._metadata is None:
            self._metadata = {}
            if self.instances:
                try:
                    got = self.api.get_json(f"/instances/{quote_id(self.instances[0])}/metadata?expand")
                    self._metadata = {str(k): str(v) for k, v in got.items()}
                except NotFoundError:
                    pass
        return self._metadata

    def tags(self) -> dict[str, Any]:
        """Simplified tags of the first instance (empty when the series has none)."""
        if self._tags is None:
            self._tags = {}
            if self.instances:
                with contextlib.suppress(NotFoundError):
                    self._tags = dict(
                        self.api.get_json(f"/instances/{quote_id(self.instances[0])}/simplified-tags")
                    )
        return self._tags

    @property
    def sop_class_uid(self) -> str:
        """SOP Class UID of the first instance."""
        return self.metadata().get("SopClassUid") or _text(self.tags().get("SOPClassUID")) or ""

    @property
    def series_instance_uid(self) -> str:
        """SeriesInstanceUID."""
        return str(self.main.get("SeriesInstanceUID", ""))

    def attribute(self, keyword: str) -> str | None:
        """Text of a series-level attribute (see :mod:`orthanc_plugin.rules`)."""
        if keyword == "NumberOfSeriesRelatedInstances":
            return str(len(self.instances))
        if keyword in ("RemoteAET", "RemoteIP", "CalledAET"):
            return self.metadata().get(keyword)
        if keyword == "SOPClassUID":
            return self.sop_class_uid
        if keyword in self.main:
            return _text(self.main[keyword])
        return _text(self.tags().get(keyword))

    def describe(self) -> dict[str, Any]:
        """JSON-ready identification (no patient data)."""
        return {
            "id": self.series_id,
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.main.get("SeriesNumber"),
            "description": self.main.get("SeriesDescription", ""),
            "modality": self.main.get("Modality", ""),
            "instances": len(self.instances),
        }


class OrthancStudy:
    """A study read from Orthanc (:class:`orthanc_plugin.rules.StudyView`), with the loop guard applied.

    Parameters
    ----------
    api : RestApi
        Orthanc's REST API.
    study_id : str
        Orthanc ID of the study.
    metadata_name : str
        Name of the study metadata holding the node's record.
    manufacturer : str
        The node's own Manufacturer (written into every result object).

    Raises
    ------
    NotFoundError
        The study does not exist (any more).
    """

    def __init__(self, api: RestApi, study_id: str, metadata_name: str, manufacturer: str) -> None:
        self.api = api
        self.study_id = study_id
        data = api.get_json(f"/studies/{quote_id(study_id)}")
        self.main: dict[str, Any] = dict(data.get("MainDicomTags", {}))
        self.patient: dict[str, Any] = dict(data.get("PatientMainDicomTags", {}))
        self.is_stable = bool(data.get("IsStable", True))
        self.record = StudyRecord()
        try:
            raw = api.get_bytes(f"/studies/{quote_id(study_id)}/metadata/{quote_id(metadata_name)}")
            self.record = StudyRecord.from_text(raw)
        except NotFoundError:
            pass
        self.all_series: list[OrthancSeries] = []
        self.excluded: dict[str, str] = {}
        for series_id in data.get("Series", []):
            try:
                series = OrthancSeries(api, api.get_json(f"/series/{quote_id(series_id)}"))
            except NotFoundError:
                continue
            self.all_series.append(series)
            reason = self._exclusion(series, manufacturer)
            if reason is not None:
                self.excluded[series.series_id] = reason
        self._inputs = [s for s in self.all_series if s.series_id not in self.excluded]

    def _exclusion(self, series: OrthancSeries, manufacturer: str) -> str | None:
        if series.series_id in self.record.result_series:
            return "a result of this node (study record)"
        if manufacturer and str(series.main.get("Manufacturer", "")).strip() == manufacturer:
            return f"a result of this node (Manufacturer {manufacturer!r})"
        if not series.instances:
            return "no instances"
        sop = series.sop_class_uid
        for prefix, what in NON_INPUT_SOP_CLASS_PREFIXES.items():
            if sop.startswith(prefix):
                return f"not an image input ({what}, SOP class {sop})"
        return None

    @property
    def study_instance_uid(self) -> str:
        """StudyInstanceUID."""
        return str(self.main.get("StudyInstanceUID", ""))

    @property
    def series(self) -> Sequence[OrthancSeries]:
        """Candidate input series (loop guard applied)."""
        return self._inputs

    def study_attribute(self, keyword: str) -> str | None:
        """Text of a study-level attribute (see :mod:`orthanc_plugin.rules`)."""
        if keyword == "ModalitiesInStudy":
            return "\\".join(sorted({str(s.main.get("Modality", "")) for s in self.all_series} - {""}))
        if keyword in self.main:
            return _text(self.main[keyword])
        if keyword in self.patient:
            return _text(self.patient[keyword])
        for series in self.all_series:
            if series.instances:
                return _text(series.tags().get(keyword))
        return None


def engine_inputs(series: Sequence[OrthancSeries], headers: HeaderCache, rule: RoutingRule) -> InputRoles:
    """What the headers say of a rule's input series: the engine's role candidates and their completeness.

    Every instance's header is read (through ``headers``) except for series that the header of their first
    instance rules out (DCE, localizers, ...; :func:`~orthanc_plugin.intake.completeness.first_header_verdict`).
    """
    items = []
    for item in series:
        first = headers.header(item.instances[0]) if item.instances else None
        if first is None:
            read: list[tuple[str, Any]] = []
        elif first_header_verdict(first, rule.series_rules) is not None:
            read = [(item.instances[0], first)]
        else:
            read = headers.headers(item.instances)
        items.append(
            InputSeries(item.series_id, item.series_instance_uid, len(item.instances), item.is_stable, read)
        )
    return rank_inputs(items, rule.series_rules)


def payload_for(
    study: OrthancStudy, match: RuleMatch, model: str, inputs: InputRoles | None = None
) -> JobPayload:
    """The payload of the job asked for by one rule match (its key: study, rule, input series, model).

    The fingerprint counts the series the engine may read (``inputs``,
    :attr:`~orthanc_plugin.intake.completeness.InputRoles.engine_inputs`), or every input series of the match when
    ``inputs`` is None (their headers could not be ranked).
    """
    series = sorted(match.series, key=lambda s: s.series_id)
    if inputs is not None:
        counted = inputs.engine_inputs
    else:
        counted = [(s.series_id, len(s.instances) if isinstance(s, OrthancSeries) else 0) for s in series]
    rule = match.rule
    return JobPayload(
        study=study.study_id,
        study_uid=study.study_instance_uid,
        rule=rule.name,
        series=tuple(s.series_id for s in series),
        series_uids=tuple(s.series_instance_uid for s in series if isinstance(s, OrthancSeries)),
        outputs=rule.outputs,
        destinations=rule.destinations,
        series_rules=rule.series_rules,
        model=model,
        fingerprint=job_fingerprint(study.study_id, rule.name, counted, model),
    )


def job_for(study: OrthancStudy, match: RuleMatch, model: str) -> NewJob:
    """The job asked for by one rule match (see :func:`payload_for`), with the rule's priority."""
    return payload_for(study, match, model).new_job(match.rule.priority)


@dataclass
class StudyPlan:
    """What the node makes of a study: the guard's exclusions, the rules that match, the jobs' payloads
    (one per match), and what the headers say of each match's inputs (None where they were not read or
    could not be ranked)."""

    study: OrthancStudy
    matches: list[RuleMatch]
    payloads: list[JobPayload]
    inputs: list[InputRoles | None] = field(default_factory=list)
    rules: RoutingRules | None = None

    def evaluation(self) -> list[dict[str, str]]:
        """Why each rule matched or not (:meth:`~orthanc_plugin.rules.RoutingRules.explain`), or why no
        rule was asked (the loop guard left no input series)."""
        if not self.study.series:
            count = len(self.study.all_series)
            return [
                {
                    "rule": "(all)",
                    "action": "none",
                    "outcome": f"no series to evaluate: the study's {count} series are all excluded (the node's "
                    "own results, or series from another node)"
                    if count
                    else "no series to evaluate: the study has no series",
                }
            ]
        return self.rules.explain(self.study) if self.rules is not None else []

    @property
    def jobs(self) -> list[NewJob]:
        """The queue entries of the payloads, with their rules' priorities."""
        return [p.new_job(m.rule.priority) for m, p in zip(self.matches, self.payloads, strict=True)]

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (``POST /lesion-ai/rules/test``)."""
        return {
            "study": self.study.study_id,
            "study_instance_uid": self.study.study_instance_uid,
            "excluded_series": [
                {**s.describe(), "reason": self.study.excluded[s.series_id]}
                for s in self.study.all_series
                if s.series_id in self.study.excluded
            ],
            "matches": [
                {
                    "rule": m.rule.name,
                    "priority": m.rule.priority,
                    "outputs": [output.value for output in m.rule.outputs],
                    "destinations": m.rule.destinations.to_dict(),
                    "input_series": [s.describe() for s in m.series if isinstance(s, OrthancSeries)],
                    "job_key": payload.key,
                }
                for m, payload in zip(self.matches, self.payloads, strict=True)
            ],
            "already_processed": sorted(
                k for k in (p.key for p in self.payloads) if k in self.study.record.processed
            ),
            "evaluation": self.evaluation(),
        }


def plan_study(
    api: RestApi,
    study_id: str,
    rules: RoutingRules,
    model: str,
    metadata_name: str,
    manufacturer: str,
    headers: HeaderCache | None = None,
) -> StudyPlan:
    """Read a study, apply the loop guard and the rules, and build the jobs they ask for.

    With ``headers``, each match's input series are ranked by their headers (:func:`engine_inputs`): the
    jobs' keys then count the series the engine may read; a study whose headers cannot be ranked is keyed by
    all its input series (logged).

    Raises
    ------
    NotFoundError
        The study does not exist.
    """
    study = OrthancStudy(api, study_id, metadata_name, manufacturer)
    matches = rules.evaluate(study) if study.series else []
    inputs: list[InputRoles | None] = []
    for match in matches:
        ranked: InputRoles | None = None
        if headers is not None:
            series = [s for s in match.series if isinstance(s, OrthancSeries)]
            try:
                ranked = engine_inputs(series, headers, match.rule)
            except Exception as exc:  # never let one odd header stop the study: its key counts every series
                logger.warning(
                    "study %s: its headers cannot be ranked (%s); keyed by all its series", study_id, exc
                )
        inputs.append(ranked)
    payloads = [payload_for(study, m, model, ranked) for m, ranked in zip(matches, inputs, strict=True)]
    return StudyPlan(study, matches, payloads, inputs, rules)


# -- replacing earlier results -------------------------------------------------------------------------
class ResultStore(Protocol):
    """What :class:`ResultReplacement` uses of Orthanc's REST API (:class:`~orthanc_plugin.node.orthanc_api.InProcessApi`)."""

    def get_json(self, uri: str) -> Any:
        """GET, decoded as JSON."""
        ...

    def post_json(self, uri: str, body: Any) -> Any:
        """POST a JSON body; the answer decoded as JSON."""
        ...


@contextlib.contextmanager
def _no_lock(_study_id: str) -> Iterator[None]:
    yield


class ResultReplacement:
    """Queues jobs so that a study never holds two live result sets of one rule.

    A job whose key is new while its study and rule have other jobs (the inputs changed: more instances,
    another series, another model) is queued *held* (:meth:`JobQueue.enqueue_replacing`); the earlier jobs
    that had not started are superseded. :meth:`advance` then waits until none of the earlier jobs is
    running, deletes their stored results from the study (``POST /tools/bulk-delete``) and releases the
    new job, which stores its own. Result UIDs derive from the input series' UIDs, so new results often
    carry the earlier ones' UIDs: deleting first is what lets them be stored at all.

    Parameters
    ----------
    api : ResultStore
        Orthanc's REST API.
    queue : JobQueue
        The job queue.
    study_lock : callable, optional
        Given a study's Orthanc ID, a context manager that holds that study's lock across the servers that
        replace results (a PostgreSQL advisory lock in cluster mode:
        :meth:`orthanc_plugin.cluster.locks.StudyLocks.hold`); queueing a replacing job, superseding,
        deleting and releasing happen inside it, and a held job is read again inside it. None: this
        process's lock only (a single node).
    """

    def __init__(
        self,
        api: ResultStore,
        queue: JobQueue,
        study_lock: Callable[[str], AbstractContextManager[None]] | None = None,
    ) -> None:
        self.api = api
        self.queue = queue
        self._lock = threading.Lock()
        self._study_lock = study_lock if study_lock is not None else _no_lock

    def enqueue(self, job: NewJob, *, force: bool = False) -> tuple[int, bool]:
        """Queue a job (see :meth:`JobQueue.enqueue`), replacing its study's earlier jobs of its rule when
        it is new work; returns its ID and whether it was added or queued again."""
        with self._lock:
            if self.queue.find(job.key) is not None:
                return self.queue.enqueue(job, force=force)
            with self._study_lock(job.study_id):
                job_id, created, held = self.queue.enqueue_replacing(job)
                if held:
                    logger.info(
                        "study %s: job %d replaces the earlier jobs of rule %s",
                        job.study_id,
                        job_id,
                        job.rule,
                    )
                    held_job = self.queue.get(job_id)
                    if held_job is not None:
                        self._advance(held_job)
            return job_id, created

    def advance(self) -> int:
        """Release the held jobs whose earlier jobs are finished and whose earlier results are deleted;
        returns how many were released."""
        released = 0
        with self._lock:
            for job in self.queue.held():
                try:
                    with self._study_lock(job.study_id):
                        current = self.queue.get(job.id)  # another server may have released it meanwhile
                        if current is not None and current.held:
                            released += self._advance(current)
                except (
                    RestApiError,
                    JobDocumentError,
                    RuntimeError,
                ) as exc:  # RuntimeError: the lock's database
                    logger.warning("job %d: earlier results not replaced yet: %s", job.id, exc)
        return released

    def _advance(self, held: Job) -> bool:
        others = [
            job
            for job in self.queue.list(study_id=held.study_id, limit=1000)
            if job.rule == held.rule and job.id != held.id
        ]
        now = time.time()
        running = [j.id for j in others if j.state is JobState.RUNNING and (j.lease_expires or 0.0) >= now]
        if running:
            logger.debug("job %d waits for job(s) %s to end", held.id, running)
            return False
        for job in others:
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                self.queue.supersede(job.id, held.id)
        earlier = sorted({i for job in others for i in self._stored(job)})
        present = [i for i in earlier if self._exists(i)]
        if present:
            self.api.post_json("/tools/bulk-delete", {"Resources": present})
            logger.info(
                "study %s: %d earlier result object(s) of rule %s deleted; job %d stores the new ones",
                held.study_id,
                len(present),
                held.rule,
                held.id,
            )
        return self.queue.release_held(held.id)

    @staticmethod
    def _stored(job: Job) -> tuple[str, ...]:
        try:
            return JobProgress.from_json(job.progress).stored or ()
        except JobDocumentError as exc:
            logger.warning("job %d: progress unreadable, its results are not deleted: %s", job.id, exc)
            return ()

    def _exists(self, instance_id: str) -> bool:
        try:
            self.api.get_json(f"/instances/{quote_id(instance_id)}")
        except NotFoundError:
            return False
        return True
