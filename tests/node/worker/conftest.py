"""The worker tests' job queue: SQLite in the test's folder, a 30 s lease, two attempts and no back-off
(``test_node_queue.py`` runs the queue itself on SQLite and PostgreSQL with its own fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orthanc_plugin.jobqueue import JobQueue, QueuePolicy, open_queue, sqlite_url


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    opened = open_queue(
        sqlite_url(tmp_path / "q.sqlite"),
        QueuePolicy(lease_s=30, max_attempts=2, backoff_base_s=0, backoff_max_s=0),
    )
    yield opened
    opened.close()
