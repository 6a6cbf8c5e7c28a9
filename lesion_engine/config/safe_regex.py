"""Regular expressions from configuration, evaluated in time linear in the text: no catastrophic backtracking.

Patterns in series rules and routing rules are written by site admins and are tested against DICOM values
that anyone who can send a study controls. Python's :mod:`re` backtracks: a pattern such as ``^(a+)+$``
against 30 ``a`` and a ``!`` takes minutes. These patterns are compiled with RE2 (``google-re2``), whose
matching time is linear in the text's length whatever the pattern. RE2 knows Python's usual syntax
(``(?i)``, ``\\b``, ``\\d``, classes, alternation, repetition); what it cannot bound (look-arounds and
back-references) is refused when the configuration is read, with a message that says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import re2

logger = logging.getLogger(__name__)

__all__ = ["MAX_PATTERN_LENGTH", "SafePattern", "UnsafePatternError", "compile_pattern"]

MAX_PATTERN_LENGTH = 1000
"""Longest pattern accepted (characters)."""

_MAX_MEMORY = 8 << 20  # bytes RE2 may use for one compiled pattern


class UnsafePatternError(ValueError):
    """A pattern that is invalid, too long or not supported by the linear-time engine."""


@dataclass(frozen=True)
class SafePattern:
    """A compiled pattern; :meth:`search` is linear in the text's length.

    Attributes
    ----------
    pattern : str
        The pattern as written.
    """

    pattern: str
    _compiled: Any = field(repr=False, compare=False)

    def search(self, text: str) -> bool:
        """True when the pattern matches anywhere in ``text`` (as :func:`re.search`)."""
        return self._compiled.search(text) is not None


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is raised (and reported by the caller), not logged to stderr
    options.max_mem = _MAX_MEMORY
    return options


def compile_pattern(pattern: str) -> SafePattern:
    """Compile a configuration pattern for linear-time matching.

    Parameters
    ----------
    pattern : str
        A regular expression in Python's syntax, without look-arounds or back-references.

    Returns
    -------
    SafePattern

    Raises
    ------
    UnsafePatternError
        The pattern is longer than :data:`MAX_PATTERN_LENGTH`, invalid, or uses a construct whose matching
        time cannot be bounded (look-ahead ``(?=``, look-behind ``(?<=``, back-reference ``\\1``).
    """
    if not isinstance(pattern, str):
        raise UnsafePatternError(f"a pattern must be text, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UnsafePatternError(
            f"the pattern is {len(pattern)} characters long; at most {MAX_PATTERN_LENGTH}"
        )
    try:
        compiled = re2.compile(pattern, options=_options())
    except re2.error as exc:
        reason = (
            exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        )
        hint = ""
        if "perl operator" in str(reason) or "escape sequence" in str(reason):
            hint = (
                "; look-arounds and back-references are not supported (their matching time cannot be bounded): "
                "rewrite the pattern without them, e.g. with a 'not' condition"
            )
        raise UnsafePatternError(f"invalid regular expression {pattern!r}: {reason}{hint}") from None
    return SafePattern(pattern, compiled)
