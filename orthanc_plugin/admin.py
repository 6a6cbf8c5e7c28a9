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

import io
import logging
import re
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lesion_engine import __version__
from lesion_engine.errors import ConfigError
from orthanc_plugin.jobqueue import JobState
from orthanc_plugin.orthanc_api import NotFoundError, RestApiError, quote_id
from orthanc_plugin.rules import RoutingRules, check_destinations, parse_rules
from orthanc_plugin.studies import OrthancSeries, plan_study

if TYPE_CHECKING:
    from orthanc_plugin.plugin import NodePlugin

logger = logging.getLogger(__name__)

__all__ = ["AdminApi", "classify_roles"]

Answer = tuple[int, Any, str]
_JSON = "application/json"
_JOB = re.compile(r"^jobs/(\d+)$")
_PROCESS = re.compile(r"^studies/([^/]+)/process$")


def _error(status: int, message: str) -> Answer:
    return status, {"error": message}, _JSON


def _json_body(body: bytes) -> dict[str, Any]:
    import json

    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def classify_roles(api: Any, series: list[OrthancSeries], rules: Any) -> dict[str, Any]:
    """Header-only role classification of series (what ``lesion-ai inspect`` would say before reading pixels).

    Parameters
    ----------
    api : RestApi
        Orthanc's REST API (instances are read without pixel data decoding).
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
    import pydicom
    from pydicom.dataset import Dataset

    from lesion_engine.roles import classify_series, preference_key
    from lesion_engine.series import build_series
    from lesion_engine.series_rules import load_series_rules

    rules = rules if rules is not None else load_series_rules()
    rows = []
    candidates: dict[str, list[Any]] = {"t2w": [], "adc": [], "dwi": []}
    for item in series:
        datasets: list[tuple[str, Dataset]] = []
        for instance in item.instances:
            data = api.get_bytes(f"/instances/{quote_id(instance)}/file")
            datasets.append(
                (instance, pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True))
            )
        built, bad = build_series(item.series_instance_uid, datasets)
        row: dict[str, Any] = {**item.describe(), "candidate_for": [], "ignored": None, "reasons": []}
        if built is None:
            row["ignored"] = "unreadable"
            row["reasons"] = [reason for _, reason in bad][:3]
        else:
            verdict = classify_series(built, rules)
            row.update(
                candidate_for=sorted(verdict.candidate_for),
                ignored=verdict.ignored,
                reasons=list(verdict.reasons),
                b_values=built.b_values,
            )
            for role in verdict.candidate_for:
                candidates[role].append((preference_key(built), item, built))
        rows.append(row)
    roles: dict[str, Any] = {}
    for role in ("t2w", "adc"):
        ranked = sorted(candidates[role], key=lambda c: c[0], reverse=True)
        if ranked:
            roles[role] = {
                "preferred": ranked[0][1].describe(),
                "alternatives": [c[1].describe() for c in ranked[1:]],
            }
        else:
            roles[role] = None
    roles["dwi"] = [{**c[1].describe(), "b_values": c[2].b_values} for c in candidates["dwi"]] or None
    return {"series": rows, "roles": roles}


_SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "Makefile")
_SOURCE_FOLDERS = (
    "lesion_engine",
    "orthanc_plugin",
    "training",
    "config",
    "scripts",
    "benchmarks",
    "tests",
    ".ci",
)
_SKIPPED_IN_SOURCE = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


class AdminApi:
    """Handlers of the admin routes (see the module docstring)."""

    def __init__(self, plugin: NodePlugin) -> None:
        self.plugin = plugin

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
        p = self.plugin
        rules = p.current_rules()
        workers = p.supervisor.status() if p.supervisor is not None else []
        problems = list(p.errors)
        if p.rules_error:
            problems.append(p.rules_error)
        if p.settings.workers and sum(1 for w in workers if w["alive"]) < p.settings.workers:
            problems.append("not every worker process is running")
        try:
            counts: dict[str, int] | None = p.queue.counts()
        except Exception as exc:
            counts = None
            problems.append(f"job queue unavailable: {exc}")
        body = {
            "status": "ok" if not problems else "degraded",
            "problems": problems,
            "version": __version__,
            "uptime_s": round(time.time() - p.started_at, 1),
            "model": p.model,
            "queue": {"backend": repr(p.queue).split("(")[0], "counts": counts},
            "workers": {"configured": p.settings.workers, "processes": workers},
            "rules": {
                "source": str(p.settings.rules),
                "count": len(rules.rules),
                "names": [r.name for r in rules.rules],
            },
            "changes": {"last_sequence": p.follower.last, "pending_studies": len(p.follower.pending)},
            "last_evaluation": p.last_evaluation,
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
        jobs = self.plugin.queue.list(
            wanted, query.get("study") or None, max(1, min(limit, 1000)), max(offset, 0)
        )
        items = []
        for job in jobs:
            item = job.to_dict()
            item.pop("payload")
            item.pop("progress")
            items.append(item)
        return 200, {"jobs": items, "counts": self.plugin.queue.counts()}, _JSON

    def job(self, job_id: int) -> Answer:
        """``GET jobs/{id}``."""
        job = self.plugin.queue.get(job_id)
        if job is None:
            return _error(404, f"no job {job_id}")
        return 200, job.to_dict(), _JSON

    def process(self, study_id: str, body: dict[str, Any]) -> Answer:
        """``POST studies/{id}/process``: queue the study's jobs again now."""
        try:
            jobs = self.plugin.enqueue_study(study_id, force=True)
        except NotFoundError:
            return _error(404, f"no study {study_id} in Orthanc")
        if not jobs:
            message = "no rule applies to this study"
        elif any(j["created"] for j in jobs):
            message = "queued"
        else:
            message = "already queued or running"
        return 200, {"study": study_id, "jobs": jobs, "message": message}, _JSON

    def get_rules(self) -> Answer:
        """``GET rules``."""
        rules = self.plugin.current_rules()
        return (
            200,
            {"source": rules.source, "text": rules.text, "rules": [r.summary() for r in rules.rules]},
            _JSON,
        )

    def _destinations_known(self) -> dict[str, list[str]]:
        api = self.plugin.api
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

    def _parse(self, text: str, source: str) -> RoutingRules:
        return parse_rules(text, source, self.plugin.settings.rules.parent)

    def put_rules(self, body: bytes) -> Answer:
        """``PUT rules``: validate, check destinations, save and apply; old rules stay on error."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "the rules must be UTF-8 text (YAML)")
        try:
            rules = self._parse(text, "PUT /lesion-ai/rules")
        except ConfigError as exc:
            return _error(400, str(exc))
        missing = check_destinations(rules, self._destinations_known())
        if missing:
            return _error(400, "PUT /lesion-ai/rules: " + "; ".join(missing))
        self.plugin.replace_rules(rules)
        return 200, {"status": "ok", "rules": [r.summary() for r in rules.rules]}, _JSON

    def test_rules(self, body: dict[str, Any]) -> Answer:
        """``POST rules/test``: body ``{"study": ID, "rules": optional YAML, "roles": true}``."""
        study_id = body.get("study")
        if not isinstance(study_id, str) or not study_id:
            return _error(400, "the body needs 'study': an Orthanc study ID")
        rules = self.plugin.current_rules()
        if body.get("rules") is not None:
            if not isinstance(body["rules"], str):
                return _error(400, "'rules' must be YAML text")
            try:
                rules = self._parse(body["rules"], "POST /lesion-ai/rules/test (rules)")
            except ConfigError as exc:
                return _error(400, str(exc))
        p = self.plugin
        try:
            plan = plan_study(p.api, study_id, rules, p.model, p.settings.metadata_name, p.manufacturer)
        except NotFoundError:
            return _error(404, f"no study {study_id} in Orthanc")
        out = plan.describe()
        if body.get("roles", True):
            for entry, match in zip(out["matches"], plan.matches, strict=True):
                series = [s for s in match.series if isinstance(s, OrthancSeries)]
                try:
                    entry["roles"] = classify_roles(p.api, series, match.rule.series_rules)
                except Exception as exc:
                    entry["roles"] = {"error": f"{type(exc).__name__}: {exc}"}
        return 200, out, _JSON

    def source(self) -> Answer:
        """``GET source``: the node's source (AGPL-3.0-or-later) as a gzip-compressed tar archive.

        Everything needed to build, install and run the node as it runs here: the packages (the model
        artifacts they ship included), configuration templates, set-up scripts and build files, from the
        installed tree. Caches and build outputs are left out.
        """
        root = Path(__file__).resolve().parent.parent
        prefix = f"lesion-ai-{__version__}"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name in _SOURCE_FILES:
                if (root / name).is_file():
                    tar.add(root / name, arcname=f"{prefix}/{name}")
            for folder in _SOURCE_FOLDERS:
                for path in sorted((root / folder).rglob("*")):
                    relative = path.relative_to(root)
                    if (
                        path.is_file()
                        and not _SKIPPED_IN_SOURCE.intersection(relative.parts)
                        and path.suffix != ".pyc"
                    ):
                        tar.add(path, arcname=f"{prefix}/{relative}")
        return 200, buffer.getvalue(), "application/gzip"
