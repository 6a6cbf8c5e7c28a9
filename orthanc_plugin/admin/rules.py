"""The admin API's routes for the routing rules (see :mod:`orthanc_plugin.admin.routes` for the others).

=======  ===============================  ========================================================
GET      rules                            the rules in force: text, summary, who saved them and when
PUT      rules                            validate, keep the previous version, apply and save
POST     rules/validate                   validate (YAML body) without applying: errors with line and field
POST     rules/test                       which rule matches a study and which series get which role
GET      rules/history                    the earlier versions kept (the last 10), newest first
POST     rules/history/{n}/restore        put version ``n`` back in force (the current one is kept)
=======  ===============================  ========================================================

An error in the rules is answered ``400 {"error": message, "line": N, "field": "rules[0].priorty"}``
(``line`` and ``field`` null where the message names none).

``POST rules/test`` evaluates the rules on a thread of its own, one evaluation at a time, so that Orthanc's
REST thread never waits for it longer than :data:`EVALUATION_TIMEOUT_S`: a slower evaluation is answered
``503`` ("rule evaluation took longer than N s") and its result is dropped when it ends; a request that
comes while an evaluation still runs is answered ``503`` at once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from lesion_engine.errors import ConfigError
from lesion_engine.intake.series_rules import SeriesRules
from orthanc_plugin.admin.node_protocol import AdminNode
from orthanc_plugin.intake.studies import OrthancSeries
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApi, RestApiError, quote_id
from orthanc_plugin.rules import DESTINATION_KINDS, RoutingRules
from orthanc_plugin.rules.history import RulesHistoryStore

logger = logging.getLogger(__name__)

__all__ = ["EVALUATION_TIMEOUT_S", "BoundedEvaluator", "RulesRoutes", "describe_roles", "error_location"]

#: Longest Orthanc's REST thread waits for a ``POST rules/test`` evaluation, in seconds.
EVALUATION_TIMEOUT_S = 5.0

Answer = tuple[int, Any, str]
_JSON = "application/json"
#: Where a rules error points: ``source, line 4, field rules[0].priorty: ...`` (the rules' parser), or
#: ``line 2, column 9`` (the YAML scanner).
_FIELD_AT = re.compile(r", line ([0-9]+), field ([^:\n]+):")
_LINE_AT = re.compile(r"\bline ([0-9]+)(?:, column [0-9]+)?")


def error_location(message: str) -> dict[str, Any]:
    """The line and the field a rules error names (``{"line": int or None, "field": str or None}``)."""
    if (m := _FIELD_AT.search(message)) is not None:
        field = m.group(2).strip()
        return {"line": int(m.group(1)), "field": None if field == "(top level)" else field}
    if (m := _LINE_AT.search(message)) is not None:
        return {"line": int(m.group(1)), "field": None}
    return {"line": None, "field": None}


def _rules_error(message: str) -> Answer:
    return 400, {"error": message, **error_location(message)}, _JSON


def _error(status: int, message: str) -> Answer:
    return status, {"error": message}, _JSON


def describe_roles(api: RestApi, series: list[OrthancSeries], rules: SeriesRules | None) -> dict[str, Any]:
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

    from lesion_engine.intake.header_roles import UNREADABLE, SeriesHeaders, rank_roles

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


class BoundedEvaluator:
    """Runs one evaluation at a time on a thread of its own; the caller waits at most ``timeout_s``.

    Parameters
    ----------
    timeout_s : float
        Longest wait for an evaluation, in seconds (greater than 0).
    what : str
        What is evaluated, for the messages (``rule evaluation``).
    """

    def __init__(self, timeout_s: float = EVALUATION_TIMEOUT_S, what: str = "rule evaluation") -> None:
        if not timeout_s > 0:
            raise ValueError(f"the evaluation timeout must be greater than 0 seconds, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.what = what
        self._busy = threading.Lock()
        self._started = 0.0

    @property
    def busy(self) -> bool:
        """Whether an evaluation runs now (possibly one whose caller was answered 503)."""
        return self._busy.locked()

    def run(self, evaluate: Callable[[], Answer]) -> Answer:
        """The answer of ``evaluate()``, or ``503`` when it takes longer than ``timeout_s`` or when another
        evaluation still runs; an exception of ``evaluate`` is raised here, in the caller's thread."""
        if not self._busy.acquire(blocking=False):
            return _error(
                503,
                f"another {self.what} is still running (for {time.monotonic() - self._started:.0f} s); "
                "try again when it has ended",
            )
        self._started = time.monotonic()
        done, abandoned = threading.Event(), threading.Event()
        outcome: list[Answer] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                outcome.append(evaluate())
            except Exception as exc:  # raised again in the caller's thread, or logged if it has gone
                failure.append(exc)
            finally:
                self._busy.release()
                done.set()
            if abandoned.is_set():
                took = time.monotonic() - self._started
                if failure:
                    logger.warning("%s failed after %.1f s: %s", self.what, took, failure[0])
                else:
                    logger.info("%s ended after %.1f s; its result was dropped", self.what, took)

        threading.Thread(target=target, name="lesion-ai-rules-test", daemon=True).start()
        if not done.wait(self.timeout_s):
            abandoned.set()
            if not done.is_set():
                logger.warning("%s took longer than %g s; answered 503", self.what, self.timeout_s)
                return _error(
                    503,
                    f"{self.what} took longer than {self.timeout_s:g} s; the node answers other requests "
                    'meanwhile and drops its result. Try again later, or with "roles": false (reading '
                    "every instance's header is the slow part of a large study)",
                )
        if failure:
            raise failure[0]
        if not outcome:
            raise RuntimeError(f"the {self.what} ended without an answer")
        return outcome[0]


class RulesRoutes:
    """Handlers of the rules routes (see the module docstring).

    Parameters
    ----------
    node : AdminNode
        The running node.
    history : RulesHistoryStore, optional
        Where earlier versions are kept (default: the node's, :attr:`AdminNode.rules_history`).
    evaluator : BoundedEvaluator, optional
        Where ``POST rules/test`` evaluates (default: one at a time, :data:`EVALUATION_TIMEOUT_S`).
    """

    def __init__(
        self,
        node: AdminNode,
        history: RulesHistoryStore | None = None,
        evaluator: BoundedEvaluator | None = None,
    ) -> None:
        self.node = node
        self.history = history if history is not None else node.rules_history
        self.evaluator = evaluator if evaluator is not None else BoundedEvaluator()

    # -- reading and validating ---------------------------------------------------------------------
    def get_rules(self) -> Answer:
        """``GET rules``."""
        rules = self.node.current_rules()
        saved_by, saved_at = self.history.author(rules.text)
        return (
            200,
            {
                "source": rules.source,
                "text": rules.text,
                "rules": [r.summary() for r in rules.rules],
                "saved_by": saved_by,
                "saved_at": saved_at,
            },
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

    def _validated(self, text: str, source: str) -> RoutingRules | Answer:
        """The rules of ``text``, or the 400 answer naming the line and field of the first problem
        (destinations that Orthanc does not know included)."""
        try:
            rules = self.node.rules_from_text(text, source)
        except ConfigError as exc:
            return _rules_error(str(exc))
        known = self._destinations_known()
        for index, rule in enumerate(rules.rules):
            for kind in DESTINATION_KINDS:
                for name in getattr(rule.destinations, kind):
                    if name not in known.get(kind, ()):
                        where = f", line {rule.line}" if rule.line is not None else ""
                        return _rules_error(
                            f"{source}{where}, field rules[{index}].destinations.{kind}: rule {rule.name!r}: "
                            f"{kind} {name!r} is not defined in Orthanc (known: "
                            f"{', '.join(known.get(kind, ())) or 'none'}); define it in Orthanc's "
                            "configuration or remove it from the rule"
                        )
        return rules

    @staticmethod
    def _text(body: bytes) -> str:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the rules must be UTF-8 text (YAML)") from None

    def validate(self, body: bytes) -> Answer:
        """``POST rules/validate``: the YAML body validated as ``PUT rules`` would, nothing applied."""
        found = self._validated(self._text(body), "POST /lesion-ai/rules/validate")
        if isinstance(found, tuple):
            return found
        return 200, {"valid": True, "rules": [r.summary() for r in found.rules]}, _JSON

    def test_rules(self, body: dict[str, Any]) -> Answer:
        """``POST rules/test``: body ``{"study": ID, "rules": optional YAML, "roles": true}``; evaluated by
        :attr:`evaluator` (``503`` when it takes too long, see the module docstring)."""
        study_id = body.get("study")
        if not isinstance(study_id, str) or not study_id:
            return _error(400, "the body needs 'study': an Orthanc study ID")
        text = body.get("rules")
        if text is not None and not isinstance(text, str):
            return _error(400, "'rules' must be YAML text")
        roles = body.get("roles", True)
        if not isinstance(roles, bool):
            return _error(400, "'roles' must be true or false")
        return self.evaluator.run(lambda: self._test(study_id, text, roles))

    def _test(self, study_id: str, text: str | None, roles: bool) -> Answer:
        """The evaluation of ``POST rules/test`` (on the evaluator's thread)."""
        rules: RoutingRules = self.node.current_rules()
        if text is not None:
            try:
                rules = self.node.rules_from_text(text, "POST /lesion-ai/rules/test (rules)")
            except ConfigError as exc:
                return _rules_error(str(exc))
        try:
            plan = self.node.plan_study(study_id, rules)
        except NotFoundError:
            return _error(404, f"no study {study_id} in Orthanc")
        out = plan.describe()
        if roles:
            for entry, match in zip(out["matches"], plan.matches, strict=True):
                series = [s for s in match.series if isinstance(s, OrthancSeries)]
                try:
                    entry["roles"] = describe_roles(self.node.api, series, match.rule.series_rules)
                except Exception as exc:
                    entry["roles"] = {"error": f"{type(exc).__name__}: {exc}"}
        return 200, out, _JSON

    # -- changing -----------------------------------------------------------------------------------
    def _apply(self, rules: RoutingRules, user: str | None, what: str) -> Answer | None:
        """Keep the version in force in the history, then put ``rules`` in force; the error answer when
        the history cannot be written (the rules then stay as they were)."""
        previous = self.node.current_rules()
        try:
            self.history.record(previous.text, rules.text, user)
        except (OSError, RuntimeError) as exc:  # a folder not writable; the cluster database unreachable
            logger.error("%s: the rules history cannot be written: %s", what, exc)
            return _error(
                500,
                f"{what}: the rules were not changed: their history cannot be written ({self.history!r}: {exc})",
            )
        try:
            self.node.replace_rules(rules)
        except (OSError, RuntimeError) as exc:
            logger.error("%s: the rules cannot be saved: %s", what, exc)
            return _error(500, f"{what}: the rules were not changed: they cannot be saved: {exc}")
        logger.warning("%s by %s", what, user or "an unauthenticated request")
        return None

    def put_rules(self, body: bytes, user: str | None) -> Answer:
        """``PUT rules``: validate, check destinations, keep the previous version, save and apply; the
        rules in force stay on error."""
        found = self._validated(self._text(body), "PUT /lesion-ai/rules")
        if isinstance(found, tuple):
            return found
        failed = self._apply(found, user, "rules replaced")
        if failed is not None:
            return failed
        return 200, {"status": "ok", "rules": [r.summary() for r in found.rules]}, _JSON

    def history_list(self) -> Answer:
        """``GET rules/history``."""
        current = self.node.current_rules()
        saved_by, saved_at = self.history.author(current.text)
        return (
            200,
            {
                "keep": self.history.keep,
                "current": {"saved_by": saved_by, "saved_at": saved_at},
                "versions": [v.to_json() for v in self.history.versions()],
            },
            _JSON,
        )

    def restore(self, number: int, user: str | None) -> Answer:
        """``POST rules/history/{n}/restore``: validate version ``n`` again and put it in force."""
        version = self.history.get(number)
        if version is None:
            kept = [v.number for v in self.history.versions()]
            return _error(
                404, f"no version {number} in the rules history (kept: {', '.join(map(str, kept)) or 'none'})"
            )
        found = self._validated(version.text, f"rules history version {number}")
        if isinstance(found, tuple):
            return found
        failed = self._apply(found, user, f"rules history version {number} restored")
        if failed is not None:
            return failed
        return 200, {"status": "ok", "restored": number, "rules": [r.summary() for r in found.rules]}, _JSON
