"""YAML configuration files read with line numbers, so that validation errors can name the line.

Shared by every component whose configuration is a YAML file (series rules, routing rules). Configuration
may come from a REST request, so reading is bounded: at most :data:`MAX_YAML_BYTES` of text, at most
:data:`MAX_YAML_VALUES` values once aliases are expanded (a "billion laughs" document is refused, not
expanded), no tags (``!!python/object``, ``!custom``: configuration is plain data), and only regular files.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.tokens import TagToken

from lesion_engine.errors import ConfigError

__all__ = [
    "MAX_FLOW_DEPTH",
    "MAX_YAML_BYTES",
    "MAX_YAML_VALUES",
    "YamlDocument",
    "read_yaml",
    "read_yaml_file",
]

MAX_YAML_BYTES = 256 * 1024
"""Largest configuration text accepted (bytes)."""

MAX_YAML_VALUES = 20_000
"""Most mapping keys, list items and scalars a configuration may hold, aliases expanded."""

MAX_FLOW_DEPTH = 64
"""Deepest nesting accepted: of flow collections (``[...]``, ``{...}``) in the text, and of values."""

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document: plain Python data, plus the line of every mapping key and list item."""

    source: str
    data: Any
    lines: dict[PathKey, int]

    def where(self, path: PathKey) -> str:
        """Describe a location as ``file, line N, field a.b[2].c`` for error messages."""
        line = None
        for depth in range(len(path), -1, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                break
        field = ""
        for part in path:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        location = self.source + (f", line {line}" if line is not None else "")
        return f"{location}, field {field or '(top level)'}"

    def error(self, path: PathKey, message: str) -> ConfigError:
        """Build a :class:`ConfigError` that names the location of ``path``."""
        return ConfigError(f"{self.where(path)}: {message}")


def _bracket_depth(text: str) -> int:
    """Deepest nesting of ``[`` and ``{`` in the raw text (quotes not parsed: an upper bound of the flow
    nesting). PyYAML's scanner takes time quadratic in the flow nesting, so it is bounded before scanning."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


class _Budget:
    """Counts the values built, so that aliases cannot expand a small text into a huge document."""

    def __init__(self, source: str) -> None:
        self.left = MAX_YAML_VALUES
        self.source = source
        self.constructor = yaml.constructor.SafeConstructor()

    def scalar(self, node: yaml.Node) -> Any:
        """The Python value of a scalar node (safe types only)."""
        return self.constructor.construct_object(node, deep=True)

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ConfigError(
                f"{self.source}: the document holds more than {MAX_YAML_VALUES} values once its aliases are "
                "expanded; write configuration without deeply nested anchors and aliases"
            )


def _convert(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], source: str, budget: _Budget) -> Any:
    if len(path) > MAX_FLOW_DEPTH:
        raise ConfigError(f"{source}: the document is nested too deeply (more than {MAX_FLOW_DEPTH} levels)")
    budget.spend()
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = budget.scalar(key_node)
            if not isinstance(key, str):
                raise ConfigError(
                    f"{source}, line {key_node.start_mark.line + 1}: keys must be text, got {key!r}"
                )
            if key in out:
                raise ConfigError(f"{source}, line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, (*path, key), lines, source, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, source, budget) for i, item in enumerate(node.value)]
    return budget.scalar(node)


def read_yaml(text: str, source: str = "<text>") -> YamlDocument:
    """Parse YAML text into a :class:`YamlDocument`.

    Parameters
    ----------
    text : str
        The YAML text (one document).
    source : str
        Name used in error messages (usually the file's path).

    Raises
    ------
    ConfigError
        The text is not valid YAML, is longer than :data:`MAX_YAML_BYTES`, holds a tag, expands to more
        than :data:`MAX_YAML_VALUES` values, or a mapping has a duplicate or non-text key.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {size} bytes; configuration is limited to {MAX_YAML_BYTES} bytes")
    if _bracket_depth(text) > MAX_FLOW_DEPTH:
        raise ConfigError(
            f"{source}: the document is nested too deeply (more than {MAX_FLOW_DEPTH} brackets)"
        )
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, TagToken):
                raise ConfigError(
                    f"{source}, line {token.start_mark.line + 1}: YAML tags ({token.value[0]}{token.value[1]}) "
                    "are not allowed; configuration is plain data (text, numbers, lists, mappings)"
                )
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{source}: the document is nested too deeply") from None
    lines: dict[PathKey, int] = {}
    try:
        data = {} if node is None else _convert(node, (), lines, source, _Budget(source))
    except RecursionError:
        raise ConfigError(f"{source}: the document is nested too deeply") from None
    return YamlDocument(source, data, lines)


def read_yaml_file(path: str | Path) -> YamlDocument:
    """Read and parse a YAML file (see :func:`read_yaml`).

    Raises
    ------
    ConfigError
        The path is not a regular file (a device such as ``/dev/zero``, a folder, a pipe), cannot be read, is
        larger than :data:`MAX_YAML_BYTES`, or its text is refused by :func:`read_yaml`.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(f"configuration file {path} is not a regular file")
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"configuration file {path} is larger than {MAX_YAML_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not UTF-8 text (byte {exc.start})") from exc
    return read_yaml(text, str(path))
