"""Following Orthanc's change log, so that no stable study is missed, even across restarts.

Orthanc's change callback gives no sequence number, and events that happen while the plugin is not
running (Orthanc started without it, or killed) never reach it. So the plugin reads the change log itself
(``/changes?since=N``) from the last sequence number it handled, which it keeps in an Orthanc global
property together with the studies that started arriving but were not stable yet ("pending"). At start,
pending studies that are stable by now (e.g. Orthanc was killed while receiving them, so their
stable-study event never came) are evaluated too.

While pending studies are being received, :class:`ReceivingStudies` watches their series' instance counts
and says when one is worth judging before it is stable (:mod:`orthanc_plugin.intake.completeness`); the headers it
and that judgement read come from :class:`HeaderCache`, each instance's once.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset

from orthanc_plugin.intake.completeness import announced_images, first_header_verdict
from orthanc_plugin.jobqueue import StoreGate
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApi, RestApiError, quote_id

logger = logging.getLogger(__name__)

__all__ = ["ChangeFollower", "HeaderCache", "PropertyStore", "ReceivingStudies"]

_MAX_PENDING = 10000
#: Missing sequence numbers waited for at most (the oldest are given up first).
_MAX_GAPS = 1000
#: Backoff of a study whose evaluation failed (seconds): doubled at each failure up to the maximum.
_RETRY_FIRST_S = 2.0
_RETRY_MAX_S = 60.0
#: How often pending studies are checked for stability without a StableStudy change (seconds), and how many
#: at most per check: Orthanc may fail to log that change (its index full, SQLite error 13), and then only
#: this sweep notices that the study is stable.
_PENDING_SWEEP_S = 30.0
_PENDING_SWEEP_MAX = 200
#: How often a study that was judged and did not change since is read again (seconds).
_SETTLED_CHECK_S = 2.0


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
        Called with the Orthanc ID of each stable study, in the order of the log. An exception (a full
        disk, a locked database, Orthanc busy) is logged and does not stop the follower; the study is
        evaluated again later (backoff up to a minute), across restarts too, until it succeeds or the study
        is gone: never dropped.
    catch_up : str
        With no stored position (first start): ``none`` starts at the end of the log, ``all`` at its start.
    batch : int
        Changes read per request.
    restart_hold_s : float
        Orthanc's StableAge. Orthanc keeps stability in memory: after a restart it calls every study stable,
        also one that was still arriving when it stopped. Such a study (pending at :meth:`start`) is judged
        stable only after this many seconds without a StableStudy change (a new instance restarts Orthanc's
        own clock); meanwhile only its headers can make it complete (:class:`ReceivingStudies`). 0: at once.
    clock : callable
        Monotonic time in seconds (tests pass their own).
    gap_s : float
        How long a missing sequence number is waited for. Orthanc on PostgreSQL numbers changes when they
        are written and several servers write at once, so change 11 can be readable before change 10 (still
        being committed). A number skipped over is read again at each poll until it appears or ``gap_s``
        has passed (then it is taken for a rolled-back write). 0: never.
    settled : callable, optional
        Given a study's Orthanc ID, the seconds until it counts as stable (0: stable now). Without it a
        StableStudy change, or Orthanc's ``IsStable``, says so. Several Orthancs on one index each judge
        stability by the instances they received themselves; the cluster's dispatcher asks the index when
        the study last changed (:meth:`orthanc_plugin.plugin.NodePlugin.settled`). A study not settled yet
        stays pending and is asked again when due.
    """

    def __init__(
        self,
        api: RestApi,
        store: PropertyStore,
        on_stable_study: Callable[[str], Any],
        catch_up: str = "none",
        batch: int = 500,
        restart_hold_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        gap_s: float = 0.0,
        settled: Callable[[str], float] | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.on_stable_study = on_stable_study
        self.catch_up = catch_up
        self.batch = batch
        self.last: int | None = None
        self.pending: dict[str, None] = {}
        #: Stable studies whose evaluation failed: Orthanc ID -> (failures, when due (monotonic), error).
        self.retry: dict[str, tuple[int, float, str]] = {}
        self.restart_hold_s = restart_hold_s
        self.clock = clock
        self._last_sweep = clock()
        #: Studies pending at start (arriving when Orthanc stopped) and when they count as stable.
        self.held: set[str] = set()
        self._held_until = 0.0
        self.gap_s = gap_s
        #: Sequence numbers skipped over (not readable yet) and when they were first missed (clock).
        self.gaps: dict[int, float] = {}
        self.settled = settled
        #: Pending studies that were called stable before they settled, and when to ask again (clock).
        self.deferred: dict[str, float] = {}

    def reset(self) -> None:
        """Forget the position and the studies kept in memory; the next :meth:`start` or :meth:`poll` reads
        them from the store again (a cluster's new dispatcher takes over from where the last one stopped)."""
        self.last = None
        self.pending, self.retry, self.gaps, self.deferred = {}, {}, {}, {}
        self.held = set()

    def _load(self) -> None:
        raw = self.store.load()
        if raw:
            try:
                data = json.loads(raw)
                if isinstance(data, int):
                    data = {"seq": data}
                self.last = int(data["seq"])
                self.pending = dict.fromkeys(str(s) for s in data.get("pending", []))
                now = time.monotonic()
                self.retry = {str(s): (0, now, "before a restart") for s in data.get("retry", [])}
                self.gaps = dict.fromkeys((int(g) for g in data.get("gaps", [])), self.clock())
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
        try:
            self.store.save(
                json.dumps(
                    {
                        "seq": self.last,
                        "pending": list(self.pending),
                        "retry": list(self.retry),
                        "gaps": sorted(self.gaps),
                    }
                )
            )
        except Exception as exc:  # e.g. a full disk: kept in memory, saved with the next change
            logger.warning("the change position cannot be saved (%s); kept in memory", exc)

    def _handle(self, study_id: str) -> None:
        try:
            self.on_stable_study(study_id)
        except NotFoundError:
            self.retry.pop(study_id, None)
            logger.info("study %s: gone before its evaluation", study_id)
        except Exception as exc:
            failures = self.retry.get(study_id, (0, 0.0, ""))[0] + 1
            delay = min(_RETRY_FIRST_S * 2 ** (failures - 1), _RETRY_MAX_S)
            self.retry[study_id] = (failures, time.monotonic() + delay, f"{type(exc).__name__}: {exc}"[:300])
            logger.warning(
                "study %s: evaluation failed (%s: %s); evaluated again in %.0f s (failure %d)",
                study_id,
                type(exc).__name__,
                exc,
                delay,
                failures,
                exc_info=failures == 1,
            )
        else:
            if self.retry.pop(study_id, None) is not None:
                logger.info("study %s: evaluated after earlier failures", study_id)

    def retry_due(self) -> int:
        """Evaluate again the studies whose earlier evaluation failed and whose backoff is over; returns
        how many were tried."""
        now = time.monotonic()
        due = [study for study, (_, when, _) in self.retry.items() if when <= now]
        for study_id in due:
            self._handle(study_id)
        if due:
            self._save()
        return len(due)

    def retry_problem(self) -> str | None:
        """What health says of the studies waiting for another evaluation (None when there are none)."""
        if not self.retry:
            return None
        study, (failures, _, error) = max(self.retry.items(), key=lambda item: item[1][0])
        return (
            f"{len(self.retry)} stable stud{'y waits' if len(self.retry) == 1 else 'ies wait'} to be evaluated "
            f"again (e.g. study {study}, {failures} failure(s): {error})"
        )

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
            self.held.discard(resource)
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
        for study_id in list(self.retry):
            self._handle(study_id)
            handled += 1
        if self.restart_hold_s > 0:
            self.held = set(self.pending)
            self._held_until = self.clock() + self.restart_hold_s
            if self.held:
                logger.info(
                    "%d stud%s arriving before the restart: judged stable %.0f s from now unless more arrives",
                    len(self.held),
                    "y was" if len(self.held) == 1 else "ies were",
                    self.restart_hold_s,
                )
        else:
            handled += self._sweep_pending(list(self.pending), "arrived before a restart, stable now")
        self._save()
        return handled

    def _sweep_pending(self, studies: list[str], why: str) -> int:
        """Evaluate those of ``studies`` (pending) that Orthanc reports stable; forget those gone."""
        handled = 0
        for study_id in studies:
            try:
                stable = bool(self.api.get_json(f"/studies/{quote_id(study_id)}").get("IsStable", False))
            except NotFoundError:
                self.pending.pop(study_id, None)
                continue
            if stable and not self._unsettled(study_id):
                logger.info("study %s: %s", study_id, why)
                self.pending.pop(study_id, None)
                self._handle(study_id)
                handled += 1
        return handled

    def poll(self) -> int:
        """Handle the changes logged since the last call; returns the number of stable studies handled."""
        if self.last is None:
            self._load()
        assert self.last is not None
        handled = self._fill_gaps()
        while True:
            page = self.api.get_json(f"/changes?since={self.last}&limit={self.batch}")
            changes = page.get("Changes", [])
            for change in changes:
                seq = int(change.get("Seq", self.last))
                self._note_gap(seq)
                handled += self._take(change)
                self.last = max(self.last, seq)
            if changes:
                self._save()
            if page.get("Done", True) or not changes:
                return handled + self.retry_due() + self._deferred_due() + self._sweep_due()

    def _take(self, change: dict[str, Any]) -> int:
        """Handle one change; 1 when it was a stable study."""
        if change.get("ChangeType") == "StableStudy" and self._unsettled(str(change.get("ID", ""))):
            return 0
        self._note_pending(change)
        if change.get("ChangeType") == "StableStudy":
            self._handle(str(change["ID"]))
            return 1
        return 0

    def _unsettled(self, study_id: str) -> bool:
        """True when ``settled`` says the study is still changing (it is then deferred until due)."""
        if self.settled is None:
            return False
        try:
            left = self.settled(study_id)
        except NotFoundError:
            return False  # gone: handled (and forgotten) as usual
        if left <= 0:
            self.deferred.pop(study_id, None)
            return False
        self.pending[study_id] = None
        self.deferred[study_id] = self.clock() + left
        logger.info("study %s: called stable, but changed %.1f s too recently; judged later", study_id, left)
        return True

    def _deferred_due(self) -> int:
        """Handle the deferred studies that settled by now; returns how many were handled."""
        now = self.clock()
        due = [study for study, when in self.deferred.items() if when <= now]
        handled = 0
        for study_id in due:
            del self.deferred[study_id]
            if self._unsettled(study_id):
                continue
            self.pending.pop(study_id, None)
            self.held.discard(study_id)
            self._handle(study_id)
            handled += 1
        if handled:
            self._save()
        return handled

    def _note_gap(self, seq: int) -> None:
        """Remember the sequence numbers between the last one read and ``seq`` (see ``gap_s``)."""
        assert self.last is not None
        if self.gap_s <= 0 or self.last == 0 or seq <= self.last + 1:
            return
        now = self.clock()
        for missing in range(max(self.last + 1, seq - _MAX_GAPS), seq):
            self.gaps.setdefault(missing, now)
        while len(self.gaps) > _MAX_GAPS:
            del self.gaps[min(self.gaps)]

    def _fill_gaps(self) -> int:
        """Read again the changes skipped over (see ``gap_s``): handle those that appeared, forget those
        missing for ``gap_s``; returns the stable studies handled."""
        if not self.gaps:
            return 0
        first, last = min(self.gaps), max(self.gaps)
        page = self.api.get_json(f"/changes?since={first - 1}&limit={min(last - first + 1, self.batch)}")
        handled = 0
        for change in page.get("Changes", []):
            seq = int(change.get("Seq", 0))
            if seq in self.gaps:
                del self.gaps[seq]
                logger.info("change %d appeared after later ones (a concurrent write); handled now", seq)
                handled += self._take(change)
        now = self.clock()
        expired = [seq for seq, since in self.gaps.items() if now - since >= self.gap_s]
        for seq in expired:
            del self.gaps[seq]
        if expired:
            logger.debug("changes %s never appeared within %.0f s (rolled back writes)", expired, self.gap_s)
        if handled or expired:
            self._save()
        return handled

    def _sweep_due(self) -> int:
        """Every :data:`_PENDING_SWEEP_S` seconds, evaluate pending studies that are stable although no
        StableStudy change came (Orthanc could not log it); once ``restart_hold_s`` has passed, the studies
        that were arriving at the restart."""
        now = self.clock()
        handled = 0
        if self.held and now >= self._held_until:
            held = [study for study in self.pending if study in self.held]
            self.held = set()
            handled += self._sweep_pending(held, "arrived before a restart, nothing more since (StableAge)")
        if now - self._last_sweep < _PENDING_SWEEP_S or not self.pending:
            if handled:
                self._save()
            return handled
        self._last_sweep = now
        handled += self._sweep_pending(
            [study for study in self.pending if study not in self.held][:_PENDING_SWEEP_MAX],
            "stable without a logged change",
        )
        if handled:
            self._save()
        return handled


# -- reading headers from Orthanc ------------------------------------------------------------------------
class HeaderCache:
    """Headers of instances read from Orthanc (``/instances/{id}/file``, pixel data not kept), each read once.

    Instances never change, so a header is kept until :meth:`forget` or until ``limit`` newer ones pushed
    it out (least recently used first).

    Parameters
    ----------
    api : RestApi
        Orthanc's REST API.
    limit : int
        Headers kept at most.
    """

    def __init__(self, api: RestApi, limit: int = 5000) -> None:
        if limit < 1:
            raise ValueError(f"HeaderCache limit must be at least 1, got {limit}")
        self.api = api
        self.limit = limit
        self._headers: OrderedDict[str, Dataset | None] = OrderedDict()

    def header(self, instance_id: str) -> Dataset | None:
        """The header of one instance; None when it is gone or is not DICOM."""
        if instance_id in self._headers:
            self._headers.move_to_end(instance_id)
            return self._headers[instance_id]
        try:
            data = self.api.get_bytes(f"/instances/{quote_id(instance_id)}/file")
        except NotFoundError:
            return None
        try:
            read = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            header: Dataset | None = Dataset(read)  # a plain copy: the file's bytes are not kept
        except Exception as exc:  # a corrupt file: no header (the engine reports it)
            logger.debug("instance %s: unreadable header: %s", instance_id, exc)
            header = None
        self._headers[instance_id] = header
        while len(self._headers) > self.limit:
            self._headers.popitem(last=False)
        return header

    def headers(self, instance_ids: Iterable[str]) -> list[tuple[str, Dataset]]:
        """The readable headers of these instances, in their order."""
        out = []
        for instance_id in instance_ids:
            header = self.header(instance_id)
            if header is not None:
                out.append((instance_id, header))
        return out

    def forget(self, instance_ids: Iterable[str]) -> None:
        """Drop these instances' headers."""
        for instance_id in instance_ids:
            self._headers.pop(instance_id, None)

    def __len__(self) -> int:
        return len(self._headers)


# -- studies being received ----------------------------------------------------------------------------------
@dataclass
class _SeriesWatch:
    instances: tuple[str, ...]
    first_seen: float
    changed_at: float
    stable: bool = False
    ignored: str | None = None
    judged_first: bool = False
    announced: int | None = None
    announced_read: bool = False


@dataclass
class _StudyWatch:
    series: dict[str, _SeriesWatch] = field(default_factory=dict)
    evaluated: tuple[tuple[str, int, bool], ...] | None = None
    next_check: float = 0.0
    #: When the last look found the study due early: when its quiet time ends (clock), the instance count of
    #: each series judged, and the series that may go on receiving. None: due (or not) without an early start.
    early: tuple[float, dict[str, int], tuple[str, ...]] | None = None


class ReceivingStudies:
    """Watches the studies being received and says when one is worth judging (from the plugin's thread).

    Each call of :meth:`due` reads the watched studies and their series (instance counts: no work per
    instance) and returns the studies whose series are all quiet (no new instance for ``quiet_s`` seconds,
    or stable in Orthanc, or holding as many instances as its first header announces) and changed since they
    were last returned. The node's own series, and a series that has kept receiving for ``quiet_s`` seconds
    which the engine ignores from the header of its first instance (DCE, say), may go on receiving.

    With ``early_s``, a study is due once its series had no new instance for ``early_s`` seconds: its jobs
    may start while the rest of the quiet time passes, and store their results only if the study is still
    the same when it ends (:meth:`store_gate`, :mod:`orthanc_plugin.jobqueue.store_gate`).

    Parameters
    ----------
    api : RestApi
        Orthanc's REST API.
    headers : HeaderCache
        Where first headers are read (and kept for the judgement that follows).
    quiet_s : float
        Seconds without a new instance after which a series counts as quiet.
    manufacturer : str
        The node's own Manufacturer: its series are never inputs.
    clock : callable
        Monotonic time in seconds (tests pass their own).
    own_stability : bool
        Take Orthanc's ``IsStable`` of a series as quiet. False in a cluster: each Orthanc judges only the
        instances it received itself, and calls a series another server is receiving stable at once.
    early_s : float
        Seconds without a new instance after which a study is due before its quiet time ends (0: never,
        below ``quiet_s``).
    """

    def __init__(
        self,
        api: RestApi,
        headers: HeaderCache,
        quiet_s: float,
        manufacturer: str = "",
        clock: Callable[[], float] = time.monotonic,
        own_stability: bool = True,
        early_s: float = 0.0,
    ) -> None:
        if quiet_s <= 0:
            raise ValueError(f"quiet_s must be positive, got {quiet_s}")
        if not 0 <= early_s < quiet_s:
            raise ValueError(f"early_s must be from 0 (off) to below quiet_s ({quiet_s}), got {early_s}")
        self.early_s = early_s
        self.api = api
        self.headers = headers
        self.quiet_s = quiet_s
        self.manufacturer = manufacturer
        self.clock = clock
        self.own_stability = own_stability
        self._studies: dict[str, _StudyWatch] = {}

    @property
    def active(self) -> bool:
        """True while some study is watched (the plugin then looks more often)."""
        return bool(self._studies)

    def due(self, study_ids: Collection[str]) -> list[str]:
        """The studies among ``study_ids`` (those being received) worth judging now (see the class
        docstring); the others are read again at a later call. Studies no longer listed are forgotten."""
        for gone in [s for s in self._studies if s not in study_ids]:
            self.forget(gone)
        now = self.clock()
        out = []
        for study_id in study_ids:
            watch = self._studies.setdefault(study_id, _StudyWatch())
            if now < watch.next_check:
                continue
            try:
                signature = self._observe(study_id, watch, now)
            except NotFoundError:
                self.forget(study_id)
                continue
            except RestApiError as exc:
                logger.warning("study %s: cannot read it to judge its completeness: %s", study_id, exc)
                continue
            except Exception:  # a header the engine's classification trips on: StableAge decides
                logger.exception("study %s: judging its completeness failed; StableAge decides", study_id)
                watch.next_check = now + _SETTLED_CHECK_S
                continue
            if signature is None or signature == watch.evaluated:
                if all(now - s.changed_at >= 2 * self.quiet_s for s in watch.series.values()):
                    watch.next_check = now + _SETTLED_CHECK_S  # judged, or nothing to judge: look less often
                continue
            watch.evaluated = signature
            out.append(study_id)
        return out

    def _observe(
        self, study_id: str, watch: _StudyWatch, now: float
    ) -> tuple[tuple[str, int, bool], ...] | None:
        """Read the study's series; the signature of its possible inputs when all are quiet, else None."""
        study = self.api.get_json(f"/studies/{quote_id(study_id)}")
        signature = []
        quiet = True
        present = set()
        settles = 0.0  # when the quiet time of the series quiet only for early_s ends (0: none is)
        any_count: list[str] = []
        for series_id in study.get("Series", []):
            try:
                data = self.api.get_json(f"/series/{quote_id(series_id)}")
            except NotFoundError:
                continue
            present.add(series_id)
            instances = tuple(str(i) for i in data.get("Instances", []))
            series = watch.series.get(series_id)
            if series is None:
                series = watch.series[series_id] = _SeriesWatch(instances, now, now)
            elif len(instances) != len(series.instances):
                series.instances, series.changed_at = instances, now
            series.stable = self.own_stability and bool(data.get("IsStable", False))
            manufacturer = str((data.get("MainDicomTags") or {}).get("Manufacturer", "")).strip()
            if not instances or (self.manufacturer and manufacturer == self.manufacturer):
                any_count.append(series_id)
                continue
            busy = not series.stable and now - series.changed_at < self.quiet_s
            if busy and not series.judged_first and now - series.first_seen >= self.quiet_s:
                # Receiving for a while (DCE, say): may the study be judged while it goes on? Asked only
                # now, so that the short series of a study being sent cost no header read meanwhile.
                first = self.headers.header(instances[0])
                series.ignored = first_header_verdict(first) if first is not None else None
                series.judged_first = True
            if series.ignored is not None:
                any_count.append(series_id)
                continue
            if busy and not self._all_announced_arrived(series):
                if self.early_s > 0 and now - series.changed_at >= self.early_s:
                    settles = max(settles, series.changed_at + self.quiet_s)
                else:
                    quiet = False
            signature.append((series_id, len(instances), series.stable))
        for gone in [s for s in watch.series if s not in present]:
            del watch.series[gone]
        if not quiet or not signature:
            return None
        counts = {series_id: count for series_id, count, _ in signature}
        watch.early = (settles, counts, tuple(any_count)) if settles > 0 else None
        return tuple(sorted(signature))

    def store_gate(self, study_id: str, wall_clock: Callable[[], float] = time.time) -> StoreGate | None:
        """The store gate of the jobs of a study that :meth:`due` returned before its quiet time ended;
        None when it returned it quiet (or does not watch it)."""
        watch = self._studies.get(study_id)
        if watch is None or watch.early is None:
            return None
        settles, counts, any_count = watch.early
        not_before = wall_clock() + max(settles - self.clock(), 0.0)
        return StoreGate(not_before, counts, any_count, self.manufacturer)

    def _all_announced_arrived(self, series: _SeriesWatch) -> bool:
        """The series holds as many instances as its first header announces (read once per series)."""
        if not series.announced_read:
            first = self.headers.header(series.instances[0])
            series.announced = announced_images(first) if first is not None else None
            series.announced_read = True
        return series.announced is not None and len(series.instances) == series.announced

    def forget_all(self) -> None:
        """Stop watching every study (this server is no longer the cluster's dispatcher)."""
        for study_id in list(self._studies):
            self.forget(study_id)

    def forget(self, study_id: str) -> None:
        """Stop watching a study and drop the headers read for it."""
        watch = self._studies.pop(study_id, None)
        if watch is not None:
            for series in watch.series.values():
                self.headers.forget(series.instances)
