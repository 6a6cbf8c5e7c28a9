"""Reading routing rules: YAML text or file -> validated :class:`~orthanc_plugin.rules.model.RoutingRules`.

Every error names the source, the line and the field (``rules[0].priority``), and says what is expected.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

from lesion_engine.config.safe_regex import SafePattern, UnsafePatternError, compile_pattern
from lesion_engine.config.yamlconfig import PathKey, YamlDocument, read_yaml, read_yaml_file
from lesion_engine.errors import ConfigError
from lesion_engine.intake.series_rules import SeriesRules, series_rules_from_document
from lesion_engine.results.outputs import DEFAULT_OUTPUTS, Output
from orthanc_plugin.rules.conditions import (
    SERIES_PSEUDO_ATTRIBUTES,
    STUDY_PSEUDO_ATTRIBUTES,
    AlternativeMatch,
    Condition,
    Conditions,
)
from orthanc_plugin.rules.model import DESTINATION_KINDS, OUTPUTS, Destinations, RoutingRule, RoutingRules

logger = logging.getLogger(__name__)

__all__ = ["check_destinations", "load_rules", "parse_rules"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RULE_FIELDS = {
    "name",
    "description",
    "enabled",
    "action",
    "priority",
    "continue",
    "match",
    "outputs",
    "destinations",
    "series_rules",
}
_ALTERNATIVE_FIELDS = {"study", "series", "has_series", "calling_aet", "remote_ip"}


class _Parser:
    def __init__(self, doc: YamlDocument, base_dir: Path | None) -> None:
        self.doc = doc
        self.base_dir = base_dir

    def fail(self, path: PathKey, message: str) -> ConfigError:
        return self.doc.error(path, message)

    def mapping(self, value: Any, path: PathKey, allowed: set[str], what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"{what} must be a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail((*path, key), f"unknown field; {what} has {', '.join(sorted(allowed))}")
        return value

    def condition(self, value: Any, path: PathKey) -> Condition:
        if isinstance(value, str):
            return Condition("regex", pattern=self.regex(value, path))
        if isinstance(value, bool) or value is None:
            raise self.fail(path, f"a condition is a pattern, a list or a mapping, got {value!r}")
        if isinstance(value, int | float):
            return Condition("in", values=(f"{value:g}",))
        if isinstance(value, list):
            return Condition("in", values=self.scalars(value, path))
        if not isinstance(value, dict) or not value:
            raise self.fail(path, f"a condition is a pattern, a list or a mapping, got {value!r}")
        keys = set(value)
        if keys <= {"min", "max"}:
            bounds = []
            for key in ("min", "max"):
                bound = value.get(key)
                if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int | float)):
                    raise self.fail((*path, key), f"must be a number, got {bound!r}")
                bounds.append(None if bound is None else float(bound))
            low, high = bounds
            if low is not None and high is not None and low > high:
                raise self.fail(path, f"min ({low:g}) is greater than max ({high:g})")
            return Condition("range", low=low, high=high)
        if len(keys) != 1:
            raise self.fail(
                path, f"a condition mapping has one of min/max, regex, in, cidr, not; got {sorted(keys)}"
            )
        (key,) = keys
        inner = value[key]
        if key == "regex":
            if not isinstance(inner, str):
                raise self.fail((*path, key), f"must be a regular expression (text), got {inner!r}")
            return Condition("regex", pattern=self.regex(inner, (*path, key)))
        if key == "in":
            if not isinstance(inner, list):
                raise self.fail((*path, key), f"must be a list of values, got {inner!r}")
            return Condition("in", values=self.scalars(inner, (*path, key)))
        if key == "cidr":
            items = inner if isinstance(inner, list) else [inner]
            networks = []
            for i, item in enumerate(items):
                where = (*path, key, i) if isinstance(inner, list) else (*path, key)
                try:
                    networks.append(ipaddress.ip_network(str(item), strict=False))
                except ValueError as exc:
                    raise self.fail(where, f"not an IP network: {exc}") from exc
            return Condition("cidr", networks=tuple(networks))
        if key == "not":
            return Condition("not", inner=self.condition(inner, (*path, key)))
        raise self.fail((*path, key), "unknown condition; use min/max, regex, in, cidr or not")

    def regex(self, text: str, path: PathKey) -> SafePattern:
        try:
            return compile_pattern(text)
        except UnsafePatternError as exc:
            raise self.fail(path, str(exc)) from exc

    def scalars(self, items: list[Any], path: PathKey) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self.fail((*path, i), f"values must be text or numbers, got {item!r}")
            out.append(item.strip() if isinstance(item, str) else f"{item:g}")
        return tuple(out)

    def conditions(self, value: Any, path: PathKey, pseudo: frozenset[str]) -> Conditions:
        if not isinstance(value, dict) or not value:
            raise self.fail(path, f"must map DICOM keywords to conditions, got {value!r}")
        out = []
        for keyword, cond in value.items():
            if keyword not in pseudo and tag_for_keyword(keyword) is None:
                extra = f" or one of {', '.join(sorted(pseudo))}" if pseudo else ""
                raise self.fail(
                    (*path, keyword), f"{keyword!r} is not a DICOM keyword (e.g. StudyDescription){extra}"
                )
            out.append((keyword, self.condition(cond, (*path, keyword))))
        return tuple(out)

    def alternative(self, value: Any, path: PathKey) -> AlternativeMatch:
        data = self.mapping(value, path, _ALTERNATIVE_FIELDS, "a match")
        if not data:
            raise self.fail(path, "an empty match would accept every study; say what to match")
        study = (
            self.conditions(data["study"], (*path, "study"), STUDY_PSEUDO_ATTRIBUTES)
            if "study" in data
            else ()
        )
        series = (
            self.conditions(data["series"], (*path, "series"), SERIES_PSEUDO_ATTRIBUTES)
            if "series" in data
            else ()
        )
        for key, keyword in (("calling_aet", "RemoteAET"), ("remote_ip", "RemoteIP")):
            if key in data:
                series = (*series, (keyword, self.condition(data[key], (*path, key))))
        has: list[Conditions] = []
        if "has_series" in data:
            items = data["has_series"]
            if not isinstance(items, list) or not items:
                raise self.fail((*path, "has_series"), "must be a non-empty list of series conditions")
            for i, item in enumerate(items):
                has.append(self.conditions(item, (*path, "has_series", i), SERIES_PSEUDO_ATTRIBUTES))
        return AlternativeMatch(study, series, tuple(has))

    def destinations(self, value: Any, path: PathKey) -> Destinations:
        data = self.mapping(value, path, set(DESTINATION_KINDS), "destinations")
        lists: dict[str, tuple[str, ...]] = {}
        for kind in DESTINATION_KINDS:
            items = data.get(kind) or []
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise self.fail((*path, kind), f"must be a list of names defined in Orthanc, got {items!r}")
            lists[kind] = tuple(items)
        return Destinations(lists["modalities"], lists["dicomweb"], lists["peers"])

    def outputs(self, value: Any, path: PathKey) -> tuple[Output, ...]:
        if (
            not isinstance(value, list)
            or not value
            or any(o not in OUTPUTS for o in value)
            or len(set(value)) != len(value)
        ):
            raise self.fail(path, f"must be a non-empty list of {', '.join(OUTPUTS)}, got {value!r}")
        return tuple(Output(name) for name in value)

    def series_rules(self, value: Any, path: PathKey) -> SeriesRules:
        if isinstance(value, str):
            file = self.series_rules_file(value, path)
            try:
                sub = read_yaml_file(file)
            except ConfigError as exc:
                raise self.fail(path, str(exc)) from exc
            return series_rules_from_document(sub)
        if not isinstance(value, dict):
            raise self.fail(path, "must be a path to a series-rules YAML file or a mapping of overrides")
        prefix = len(path)
        lines = {p[prefix:]: line for p, line in self.doc.lines.items() if p[:prefix] == path}
        field_name = self.doc.where(path).rsplit(", field ", 1)[-1]
        sub = YamlDocument(f"{self.doc.source} ({field_name})", value, lines)
        return series_rules_from_document(sub)

    def series_rules_file(self, value: str, path: PathKey) -> Path:
        """The series-rules file named by a rule: a ``.yaml``/``.yml`` file inside the rules' folder.

        The node reads it as root and a REST request may name it, so nothing else is opened: no path
        outside the folder of the routing rules (symbolic links resolved), no other kind of file.
        """
        if self.base_dir is None:
            raise self.fail(
                path, "a series_rules file needs a rules folder; give the overrides inline instead"
            )
        base = self.base_dir.resolve()
        file = (base / value).resolve()
        if not file.is_relative_to(base):
            raise self.fail(
                path,
                f"series_rules files must lie in the folder of the routing rules ({base}); "
                "put the file there or give the overrides inline",
            )
        if file.suffix.lower() not in (".yaml", ".yml"):
            raise self.fail(path, "a series_rules file must be a .yaml or .yml file")
        return file

    def rule(self, value: Any, path: PathKey) -> RoutingRule:
        data = self.mapping(value, path, _RULE_FIELDS, "a rule")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail(
                (*path, "name"),
                f"each rule needs a name of letters, digits, '_', '.' or '-' (at most 64), got {name!r}",
            )
        action = data.get("action", "process")
        if action not in ("process", "ignore"):
            raise self.fail((*path, "action"), f"must be 'process' or 'ignore', got {action!r}")
        priority = data.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
            raise self.fail((*path, "priority"), f"must be an integer from -1000 to 1000, got {priority!r}")
        flags = {}
        for key, default in (("enabled", True), ("continue", False)):
            flag = data.get(key, default)
            if not isinstance(flag, bool):
                raise self.fail((*path, key), f"must be true or false, got {flag!r}")
            flags[key] = flag
        description = data.get("description", "")
        if not isinstance(description, str):
            raise self.fail((*path, "description"), "must be text")
        if "match" not in data:
            raise self.fail(path, f"rule {name!r} has no 'match'")
        alternatives = data["match"]
        matches: tuple[AlternativeMatch, ...]
        if isinstance(alternatives, dict):
            matches = (self.alternative(alternatives, (*path, "match")),)
        elif isinstance(alternatives, list) and alternatives:
            matches = tuple(self.alternative(a, (*path, "match", i)) for i, a in enumerate(alternatives))
        else:
            raise self.fail((*path, "match"), "must be a match or a non-empty list of alternative matches")
        outputs = self.outputs(data["outputs"], (*path, "outputs")) if "outputs" in data else DEFAULT_OUTPUTS
        destinations = (
            self.destinations(data["destinations"], (*path, "destinations"))
            if "destinations" in data
            else Destinations()
        )
        series_rules = (
            self.series_rules(data["series_rules"], (*path, "series_rules"))
            if data.get("series_rules") is not None
            else None
        )
        return RoutingRule(
            name=name,
            action=action,
            match=matches,
            priority=priority,
            enabled=flags["enabled"],
            continue_=flags["continue"],
            description=description,
            outputs=outputs,
            destinations=destinations,
            series_rules=series_rules,
            line=self.doc.lines.get(path),
        )

    def rules(self) -> tuple[RoutingRule, ...]:
        data = self.doc.data
        if not isinstance(data, dict):
            raise self.fail((), "the rules file must be a mapping with 'version' and 'rules'")
        for key in data:
            if key not in ("version", "rules"):
                raise self.fail((key,), "unknown field; the rules file has 'version' and 'rules'")
        if data.get("version", 1) != 1:
            raise self.fail(("version",), f"unsupported version {data.get('version')!r}; this node reads 1")
        items = data.get("rules")
        if not isinstance(items, list):
            raise self.fail(("rules",), "must be a list of rules (it may be empty: [])")
        rules = tuple(self.rule(item, ("rules", i)) for i, item in enumerate(items))
        seen: dict[str, int] = {}
        for i, rule in enumerate(rules):
            if rule.name in seen:
                raise self.fail(("rules", i, "name"), f"rule name {rule.name!r} is used twice")
            seen[rule.name] = i
        return rules


def parse_rules(text: str, source: str = "<rules>", base_dir: str | Path | None = None) -> RoutingRules:
    """Validate routing rules given as YAML text.

    Parameters
    ----------
    text : str
        The YAML text.
    source : str
        Name used in error messages.
    base_dir : str or Path, optional
        Folder against which relative ``series_rules`` paths are resolved.

    Raises
    ------
    ConfigError
        The text is not valid YAML or a field is invalid; the message names the line and the field.
    """
    doc = read_yaml(text, source)
    parser = _Parser(doc, Path(base_dir) if base_dir is not None else None)
    return RoutingRules(parser.rules(), source, text)


def load_rules(path: str | Path) -> RoutingRules:
    """Read and validate a routing-rules file (see :func:`parse_rules`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the routing rules {path}: {exc.strerror}") from exc
    return parse_rules(text, str(path), path.parent)


def check_destinations(rules: RoutingRules, known: Mapping[str, Sequence[str]]) -> list[str]:
    """Destinations named by the rules that Orthanc does not know (empty when all exist).

    Parameters
    ----------
    rules : RoutingRules
        The rules.
    known : mapping
        ``modalities``, ``dicomweb`` and ``peers`` to the names Orthanc knows.
    """
    missing = []
    for rule in rules.rules:
        for kind in DESTINATION_KINDS:
            for name in getattr(rule.destinations, kind):
                if name not in known.get(kind, ()):
                    missing.append(f"rule {rule.name!r}: {kind} {name!r} is not defined in Orthanc")
    return missing
