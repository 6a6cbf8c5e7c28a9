"""YAML configuration files read with line numbers, so that validation errors can name the line.

Shared by every component whose configuration is a YAML file (series rules, routing rules).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lesion_engine.errors import ConfigError

__all__ = ["YamlDocument", "read_yaml", "read_yaml_file"]

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


def _convert(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], source: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if not isinstance(key, str):
                raise ConfigError(
                    f"{source}, line {key_node.start_mark.line + 1}: keys must be text, got {key!r}"
                )
            if key in out:
                raise ConfigError(f"{source}, line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, (*path, key), lines, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, source) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


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
        The text is not valid YAML, or a mapping has a duplicate or non-text key.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    lines: dict[PathKey, int] = {}
    data = {} if node is None else _convert(node, (), lines, source)
    return YamlDocument(source, data, lines)


def read_yaml_file(path: str | Path) -> YamlDocument:
    """Read and parse a YAML file (see :func:`read_yaml`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    return read_yaml(text, str(path))
