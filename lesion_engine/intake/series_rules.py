"""Series-selection rules: which series may take which role, and which are ignored.

The rules are data (YAML), validated into one frozen :class:`SeriesRules` object. The defaults ship with the
package (``lesion_engine/data/series_rules.yaml``); a site overrides fields in its own file.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from lesion_engine.config.safe_regex import SafePattern, UnsafePatternError, compile_pattern
from lesion_engine.config.yamlconfig import PathKey, YamlDocument, read_yaml, read_yaml_file
from lesion_engine.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "AttributeMatch",
    "ExclusionRule",
    "RoleRule",
    "SeriesRules",
    "load_series_rules",
    "series_rules_from_document",
    "series_rules_from_json",
]

_TOP_LEVEL = {
    "version",
    "t2w_max_tilt_deg",
    "min_slices",
    "slice_spacing_tolerance",
    "hbv_min_b_value",
    "computed_b_value",
    "diffusion_source",
    "exclude",
    "roles",
}
_ROLES = ("t2w", "adc", "dwi")
#: Allowed values of ``diffusion_source``.
DIFFUSION_SOURCES = ("same_acquisition", "independent")


def attribute_text(ds: Dataset, keyword: str) -> str:
    """Text of a DICOM attribute for pattern matching; multi-valued attributes joined by a backslash."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return "\\".join(str(v) for v in value)
    except TypeError:
        return str(value)


@dataclass(frozen=True)
class AttributeMatch:
    """A conjunction of patterns: every named attribute's text must contain a match of its pattern.

    Attributes
    ----------
    patterns : tuple of (keyword, compiled pattern)
        DICOM keyword and the regular expression searched in its text.
    """

    patterns: tuple[tuple[str, SafePattern], ...]

    def matches(self, ds: Dataset) -> bool:
        """True when all patterns match the dataset's attributes."""
        return all(pattern.search(attribute_text(ds, kw)) for kw, pattern in self.patterns)

    def explain(self, ds: Dataset) -> str:
        """The matched attributes with their values, e.g. ``SeriesDescription 't2_tse_tra'``."""
        return ", ".join(f"{kw} {attribute_text(ds, kw)!r}" for kw, _ in self.patterns)

    def describe(self) -> str:
        """Human-readable form, e.g. ``SeriesDescription~/(?i)t2/``."""
        return " and ".join(f"{kw}~/{p.pattern}/" for kw, p in self.patterns)


@dataclass(frozen=True)
class ExclusionRule:
    """Series matching ``match`` are ignored for every role and reported as ``kind``."""

    kind: str
    match: AttributeMatch


@dataclass(frozen=True)
class RoleRule:
    """Which series may take a role: any ``include`` match (or any series, when empty), and no ``exclude``."""

    include: tuple[AttributeMatch, ...]
    exclude: tuple[AttributeMatch, ...]

    def included_by(self, ds: Dataset) -> AttributeMatch | None:
        """The first include entry matching ``ds`` (None when none does)."""
        return next((m for m in self.include if m.matches(ds)), None)

    def excluded_by(self, ds: Dataset) -> AttributeMatch | None:
        """The first exclude entry matching ``ds`` (None when none does)."""
        return next((m for m in self.exclude if m.matches(ds)), None)


@dataclass(frozen=True)
class SeriesRules:
    """Validated series-selection rules (see ``lesion_engine/data/series_rules.yaml`` for each field).

    ``source`` names where the rules' overrides came from (``<defaults>`` without any), and ``overrides``
    holds those overrides as written, so that the same rules can be rebuilt elsewhere (e.g. in another
    process) from :meth:`to_json` and ``source`` with :func:`series_rules_from_json`; two rules built from
    different overrides that select alike compare equal when their sources do.
    """

    t2w_max_tilt_deg: float
    min_slices: int
    slice_spacing_tolerance: float
    hbv_min_b_value: float
    computed_b_value: float
    exclude: tuple[ExclusionRule, ...]
    t2w: RoleRule
    adc: RoleRule
    dwi: RoleRule
    diffusion_source: str = "same_acquisition"
    source: str = "<defaults>"
    overrides: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.t2w_max_tilt_deg < 45:
            raise ValueError(f"t2w_max_tilt_deg must be in [0, 45), got {self.t2w_max_tilt_deg}")
        if self.min_slices < 2:
            raise ValueError(f"min_slices must be at least 2, got {self.min_slices}")
        if not 0 < self.slice_spacing_tolerance < 0.5:
            raise ValueError(
                f"slice_spacing_tolerance must be in (0, 0.5), got {self.slice_spacing_tolerance}"
            )
        if self.diffusion_source not in DIFFUSION_SOURCES:
            raise ValueError(
                f"diffusion_source must be one of {', '.join(DIFFUSION_SOURCES)}, got {self.diffusion_source!r}"
            )
        if self.hbv_min_b_value <= 0 or self.computed_b_value < self.hbv_min_b_value:
            raise ValueError(
                "need 0 < hbv_min_b_value <= computed_b_value, got "
                f"{self.hbv_min_b_value} and {self.computed_b_value}"
            )
        object.__setattr__(self, "overrides", copy.deepcopy(dict(self.overrides)))

    def to_json(self) -> dict[str, Any]:
        """The overrides these rules were built from over the packaged defaults, as written (a detached
        copy; empty for the defaults): what :func:`series_rules_from_json` reads back."""
        return copy.deepcopy(dict(self.overrides))


def _number(doc: YamlDocument, data: dict[str, Any], key: str, kind: type) -> Any:
    value = data[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        raise doc.error((key,), f"must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def _choice(doc: YamlDocument, data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = data[key]
    if not isinstance(value, str) or value not in allowed:
        raise doc.error((key,), f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _match(doc: YamlDocument, value: Any, path: PathKey) -> AttributeMatch:
    if not isinstance(value, dict) or not value:
        raise doc.error(path, f"a match must map DICOM keywords to regular expressions, got {value!r}")
    patterns = []
    for keyword, pattern in value.items():
        if tag_for_keyword(keyword) is None:
            raise doc.error((*path, keyword), f"{keyword!r} is not a DICOM keyword (e.g. SeriesDescription)")
        if not isinstance(pattern, str):
            raise doc.error((*path, keyword), f"the pattern must be text, got {pattern!r}")
        try:
            patterns.append((keyword, compile_pattern(pattern)))
        except UnsafePatternError as exc:
            raise doc.error((*path, keyword), str(exc)) from exc
    return AttributeMatch(tuple(patterns))


def _match_list(doc: YamlDocument, value: Any, path: PathKey) -> tuple[AttributeMatch, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise doc.error(path, f"must be a list of matches, got {value!r}")
    return tuple(_match(doc, item, (*path, i)) for i, item in enumerate(value))


def _role(doc: YamlDocument, value: Any, path: PathKey) -> RoleRule:
    if not isinstance(value, dict):
        raise doc.error(path, "a role must be a mapping with 'include' and 'exclude' lists")
    unknown = set(value) - {"include", "exclude"}
    if unknown:
        raise doc.error((*path, sorted(unknown)[0]), "unknown field; a role has only 'include' and 'exclude'")
    return RoleRule(
        _match_list(doc, value.get("include"), (*path, "include")),
        _match_list(doc, value.get("exclude"), (*path, "exclude")),
    )


def _merged(
    default: YamlDocument, override: YamlDocument | None
) -> tuple[dict[str, Any], dict[str, YamlDocument]]:
    """Merge override fields over the defaults; remember which document each field came from."""
    data = dict(default.data)
    origin = dict.fromkeys(data, default)
    if override is None:
        return data, origin
    if not isinstance(override.data, dict):
        raise override.error((), "the rules file must be a mapping of fields")
    for key, value in override.data.items():
        if key not in _TOP_LEVEL:
            raise override.error((key,), f"unknown field; allowed: {', '.join(sorted(_TOP_LEVEL))}")
        if key == "roles":
            if not isinstance(value, dict):
                raise override.error((key,), "must be a mapping of role name to rule")
            roles = dict(data.get("roles", {}))
            roles.update(value)
            data["roles"] = roles
        else:
            data[key] = value
        origin[key] = override
    return data, origin


def _build(default: YamlDocument, override: YamlDocument | None) -> SeriesRules:
    data, origin = _merged(default, override)
    if data.get("version", 1) != 1:
        raise origin["version"].error(
            ("version",), f"unsupported version {data['version']!r}; this engine reads 1"
        )
    roles = data.get("roles") or {}
    for role_name in roles:
        if role_name not in _ROLES:
            doc = origin["roles"]
            raise doc.error(("roles", role_name), f"unknown role; roles are {', '.join(_ROLES)}")
    excludes = data.get("exclude") or []
    doc = origin.get("exclude", default)
    if not isinstance(excludes, list):
        raise doc.error(("exclude",), "must be a list of {kind, match}")
    exclusion_rules = []
    for i, item in enumerate(excludes):
        if not isinstance(item, dict) or set(item) != {"kind", "match"} or not isinstance(item["kind"], str):
            raise doc.error(("exclude", i), "each exclusion needs exactly 'kind' (text) and 'match'")
        exclusion_rules.append(
            ExclusionRule(item["kind"], _match(doc, item["match"], ("exclude", i, "match")))
        )

    def role(name: str) -> RoleRule:
        in_override = (
            override is not None
            and isinstance(override.data.get("roles"), dict)
            and name in override.data["roles"]
        )
        src = override if in_override and override is not None else default
        return _role(src, roles[name], ("roles", name))

    def number(key: str, kind: type) -> Any:
        return _number(origin[key], data, key, kind)

    try:
        return SeriesRules(
            t2w_max_tilt_deg=number("t2w_max_tilt_deg", float),
            min_slices=number("min_slices", int),
            slice_spacing_tolerance=number("slice_spacing_tolerance", float),
            hbv_min_b_value=number("hbv_min_b_value", float),
            computed_b_value=number("computed_b_value", float),
            exclude=tuple(exclusion_rules),
            t2w=role("t2w"),
            adc=role("adc"),
            dwi=role("dwi"),
            diffusion_source=_choice(origin["diffusion_source"], data, "diffusion_source", DIFFUSION_SOURCES),
            source=override.source if override is not None else default.source,
            overrides=override.data if override is not None else {},
        )
    except ConfigError:
        raise
    except ValueError as exc:
        src = override if override is not None else default
        raise src.error((), str(exc)) from exc


def _default_document() -> YamlDocument:
    resource = files("lesion_engine").joinpath("data/series_rules.yaml")
    return read_yaml(resource.read_text(encoding="utf-8"), "lesion_engine/data/series_rules.yaml")


def load_series_rules(path: str | Path | None = None) -> SeriesRules:
    """Load the series-selection rules.

    Parameters
    ----------
    path : str or Path, optional
        A site's YAML file of overrides; every top-level field in it replaces the default field
        (``roles`` role by role). None gives the defaults.

    Returns
    -------
    SeriesRules
        The validated rules.

    Raises
    ------
    ConfigError
        The file cannot be read, is not valid YAML, or a field is invalid; the message names the file, the
        line and the field.
    """
    if path is None:
        return _default_rules()
    rules = _build(_default_document(), read_yaml_file(path))
    logger.debug("series rules loaded from %s", rules.source)
    return rules


@functools.lru_cache(maxsize=1)
def _default_rules() -> SeriesRules:
    """The packaged defaults, parsed once per process (every study needs them; they never change)."""
    return _build(_default_document(), None)


def series_rules_from_document(override: YamlDocument) -> SeriesRules:
    """Build the series-selection rules from an already parsed document of overrides.

    For overrides embedded in another configuration file (e.g. a routing rule of the node), so that errors
    still name that file's lines. See :func:`load_series_rules` for the fields and the errors raised.
    """
    return _build(_default_document(), override)


def series_rules_from_json(overrides: Mapping[str, Any], source: str) -> SeriesRules:
    """Build the series-selection rules again from the overrides of :meth:`SeriesRules.to_json`.

    Parameters
    ----------
    overrides : mapping
        The override fields (as :meth:`SeriesRules.to_json` gives them, e.g. read back from JSON).
    source : str
        Where they came from (``SeriesRules.source``), named by the errors.

    Raises
    ------
    ConfigError
        A field is invalid (see :func:`load_series_rules`); the message names ``source`` and the field.
    """
    data = dict(overrides) if isinstance(overrides, Mapping) else overrides
    return _build(_default_document(), YamlDocument(source, data, {}))
