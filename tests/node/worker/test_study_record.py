"""The study record (the node's study metadata) loses no writer's change: each write is revision-checked.

Two workers (two rules of one study, or two servers) may record their jobs on one study at the same time.
Each reads the record, adds its job and writes it back; a plain GET-then-PUT lets the second write erase
the first. The node's Orthanc runs with ``CheckRevisions``, and the worker writes with ``If-Match`` and
reads again on 409 Conflict (:func:`orthanc_plugin.worker.runner.update_study_record`). Here another
writer's whole update runs between one writer's read and its write, on a real Orthanc with the node's own
configuration, for a record that exists and for one that both create.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orthanc_plugin.intake.studies import StudyRecord
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApiError
from orthanc_plugin.worker.client import OrthancClient
from orthanc_plugin.worker.runner import RECORD_ATTEMPTS, update_study_record
from tests.support.node_env import OrthancFleet, OrthancServer, make_study

pytestmark = [pytest.mark.orthanc]

NAME = "LesionAI"  # the node's default MetadataName, declared under UserMetadata in its configuration


class OtherWriterBetween:
    """A client whose next read is followed, before its caller writes, by another writer's whole update."""

    def __init__(self, client: OrthancClient, other: Callable[[], object]) -> None:
        self.client = client
        self.other: Callable[[], object] | None = other
        self.reads = 0

    def _interleave(self) -> None:
        if self.other is not None:
            other, self.other = self.other, None
            other()

    def get_versioned(self, path: str) -> tuple[bytes, str | None]:
        self.reads += 1
        try:
            return self.client.get_versioned(path)
        finally:
            self._interleave()

    def put_text(self, path: str, text: str, if_match: str | None = None) -> bytes:
        return self.client.put_text(path, text, if_match)

    # The rest of a worker's REST API is not used by update_study_record.
    def get_json(self, path: str) -> object:
        raise AssertionError(path)

    def get_bytes(self, path: str) -> bytes:
        raise AssertionError(path)

    def post_json(self, path: str, body: object) -> object:
        raise AssertionError(path)

    def post_bytes(self, path: str, body: bytes, content_type: str = "application/dicom") -> object:
        raise AssertionError(path)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """Orthanc with the node's generated configuration (no plugin: only its REST API is used here)."""
    root = tmp_path_factory.mktemp("record")
    fleet = OrthancFleet(root)
    server = fleet.node(workers=0, with_plugin=False).start()
    yield server
    fleet.close()


def _new_study(node: OrthancServer, folder: Path) -> str:
    make_study(folder)
    client = node.client()
    answers = [client.post_bytes("/instances", p.read_bytes()) for p in sorted(folder.iterdir())]
    return str(answers[0]["ParentStudy"])


def _add(key: str) -> Callable[[StudyRecord], None]:
    def change(record: StudyRecord) -> None:
        record.processed[key] = {"rule": key}
        record.result_series = sorted({*record.result_series, f"series-{key}"})

    return change


def _record(node: OrthancServer, study: str) -> StudyRecord:
    return StudyRecord.from_text(node.client().get_bytes(f"/studies/{study}/metadata/{NAME}"))


def test_the_nodes_orthanc_checks_revisions(node: OrthancServer) -> None:
    assert json.loads(node.config.read_text(encoding="utf-8"))["CheckRevisions"] is True


@pytest.mark.parametrize("exists", [True, False], ids=["existing record", "both create it"])
def test_a_write_between_read_and_write_is_kept(node: OrthancServer, tmp_path: Path, exists: bool) -> None:
    study = _new_study(node, tmp_path / "study")
    if exists:
        update_study_record(node.client(), study, NAME, _add("earlier"))
    other = node.client()
    racing = OtherWriterBetween(
        node.client(), lambda: update_study_record(other, study, NAME, _add("rule-b"))
    )
    update_study_record(racing, study, NAME, _add("rule-a"))

    record = _record(node, study)
    expected = {"rule-a", "rule-b"} | ({"earlier"} if exists else set())
    assert set(record.processed) == expected
    assert record.result_series == sorted(f"series-{key}" for key in expected)
    assert racing.reads == 2, "the first write was refused (409) and the record read again"


def test_a_stale_version_is_refused_by_orthanc(node: OrthancServer, tmp_path: Path) -> None:
    """The guard itself: Orthanc answers 409 to a write over a version that is no longer the current one."""
    study = _new_study(node, tmp_path / "study")
    client = node.client()
    path = f"/studies/{study}/metadata/{NAME}"
    client.put_text(path, StudyRecord().to_text())
    _, etag = client.get_versioned(path)
    assert etag is not None
    update_study_record(client, study, NAME, _add("rule-b"))
    with pytest.raises(RestApiError) as refused:
        client.put_text(path, StudyRecord().to_text(), if_match=etag)
    assert refused.value.status == 409
    with pytest.raises(RestApiError) as unguarded:
        client.put_text(path, StudyRecord().to_text())  # no If-Match over an existing value: refused too
    assert unguarded.value.status == 409
    assert set(_record(node, study).processed) == {"rule-b"}


def test_endless_conflicts_end_in_an_error(node: OrthancServer, tmp_path: Path) -> None:
    """A record that changes at every read is given up after RECORD_ATTEMPTS, with Orthanc's 409."""
    study = _new_study(node, tmp_path / "study")
    other = node.client()
    update_study_record(other, study, NAME, _add("first"))

    class AlwaysRaced(OtherWriterBetween):
        def _interleave(self) -> None:
            update_study_record(other, study, NAME, _add(f"other-{self.reads}"))

    racing = AlwaysRaced(node.client(), lambda: None)
    with pytest.raises(RestApiError) as gave_up:
        update_study_record(racing, study, NAME, _add("rule-a"))
    assert gave_up.value.status == 409
    assert racing.reads == RECORD_ATTEMPTS
    assert "rule-a" not in _record(node, study).processed


def test_a_missing_study_is_not_found(node: OrthancServer) -> None:
    with pytest.raises(NotFoundError):
        update_study_record(node.client(), "0000-not-a-study", NAME, _add("rule-a"))
