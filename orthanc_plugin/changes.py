"""Following Orthanc's change log, so that no stable study is missed, even across restarts.

Orthanc's change callback gives no sequence number, and events that happen while the plugin is not
running (Orthanc started without it, or killed) never reach it. So the plugin reads the change log itself
(``/changes?since=N``) from the last sequence number it handled, which it keeps in an Orthanc global
property together with the studies that started arriving but were not stable yet ("pending"). At start,
pending studies that are stable by now (e.g. Orthanc was killed while receiving them, so their
stable-study event never came) are evaluated too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from orthanc_plugin.orthanc_api import NotFoundError, RestApi, quote_id

logger = logging.getLogger(__name__)

__all__ = ["ChangeFollower", "PropertyStore"]

_MAX_PENDING = 10000


class PropertyStore(Protocol):
    """A persistent text value (an Orthanc global property)."""

    def load(self) -> str | None:
        """The stored value, None when never stored."""
        ...

    def save(self, value: str) -> None:
        """Store the value."""
        ...


class ChangeFollower:
    """Reads Orthanc's change log and calls ``on_stable_study`` for each study that became stable.

    Parameters
    ----------
    api : RestApi
        Orthanc's REST API.
    store : PropertyStore
        Where the position (last sequence number and pending studies) is kept.
    on_stable_study : callable
        Called with the Orthanc ID of each stable study, in the order of the log. Exceptions are logged
        and do not stop the follower.
    catch_up : str
        With no stored position (first start): ``none`` starts at the end of the log, ``all`` at its start.
    batch : int
        Changes read per request.
    """

    def __init__(
        self,
        api: RestApi,
        store: PropertyStore,
        on_stable_study: Callable[[str], Any],
        catch_up: str = "none",
        batch: int = 500,
    ) -> None:
        self.api = api
        self.store = store
        self.on_stable_study = on_stable_study
        self.catch_up = catch_up
        self.batch = batch
        self.last: int | None = None
        self.pending: dict[str, None] = {}

    def _load(self) -> None:
        raw = self.store.load()
        if raw:
            try:
                data = json.loads(raw)
                if isinstance(data, int):
                    data = {"seq": data}
                self.last = int(data["seq"])
                self.pending = dict.fromkeys(str(s) for s in data.get("pending", []))
                return
            except (ValueError, KeyError, TypeError):
                logger.warning("stored change position %r is unreadable; starting afresh", raw[:80])
        if self.catch_up == "all":
            self.last = 0
        else:
            self.last = int(self.api.get_json("/changes?last").get("Last", 0))
            logger.info("first start: following changes after sequence number %d", self.last)
        self._save()

    def _save(self) -> None:
        self.store.save(json.dumps({"seq": self.last, "pending": list(self.pending)}))

    def _handle(self, study_id: str) -> None:
        try:
            self.on_stable_study(study_id)
        except Exception:
            logger.exception("study %s: evaluation failed", study_id)

    def _note_pending(self, change: dict[str, Any]) -> None:
        kind = change.get("ChangeType")
        resource = str(change.get("ID", ""))
        if kind == "NewStudy":
            self.pending[resource] = None
        elif kind == "NewSeries":
            try:
                parent = self.api.get_json(f"/series/{quote_id(resource)}").get("ParentStudy")
            except NotFoundError:
                return
            if parent:
                self.pending[str(parent)] = None
        elif kind in ("StableStudy", "Deleted") and change.get("ResourceType") == "Study":
            self.pending.pop(resource, None)
        while len(self.pending) > _MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))

    def start(self) -> int:
        """Catch up: handle the changes missed while down, then pending studies that are stable now.

        Returns
        -------
        int
            Number of studies handled.
        """
        self._load()
        handled = self.poll()
        for study_id in list(self.pending):
            try:
                stable = bool(self.api.get_json(f"/studies/{quote_id(study_id)}").get("IsStable", False))
            except NotFoundError:
                self.pending.pop(study_id, None)
                continue
            if stable:
                logger.info("study %s: arrived before a restart, stable now", study_id)
                self.pending.pop(study_id, None)
                self._handle(study_id)
                handled += 1
        self._save()
        return handled

    def poll(self) -> int:
        """Handle the changes logged since the last call; returns the number of stable studies handled."""
        if self.last is None:
            self._load()
        assert self.last is not None
        handled = 0
        while True:
            page = self.api.get_json(f"/changes?since={self.last}&limit={self.batch}")
            changes = page.get("Changes", [])
            for change in changes:
                self._note_pending(change)
                if change.get("ChangeType") == "StableStudy":
                    self._handle(str(change["ID"]))
                    handled += 1
                self.last = max(self.last, int(change.get("Seq", self.last)))
            if changes:
                self._save()
            if page.get("Done", True) or not changes:
                return handled
