"""What the admin REST API (:mod:`orthanc_plugin.admin.routes`) needs of the running node, and nothing more.

:class:`~orthanc_plugin.plugin.NodePlugin` implements :class:`AdminNode`; the admin API knows only this
protocol, so that neither module imports the other's internals (and the admin API can be tested against
any node).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orthanc_plugin.intake.ignored import IgnoredStudies
from orthanc_plugin.intake.labels import LabelStore
from orthanc_plugin.intake.studies import StudyPlan
from orthanc_plugin.intake.verdicts import VerdictStore
from orthanc_plugin.jobqueue import JobQueue
from orthanc_plugin.models.registry import ModelRegistry
from orthanc_plugin.node.orthanc_api import InProcessApi
from orthanc_plugin.rules import RoutingRules
from orthanc_plugin.rules.history import RulesHistoryStore

logger = logging.getLogger(__name__)

__all__ = ["AdminNode", "EnqueuedJob", "Evaluation", "HealthFigures"]


@dataclass(frozen=True)
class EnqueuedJob:
    """What happened to one job a study's rules asked for.

    Attributes
    ----------
    id : int or None
        The queue's job ID (None when the study's record says the work was done, and nothing was queued).
    key : str
        The job's key.
    rule : str
        The rule that asked for it.
    created : bool
        True when the job was queued now (new, or done before and queued again on request).
    """

    id: int | None
    key: str
    rule: str
    created: bool

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``POST /lesion-ai/studies/{id}/process``, ``last_evaluation``)."""
        return {"id": self.id, "key": self.key, "rule": self.rule, "created": self.created}


@dataclass(frozen=True)
class Evaluation:
    """The node's latest evaluation of a study (shown by ``GET /lesion-ai/health``)."""

    study: str
    time: float
    jobs: tuple[EnqueuedJob, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"study": self.study, "time": self.time, "jobs": [job.to_json() for job in self.jobs]}


@dataclass(frozen=True)
class HealthFigures:
    """The node's state, for ``GET /lesion-ai/health``.

    Attributes
    ----------
    problems : tuple of str
        What keeps the node from working as configured (workers not started, an edited rules file that
        does not validate, ...).
    uptime_s : float
        Seconds since the plugin started.
    model : str
        Identity of the model jobs are queued for.
    workers_configured : int
        Worker processes the plugin should run.
    worker_processes : tuple of dict
        ``index``, ``pid``, ``alive``, ``restarts`` of each worker process the plugin runs.
    rules_source : Path
        The rules file in use.
    last_sequence : int
        The last change of Orthanc's change log handled.
    pending_studies : int
        Studies seen arriving and not stable yet.
    last_evaluation : Evaluation or None
        The latest evaluation of a study.
    disk : tuple of dict
        ``folder``, ``path``, ``free_mb`` and ``total_mb`` of the data folder and of Orthanc's storage.
    cluster : dict or None
        In cluster mode: ``server`` (this server's identity), ``dispatching`` (whether it holds the
        dispatcher lease) and ``dispatcher`` (who holds it, since and until when); None on a single node.
    """

    problems: tuple[str, ...]
    uptime_s: float
    model: str
    workers_configured: int
    rules_source: Path
    last_sequence: int
    pending_studies: int
    worker_processes: tuple[dict[str, object], ...] = field(default=())
    last_evaluation: Evaluation | None = None
    disk: tuple[dict[str, object], ...] = field(default=())
    cluster: dict[str, object] | None = None


class AdminNode(Protocol):
    """The running node, as the admin REST API uses it."""

    @property
    def api(self) -> InProcessApi:
        """Orthanc's REST API (in process)."""
        ...

    @property
    def queue(self) -> JobQueue:
        """The job queue."""
        ...

    @property
    def labels(self) -> LabelStore:
        """The labels radiologists sent back (:mod:`orthanc_plugin.intake.labels`)."""
        ...

    @property
    def verdicts(self) -> VerdictStore:
        """The radiologists' verdicts read from their saved SRs (:mod:`orthanc_plugin.intake.verdicts`)."""
        ...

    @property
    def ignored(self) -> IgnoredStudies:
        """The studies no rule matched, kept for a while (:mod:`orthanc_plugin.intake.ignored`)."""
        ...

    @property
    def models(self) -> ModelRegistry:
        """The node's models (:mod:`orthanc_plugin.models.registry`)."""
        ...

    @property
    def rules_history(self) -> RulesHistoryStore:
        """Where the earlier versions of the rules are kept (the data folder's ``rules-history``; the cluster
        database in cluster mode)."""
        ...

    def model_card(self) -> dict[str, Any] | None:
        """The card (``model.json``, as stored) of the model artifact the workers use; None when it cannot
        be read."""
        ...

    def health_figures(self) -> HealthFigures:
        """The node's state."""
        ...

    def current_rules(self) -> RoutingRules:
        """The routing rules in force (re-read when the rules file was edited)."""
        ...

    def rules_from_text(self, text: str, source: str) -> RoutingRules:
        """Validate rules given as YAML text, as the rules file would be read.

        Raises
        ------
        ConfigError
            Naming the line and the field.
        """
        ...

    def replace_rules(self, rules: RoutingRules) -> None:
        """Put new rules in force and save them to the rules file."""
        ...

    def plan_study(self, study_id: str, rules: RoutingRules) -> StudyPlan:
        """What ``rules`` make of a study (loop guard, matches, jobs), without queueing anything.

        Raises
        ------
        NotFoundError
            The study does not exist.
        """
        ...

    def enqueue_study(self, study_id: str, *, force: bool = False) -> list[EnqueuedJob]:
        """Apply the rules in force to a study and queue the jobs they ask for (``force``: again, even
        when done before).

        Raises
        ------
        NotFoundError
            The study does not exist.
        """
        ...
