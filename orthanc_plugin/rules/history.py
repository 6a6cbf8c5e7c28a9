"""Earlier versions of the routing rules, kept when the admin API replaces them.

``PUT /lesion-ai/rules`` (and restoring an earlier version) keeps the version it replaces in the data
folder, ``HOME/rules-history/``: one JSON file per version, ``NNNNNN.json``, numbered in order and never
renumbered, holding the YAML text, who put that version in force and when (when known), and who replaced it
and when. The last :data:`KEEP` versions are kept; older ones are deleted. ``current.json`` says who saved
the version in force (it is trusted only while the rules' text is the one it names: a rules file edited by
hand has no known author).

Who: the user name of the request's HTTP basic authentication (:func:`request_user`), never the password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

__all__ = [
    "FOLDER",
    "KEEP",
    "RulesHistory",
    "RulesHistoryStore",
    "RulesVersion",
    "request_user",
    "sha256_text",
]

#: The history's folder in the data folder.
FOLDER = "rules-history"
#: How many earlier versions are kept.
KEEP = 10
_CURRENT = "current.json"
_VERSION_FILE = re.compile(r"([0-9]{6,12})\.json")
#: A user name as recorded: printable, at most this long.
_MAX_USER = 128


def request_user(headers: Mapping[str, Any] | None) -> str | None:
    """The user name of a request's HTTP basic authentication (``Authorization: Basic ...``).

    Parameters
    ----------
    headers : mapping
        The request's headers (Orthanc passes them in lower case; any case is accepted).

    Returns
    -------
    str or None
        The user name (non-printable characters replaced, at most 128 characters), or None without basic
        authentication (Orthanc's authentication turned off).
    """
    value = next((str(v) for k, v in (headers or {}).items() if str(k).lower() == "authorization"), "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None
    user = decoded.partition(":")[0]
    user = "".join(c if c.isprintable() else "?" for c in user)[:_MAX_USER]
    return user or None


@dataclass(frozen=True)
class RulesVersion:
    """An earlier version of the routing rules.

    Attributes
    ----------
    number : int
        Its number in the history (increasing, never reused).
    text : str
        The rules' YAML text.
    saved_by : str or None
        Who put this version in force through the admin API (None: unknown, e.g. a file edited by hand).
    saved_at : float or None
        When (seconds since the epoch).
    replaced_by : str or None
        Who replaced it (None: the request carried no basic authentication).
    replaced_at : float
        When it was replaced.
    """

    number: int
    text: str
    saved_by: str | None
    saved_at: float | None
    replaced_by: str | None
    replaced_at: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``GET /lesion-ai/rules/history``)."""
        return {
            "number": self.number,
            "saved_by": self.saved_by,
            "saved_at": self.saved_at,
            "replaced_by": self.replaced_by,
            "replaced_at": self.replaced_at,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, number: int, data: Any) -> RulesVersion:
        """Read a stored version.

        Raises
        ------
        ValueError
            The document is not a stored version (the message names the key).
        """
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        text = data.get("text")
        if not isinstance(text, str):
            raise ValueError("key 'text': expected the rules' text")
        replaced_at = data.get("replaced_at")
        if not isinstance(replaced_at, int | float) or isinstance(replaced_at, bool):
            raise ValueError("key 'replaced_at': expected a time")
        saved_at = data.get("saved_at")
        return cls(
            number=number,
            text=text,
            saved_by=_optional_text(data, "saved_by"),
            saved_at=float(saved_at)
            if isinstance(saved_at, int | float) and not isinstance(saved_at, bool)
            else None,
            replaced_by=_optional_text(data, "replaced_by"),
            replaced_at=float(replaced_at),
        )


def _optional_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"key {key!r}: expected text or null")
    return value


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file in the same folder, then renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RulesHistoryStore(Protocol):
    """Where the earlier versions of the rules are kept: a folder (:class:`RulesHistory`), or the cluster
    database (:class:`orthanc_plugin.cluster.rules_history.SharedRulesHistory`)."""

    #: How many versions are kept.
    keep: int

    def versions(self) -> list[RulesVersion]:
        """The versions kept, newest first."""
        ...

    def get(self, number: int) -> RulesVersion | None:
        """Version ``number``, or None when it is not kept."""
        ...

    def author(self, text: str) -> tuple[str | None, float | None]:
        """Who saved the rules ``text`` through the admin API, and when; (None, None) when unknown."""
        ...

    def record(
        self, previous: str, new: str, user: str | None, now: float | None = None
    ) -> RulesVersion | None:
        """Keep the version ``previous`` that ``new`` replaces, and note who saved ``new``."""
        ...


def sha256_text(text: str) -> str:
    """The SHA-256 of a text's UTF-8 bytes (hex): which rules an author record is about."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def author_record(text: str, user: str | None, when: float) -> dict[str, Any]:
    """Who saved the rules ``text`` and when, as kept beside the rules (``current.json``, or the cluster's
    shared value): trusted only while that text is in force (:func:`author_of`)."""
    return {"sha256": sha256_text(text), "saved_by": user, "saved_at": when}


def author_of(record: Any, text: str) -> tuple[str | None, float | None]:
    """The user and time of an :func:`author_record` when it is about the rules ``text``; (None, None)
    otherwise (another text, or not a record)."""
    if not isinstance(record, dict) or record.get("sha256") != sha256_text(text):
        return None, None
    user, when = record.get("saved_by"), record.get("saved_at")
    return (
        user if isinstance(user, str) else None,
        float(when) if isinstance(when, int | float) and not isinstance(when, bool) else None,
    )


class RulesHistory:
    """The earlier versions of the routing rules in one folder (see the module docstring).

    Parameters
    ----------
    folder : Path
        Where the versions are kept (created when the first one is); ``HOME/rules-history``.
    keep : int
        How many versions are kept (at least 1).

    Raises
    ------
    ValueError
        ``keep`` is below 1.
    """

    def __init__(self, folder: Path, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError(f"the rules history must keep at least 1 version, got {keep}")
        self.folder = folder
        self.keep = keep
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RulesHistory({self.folder}, keep={self.keep})"

    def _numbers(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_VERSION_FILE.fullmatch(p.name) for p in self.folder.iterdir() if p.is_file())
        return sorted((int(m.group(1)) for m in found if m is not None), reverse=True)

    def _path(self, number: int) -> Path:
        return self.folder / f"{number:06d}.json"

    def versions(self) -> list[RulesVersion]:
        """The versions kept, newest first (a file that cannot be read is skipped, and logged)."""
        out = []
        for number in self._numbers():
            version = self.get(number)
            if version is not None:
                out.append(version)
        return out

    def get(self, number: int) -> RulesVersion | None:
        """Version ``number``, or None when it is not kept (or cannot be read: logged)."""
        path = self._path(number)
        if number < 0 or not path.is_file():
            return None
        try:
            return RulesVersion.from_json(number, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            logger.warning("rules history: %s cannot be read, skipped: %s", path, exc)
            return None

    def author(self, text: str) -> tuple[str | None, float | None]:
        """Who saved the rules ``text`` through the admin API, and when; (None, None) when unknown."""
        try:
            data = json.loads((self.folder / _CURRENT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
        return author_of(data, text)

    def record(
        self, previous: str, new: str, user: str | None, now: float | None = None
    ) -> RulesVersion | None:
        """Keep the version ``previous`` that ``new`` replaces, and note who saved ``new``.

        Parameters
        ----------
        previous : str
            The text of the rules in force until now.
        new : str
            The text of the rules put in force now.
        user : str or None
            Who did it.
        now : float, optional
            When (default: now).

        Returns
        -------
        RulesVersion or None
            The version kept; None when the text did not change (nothing is kept).

        Raises
        ------
        OSError
            The history cannot be written (the caller decides whether the rules may change without it).
        """
        when = time.time() if now is None else now
        with self._lock:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            kept: RulesVersion | None = None
            if previous != new:
                saved_by, saved_at = self.author(previous)
                numbers = self._numbers()
                kept = RulesVersion(
                    number=(numbers[0] + 1) if numbers else 1,
                    text=previous,
                    saved_by=saved_by,
                    saved_at=saved_at,
                    replaced_by=user,
                    replaced_at=when,
                )
                data = kept.to_json()
                del data["number"]
                _write(self._path(kept.number), data)
                for old in self._numbers()[self.keep :]:
                    self._path(old).unlink(missing_ok=True)
            _write(self.folder / _CURRENT, author_record(new, user, when))
        if kept is not None:
            logger.info("rules history: version %d kept (replaced by %s)", kept.number, user or "unknown")
        return kept
