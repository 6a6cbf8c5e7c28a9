"""The validated routing rules: what each rule asks for (outputs, destinations, series rules, priority), and
their evaluation against a study (first match wins unless ``continue: true``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from lesion_engine.intake.series_rules import SeriesRules
from lesion_engine.results.outputs import DEFAULT_OUTPUTS, Output
from orthanc_plugin.rules.conditions import AlternativeMatch, SeriesView, StudyView

logger = logging.getLogger(__name__)

__all__ = ["DESTINATION_KINDS", "OUTPUTS", "Destinations", "RoutingRule", "RoutingRules", "RuleMatch"]

#: Names of the result objects a rule may ask for (see :class:`lesion_engine.results.outputs.Output`).
OUTPUTS = tuple(output.value for output in Output)
#: Kinds of destination, as Orthanc names them in its configuration and REST API.
DESTINATION_KINDS = ("modalities", "dicomweb", "peers")


@dataclass(frozen=True)
class Destinations:
    """Where results are forwarded (names defined in Orthanc's configuration)."""

    modalities: tuple[str, ...] = ()
    dicomweb: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        """JSON-ready form."""
        return {
            "modalities": list(self.modalities),
            "dicomweb": list(self.dicomweb),
            "peers": list(self.peers),
        }

    def items(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(kind, names)`` for each kind of :data:`DESTINATION_KINDS`, in sorted order of kind."""
        return sorted((kind, getattr(self, kind)) for kind in DESTINATION_KINDS)

    def __bool__(self) -> bool:
        return bool(self.modalities or self.dicomweb or self.peers)


@dataclass(frozen=True)
class RoutingRule:
    """One validated routing rule (see ``rules.yaml`` for each field)."""

    name: str
    action: Literal["process", "ignore"]
    match: tuple[AlternativeMatch, ...]
    priority: int = 0
    enabled: bool = True
    continue_: bool = False
    description: str = ""
    outputs: tuple[Output, ...] = DEFAULT_OUTPUTS
    destinations: Destinations = field(default_factory=Destinations)
    #: The validated series-selection rules of this rule, with their overrides as written and where they
    #: came from (what a job carries to the worker); None: the engine's defaults.
    series_rules: SeriesRules | None = field(default=None, repr=False)
    line: int | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (``GET /lesion-ai/rules``)."""
        return {
            "name": self.name,
            "description": self.description,
            "enabled": self.enabled,
            "action": self.action,
            "priority": self.priority,
            "continue": self.continue_,
            "outputs": [output.value for output in self.outputs],
            "destinations": self.destinations.to_dict(),
            "series_rules": self.series_rules.source if self.series_rules is not None else None,
            "match": [alt.describe() for alt in self.match],
            "line": self.line,
        }


@dataclass(frozen=True)
class RuleMatch:
    """A rule that matched a study, with the input series it selected."""

    rule: RoutingRule
    series: tuple[SeriesView, ...]


@dataclass(frozen=True)
class RoutingRules:
    """The validated rules of one file, in order."""

    rules: tuple[RoutingRule, ...]
    source: str
    text: str

    def evaluate(self, study: StudyView) -> list[RuleMatch]:
        """The ``process`` rules that apply to ``study``: the first match, and more after ``continue: true``.

        An ``ignore`` rule that matches ends the evaluation (rules matched before it still apply).
        """
        out: list[RuleMatch] = []
        for rule in self.rules:
            if not rule.enabled:
                continue
            inputs = next(
                (found for alt in rule.match if (found := alt.input_series(study)) is not None), None
            )
            if inputs is None:
                continue
            if rule.action == "ignore":
                break
            out.append(RuleMatch(rule, tuple(inputs)))
            if not rule.continue_:
                break
        return out

    def explain(self, study: StudyView) -> list[dict[str, str]]:
        """How :meth:`evaluate` went for ``study``, rule by rule until the evaluation ended: each rule's
        ``rule`` name, ``action`` and ``outcome`` (``matched``, ``disabled``, or ``not matched: WHY``, the
        first failing part of each alternative). Values that identify the patient are not shown."""
        out: list[dict[str, str]] = []
        for rule in self.rules:
            entry = {"rule": rule.name, "action": rule.action}
            out.append(entry)
            if not rule.enabled:
                entry["outcome"] = "disabled"
                continue
            reasons = [alt.why_not(study) for alt in rule.match]
            if any(reason is None for reason in reasons):
                entry["outcome"] = "matched"
                if rule.action == "ignore" or not rule.continue_:
                    break
                continue
            entry["outcome"] = "not matched: " + "; or ".join(r for r in reasons if r is not None)
        return out

    def get(self, name: str) -> RoutingRule | None:
        """The rule called ``name``."""
        return next((r for r in self.rules if r.name == name), None)

    @property
    def destinations(self) -> Destinations:
        """Every destination named by any rule."""
        m: set[str] = set()
        d: set[str] = set()
        p: set[str] = set()
        for rule in self.rules:
            m.update(rule.destinations.modalities)
            d.update(rule.destinations.dicomweb)
            p.update(rule.destinations.peers)
        return Destinations(tuple(sorted(m)), tuple(sorted(d)), tuple(sorted(p)))
