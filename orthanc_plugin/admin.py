"""The admin REST API under ``/lesion-ai/`` (behind Orthanc's authentication).

=======  =============================  ==========================================================
GET      health                         node state: queue counts, workers, rules, model, change log
GET      jobs?state=&study=&limit=      jobs, newest first (without payloads)
GET      jobs/{id}                      one job, with payload and progress
POST     studies/{orthanc-id}/process   (re)queue a study's jobs now, even if done before
GET      rules                          the routing rules in force (text and summary)
PUT      rules                          replace the rules (YAML body); 400 with the message if invalid
POST     rules/test                     which rule matches a study and which series get which role
GET      source                         the node's complete source (AGPL), as a .tar.gz
=======  =============================  ==========================================================

Handlers return ``(status, body, mime type)``; the plugin turns that into Orthanc's answer.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from lesion_engine import __version__
from lesion_engine.errors import ConfigError
from orthanc_plugin.jobqueue import Job, JobDocumentError, JobPayload, JobProgress, JobState
from orthanc_plugin.node_protocol import AdminNode
from orthanc_plugin.orthanc_api import NotFoundError, RestApi, RestApiError, quote_id
from orthanc_plugin.rules import RoutingRules, check_destinations
from orthanc_plugin.source_archive import source_archive
from orthanc_plugin.studies import OrthancSeries

logger = logging.getLogger(__name__)

__all__ = ["AdminApi", "describe_roles"]

Answer = tuple[int, Any, str]
_JSON = "application/json"
_JOB = re.compile(r"^jobs/([0-9]{1,30})$")
#: Job IDs and offsets are SQL integers (64-bit signed): a larger number names no job.
_MAX_SQL_INT = 2**63 - 1
_PROCESS = re.compile(r"^studies/([^/]+)/process$")


def _error(status: int, message: str) -> Answer:
    return status, {"error": message}, _JSON


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


def _job_json(job: Job) -> dict[str, Any]:
    """A job with its payload and progress, read as this node's documents (as stored, with the reason,
    when this node cannot read them)."""
    out = job.to_dict()
    try:
        out["payload"] = JobPayload.from_json(job.payload).to_json()
        out["progress"] = JobProgress.from_json(job.progress).to_json()
    except JobDocumentError as exc:
        out["document_error"] = str(exc)
    return out


def describe_roles(api: RestApi, series: list[OrthancSeries], rules: Any) -> dict[str, Any]:
    """Header-only roles of series (what ``lesion-ai inspect`` would say before reading pixels).

    Parameters
    ----------
    api : RestApi
        Orthanc's REST API (every instance's header is read, pixel data is not decoded).
    series : list of OrthancSeries
        The input series.
    rules : SeriesRules or None
        Series-selection rules (the engine's defaults when None).

    Returns
    -------
    dict
        ``series``: per series, candidate roles or why it is ignored; ``roles``: for ``t2w`` and ``adc`` the
        preferred candidate, for ``dwi`` the candidates with their b-values (the final choice also needs
        the volumes to be buildable, which only processing checks).
    """
    import io

    import pydicom

    from lesion_engine.header_roles import UNREADABLE, SeriesHeaders, rank_roles

    items = []
    for item in series:
        headers = []
        for instance in item.instances:
            data = api.get_bytes(f"/instances/{quote_id(instance)}/file")
            headers.append((instance, pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)))
        items.append(SeriesHeaders(item, item.series_instance_uid, headers))
    ranked = rank_roles(items, rules)
    rows = []
    for item, verdict in ranked.verdicts:
        row: dict[str, Any] = {
            **item.describe(),
            "candidate_for": sorted(verdict.candidate_for),
            "ignored": verdict.ignored,
            "reasons": list(verdict.reasons),
        }
        if verdict.ignored != UNREADABLE and verdict.series is not None:
            row["b_values"] = verdict.series.b_values
        rows.append(row)
    roles: dict[str, Any] = {}
    for role, ranked_role in (("t2w", ranked.t2w), ("adc", ranked.adc)):
        roles[role] = (
            {
                "preferred": ranked_role[0][0].describe(),
                "alternatives": [candidate.describe() for candidate, _ in ranked_role[1:]],
            }
            if ranked_role
            else None
        )
    roles["dwi"] = [{**item.describe(), "b_values": built.b_values} for item, built in ranked.dwi] or None
    return {"series": rows, "roles": roles}


class AdminApi:
    """Handlers of the admin routes (see the module docstring).

    Parameters
    ----------
    node : AdminNode
        The running node (:class:`~orthanc_plugin.plugin.NodePlugin`).
    """

    def __init__(self, node: AdminNode) -> None:
        self.node = node

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> Answer:
        """Dispatch one request; ``path`` is relative to ``/lesion-ai/``."""
        path = path.strip("/")
        try:
            if path == "health":
                return self._only(method, "GET") or self.health()
            if path == "jobs":
                return self._only(method, "GET") or self.jobs(query)
            if (m := _JOB.match(path)) is not None:
                return self._only(method, "GET") or self.job(int(m.group(1)))
            if (m := _PROCESS.match(path)) is not None:
                return self._only(method, "POST") or self.process(m.group(1), _json_body(body))
            if path == "rules":
                if method == "GET":
                    return self.get_rules()
                if method == "PUT":
                    return self.put_rules(body)
                return 405, {"allowed": "GET,PUT"}, _JSON
            if path == "rules/test":
                return self._only(method, "POST") or self.test_rules(_json_body(body))
            if path == "source":
                return self._only(method, "GET") or self.source()
        except ValueError as exc:
            return _error(400, str(exc))
        return _error(404, f"unknown route /lesion-ai/{path}; see GET /lesion-ai/health and the README")

    @staticmethod
    def _only(method: str, allowed: str) -> Answer | None:
        return None if method == allowed else (405, {"allowed": allowed}, _JSON)

    # -- routes ---------------------------------------------------------------------------------------
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
        body = {
            "status": "ok" if not problems else "degraded",
            "problems": problems,
            "version": __version__,
            "uptime_s": round(figures.uptime_s, 1),
            "model": figures.model,
            "queue": {"backend": type(queue).__name__, "counts": counts},
            "workers": {"configured": figures.workers_configured, "processes": workers},
            "rules": {
                "source": str(figures.rules_source),
                "count": len(rules.rules),
                "names": [r.name for r in rules.rules],
            },
            "changes": {"last_sequence": figures.last_sequence, "pending_studies": figures.pending_studies},
            "last_evaluation": figures.last_evaluation.to_json() if figures.last_evaluation else None,
        }
        return 200, body, _JSON

    def jobs(self, query: dict[str, str]) -> Answer:
        """``GET jobs``."""
        state = query.get("state")
        try:
            wanted = JobState(state) if state else None
        except ValueError:
            return _error(400, f"state must be one of {', '.join(s.value for s in JobState)}, got {state!r}")
        try:
            limit = int(query.get("limit", "100"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            return _error(400, "limit and offset must be integers")
        if not 0 <= offset <= _MAX_SQL_INT:
            return _error(400, f"offset must be from 0 to {_MAX_SQL_INT}, got {offset}")
        queue = self.node.queue
        jobs = queue.list(wanted, query.get("study") or None, max(1, min(limit, 1000)), max(offset, 0))
        items = []
        for job in jobs:
            item = job.to_dict()
            item.pop("payload")
            item.pop("progress")
            items.append(item)
        return 200, {"jobs": items, "counts": queue.counts()}, _JSON

    def job(self, job_id: int) -> Answer:
        """``GET jobs/{id}``."""
        if job_id > _MAX_SQL_INT:
            return _error(404, f"no job {job_id}")
        job = self.node.queue.get(job_id)
        if job is None:
            return _error(404, f"no job {job_id}")
        return 200, _job_json(job), _JSON

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

    def get_rules(self) -> Answer:
        """``GET rules``."""
        rules = self.node.current_rules()
        return (
            200,
            {"source": rules.source, "text": rules.text, "rules": [r.summary() for r in rules.rules]},
            _JSON,
        )

    def _destinations_known(self) -> dict[str, list[str]]:
        api = self.node.api
        known: dict[str, list[str]] = {}
        for kind, uri, plugins in (
            ("modalities", "/modalities", False),
            ("peers", "/peers", False),
            ("dicomweb", "/dicom-web/servers", True),
        ):
            try:
                known[kind] = [str(x) for x in api.get_json(uri, plugins=plugins)]
            except RestApiError:
                known[kind] = []
        return known

    def put_rules(self, body: bytes) -> Answer:
        """``PUT rules``: validate, check destinations, save and apply; old rules stay on error."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "the rules must be UTF-8 text (YAML)")
        try:
            rules = self.node.rules_from_text(text, "PUT /lesion-ai/rules")
        except ConfigError as exc:
            return _error(400, str(exc))
        missing = check_destinations(rules, self._destinations_known())
        if missing:
            return _error(400, "PUT /lesion-ai/rules: " + "; ".join(missing))
        self.node.replace_rules(rules)
        return 200, {"status": "ok", "rules": [r.summary() for r in rules.rules]}, _JSON

    def test_rules(self, body: dict[str, Any]) -> Answer:
        """``POST rules/test``: body ``{"study": ID, "rules": optional YAML, "roles": true}``."""
        study_id = body.get("study")
        if not isinstance(study_id, str) or not study_id:
            return _error(400, "the body needs 'study': an Orthanc study ID")
        rules: RoutingRules = self.node.current_rules()
        if body.get("rules") is not None:
            if not isinstance(body["rules"], str):
                return _error(400, "'rules' must be YAML text")
            try:
                rules = self.node.rules_from_text(body["rules"], "POST /lesion-ai/rules/test (rules)")
            except ConfigError as exc:
                return _error(400, str(exc))
        try:
            plan = self.node.plan_study(study_id, rules)
        except NotFoundError:
            return _error(404, f"no study {study_id} in Orthanc")
        out = plan.describe()
        if body.get("roles", True):
            for entry, match in zip(out["matches"], plan.matches, strict=True):
                series = [s for s in match.series if isinstance(s, OrthancSeries)]
                try:
                    entry["roles"] = describe_roles(self.node.api, series, match.rule.series_rules)
                except Exception as exc:
                    entry["roles"] = {"error": f"{type(exc).__name__}: {exc}"}
        return 200, out, _JSON

    def source(self) -> Answer:
        """``GET source``: the node's source (AGPL-3.0-or-later) as a gzip-compressed tar archive."""
        return 200, source_archive(), "application/gzip"
