"""A full disk loses no study and is seen: a real node whose data folder is a small tmpfs.

A study arrives; before it is stable the disk fills up, so that Orthanc cannot even log that the study is
stable (its index is full) and the node could not queue it. Health names the full folders meanwhile. Once
space is freed, the study is processed without a resend or a restart, and health is clear again. Needs root
(``mount -t tmpfs``), as the tests run; bounded: a 48 MB tmpfs, about a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.node_env import OrthancFleet, jobs, make_study, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

TMPFS_MB = 48
WARNING_MB = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(
            f"this test mounts a tmpfs and needs root (as `make test` runs in CI): {done.stderr.strip()}"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while chunk := min(shutil.disk_usage(folder).free, 1 << 20):
                handle.write(b"\0" * chunk)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            pass  # full
    return filler


def test_a_full_disk_loses_no_study_and_health_says_so(small_disk: Path, tmp_path: Path) -> None:
    fleet = OrthancFleet(small_disk)
    try:
        node = fleet.node(
            stable_age=3, extra={"CompletenessQuietSeconds": 0, "DiskSpaceWarningMb": WARNING_MB}
        )
        node.start()
        client = node.client()
        assert client.get_json("/lesion-ai/health")["problems"] == []
        make_study(tmp_path / "study", images=4)
        for path in sorted((tmp_path / "study").glob("*.dcm")):
            client.post_bytes("/instances", path.read_bytes())
        filler = _fill(small_disk)
        assert shutil.disk_usage(small_disk).free < 1024 * 1024

        def full_named() -> list[str] | None:
            problems = list(client.get_json("/lesion-ai/health")["problems"])
            return problems if sum("MB free" in p for p in problems) == 2 else None

        problems = wait_for(full_named, 30, "health to name the full data folder and storage")
        assert any("data folder" in p for p in problems) and any("Orthanc storage" in p for p in problems)
        time.sleep(6)  # the study is stable now, and could not be queued
        assert jobs(client) == []
        filler.unlink()

        def processed() -> list[dict[str, Any]] | None:
            found = jobs(client)
            return found if found and all(j["state"] == "done" for j in found) else None

        done = wait_for(processed, 120, "the study processed once space was freed (no resend, no restart)")
        assert len(done) == 1 and done[0]["attempts"] == 1
        assert wait_for(lambda: client.get_json("/lesion-ai/health")["problems"] == [], 30, "health clear")
    finally:
        fleet.close()
