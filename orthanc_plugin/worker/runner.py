"""The worker: claims jobs, fetches the input series from Orthanc, runs the processor, stores and forwards
the results, and records on the study what was done.

A worker runs outside Orthanc (started by the plugin, or by hand on another machine). It renews its job's
lease by heartbeats from a daemon thread; when Orthanc (its parent) dies, it hands its job back to the
queue and exits. Each step's outcome is saved in the job's progress, so that a retry skips what is done:
results already stored are not computed again, destinations already served are not sent to again.

Logs name Orthanc IDs and UIDs only, never patient data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Protocol

from orthanc_plugin.intake.prefetch import skippable_series
from orthanc_plugin.intake.studies import StudyRecord
from orthanc_plugin.jobqueue import (
    WITHDRAWN,
    Job,
    JobDocumentError,
    JobPayload,
    JobProgress,
    JobQueue,
    JobState,
    UnknownSchemaVersionError,
)
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApiError, quote_id
from orthanc_plugin.node.settings import WorkerSettings
from orthanc_plugin.worker.client import OrthancUnavailableError
from orthanc_plugin.worker.gate import await_store_gate
from orthanc_plugin.worker.model_runs import ModelRuns
from orthanc_plugin.worker.processing import ProcessingOutcome, ProcessingRequest, Processor

logger = logging.getLogger(__name__)

__all__ = ["OrthancRest", "PermanentJobError", "Worker", "WorkerOptions"]

_FINAL_ORTHANC_JOB_STATES = ("Success", "Failure")


class OrthancRest(Protocol):
    """What a worker uses of Orthanc's REST API (:class:`orthanc_plugin.worker.client.OrthancClient`)."""

    def get_json(self, path: str) -> Any:
        """GET, decoded as JSON."""
        ...

    def get_bytes(self, path: str) -> bytes:
        """GET, raw body."""
        ...

    def post_json(self, path: str, body: Any) -> Any:
        """POST a JSON body."""
        ...

    def post_bytes(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        """POST raw bytes."""
        ...

    def get_versioned(self, path: str) -> tuple[bytes, str | None]:
        """GET a metadata value with its ``ETag``."""
        ...

    def put_text(self, path: str, text: str, if_match: str | None = None) -> bytes:
        """PUT a text body; with ``if_match``, only over that version (else 409)."""
        ...


#: How many times a study record is read again and merged when another writer changed it meanwhile.
RECORD_ATTEMPTS = 8


def update_study_record(
    client: OrthancRest, study_id: str, metadata_name: str, change: Callable[[StudyRecord], None]
) -> StudyRecord:
    """Apply ``change`` to a study's record (its metadata ``metadata_name``) without losing another
    writer's change: read it with its ``ETag``, change it, and write it back only over that version
    (``If-Match``); on 409 Conflict (another worker, rule or server wrote it meanwhile; or created it,
    which Orthanc refuses without ``If-Match`` when ``CheckRevisions`` is on, as the node sets it), read
    it again and apply ``change`` to the new one. Returns the record written.

    Raises
    ------
    RestApiError
        Still in conflict after :data:`RECORD_ATTEMPTS` reads, or any other refusal.
    """
    path = f"/studies/{quote_id(study_id)}/metadata/{quote_id(metadata_name)}"
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            current, etag = client.get_versioned(path)
        except NotFoundError:
            current, etag = b"", None
        record = StudyRecord.from_text(current)
        change(record)
        try:
            client.put_text(path, record.to_text(), if_match=etag)
            return record
        except RestApiError as exc:
            if exc.status != 409 or attempt == RECORD_ATTEMPTS:
                raise
            logger.info(
                "study %s: its record changed meanwhile (%s); read again, attempt %d", study_id, exc, attempt
            )
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


class PermanentJobError(Exception):
    """The job cannot succeed by retrying (e.g. its study was deleted)."""


#: How long a job whose instances are stored empty waits before it looks again (seconds).
_WAIT_S = 60.0


class _WaitJobError(Exception):
    """The job's inputs are not usable yet (instances stored empty): the job waits, no attempt counted."""


class _StopJobError(Exception):
    """The worker was asked to stop (SIGTERM) or lost its lease."""


class _WithdrawJobError(Exception):
    """The job was started early and its study changed before its results were stored
    (:mod:`orthanc_plugin.worker.gate`): nothing is stored, the node judges the study again."""


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """How a worker behaves: the node's settings (:meth:`from_settings`) and what varies per process.

    Attributes
    ----------
    heartbeat_s, poll_s, forward_attempts, forward_timeout_s, forward_mode, metadata_name
        From the node's settings (:class:`~orthanc_plugin.node.settings.WorkerSettings`).
    name : str
        The worker's name in the logs.
    forward_backoff_s : float
        Delay before the second send to a destination (doubling for later ones).
    parent_pid : int or None
        Exit (handing the job back) when this process (Orthanc) is no longer the parent.
    max_jobs : int or None
        Exit after this many jobs.
    exit_when_idle : bool
        Exit when the queue is empty.
    owner : str
        The worker's identity in the queue's leases (host, PID and a random suffix by default).
    """

    heartbeat_s: float
    poll_s: float
    forward_attempts: int
    forward_timeout_s: float
    metadata_name: str
    forward_mode: str = "follow"
    name: str = "worker"
    forward_backoff_s: float = 2.0
    parent_pid: int | None = None
    max_jobs: int | None = None
    exit_when_idle: bool = False
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")

    @classmethod
    def from_settings(cls, settings: WorkerSettings, **per_process: Any) -> WorkerOptions:
        """The options of the node's settings (``HeartbeatSeconds``, ``PollSeconds``, ``ForwardAttempts``,
        ``ForwardTimeoutSeconds``, ``ForwardMode``, ``MetadataName``), with ``per_process`` fields (``name``,
        ``parent_pid``, ``max_jobs``, ``exit_when_idle``, ``owner``, ``forward_backoff_s``)."""
        return cls(
            heartbeat_s=settings.heartbeat_s,
            poll_s=settings.poll_s,
            forward_attempts=settings.forward_attempts,
            forward_timeout_s=settings.forward_timeout_s,
            forward_mode=settings.forward_mode,
            metadata_name=settings.metadata_name,
            **per_process,
        )


@dataclass
class _Run:
    """One job being run: its documents, the progress updated step by step."""

    job: Job
    payload: JobPayload
    progress: JobProgress


class _Heartbeat:
    """Renews a job's lease on a daemon thread; notices a lost lease and a dead parent."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.worker = worker
        self.job = job
        self.lost = threading.Event()
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        options = self.worker.options
        while not self._stop.wait(
            min(options.heartbeat_s, 1.0 if options.parent_pid else options.heartbeat_s)
        ):
            if self.worker.parent_gone():
                logger.warning(
                    "job %d: Orthanc (the parent process) is gone; handing the job back", self.job.id
                )
                try:
                    self.worker.queue.release(self.job.id, options.owner)
                finally:
                    os._exit(3)
            if time.monotonic() - self._last < options.heartbeat_s:
                continue
            try:
                if not self.worker.queue.heartbeat(self.job.id, options.owner):
                    logger.warning("job %d: lease lost (another worker took it over)", self.job.id)
                    self.lost.set()
                    return
                self._last = time.monotonic()
            except Exception:
                logger.exception("job %d: heartbeat failed", self.job.id)


class Worker:
    """Runs jobs from a queue (see the module docstring).

    Parameters
    ----------
    queue : JobQueue
        The job queue.
    client : OrthancRest
        Orthanc's REST API.
    processor : Processor
        Turns input instances into result objects.
    options : WorkerOptions
        Behaviour.
    models : ModelRuns, optional
        The node's registered models: each job runs the model it was queued for, then the shadow models
        (:mod:`orthanc_plugin.worker.model_runs`); None: ``processor`` runs every job, no shadow.
    """

    def __init__(
        self,
        queue: JobQueue,
        client: OrthancRest,
        processor: Processor,
        options: WorkerOptions,
        models: ModelRuns | None = None,
    ) -> None:
        self.queue = queue
        self.client = client
        #: The last error of a send to a destination (said in the job's error when forwarding fails).
        self._forward_error: str | None = None
        self.processor = processor
        self.options = options
        self.models = models
        self._stop = threading.Event()
        self._heartbeat: _Heartbeat | None = None

    # -- life cycle --------------------------------------------------------------------------------------
    def parent_gone(self) -> bool:
        """True when started with a parent PID and that process is no longer the parent."""
        return self.options.parent_pid is not None and os.getppid() != self.options.parent_pid

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Stop after the current step (SIGTERM handler)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        """Claim and run jobs until stopped; returns the number of jobs run."""
        logger.info("worker %s (%s) started", self.options.name, self.options.owner)
        done = 0
        while not self._stop.is_set():
            if self.parent_gone():
                logger.warning("Orthanc (the parent process) is gone; worker exits")
                break
            try:
                job = self.queue.claim(self.options.owner)
            except Exception:
                logger.exception("cannot claim a job; retrying")
                self._stop.wait(max(self.options.poll_s, 2.0))
                continue
            if job is None:
                if self.options.exit_when_idle:
                    break
                if self.models is not None:
                    self.models.refresh()
                self._stop.wait(self.options.poll_s)
                continue
            self.run_job(job)
            done += 1
            if self.options.max_jobs is not None and done >= self.options.max_jobs:
                break
        logger.info("worker %s stopped after %d job(s)", self.options.name, done)
        return done

    # -- one job -------------------------------------------------------------------------------------
    def run_job(self, job: Job) -> JobState | None:
        """Run one claimed job to its next state; returns that state (None when the lease was lost)."""
        owner = self.options.owner
        logger.info(
            "job %d: study %s, rule %s, attempt %d/%d",
            job.id,
            job.study_id,
            job.rule,
            job.attempts,
            job.max_attempts,
        )
        started = time.monotonic()
        run: _Run | None = None
        with _Heartbeat(self, job) as heartbeat:
            self._heartbeat = heartbeat
            try:
                run = self._read(job)
                state = self._execute(run)
            except _StopJobError as exc:
                logger.warning("job %d: %s", job.id, exc)
                if not heartbeat.lost.is_set():
                    self.queue.release(job.id, owner)
                return None
            except _WithdrawJobError as exc:
                logger.info("job %d withdrawn, nothing stored: %s", job.id, exc)
                reason = (
                    f"{WITHDRAWN} {exc}; nothing was stored, and the study is judged again once it is quiet"
                )
                return self.queue.fail(job.id, owner, reason, transient=False)
            except _WaitJobError as exc:
                logger.warning("job %d waits %.0f s: %s", job.id, _WAIT_S, exc)
                self.queue.defer(job.id, owner, str(exc), _WAIT_S)
                return JobState.QUEUED
            except PermanentJobError as exc:
                logger.error("job %d failed: %s", job.id, exc)
                return self.queue.fail(job.id, owner, str(exc), transient=False)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                final = job.attempts >= job.max_attempts
                logger.warning(
                    "job %d: attempt %d failed: %s",
                    job.id,
                    job.attempts,
                    reason,
                    exc_info=not isinstance(exc, RestApiError | JobDocumentError),
                )
                if final and run is not None and not run.progress.processed:
                    self._send_failure_report(run, f"the analysis failed repeatedly ({reason})")
                return self.queue.fail(job.id, owner, reason, transient=True)
            finally:
                self._heartbeat = None
        logger.info(
            "job %d: %s in %.1f s", job.id, state.value if state else "lease lost", time.monotonic() - started
        )
        return state

    @staticmethod
    def _read(job: Job) -> _Run:
        """The job's documents. A payload of a newer node is a transient failure (a newer worker sharing the
        queue may run it); one that cannot be read at all is permanent."""
        try:
            return _Run(job, JobPayload.from_json(job.payload), JobProgress.from_json(job.progress))
        except UnknownSchemaVersionError:
            raise
        except JobDocumentError as exc:
            raise PermanentJobError(str(exc)) from exc

    def _check(self) -> None:
        if self._stop.is_set():
            raise _StopJobError("stopping on request; job handed back to the queue")
        if self._heartbeat is not None and self._heartbeat.lost.is_set():
            raise _StopJobError("lease lost; another worker has the job")

    def _save(self, run: _Run, progress: JobProgress) -> None:
        """Record the job's progress (and renew its lease)."""
        run.progress = progress
        if not self.queue.set_progress(run.job.id, self.options.owner, progress.to_json()):
            raise _StopJobError("lease lost; another worker has the job")

    def _execute(self, run: _Run) -> JobState | None:
        job, payload = run.job, run.payload
        study = payload.study
        try:
            info = self.client.get_json(f"/studies/{quote_id(study)}")
        except NotFoundError as exc:
            raise PermanentJobError(f"study {study} no longer exists in Orthanc") from exc
        shadow_input: tuple[list[bytes], ProcessingRequest, ProcessingOutcome] | None = None
        if run.progress.stored is None or not self._still_stored(run.progress.stored):
            request = ProcessingRequest.from_payload(job.id, payload)
            started = time.monotonic()
            instances = self._fetch(payload, request)
            fetched = time.monotonic()
            self._check()
            shared = self._shared_study_uid(study, info)
            if shared is not None:
                outcome = ProcessingOutcome.could_not_analyse(
                    shared, self.processor.failure(instances, shared)
                )
            else:
                processor = (
                    self.models.processor_for(job.model) if self.models is not None else self.processor
                )
                outcome = processor(instances, request)
                shadow_input = (instances, request, outcome)
            analysed = time.monotonic()
            self._check()
            if payload.store_gate is not None:
                withdrawn = await_store_gate(
                    self.queue, self.client, job.id, study, stop=self._stop, check=self._check
                )
                if withdrawn is not None:
                    raise _WithdrawJobError(withdrawn)
            gated = time.monotonic()
            if not self.queue.heartbeat(job.id, self.options.owner):  # still ours before writing into Orthanc
                raise _StopJobError("lease lost; another worker has the job")
            stored = self._store(outcome.to_store())
            logger.info(
                "job %d: %d input instance(s) fetched in %.2f s, analysed in %.2f s, the study's quiet time "
                "waited for %.2f s, results stored in %.2f s",
                job.id,
                len(instances),
                fetched - started,
                analysed - fetched,
                gated - analysed,
                time.monotonic() - gated,
            )
            self._save(
                run,
                replace(
                    run.progress,
                    stored=tuple(s["ID"] for s in stored),
                    result_series=tuple(sorted({s["ParentSeries"] for s in stored if s.get("ParentSeries")})),
                    status="failed" if outcome.failed else "done",
                    reason=outcome.reason,
                    model=outcome.model,
                    details=outcome.details,
                    forwarded={},
                ),
            )
            if outcome.failed:
                logger.warning("job %d: study %s cannot be analysed: %s", job.id, study, outcome.reason)
            else:
                logger.info("job %d: %d result object(s) stored into study %s", job.id, len(stored), study)
        self._forward(run)
        self._record(run)
        if run.progress.status == "failed":
            return self.queue.fail(job.id, self.options.owner, str(run.progress.reason), transient=False)
        if not self.queue.complete(job.id, self.options.owner, run.progress.to_json()):
            raise _StopJobError("lease lost before completion; another worker has the job")
        if self.models is not None and shadow_input is not None:
            self.models.run_shadows(job.id, *shadow_input, active_identity=job.model)
        return JobState.DONE

    def _shared_study_uid(self, study: str, info: Any) -> str | None:
        """Why the study cannot be analysed when its StudyInstanceUID names other patients' studies too.

        Orthanc files a study under PatientID and StudyInstanceUID, so one UID given to two patients makes
        two Orthanc studies, each holding part of the series: the engine would only see "no ADC" or "no
        axial T2". The reason names the Orthanc studies, never the patients.
        """
        uid = (info.get("MainDicomTags") or {}).get("StudyInstanceUID") if isinstance(info, dict) else None
        if not uid:
            return None
        try:
            found = self.client.post_json(
                "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": uid}, "Limit": 10}
            )
        except (RestApiError, OrthancUnavailableError) as exc:
            logger.warning("study %s: cannot look for other studies with its UID: %s", study, exc)
            return None
        others = (
            sorted(str(other) for other in found if str(other) != study) if isinstance(found, list) else []
        )
        if not others:
            return None
        return (
            f"the StudyInstanceUID {uid} is shared by {len(others) + 1} studies of different patients in "
            f"this node (Orthanc studies {', '.join([study, *others])}): one UID was given to two patients, "
            "or the patient's ID differs between series. The series are split between them, so none can be "
            "analysed. Correct the study in the PACS (reconcile the patient or split the study), then send it "
            "again"
        )

    def _still_stored(self, ids: tuple[str, ...]) -> bool:
        for instance in ids:
            try:
                self.client.get_json(f"/instances/{quote_id(instance)}")
            except NotFoundError:
                return False
        return True

    def _fetch(self, payload: JobPayload, request: ProcessingRequest | None = None) -> list[bytes]:
        """The input series' instances; of a series the engine will ignore (see
        :mod:`orthanc_plugin.intake.prefetch`) only the first."""
        rules = request.series_rules if request is not None else None
        instances: list[bytes] = []
        missing = []
        empty = 0
        for series in payload.series:
            try:
                ids = self.client.get_json(f"/series/{quote_id(series)}").get("Instances", [])
            except NotFoundError:
                missing.append(series)
                continue
            for n, instance in enumerate(ids):
                try:
                    data = self.client.get_bytes(f"/instances/{quote_id(instance)}/file")
                except NotFoundError:
                    continue
                if not data:
                    empty += 1
                    continue
                instances.append(data)
                if n == 0 and len(ids) > 1:
                    skipped = skippable_series(data, rules)
                    if skipped is not None:
                        logger.info(
                            "series %s: %s; %d of its %d instances not fetched",
                            series,
                            skipped,
                            len(ids) - 1,
                            len(ids),
                        )
                        break
            self._check()
        if missing:
            logger.warning("series %s no longer exist in Orthanc", ", ".join(missing))
        if empty:
            raise _WaitJobError(
                f"{empty} instance(s) of the study are stored empty in Orthanc (was its disk full when they "
                "arrived?): the study waits for a good copy; send it again"
            )
        if not instances:
            raise PermanentJobError("none of the job's input series exists any more in Orthanc")
        return instances

    def _store(self, objects: list[bytes]) -> list[dict[str, Any]]:
        stored = []
        for data in objects:
            answer = self.client.post_bytes("/instances", data)
            if not isinstance(answer, dict) or "ID" not in answer:
                raise RestApiError(f"unexpected answer of POST /instances: {answer!r}")
            stored.append(answer)
        return stored

    def _send_failure_report(self, run: _Run, reason: str) -> None:
        """Last attempt failed: store and forward a failure report so that the failure is visible."""
        try:
            instances = self._fetch(run.payload)
            stored = self._store(self.processor.failure(instances, reason))
            run.progress = replace(
                run.progress,
                stored=tuple(s["ID"] for s in stored),
                status="failed",
                reason=reason,
                forwarded={},
            )
            self._forward(run)
            self._record(run)
        except Exception as exc:
            logger.error("job %d: the failure report could not be sent either: %s", run.job.id, exc)

    # -- forwarding ----------------------------------------------------------------------------------
    def _forward(self, run: _Run) -> None:
        ids = list(run.progress.stored or ())
        if not ids:
            return
        for kind, names in run.payload.destinations.items():
            for name in names:
                key = f"{kind}:{name}"
                if run.progress.forwarded.get(key) == "done":
                    continue
                ok = self._send(run.job, kind, name, ids)
                self._save(run, run.progress.forwarded_to(key, "done" if ok else "failed"))
        failed = [k for k, v in run.progress.forwarded.items() if v != "done"]
        if failed:
            last = f" (last error: {self._forward_error})" if self._forward_error else ""
            raise OrthancUnavailableError(
                f"forwarding failed to {', '.join(failed)}{last}; the job will retry"
            )

    def _send(self, job: Job, kind: str, name: str, ids: list[str]) -> bool:
        path = {
            "modalities": f"/modalities/{quote_id(name)}/store",
            "dicomweb": f"/dicom-web/servers/{quote_id(name)}/stow",
            "peers": f"/peers/{quote_id(name)}/store",
        }.get(kind)
        if path is None:
            logger.error("job %d: unknown destination kind %r", job.id, kind)
            return False
        for attempt in range(1, self.options.forward_attempts + 1):
            self._check()
            try:
                state, details = self._send_once(path, ids)
                if state == "Success":
                    logger.info("job %d: results sent to %s %s", job.id, kind, name)
                    return True
                self._forward_error = details[:500]
                logger.warning(
                    "job %d: sending to %s %s failed (attempt %d/%d): %s",
                    job.id,
                    kind,
                    name,
                    attempt,
                    self.options.forward_attempts,
                    details,
                )
            except (RestApiError, KeyError, TypeError) as exc:
                self._forward_error = str(exc)[:500]
                logger.warning(
                    "job %d: sending to %s %s failed (attempt %d/%d): %s",
                    job.id,
                    kind,
                    name,
                    attempt,
                    self.options.forward_attempts,
                    exc,
                )
            if attempt < self.options.forward_attempts:
                self._stop.wait(self.options.forward_backoff_s * 2 ** (attempt - 1))
        return False

    def _send_once(self, path: str, ids: list[str]) -> tuple[str, str]:
        """One send: its Orthanc job followed to its end, or one synchronous request (``ForwardMode``);
        returns the job's state and error details (a synchronous send that Orthanc refused raises)."""
        if self.options.forward_mode == "synchronous":
            self.client.post_json(path, {"Resources": ids, "Synchronous": True})
            return "Success", ""
        answer = self.client.post_json(path, {"Resources": ids, "Asynchronous": True})
        return self._follow(str(answer["ID"]))

    def _follow(self, orthanc_job: str) -> tuple[str, str]:
        """Wait for an Orthanc job to end, on the Orthanc that started it; returns its state and error
        details."""
        deadline = time.monotonic() + self.options.forward_timeout_s
        delay = 0.1
        while True:
            try:
                info = self.client.get_json(f"/jobs/{quote_id(orthanc_job)}")
            except NotFoundError as exc:
                where = getattr(self.client, "url", "the Orthanc it was started on")
                raise NotFoundError(
                    f"Orthanc job {orthanc_job} is unknown to {where} right after it started there: "
                    "if that URL is a load balancer in front of several Orthancs, set ForwardMode to synchronous "
                    "(lesion-ai worker --forward-mode synchronous), or give the worker one server's URL",
                    404,
                ) from exc
            state = str(info.get("State"))
            if state in _FINAL_ORTHANC_JOB_STATES:
                details = "; ".join(
                    str(info.get(k)) for k in ("ErrorDescription", "ErrorDetails") if info.get(k)
                )
                return state, details
            if time.monotonic() > deadline:
                with contextlib.suppress(RestApiError):
                    self.client.post_json(f"/jobs/{quote_id(orthanc_job)}/cancel", {})
                return (
                    "Timeout",
                    f"Orthanc job {orthanc_job} still {state} after {self.options.forward_timeout_s:.0f} s",
                )
            self._check()
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    # -- study record -------------------------------------------------------------------------------
    def _record(self, run: _Run) -> None:
        """Record on the study (metadata) which model processed it under which rule, and its results
        (:func:`update_study_record`: no other writer's change is lost)."""
        job, progress = run.job, run.progress

        def change(record: StudyRecord) -> None:
            record.processed[job.key] = {
                "rule": job.rule,
                "model": job.model,
                "model_info": dict(progress.model),
                "status": progress.status,
                "reason": progress.reason,
                "job": job.id,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            record.result_series = sorted(set(record.result_series) | set(progress.result_series))

        update_study_record(self.client, job.study_id, self.options.metadata_name, change)
