"""Routing rules: which studies the node processes, with which series, outputs, destinations and priority.

The rules are a YAML file (the packaged ``orthanc_plugin/data/rules.yaml`` is the documented default), validated into frozen
dataclasses; every error names the file, the line and the field. Rules are read top to bottom and the
first rule that matches a study decides (``continue: true`` lets later rules match too). A rule matches
when any of its ``match`` alternatives does; an alternative is a conjunction of:

``study``
    conditions on study-level attributes (Orthanc's main DICOM tags of the study and patient, plus
    ``ModalitiesInStudy`` computed from the series);
``series``
    conditions that select the rule's *input series* (Orthanc's main DICOM tags of the series, plus
    ``SOPClassUID``, ``NumberOfSeriesRelatedInstances`` and the instances' origin ``RemoteAET``,
    ``RemoteIP`` and ``CalledAET``); at least one series must pass;
``has_series``
    a list of conditions; each must be met by at least one input series (e.g. a T2 and a diffusion series);
``calling_aet``, ``remote_ip``
    shortcuts for series conditions on ``RemoteAET`` and ``RemoteIP``.

A condition is a regular expression (text, searched), a list of accepted values (exact), a numeric range
``{min: a, max: b}``, a network ``{cidr: [...]}``, a regular expression ``{regex: ...}``, a list
``{in: [...]}``, or the negation of any of those ``{not: ...}``.

The package's modules, by concept: :mod:`~orthanc_plugin.rules.conditions` (what a rule tests),
:mod:`~orthanc_plugin.rules.model` (the validated rules and their evaluation) and
:mod:`~orthanc_plugin.rules.parsing` (YAML to rules, with errors that name the line and the field).
Every public name is importable from ``orthanc_plugin.rules``.
"""

from __future__ import annotations

from orthanc_plugin.rules.conditions import (
    SERIES_PSEUDO_ATTRIBUTES,
    STUDY_PSEUDO_ATTRIBUTES,
    AlternativeMatch,
    Condition,
    Conditions,
    SeriesView,
    StudyView,
)
from orthanc_plugin.rules.model import (
    DESTINATION_KINDS,
    OUTPUTS,
    Destinations,
    RoutingRule,
    RoutingRules,
    RuleMatch,
)
from orthanc_plugin.rules.parsing import check_destinations, load_rules, parse_rules

__all__ = [
    "DESTINATION_KINDS",
    "OUTPUTS",
    "SERIES_PSEUDO_ATTRIBUTES",
    "STUDY_PSEUDO_ATTRIBUTES",
    "AlternativeMatch",
    "Condition",
    "Conditions",
    "Destinations",
    "RoutingRule",
    "RoutingRules",
    "RuleMatch",
    "SeriesView",
    "StudyView",
    "check_destinations",
    "load_rules",
    "parse_rules",
]
