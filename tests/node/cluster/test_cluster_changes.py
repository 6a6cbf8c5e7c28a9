"""Following Orthanc's change log when several servers write it: a sequence number skipped over (another
server's write not committed yet) is read once it appears, and a study called stable by one server is
judged only once the shared index says nothing arrived for StableAge."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from orthanc_plugin.intake.changes import ChangeFollower


class _ChangeLog:
    """A change log whose entries become readable out of order (as PostgreSQL commits them)."""

    def __init__(self) -> None:
        self.visible: dict[int, dict[str, Any]] = {}
        self.requests: list[str] = []

    def write(self, seq: int, kind: str, study: str) -> None:
        self.visible[seq] = {"Seq": seq, "ChangeType": kind, "ID": study, "ResourceType": "Study"}

    def get_bytes(self, uri: str) -> bytes:
        raise AssertionError(f"unexpected request {uri}")

    def get_json(self, uri: str) -> Any:
        self.requests.append(uri)
        parts = urlsplit(uri)
        query = parse_qs(parts.query)
        if parts.path == "/changes":
            if "last" in query:
                return {"Last": max(self.visible, default=0)}
            since, limit = int(query["since"][0]), int(query["limit"][0])
            page = [self.visible[s] for s in sorted(self.visible) if s > since][:limit]
            return {"Changes": page, "Done": True, "Last": page[-1]["Seq"] if page else since}
        if parts.path.startswith("/studies/"):
            return {"IsStable": True}
        raise AssertionError(f"unexpected request {uri}")


class _Store:
    def __init__(self) -> None:
        self.value: str | None = json.dumps({"seq": 4})

    def load(self) -> str | None:
        return self.value

    def save(self, value: str) -> None:
        self.value = value


def _follower(
    log: _ChangeLog, store: _Store, now: list[float], **options: Any
) -> tuple[ChangeFollower, list[str]]:
    handled: list[str] = []
    follower = ChangeFollower(log, store, handled.append, clock=lambda: now[0], **options)
    follower.start()
    return follower, handled


def test_a_change_committed_after_a_later_one_is_not_missed() -> None:
    log, store, now = _ChangeLog(), _Store(), [0.0]
    follower, handled = _follower(log, store, now, gap_s=30.0)
    log.write(6, "StableStudy", "study-y")  # server B's write, committed first
    follower.poll()
    assert handled == ["study-y"] and follower.last == 6 and set(follower.gaps) == {5}
    log.write(5, "StableStudy", "study-x")  # server A's write, committed now
    now[0] += 1.0
    follower.poll()
    assert handled == ["study-y", "study-x"] and not follower.gaps
    follower.poll()
    assert handled == ["study-y", "study-x"]  # each once


def test_a_gap_that_never_fills_is_given_up_and_a_new_dispatcher_keeps_waiting_for_it() -> None:
    log, store, now = _ChangeLog(), _Store(), [0.0]
    follower, _ = _follower(log, store, now, gap_s=30.0)
    log.write(7, "StableStudy", "study-z")
    follower.poll()
    assert set(follower.gaps) == {5, 6} and json.loads(store.value or "{}")["gaps"] == [5, 6]
    successor, later = _follower(log, store, now, gap_s=30.0)  # the next dispatcher reads the position
    assert set(successor.gaps) == {5, 6} and later == []
    log.write(6, "StableStudy", "study-w")
    successor.poll()
    assert later == ["study-w"] and set(successor.gaps) == {5}
    now[0] += 31.0  # a rolled-back write: never appears
    successor.poll()
    assert not successor.gaps and json.loads(store.value or "{}")["gaps"] == []
    requests = len(log.requests)
    successor.poll()
    assert len(log.requests) == requests + 1  # no gap left to read again: one read of new changes


def test_a_study_called_stable_too_early_is_judged_once_it_settled() -> None:
    log, store, now = _ChangeLog(), _Store(), [0.0]
    left = {"study-s": 5.0}
    follower, handled = _follower(log, store, now, settled=lambda study: left[study])
    log.write(5, "NewStudy", "study-s")
    log.write(6, "StableStudy", "study-s")  # server A's own StableAge, while B still receives the study
    follower.poll()
    assert handled == [] and "study-s" in follower.pending and "study-s" in follower.deferred
    now[0] += 5.0
    left["study-s"] = 0.0  # nothing arrived at any server for StableAge
    follower.poll()
    assert handled == ["study-s"] and "study-s" not in follower.pending and not follower.deferred
