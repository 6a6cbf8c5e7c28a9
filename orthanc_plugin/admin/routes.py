"""The admin REST API under ``/lesion-ai/`` (behind Orthanc's authentication).

=======  ======================================  ===================================================
GET      health                                  node state: queue counts, workers, rules, model, changes
GET      model                                   the model card (``model.json``) of the model in use
GET      jobs?state=&study=&rule=&limit=&offset  jobs, newest first (without payloads)
GET      jobs/{id}                               one job, with payload and progress
POST     jobs/{id}/retry                         a failed job queued again, its attempts reset
POST     studies/{orthanc-id}/process            (re)queue a study's jobs now, even if done before
GET      studies?limit=                          the studies stored last (IDs, UIDs, descriptions)
GET      ignored?limit=&offset=                  studies no rule matched, with each rule's outcome
GET      labels?study=&limit=&offset=            radiologists' SEGs recorded as labels
GET      rules, PUT rules, POST rules/...        the routing rules (:mod:`orthanc_plugin.admin.rules`)
GET      models, POST models/...                 the models: register, shadow, promote
                                                 (:mod:`orthanc_plugin.admin.models`)
GET      source                                  the node's complete source (AGPL), as a .tar.gz
=======  ======================================  ===================================================

Every state-changing request (any method but GET, HEAD and OPTIONS) must carry the header
:data:`CSRF_HEADER` with the value ``1``: a form of another site cannot send it (a script of another site
cannot either without a CORS pre-flight, which Orthanc does not grant), so a browser logged in to the node
cannot be made to change it from elsewhere. Without it the answer is 403, naming the header.

Handlers return ``(status, body, mime type)``; the plugin turns that into Orthanc's answer. Answers show
Orthanc IDs, DICOM UIDs and descriptions, never patient data.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from lesion_engine import __version__
from orthanc_plugin.admin.models import MODEL_ROUTE, ModelsRoutes
from orthanc_plugin.admin.node_protocol import AdminNode
from orthanc_plugin.admin.rules import RulesRoutes, describe_roles
from orthanc_plugin.jobqueue import (
    SUPERSEDED,
    WITHDRAWN,
    Job,
    JobDocumentError,
    JobPayload,
    JobProgress,
    JobState,
)
from orthanc_plugin.models.registry import MAX_UPLOAD_BYTES
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApiError, quote_id
from orthanc_plugin.node.source_archive import source_archive
from orthanc_plugin.rules.history import request_user

logger = logging.getLogger(__name__)

__all__ = [
    "CSRF_HEADER",
    "CSRF_VALUE",
    "MAX_REQUEST_BYTES",
    "AdminApi",
    "body_limit",
    "csrf_refusal",
    "describe_roles",
]

Answer = tuple[int, Any, str]
#: The header every state-changing request must carry, and its value.
CSRF_HEADER = "X-Lesion-AI-Request"
CSRF_VALUE = "1"
#: Methods that change nothing (no header needed).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_JSON = "application/json"
#: Largest request body of every route but a model upload (JSON and YAML documents: rules, requests).
MAX_REQUEST_BYTES = 1 << 20
_ID = "([0-9]{1,30})"
_JOB = re.compile(rf"^jobs/{_ID}$")
_RETRY = re.compile(rf"^jobs/{_ID}/retry$")
_RESTORE = re.compile(r"^rules/history/([0-9]{1,12})/restore$")
#: Job IDs and offsets are SQL integers (64-bit signed): a larger number names no job.
_MAX_SQL_INT = 2**63 - 1
_PROCESS = re.compile(r"^studies/([^/]+)/process$")
#: A DICOM UID (a study filter written as StudyInstanceUID rather than Orthanc ID).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")
#: Jobs read in one go, and at most, when filtering by what the queue cannot filter (rule, UID).
_SCAN_BATCH = 500
_SCAN_MAX = 100_000


def _error(status: int, message: str) -> Answer:
    return status, {"error": message}, _JSON


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    wanted = name.lower()
    return next((str(v) for k, v in (headers or {}).items() if str(k).lower() == wanted), None)


def csrf_refusal(method: str, headers: Mapping[str, Any] | None) -> Answer | None:
    """The 403 answer for a state-changing request without :data:`CSRF_HEADER` (None when allowed).

    Parameters
    ----------
    method : str
        The HTTP method.
    headers : mapping
        The request's headers (any case).
    """
    if method.upper() in _SAFE_METHODS:
        return None
    if (_header(headers, CSRF_HEADER) or "").strip() == CSRF_VALUE:
        return None
    return _error(
        403,
        f"{method} refused: a request that changes the node must carry the header "
        f"'{CSRF_HEADER}: {CSRF_VALUE}' (e.g. curl -H '{CSRF_HEADER}: {CSRF_VALUE}'); "
        "it protects the node from forms of other web sites (cross-site request forgery)",
    )


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _study_uid(job: Job) -> str | None:
    value = job.payload.get("study_uid") if isinstance(job.payload, dict) else None
    return value if isinstance(value, str) and value else None


def _job_summary(job: Job) -> dict[str, Any]:
    """A job as listed: the stored record without its documents, with its StudyInstanceUID."""
    out = job.to_dict()
    out.pop("payload")
    out.pop("progress")
    out["study_uid"] = _study_uid(job)
    return out


def _job_json(job: Job) -> dict[str, Any]:
    """A job with its payload and progress, read as this node's documents (as stored, with the reason,
    when this node cannot read them)."""
    out = job.to_dict()
    out["study_uid"] = _study_uid(job)
    try:
        out["payload"] = JobPayload.from_json(job.payload).to_json()
        out["progress"] = JobProgress.from_json(job.progress).to_json()
    except JobDocumentError as exc:
        out["document_error"] = str(exc)
    return out


def _int(query: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(query.get(key, str(default)))
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {query.get(key)!r}") from None


def body_limit(method: str, path: str) -> int:
    """The largest request body accepted by ``method`` on ``path`` (relative to ``/lesion-ai/``): a model
    upload's :data:`~orthanc_plugin.models.registry.MAX_UPLOAD_BYTES`, :data:`MAX_REQUEST_BYTES` for the rest."""
    found = MODEL_ROUTE.match(path.strip("/"))
    if method == "POST" and found is not None and found.group(2) is None:
        return MAX_UPLOAD_BYTES
    return MAX_REQUEST_BYTES


class AdminApi:
    """Handlers of the admin routes (see the module docstring).

    Parameters
    ----------
    node : AdminNode
        The running node (:class:`~orthanc_plugin.plugin.NodePlugin`).
    """

    def __init__(self, node: AdminNode) -> None:
        self.node = node
        self.rules = RulesRoutes(node)
        self.models = ModelsRoutes(node.models, lambda: node.verdicts.summary())

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        headers: Mapping[str, Any] | None = None,
    ) -> Answer:
        """Dispatch one request; ``path`` is relative to ``/lesion-ai/``; ``headers``: the request's
        (the CSRF header of state-changing requests, the user name of basic authentication)."""
        path = path.strip("/")
        refused = csrf_refusal(method, headers)
        if refused is not None:
            logger.warning("%s /lesion-ai/%s refused: no %s header", method, path, CSRF_HEADER)
            return refused
        limit = body_limit(method, path)
        if len(body) > limit:
            logger.warning("%s /lesion-ai/%s refused: a body of %d bytes", method, path, len(body))
            return _error(
                413,
                f"the request body of {len(body)} bytes is larger than the {limit} accepted by this route",
            )
        user = request_user(headers)
        try:
            return self._route(method, path, query, body, user)
        except ValueError as exc:
            return _error(400, str(exc))

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes, user: str | None) -> Answer:
        rules = self.rules
        fixed: dict[str, dict[str, Callable[[], Answer]]] = {
            "health": {"GET": self.health},
            "model": {"GET": self.model},
            "jobs": {"GET": lambda: self.jobs(query)},
            "studies": {"GET": lambda: self.studies(query)},
            "labels": {"GET": lambda: self.labels(query)},
            "verdicts": {"GET": lambda: self.verdicts(query)},
            "ignored": {"GET": lambda: self.ignored(query)},
            "rules": {"GET": rules.get_rules, "PUT": lambda: rules.put_rules(body, user)},
            "rules/validate": {"POST": lambda: rules.validate(body)},
            "rules/test": {"POST": lambda: rules.test_rules(_json_body(body))},
            "rules/history": {"GET": rules.history_list},
            "source": {"GET": self.source},
            "models": {"GET": self.models.list_models},
        }
        handlers = fixed.get(path)
        if handlers is None:
            handlers = self._parametrized(path, body, user)
        if handlers is None:
            return _error(404, f"unknown route /lesion-ai/{path}; see GET /lesion-ai/health and the README")
        handler = handlers.get(method)
        if handler is None:
            return 405, {"allowed": ",".join(handlers)}, _JSON
        return handler()

    def _parametrized(
        self, path: str, body: bytes, user: str | None
    ) -> dict[str, Callable[[], Answer]] | None:
        """The handlers of a route with a parameter in its path (None: no such route)."""
        if (m := _JOB.match(path)) is not None:
            job_id = int(m.group(1))
            return {"GET": lambda: self.job(job_id)}
        if (m := _RETRY.match(path)) is not None:
            retried = int(m.group(1))
            return {"POST": lambda: self.retry(retried, user)}
        if (m := _PROCESS.match(path)) is not None:
            study = m.group(1)
            return {"POST": lambda: self.process(study, _json_body(body))}
        if (m := MODEL_ROUTE.match(path)) is not None:
            name, action = m.group(1), m.group(2)
            if action == "shadow":
                return {"POST": lambda: self.models.shadow(name, body, user)}
            if action == "promote":
                return {"POST": lambda: self.models.promote(name, user)}
            return {
                "GET": lambda: self.models.get_model(name),
                "POST": lambda: self.models.add(name, body, user),
            }
        if (m := _RESTORE.match(path)) is not None:
            number = int(m.group(1))
            return {"POST": lambda: self.rules.restore(number, user)}
        return None

    # -- the node -------------------------------------------------------------------------------------
    def health(self) -> Answer:
        """``GET health``."""
        rules = self.node.current_rules()
        figures = self.node.health_figures()
        workers = list(figures.worker_processes)
        problems = list(figures.problems)
        if figures.workers_configured and sum(1 for w in workers if w["alive"]) < figures.workers_configured:
            problems.append("not every worker process is running")
        queue = self.node.queue
        try:
            counts: dict[str, int] | None = queue.counts()
        except Exception as exc:
            counts = None
            problems.append(f"job queue unavailable: {exc}")
        card = self.node.model_card()
        body = {
            "status": "ok" if not problems else "degraded",
            "problems": problems,
            "version": __version__,
            "uptime_s": round(figures.uptime_s, 1),
            "disk": list(figures.disk),
            "model": figures.model,
            "model_card": (
                {
                    "name": card.get("name"),
                    "version": card.get("version"),
                    "created": card.get("created"),
                    "intended_use": card.get("intended_use"),
                    "url": "/lesion-ai/model",
                }
                if card is not None
                else None
            ),
            "queue": {"backend": type(queue).__name__, "counts": counts},
            "workers": {"configured": figures.workers_configured, "processes": workers},
            "rules": {
                "source": str(figures.rules_source),
                "count": len(rules.rules),
                "names": [r.name for r in rules.rules],
            },
            "changes": {"last_sequence": figures.last_sequence, "pending_studies": figures.pending_studies},
            "cluster": figures.cluster,
            "last_evaluation": figures.last_evaluation.to_json() if figures.last_evaluation else None,
        }
        return 200, body, _JSON

    def model(self) -> Answer:
        """``GET model``: the model card as stored in the artifact."""
        card = self.node.model_card()
        if card is None:
            return _error(
                404,
                f"no model card can be read for the model in use ({self.node.health_figures().model}); "
                "see the node's log",
            )
        return 200, card, _JSON

    def source(self) -> Answer:
        """``GET source``: the node's source (AGPL-3.0-or-later) as a gzip-compressed tar archive."""
        return 200, source_archive(), "application/gzip"

    # -- jobs -----------------------------------------------------------------------------------------
    def jobs(self, query: dict[str, str]) -> Answer:
        """``GET jobs``: filters ``state``, ``study`` (Orthanc ID or StudyInstanceUID), ``rule``; paging
        ``limit`` (1 to 1000), ``offset``; ``has_more`` says whether a next page exists."""
        state = query.get("state")
        try:
            wanted = JobState(state) if state else None
        except ValueError:
            return _error(400, f"state must be one of {', '.join(s.value for s in JobState)}, got {state!r}")
        limit, offset = _int(query, "limit", 100), _int(query, "offset", 0)
        if not 0 <= offset <= _MAX_SQL_INT:
            return _error(400, f"offset must be from 0 to {_MAX_SQL_INT}, got {offset}")
        limit = max(1, min(limit, 1000))
        study = query.get("study") or None
        rule = query.get("rule") or None
        queue = self.node.queue
        if rule is None and (study is None or not _UID.match(study)):
            found = queue.list(wanted, study, limit + 1, offset)
        else:
            uid = study if study is not None and _UID.match(study) else None

            def keep(job: Job) -> bool:
                return (rule is None or job.rule == rule) and (uid is None or _study_uid(job) == uid)

            found = self._scan(wanted, None if uid else study, keep, limit + 1, offset)
        body = {
            "jobs": [_job_summary(job) for job in found[:limit]],
            "counts": queue.counts(),
            "limit": limit,
            "offset": offset,
            "has_more": len(found) > limit,
        }
        return 200, body, _JSON

    def _scan(
        self, state: JobState | None, study: str | None, keep: Callable[[Job], bool], count: int, offset: int
    ) -> list[Job]:
        """Up to ``count`` jobs that ``keep`` accepts after skipping ``offset`` of them, newest first (the
        newest :data:`_SCAN_MAX` jobs are looked at)."""
        out: list[Job] = []
        skipped = position = 0
        while position < _SCAN_MAX and len(out) < count:
            batch = self.node.queue.list(state, study, _SCAN_BATCH, position)
            for job in batch:
                if not keep(job):
                    continue
                if skipped < offset:
                    skipped += 1
                elif len(out) < count:
                    out.append(job)
            if len(batch) < _SCAN_BATCH:
                break
            position += _SCAN_BATCH
        return out

    def job(self, job_id: int) -> Answer:
        """``GET jobs/{id}``: the job with its documents, and its study's description (when it still
        exists in Orthanc)."""
        if job_id > _MAX_SQL_INT:
            return _error(404, f"no job {job_id}")
        job = self.node.queue.get(job_id)
        if job is None:
            return _error(404, f"no job {job_id}")
        out = _job_json(job)
        try:
            study = self.node.api.get_json(f"/studies/{quote_id(job.study_id)}")
            out["study_description"] = str(study.get("MainDicomTags", {}).get("StudyDescription", ""))
            out["study_exists"] = True
        except NotFoundError:
            out["study_description"], out["study_exists"] = None, False
        except RestApiError as exc:
            logger.warning("job %d: study %s cannot be read: %s", job_id, job.study_id, exc)
            out["study_description"], out["study_exists"] = None, None
        return 200, out, _JSON

    def retry(self, job_id: int, user: str | None) -> Answer:
        """``POST jobs/{id}/retry``: a failed job queued again, attempts reset, who and when recorded in
        its ``error`` (see :meth:`~orthanc_plugin.jobqueue.JobQueue.retry`)."""
        queue = self.node.queue
        job = queue.get(job_id) if job_id <= _MAX_SQL_INT else None
        if job is None:
            return _error(404, f"no job {job_id}")
        if job.state is not JobState.FAILED:
            return _error(409, f"job {job_id} is {job.state.value}: only a failed job can be retried")
        if (job.error or "").startswith((SUPERSEDED, WITHDRAWN)):
            return _error(
                409,
                f"job {job_id} was {job.error}: it is not retried; re-process the study instead "
                f"(POST /lesion-ai/studies/{job.study_id}/process)",
            )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        note = f"retry requested by {user or 'an unauthenticated request'} at {stamp}"
        if not queue.retry(job_id, note):
            return _error(409, f"job {job_id} changed meanwhile; look at it again")
        again = queue.get(job_id)
        if again is None:
            return _error(404, f"no job {job_id}")
        return 200, {"job": _job_summary(again), "message": "queued again"}, _JSON

    def process(self, study_id: str, body: dict[str, Any]) -> Answer:
        """``POST studies/{id}/process``: queue the study's jobs again now."""
        try:
            jobs = self.node.enqueue_study(study_id, force=True)
        except NotFoundError:
            return _error(404, f"no study {study_id} in Orthanc")
        if not jobs:
            message = "no rule applies to this study"
        elif any(j.created for j in jobs):
            message = "queued"
        else:
            message = "already queued or running"
        return 200, {"study": study_id, "jobs": [j.to_json() for j in jobs], "message": message}, _JSON

    # -- labels ---------------------------------------------------------------------------------------
    def ignored(self, query: Mapping[str, str]) -> Answer:
        """``GET ignored``: the studies no rule matched (newest first), each with its rules' outcomes, and
        how long they are kept."""
        try:
            limit, offset = _int(query, "limit", 100), _int(query, "offset", 0)
        except ValueError as exc:
            return _error(400, str(exc))
        if not (1 <= limit <= 1000 and offset >= 0):
            return _error(400, f"limit must be 1 to 1000 and offset at least 0, got {limit} and {offset}")
        store = self.node.ignored
        return (
            200,
            {
                "ignored": store.list(limit=limit, offset=offset),
                "total": len(store),
                "kept_days": store.keep_s / 86400.0,
            },
            _JSON,
        )

    def labels(self, query: dict[str, str]) -> Answer:
        """``GET labels``: the radiologists' SEGs recorded as labels, newest first; filter ``study`` (Orthanc
        ID or StudyInstanceUID); paging ``limit`` (1 to 1000), ``offset``; ``has_more`` says whether a next
        page exists."""
        limit, offset = _int(query, "limit", 100), _int(query, "offset", 0)
        if not 0 <= offset <= _MAX_SQL_INT:
            return _error(400, f"offset must be from 0 to {_MAX_SQL_INT}, got {offset}")
        limit = max(1, min(limit, 1000))
        study = query.get("study") or None
        store = self.node.labels
        found = store.list(study, limit + 1, offset)
        body = {
            "labels": [label.to_json() for label in found[:limit]],
            "total": store.count(study),
            "limit": limit,
            "offset": offset,
            "has_more": len(found) > limit,
        }
        return 200, body, _JSON

    def verdicts(self, query: dict[str, str]) -> Answer:
        """``GET verdicts``: the radiologists' verdicts read from their saved SRs, newest first: each study's
        current ones (``history=true``: every record, refusals included); filters ``study`` (Orthanc ID or
        StudyInstanceUID) and ``model`` (``name version``); paging ``limit`` (1 to 1000), ``offset``; and per
        model the totals over the current verdicts (``summary``)."""
        limit, offset = _int(query, "limit", 100), _int(query, "offset", 0)
        if not 0 <= offset <= _MAX_SQL_INT:
            return _error(400, f"offset must be from 0 to {_MAX_SQL_INT}, got {offset}")
        history = str(query.get("history", "false")).lower()
        if history not in ("true", "false", "1", "0"):
            return _error(400, f"history must be true or false, got {query.get('history')!r}")
        limit = max(1, min(limit, 1000))
        study, model = query.get("study") or None, query.get("model") or None
        store = self.node.verdicts
        found = store.list(study, model, history=history in ("true", "1"), limit=limit + 1, offset=offset)
        body = {
            "verdicts": [record.to_json() for record in found[:limit]],
            "total": store.count(study, model, history=history in ("true", "1")),
            "limit": limit,
            "offset": offset,
            "has_more": len(found) > limit,
            "summary": store.summary(),
        }
        return 200, body, _JSON

    # -- studies --------------------------------------------------------------------------------------
    def studies(self, query: dict[str, str]) -> Answer:
        """``GET studies?limit=50``: the studies Orthanc stored last, newest first (Orthanc ID,
        StudyInstanceUID, StudyDescription, series count, stable; no patient data)."""
        limit = max(1, min(_int(query, "limit", 50), 500))
        api = self.node.api
        total = int(api.get_json("/statistics").get("CountStudies", 0))
        found = api.get_json(f"/studies?expand&since={max(0, total - limit)}&limit={limit}")
        studies = []
        for study in reversed(found):
            tags = study.get("MainDicomTags", {})
            studies.append(
                {
                    "id": str(study.get("ID", "")),
                    "study_instance_uid": str(tags.get("StudyInstanceUID", "")),
                    "description": str(tags.get("StudyDescription", "")),
                    "series": len(study.get("Series", [])),
                    "stable": bool(study.get("IsStable", True)),
                }
            )
        return 200, {"studies": studies, "total": total}, _JSON
