"""Studies that no rule matched: kept for a bounded time with the rule evaluation that left them out.

A study the routing rules do not match gives no job, so without this it would leave no trace: the admin page
lists it (``GET /lesion-ai/ignored``) as "ignored", with each rule's outcome
(:meth:`orthanc_plugin.rules.RoutingRules.explain`), so an admin can tell a CT from a prostate MR that a
typo in a rule left out. Entries are kept ``keep_s`` seconds (the setting ``IgnoredKeepDays``) and at most
:data:`MAX_ENTRIES`, in ``ignored.json`` of the node's data folder (written whole to a temporary file, then
renamed); a study that later gets a job leaves the list. Entries hold Orthanc IDs, UIDs, times and the
evaluation (whose attribute values leave out those that identify the patient), never patient data.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orthanc_plugin.intake.changes import PropertyStore

logger = logging.getLogger(__name__)

__all__ = ["IGNORED_FILE", "MAX_ENTRIES", "IgnoredStudies"]

IGNORED_FILE = "ignored.json"
#: The most studies kept (the oldest go first).
MAX_ENTRIES = 1000
_FORMAT = "lesion-ai-ignored-studies"


class IgnoredStudies:
    """The ignored studies of one node (thread-safe).

    Parameters
    ----------
    path : Path
        The JSON file (created when the first study is recorded).
    keep_s : float
        How long an entry is kept, seconds (positive).
    max_entries : int
        The most entries kept (the oldest go first).
    shared : PropertyStore, optional
        Where the list is kept instead of ``path``: the cluster database in cluster mode, so that every
        server lists the studies any of them left out (read again at each call; the last write wins).
    """

    def __init__(
        self, path: Path, keep_s: float, max_entries: int = MAX_ENTRIES, shared: PropertyStore | None = None
    ) -> None:
        if not keep_s > 0:
            raise ValueError(f"IgnoredStudies.keep_s must be positive seconds, got {keep_s!r}")
        if max_entries < 1:
            raise ValueError(f"IgnoredStudies.max_entries must be at least 1, got {max_entries!r}")
        self.path = path
        self.keep_s = float(keep_s)
        self.max_entries = max_entries
        self.shared = shared
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._read()

    def _load(self) -> str | None:
        if self.shared is not None:
            return self.shared.load()
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _refresh(self) -> None:
        """Read the shared list again (cluster mode: another server may have changed it)."""
        if self.shared is not None:
            self._entries = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            text = self._load()
            if text is None:
                return {}
            data = json.loads(text)
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: the cluster database
            logger.warning(
                "the ignored studies in %s cannot be read (%s): the list starts empty", self.path, exc
            )
            return {}
        entries = data.get("studies") if isinstance(data, dict) and data.get("format") == _FORMAT else None
        if not isinstance(entries, list):
            logger.warning("%s is not a list of ignored studies: the list starts empty", self.path)
            return {}
        return {
            str(e["study"]): e
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get("study"), str)
            and isinstance(e.get("time"), int | float)
        }

    def _write(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        document = {"format": _FORMAT, "studies": list(self._entries.values())}
        if self.shared is not None:
            try:
                self.shared.save(json.dumps(document))
            except RuntimeError as exc:  # the cluster database unreachable: kept in memory
                logger.warning("the ignored studies cannot be written to the cluster database: %s", exc)
            return
        try:
            temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:  # a full disk must not stop the node: the list stays in memory
            logger.warning("the ignored studies cannot be written to %s: %s", self.path, exc)
            temporary.unlink(missing_ok=True)

    def _prune(self, now: float) -> bool:
        before = len(self._entries)
        kept = sorted(
            (e for e in self._entries.values() if now - float(e["time"]) <= self.keep_s),
            key=lambda e: float(e["time"]),
        )[-self.max_entries :]
        self._entries = {str(e["study"]): e for e in kept}
        return len(self._entries) != before

    def record(
        self,
        study_id: str,
        study_uid: str | None,
        evaluation: Sequence[dict[str, str]],
        now: float | None = None,
    ) -> None:
        """Record (or refresh) a study that no rule matched, with the rules' outcomes."""
        now = time.time() if now is None else now
        with self._lock:
            self._refresh()
            self._entries.pop(study_id, None)
            self._entries[study_id] = {
                "study": study_id,
                "study_instance_uid": study_uid,
                "time": now,
                "evaluation": [dict(entry) for entry in evaluation],
            }
            self._prune(now)
            self._write()

    def forget(self, study_id: str) -> None:
        """The study got a job (or was deleted): it is no longer listed."""
        with self._lock:
            self._refresh()
            if self._entries.pop(study_id, None) is not None:
                self._write()

    def list(self, now: float | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The ignored studies still kept, newest first."""
        now = time.time() if now is None else now
        with self._lock:
            self._refresh()
            if self._prune(now):
                self._write()
            newest = sorted(self._entries.values(), key=lambda e: -float(e["time"]))
            return [dict(e) for e in newest[offset : offset + limit]]

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._entries)
