"""The cluster's tables on a real PostgreSQL server: the dispatcher lease, shared values with revisions, the
rules' history, and the per-study lock that keeps two servers from deleting each other's new results."""

from __future__ import annotations

import contextlib
import io
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lesion_engine.labels.verdicts import Verdicts
from lesion_engine.model.model_card import CARD_FILE, WEIGHTS_FILE
from orthanc_plugin.cluster.database import ClusterDatabase, ClusterDatabaseError
from orthanc_plugin.cluster.lease import Lease
from orthanc_plugin.cluster.locks import StudyLocks
from orthanc_plugin.cluster.registry_state import SharedRegistryState
from orthanc_plugin.cluster.role import ClusterRole
from orthanc_plugin.cluster.rules import SharedRules
from orthanc_plugin.cluster.rules_history import SharedRulesHistory
from orthanc_plugin.cluster.shared import RULES, SharedState, StaleRevisionError
from orthanc_plugin.intake.labels import Label, LabelStore
from orthanc_plugin.intake.private_table import postgres_sql
from orthanc_plugin.intake.studies import ResultReplacement
from orthanc_plugin.intake.verdicts import VerdictRecord, VerdictStore
from orthanc_plugin.jobqueue import JobProgress, JobState, NewJob, QueuePolicy
from orthanc_plugin.jobqueue.postgres import PostgresJobQueue
from orthanc_plugin.models.registry import ModelRegistry, RegistryError
from orthanc_plugin.node.orthanc_api import NotFoundError
from orthanc_plugin.rules import RoutingRules, parse_rules
from tests.support.model_helpers import write_tiny_artifact
from tests.support.pg_env import PostgresServer, running_postgres

pytestmark = [pytest.mark.postgres]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[ClusterDatabase]:
    db = ClusterDatabase(postgres.database())
    yield db
    db.close()


# -- the dispatcher lease ------------------------------------------------------------------------------------
def test_one_holder_at_a_time_and_takeover_only_after_expiry(database: ClusterDatabase) -> None:
    a = Lease(database, "A", seconds=1.5)
    b = Lease(ClusterDatabase(database.url), "B", seconds=1.5)
    assert a.hold() and not b.hold()
    taken = a.state()
    assert taken is not None and taken.holder == "A"
    time.sleep(0.8)
    assert a.hold() and not b.hold()  # renewed before it expired: B still waits
    renewed = a.state()
    assert renewed is not None and renewed.since == taken.since and renewed.expires > taken.expires
    time.sleep(1.7)  # A stopped renewing
    assert b.hold() and not a.hold()
    state = b.state()
    assert state is not None and state.holder == "B" and state.since > taken.since
    b.release()
    assert b.state() is None and a.hold()  # given up: taken at once
    b.database.close()


def test_lease_and_role_refuse_bad_values_and_say_why(database: ClusterDatabase) -> None:
    with pytest.raises(ValueError, match="needs a name"):
        Lease(database, "", 5)
    with pytest.raises(ValueError, match="positive"):
        Lease(database, "A", 0)
    with pytest.raises(ValueError, match="postgresql://"):
        ClusterDatabase("sqlite:///x.db")


def test_the_role_stops_dispatching_before_its_lease_can_be_taken(database: ClusterDatabase) -> None:
    now = [100.0]
    role = ClusterRole(database.url, "A", lease_s=9.0, clock=lambda: now[0])
    try:
        assert role.renew() and role.dispatching and role.changed() and not role.changed()
        now[0] += 5.9  # within two thirds of the lease since the last renewal
        assert role.dispatching
        now[0] += 0.2  # past two thirds: another server may soon take over, so this one stops first
        assert not role.dispatching
        figures = role.figures()
        dispatcher = figures["dispatcher"]
        assert figures["server"] == "A" and isinstance(dispatcher, dict) and dispatcher["server"] == "A"
    finally:
        role.stop()
    other = Lease(ClusterDatabase(database.url), "B", 9.0)
    assert other.hold()  # stop gave the lease up
    other.database.close()


def test_an_unreachable_database_is_not_holding_and_health_says_so(postgres: PostgresServer) -> None:
    role = ClusterRole(f"postgresql://lesion@127.0.0.1:{postgres.port}/no_such_database", "A", lease_s=6.0)
    try:
        assert not role.renew() and not role.dispatching
        assert role.error is not None and "no_such_database" in role.error
        assert "error" in role.figures()
    finally:
        role.stop()


# -- shared values -------------------------------------------------------------------------------------------
def test_shared_values_have_revisions_and_refuse_stale_writes(database: ClusterDatabase) -> None:
    state = SharedState(database)
    assert state.get("rules") is None and state.revision("rules") is None
    assert state.put_if_absent("rules", "v1", "A") and not state.put_if_absent("rules", "other", "B")
    assert state.revision("rules") == 1
    assert state.put("rules", "v2", "admin", expected=1) == 2
    with pytest.raises(StaleRevisionError, match="revision 2 is stored, the writer read 1"):
        state.put("rules", "v3", "B", expected=1)
    found = state.get("rules")
    assert found is not None and (found.value, found.revision, found.updated_by) == ("v2", 2, "admin")


def test_rules_history_is_kept_in_the_database(database: ClusterDatabase) -> None:
    history = SharedRulesHistory(database, keep=2)
    assert history.versions() == [] and history.author("v1") == (None, None)
    assert history.record("v1", "v1", "alice") is None  # nothing changed: nothing kept
    assert history.author("v1")[0] == "alice"
    first = history.record("v1", "v2", "bob", now=10.0)
    assert (
        first is not None and first.number == 1 and first.saved_by == "alice" and first.replaced_by == "bob"
    )
    history.record("v2", "v3", None, now=11.0)
    history.record("v3", "v4", "carol", now=12.0)
    other = SharedRulesHistory(ClusterDatabase(database.url), keep=2)  # another server sees the same
    assert [v.text for v in other.versions()] == ["v3", "v2"]
    assert other.get(1) is None and other.get(3) is not None and other.author("v4") == ("carol", 12.0)
    assert other.author("v3") == (None, None)
    other.database.close()


# -- result replacement across two servers ---------------------------------------------------------------
class _Orthanc:
    """The instances of one study, shared by two servers (as Orthanc's index is)."""

    def __init__(self) -> None:
        self.instances: set[str] = set()
        self.lock = threading.Lock()
        self.deleted: list[str] = []


class _Server:
    """One server's view of :class:`_Orthanc`; its first bulk delete pauses until ``go`` is set."""

    def __init__(self, orthanc: _Orthanc, pause: bool) -> None:
        self.orthanc = orthanc
        self.pause = pause
        self.inside = threading.Event()
        self.go = threading.Event()

    def get_json(self, uri: str) -> Any:
        instance = uri.rsplit("/", 1)[-1]
        with self.orthanc.lock:
            if instance not in self.orthanc.instances:
                raise NotFoundError(uri)
        return {"ID": instance}

    def post_json(self, uri: str, body: Any) -> Any:
        assert uri == "/tools/bulk-delete"
        if self.pause:
            self.pause = False
            self.inside.set()
            self.go.wait(10)
        with self.orthanc.lock:
            for instance in body["Resources"]:
                self.orthanc.instances.discard(instance)
                self.orthanc.deleted.append(instance)
        return {}


def _job(key: str) -> NewJob:
    return NewJob(key=key, study_id="study-1", rule="prostate", model="m")


def _replace_with_two_servers(url: str, locks: bool) -> tuple[_Orthanc, PostgresJobQueue]:
    """Server A queues a job that replaces a done one and pauses inside the delete of its results; server B
    advances the held job meanwhile; a worker runs the new job as soon as it is released (by B, or by A
    before A's lock ends) and stores its result under the earlier result's ID (result UIDs derive from the
    inputs' UIDs)."""
    policy = QueuePolicy(lease_s=30.0, max_attempts=3, backoff_base_s=1.0, backoff_max_s=4.0)
    queue_a, queue_b = PostgresJobQueue(url, policy), PostgresJobQueue(url, policy)
    orthanc = _Orthanc()
    first, _ = queue_a.enqueue(_job("k1"))
    claimed = queue_a.claim("w")
    assert claimed is not None and claimed.id == first
    orthanc.instances.add("result-1")
    queue_a.complete(first, "w", JobProgress(stored=("result-1",), status="done").to_json())
    server_a, server_b = _Server(orthanc, pause=True), _Server(orthanc, pause=False)
    lock_db = [ClusterDatabase(url), ClusterDatabase(url)]
    locks_a, locks_b = StudyLocks(lock_db[0]), StudyLocks(lock_db[1])

    runs: list[int] = []

    def worker() -> bool:
        job = queue_b.claim("w2")
        if job is None:
            return False
        runs.append(job.id)
        with orthanc.lock:
            orthanc.instances.add("result-1")  # the new result, same UIDs as the earlier one
        queue_b.complete(job.id, "w2", JobProgress(stored=("result-1",), status="done").to_json())
        return True

    @contextlib.contextmanager
    def lock_a(study_id: str) -> Iterator[None]:
        """A's lock, and a worker that runs the job as soon as A released it, before A's lock ends."""
        with locks_a.hold(study_id):
            yield
            worker()

    replace_a = ResultReplacement(server_a, queue_a, lock_a if locks else None)
    replace_b = ResultReplacement(server_b, queue_b, locks_b.hold if locks else None)

    a = threading.Thread(target=replace_a.enqueue, args=(_job("k2"),))
    a.start()
    assert server_a.inside.wait(10), "server A never reached the delete"
    b = threading.Thread(target=replace_b.advance)
    b.start()
    b.join(2.0)
    if not b.is_alive():
        worker()  # B released the job: a worker runs it at once
    server_a.go.set()
    a.join(10)
    b.join(10)
    worker()
    assert len(runs) == 1, f"the replacing job ran {len(runs)} times"
    for db in lock_db:
        db.close()
    return orthanc, queue_a


def test_two_servers_replacing_one_study_never_delete_the_new_results(postgres: PostgresServer) -> None:
    orthanc, queue = _replace_with_two_servers(postgres.database(), locks=True)
    assert orthanc.instances == {"result-1"}, f"the new result was deleted: {orthanc.deleted}"
    assert orthanc.deleted == ["result-1"]  # the earlier result, once
    states = sorted(j.state.value for j in queue.list(study_id="study-1", limit=10))
    assert states == [JobState.DONE.value, JobState.DONE.value]


def test_a_study_lock_that_cannot_be_had_says_so(postgres: PostgresServer) -> None:
    url = postgres.database()
    holder, waiter = StudyLocks(ClusterDatabase(url)), StudyLocks(ClusterDatabase(url), timeout_s=0.5)
    with (
        holder.hold("study-1"),
        pytest.raises(ClusterDatabaseError, match="study study-1: the cluster lock"),
        waiter.hold("study-1"),
    ):
        pass
    with holder.hold("study-1"), waiter.hold("study-2"):
        pass  # another study is free
    with waiter.hold("study-1"):
        pass  # and the same study once released
    holder.close()
    waiter.close()


# -- the radiologists' labels and verdicts, one table for every server --------------------------------------
def _label(sop: str, study: str = "study-1") -> Label:
    return Label(study, "1.2.3", "series-1", "1.2.3.4", f"instance-{sop}", sop, "Viewer", "SEG", (), (), 10.0)


def _verdict(sop: str, at: float) -> VerdictRecord:
    return VerdictRecord(
        study="study-1",
        study_instance_uid="1.2.3",
        instance=f"instance-{sop}",
        sop_instance_uid=sop,
        model="m:1:abc",
        sender={"name": "dr-a"},
        content_time="",
        verdicts=Verdicts((), ()),
        refused=None,
        recorded_at=at,
    )


def test_labels_and_verdicts_recorded_by_one_server_are_read_by_the_other(postgres: PostgresServer) -> None:
    url = postgres.database()
    labels_a, labels_b = LabelStore(url), LabelStore(url)
    assert labels_a.add(_label("1.9.1")) and not labels_b.add(_label("1.9.1"))  # one row per SEG
    assert labels_b.add(_label("1.9.2", study="study-2"))
    assert [lab.sop_instance_uid for lab in labels_a.list()] == ["1.9.2", "1.9.1"]
    assert (
        labels_a.count("study-2") == 1
        and labels_b.count("1.2.3") == 2
        and labels_a.has_instance("instance-1.9.2")
    )
    verdicts_a, verdicts_b = VerdictStore(url), VerdictStore(url)
    assert verdicts_a.add(_verdict("1.8.1", 1.0)) and verdicts_b.add(_verdict("1.8.2", 2.0))
    assert not verdicts_a.add(_verdict("1.8.2", 3.0))
    current = verdicts_a.list()
    assert [(r.sop_instance_uid, r.current) for r in current] == [("1.8.2", True)]  # the later SR replaced it
    assert [r.sop_instance_uid for r in verdicts_b.list(history=True)] == ["1.8.2", "1.8.1"]
    assert verdicts_b.summary()["m:1:abc"]["studies"] == 1 and verdicts_a.count(history=True) == 2
    for store in (labels_a, labels_b, verdicts_a, verdicts_b):
        store.close()


def test_the_stores_sql_is_said_to_postgresql_word_for_word() -> None:
    assert (
        postgres_sql("INSERT OR IGNORE INTO t (a) VALUES (?)")
        == "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    )
    assert (
        postgres_sql("id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL")
        == "id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION"
    )
    assert postgres_sql("SELECT 1 WHERE a LIKE '5%'") == "SELECT 1 WHERE a LIKE '5%%'"


# -- the rules in force across the cluster -----------------------------------------------------------------
class _FlakyState(SharedState):
    """The shared values of a real database, with an outage switched on and off by the test."""

    def __init__(self, database: ClusterDatabase) -> None:
        super().__init__(database)
        self.down = False

    def revision(self, name: str) -> int | None:
        if self.down:
            raise ClusterDatabaseError("cluster database db:5432: connection refused")
        return super().revision(name)


def _parse(text: str, source: str) -> RoutingRules:
    return parse_rules(text, source, Path("."))


ONE_RULE = """\
version: 1
rules:
  - name: {name}
    match: {{series: {{Modality: [CT]}}}}
"""


def test_shared_rules_are_read_once_per_revision_and_bad_or_unreadable_ones_leave_the_last_in_force(
    database: ClusterDatabase,
) -> None:
    state = _FlakyState(database)
    server_a, server_b = SharedRules(state, "A", _parse), SharedRules(state, "B", _parse)
    assert server_a.seed(_parse(ONE_RULE.format(name="first"), "file")) and not server_b.seed(
        _parse(ONE_RULE.format(name="other"), "file")
    )
    first = server_b.current()
    assert first is not None and [r.name for r in first.rules] == ["first"] and server_b.current() is first
    server_a.replace(_parse(ONE_RULE.format(name="second"), "PUT"))
    second = server_b.current()
    assert second is not None and [r.name for r in second.rules] == ["second"] and server_b.error is None
    state.put(RULES, "version: 1\nrules: [{name: x, priorty: 1}]\n", "someone")  # bypassing validation
    assert server_b.current() is second and "revision 3) are not applied" in str(server_b.error)
    state.down = True
    assert server_b.current() is second and "connection refused" in str(server_b.error)
    state.down = False
    assert server_b.current() is second and "revision 3) are not applied" in str(server_b.error)
    server_a.replace(_parse(ONE_RULE.format(name="third"), "PUT"))
    third = server_b.current()
    assert third is not None and [r.name for r in third.rules] == ["third"] and server_b.error is None


# -- the model registry's state ------------------------------------------------------------------------------
def test_the_registry_state_is_in_the_database_and_read_by_every_server(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url, folder = postgres.database(), tmp_path / "shared-models"
    stores = [SharedRegistryState(url, "A"), SharedRegistryState(url, "B")]
    server_a, server_b = (ModelRegistry(folder, state_store=store) for store in stores)
    artifact = write_tiny_artifact(tmp_path / "tiny", seed=4)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in (CARD_FILE, WEIGHTS_FILE):
            archive.write(artifact / name, name)
    server_a.add_zip("tiny", buffer.getvalue(), "alice")
    server_b.promote("tiny", "bob")
    assert server_a.active().name == "tiny" and server_a.state().history[-1]["user"] == "bob"
    assert not server_a.registry_file.exists()  # the state is the database's, not a file's
    unreachable = ModelRegistry(
        folder, state_store=SharedRegistryState(f"postgresql://lesion@127.0.0.1:{postgres.port}/gone", "C")
    )
    with pytest.raises(RegistryError, match="cannot read the model registry in the cluster database"):
        unreachable.state()
    for store in stores:
        store.close()
