"""The documents a job carries in the queue: its payload (what to do) and its progress (what is done).

The queue stores both as JSON; these frozen dataclasses are their schema. Each document has a
``schema_version``: :meth:`JobPayload.from_json` and :meth:`JobProgress.from_json` read every version up to
this node's (a document without ``schema_version`` is version 1, as the node wrote them before the field
existed) and refuse, with an error that names the key, a wrong type, an unknown key, or a version newer
than this node reads (:class:`UnknownSchemaVersionError`: the document was written by a newer node; a
newer worker sharing the queue can still run the job).

A job's key (the queue's deduplication) is ``rule:study:fingerprint[:32]``, where the fingerprint is the
SHA-256 of the study, the rule, the input series with their instance counts, and the model
(:func:`job_fingerprint`): the same work is queued once, and a study that received another instance is
new work. The input series counted are those the engine may read: the rule's series that the engine's
header-only role ranker makes T2W, ADC or diffusion candidates (and any whose headers cannot be read);
all the rule's series when the headers cannot be ranked (:func:`orthanc_plugin.intake.studies.payload_for`). So a
job started as soon as those series were complete is the same job as the one the stable study asks for,
even when other series (DCE, localizers) arrived in between.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from lesion_engine.errors import ConfigError, LesionAIError
from lesion_engine.intake.series_rules import SeriesRules, series_rules_from_json
from lesion_engine.results.outputs import DEFAULT_OUTPUTS, Output, parse_outputs
from orthanc_plugin.jobqueue.base import NewJob
from orthanc_plugin.jobqueue.store_gate import STORE_GATE_KEY, StoreGate, StoreGateError
from orthanc_plugin.rules import DESTINATION_KINDS, Destinations

logger = logging.getLogger(__name__)

__all__ = [
    "ForwardState",
    "JobDocumentError",
    "JobPayload",
    "JobProgress",
    "JobStatus",
    "UnknownSchemaVersionError",
    "job_fingerprint",
]

JobStatus = Literal["done", "failed"]
"""How the processing of a job's study ended: analysed, or a failure report in place of results."""
ForwardState = Literal["done", "failed"]
"""Outcome of forwarding the results to one destination."""
_STATUSES: tuple[JobStatus, ...] = ("done", "failed")
_FORWARD_STATES: tuple[ForwardState, ...] = ("done", "failed")


class JobDocumentError(LesionAIError, ValueError):
    """A job's payload or progress is not a document this node can read (the message names the key)."""


class UnknownSchemaVersionError(JobDocumentError):
    """The document was written by a newer node (its ``schema_version`` is newer than this node reads)."""


def job_fingerprint(study_id: str, rule: str, inputs: Sequence[tuple[str, int]], model: str) -> str:
    """The SHA-256 (hex) that identifies one piece of work.

    Parameters
    ----------
    study_id : str
        Orthanc ID of the study.
    rule : str
        Name of the routing rule.
    inputs : sequence of (str, int)
        Orthanc ID and instance count of each input series the engine may read, sorted by ID.
    model : str
        Identity of the model (:func:`lesion_engine.model.model_card.model_identity`).
    """
    identity = json.dumps(
        {"study": study_id, "rule": rule, "inputs": [list(item) for item in inputs], "model": model},
        sort_keys=True,
    )
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


# -- reading JSON -----------------------------------------------------------------------------------------
class _Reader:
    """Typed access to the keys of one JSON document; errors name the document and the key."""

    def __init__(self, what: str, data: object, version: int, known: frozenset[str]) -> None:
        self.what = what
        if not isinstance(data, Mapping):
            raise JobDocumentError(f"{what}: expected a JSON object, got {type(data).__name__}")
        self.data = data
        found = data.get("schema_version", 1)
        if isinstance(found, bool) or not isinstance(found, int) or found < 1:
            raise JobDocumentError(f"{what}, key 'schema_version': expected an integer >= 1, got {found!r}")
        if found > version:
            raise UnknownSchemaVersionError(
                f"{what} has schema_version {found}, newer than this node reads ({version}); it was written "
                "by a newer version of the node: upgrade this worker (a newer worker sharing the queue can "
                "run the job)"
            )
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise JobDocumentError(
                f"{what}: unknown key(s) {', '.join(map(repr, unknown))} for schema_version {found}; "
                f"known: {', '.join(sorted(known))}"
            )

    def fail(self, key: str, expected: str) -> JobDocumentError:
        return JobDocumentError(f"{self.what}, key {key!r}: expected {expected}, got {self.data.get(key)!r}")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(key, "text")
        return value

    def required_text(self, key: str) -> str:
        if key not in self.data:
            raise JobDocumentError(f"{self.what}: key {key!r} is missing")
        value = self.text(key)
        if not value:
            raise self.fail(key, "non-empty text")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(key, "text or null")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(key, "a list of text")
        return tuple(value)

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self.fail(key, "a JSON object")
        return value

    def status(self, key: str) -> JobStatus | None:
        value = self.data.get(key)
        if value is None:
            return None
        for status in _STATUSES:
            if value == status:
                return status
        raise self.fail(key, f"one of {', '.join(_STATUSES)} or null")


def _plain(value: Any) -> Any:
    """JSON-ready deep copy: mappings to dicts, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _json_object(what: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """A detached, JSON-ready copy of ``value`` (refused when it does not survive a JSON round trip)."""
    try:
        copy = json.loads(json.dumps(_plain(value)))
    except (TypeError, ValueError) as exc:
        raise JobDocumentError(f"{what} must be JSON-ready: {exc}") from exc
    if not isinstance(copy, dict):
        raise JobDocumentError(f"{what} must be a JSON object")
    return copy


def _keys(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


# -- the payload ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobPayload:
    """What a worker needs to run a job; written by the plugin when it queues the job.

    Attributes
    ----------
    study : str
        Orthanc ID of the study.
    rule : str
        Name of the routing rule that asked for the job.
    series : tuple of str
        Orthanc IDs of the input series, sorted.
    study_uid : str
        StudyInstanceUID (for people reading the queue; workers use ``study``).
    series_uids : tuple of str
        SeriesInstanceUIDs of the input series.
    outputs : tuple of Output
        The result objects the rule asks for.
    destinations : Destinations
        Where the results are forwarded.
    series_rules : SeriesRules or None
        The rule's series-selection rules; None: the engine's defaults. The document holds their overrides
        as written in the rules (key ``series_rules``) and where they came from (``series_rules_source``);
        :meth:`from_json` validates them again with the engine's series rules.
    model : str
        Identity of the model the job was queued for.
    fingerprint : str
        :func:`job_fingerprint` of the work (the job's key is made from it).
    store_gate : StoreGate or None
        For a job started before its study's quiet time passed: when its results may be stored
        (:mod:`orthanc_plugin.jobqueue.store_gate`); None: as soon as they are made. Not part of the key.
    schema_version : int
        Version of this document's schema: always :attr:`SCHEMA_VERSION` (older documents are converted
        when read). Version 2 added ``store_gate``; :meth:`to_json` writes version 1 for a payload without
        one, so that workers of the version before still run every job that has no gate.
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    study: str
    rule: str
    series: tuple[str, ...]
    study_uid: str = ""
    series_uids: tuple[str, ...] = ()
    outputs: tuple[Output, ...] = DEFAULT_OUTPUTS
    destinations: Destinations = field(default_factory=Destinations)
    series_rules: SeriesRules | None = None
    model: str = ""
    fingerprint: str = ""
    store_gate: StoreGate | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != self.SCHEMA_VERSION:
            raise JobDocumentError(
                f"JobPayload.schema_version must be {self.SCHEMA_VERSION} (this node's); "
                "read older documents with JobPayload.from_json"
            )
        if self.store_gate is not None and not isinstance(self.store_gate, StoreGate):
            raise JobDocumentError(
                f"JobPayload.store_gate must be a StoreGate or None, got {type(self.store_gate).__name__}"
            )
        if not self.study or not self.rule:
            raise JobDocumentError("a job payload needs a study and a rule")
        if not all(isinstance(output, Output) for output in self.outputs):
            raise JobDocumentError(
                f"JobPayload.outputs must be Output members, got {self.outputs!r} (see parse_outputs)"
            )
        if self.series_rules is not None and not isinstance(self.series_rules, SeriesRules):
            raise JobDocumentError(
                "JobPayload.series_rules must be the engine's SeriesRules or None, got "
                f"{type(self.series_rules).__name__}; read overrides with series_rules_from_json"
            )

    @property
    def key(self) -> str:
        """The job's key in the queue: ``rule:study:fingerprint[:32]``."""
        return f"{self.rule}:{self.study}:{self.fingerprint[:32]}"

    def new_job(self, priority: int = 0) -> NewJob:
        """The queue entry of this payload (key, study, rule, model taken from it)."""
        return NewJob(
            key=self.key,
            study_id=self.study,
            rule=self.rule,
            model=self.model,
            priority=priority,
            payload=self.to_json(),
        )

    def to_json(self) -> dict[str, Any]:
        """The document as stored in the queue (JSON-ready; see ``schema_version``)."""
        gate = {} if self.store_gate is None else {STORE_GATE_KEY: self.store_gate.to_json()}
        return {
            "schema_version": 1 if self.store_gate is None else self.schema_version,
            "study": self.study,
            "study_uid": self.study_uid,
            "rule": self.rule,
            "series": list(self.series),
            "series_uids": list(self.series_uids),
            "outputs": [output.value for output in self.outputs],
            "destinations": self.destinations.to_dict(),
            "series_rules": self.series_rules.to_json() if self.series_rules is not None else None,
            "series_rules_source": self.series_rules.source if self.series_rules is not None else None,
            "model": self.model,
            "fingerprint": self.fingerprint,
            **gate,
        }

    @classmethod
    def from_json(cls, data: object) -> JobPayload:
        """Read a stored payload (every schema version up to :attr:`SCHEMA_VERSION`).

        Raises
        ------
        UnknownSchemaVersionError
            The payload was written by a newer node.
        JobDocumentError
            A key is unknown, missing (``study``, ``rule``, ``series``) or of the wrong type.
        """
        read = _Reader("job payload", data, cls.SCHEMA_VERSION, _keys(cls) | {"series_rules_source"})
        if "series" not in read.data:
            raise JobDocumentError("job payload: key 'series' is missing")
        try:
            outputs = parse_outputs(read.texts("outputs")) if read.data.get("outputs") else DEFAULT_OUTPUTS
        except ConfigError as exc:
            raise JobDocumentError(f"job payload, key 'outputs': {exc}") from exc
        return cls(
            study=read.required_text("study"),
            rule=read.required_text("rule"),
            series=read.texts("series"),
            study_uid=read.text("study_uid"),
            series_uids=read.texts("series_uids"),
            outputs=outputs,
            destinations=_destinations(read),
            series_rules=_series_rules(read),
            model=read.text("model"),
            fingerprint=read.text("fingerprint"),
            store_gate=_store_gate(read),
        )


def _store_gate(read: _Reader) -> StoreGate | None:
    try:
        return StoreGate.of_payload(read.data)
    except StoreGateError as exc:
        raise JobDocumentError(f"job payload, key {STORE_GATE_KEY!r}: {exc}") from exc


def _series_rules(read: _Reader) -> SeriesRules | None:
    """The rule's series-selection rules, validated again from their overrides (keys ``series_rules`` and
    ``series_rules_source``)."""
    overrides = read.mapping("series_rules")
    source = read.optional_text("series_rules_source")
    if overrides is None:
        return None
    try:
        return series_rules_from_json(overrides, source or f"series_rules of rule {read.data.get('rule')!r}")
    except ConfigError as exc:
        raise JobDocumentError(f"job payload, key 'series_rules': {exc}") from exc


def _destinations(read: _Reader) -> Destinations:
    data = read.mapping("destinations") or {}
    unknown = sorted(set(data) - set(DESTINATION_KINDS))
    if unknown:
        raise read.fail("destinations", f"an object of {', '.join(DESTINATION_KINDS)} (not {unknown})")
    names: dict[str, tuple[str, ...]] = {}
    for kind in DESTINATION_KINDS:
        value = data.get(kind) or []
        if not isinstance(value, list) or not all(isinstance(name, str) and name for name in value):
            raise read.fail("destinations", f"lists of destination names under {kind!r}")
        names[kind] = tuple(value)
    return Destinations(**names)


# -- the progress -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobProgress:
    """What a worker has done of a job, saved after each step so that a retry skips what is done.

    Update with :func:`dataclasses.replace`.

    Attributes
    ----------
    stored : tuple of str or None
        Orthanc IDs of the result objects stored into the study; None until the study was processed.
    result_series : tuple of str
        Orthanc IDs of the series those objects form.
    status : {"done", "failed"} or None
        ``done``: analysed; ``failed``: the study cannot be analysed (``stored`` is the failure report).
    reason : str or None
        Why it failed.
    model : mapping
        ``name``, ``version``, ``sha256`` of the model used (empty when none was).
    details : mapping
        JSON-ready summary of the analysis (lesion count, patient score, timings, roles).
    forwarded : mapping of str to {"done", "failed"}
        ``kind:name`` of each destination served so far, and how it went.
    schema_version : int
        Version of this document's schema: always :attr:`SCHEMA_VERSION`.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    stored: tuple[str, ...] | None = None
    result_series: tuple[str, ...] = ()
    status: JobStatus | None = None
    reason: str | None = None
    model: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    forwarded: Mapping[str, ForwardState] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != self.SCHEMA_VERSION:
            raise JobDocumentError(
                f"JobProgress.schema_version must be {self.SCHEMA_VERSION} (this node's); "
                "read older documents with JobProgress.from_json"
            )
        if self.status is not None and self.status not in _STATUSES:
            raise JobDocumentError(
                f"JobProgress.status must be one of {_STATUSES} or None, got {self.status!r}"
            )
        if any(state not in _FORWARD_STATES for state in self.forwarded.values()):
            raise JobDocumentError(f"JobProgress.forwarded states must be one of {_FORWARD_STATES}")
        for name in ("model", "details", "forwarded"):
            value = _json_object(f"JobProgress.{name}", getattr(self, name))
            object.__setattr__(self, name, MappingProxyType(value))

    @property
    def processed(self) -> bool:
        """True once the study's results (or failure report) were stored."""
        return self.stored is not None

    def forwarded_to(self, destination: str, state: ForwardState) -> JobProgress:
        """This progress with the outcome of forwarding to ``destination`` (``kind:name``) recorded."""
        return replace(self, forwarded={**self.forwarded, destination: state})

    def to_json(self) -> dict[str, Any]:
        """The document as stored in the queue (JSON-ready)."""
        return {
            "schema_version": self.schema_version,
            "stored": list(self.stored) if self.stored is not None else None,
            "result_series": list(self.result_series),
            "status": self.status,
            "reason": self.reason,
            "model": _plain(self.model),
            "details": _plain(self.details),
            "forwarded": _plain(self.forwarded),
        }

    @classmethod
    def from_json(cls, data: object) -> JobProgress:
        """Read a stored progress (every schema version up to :attr:`SCHEMA_VERSION`; ``{}``: nothing done).

        Raises
        ------
        UnknownSchemaVersionError
            The progress was written by a newer node.
        JobDocumentError
            A key is unknown or of the wrong type.
        """
        read = _Reader("job progress", data, cls.SCHEMA_VERSION, _keys(cls))
        stored = read.texts("stored") if read.data.get("stored") is not None else None
        model = read.mapping("model") or {}
        if not all(isinstance(v, str) for v in model.values()):
            raise read.fail("model", "an object of text values (name, version, sha256)")
        forwarded = read.mapping("forwarded") or {}
        if not all(state in _FORWARD_STATES for state in forwarded.values()):
            raise read.fail("forwarded", f"an object of destination -> {' or '.join(_FORWARD_STATES)}")
        return cls(
            stored=stored,
            result_series=read.texts("result_series"),
            status=read.status("status"),
            reason=read.optional_text("reason"),
            model=model,
            details=read.mapping("details") or {},
            forwarded=forwarded,
        )
