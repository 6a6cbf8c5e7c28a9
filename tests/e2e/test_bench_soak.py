"""The soak benchmark (``benchmarks/soak.py``): its RSS reading, and a short soak through a real Orthanc."""

from __future__ import annotations

import json
import os
import resource

import pytest

from benchmarks import soak


def test_rss_is_read_from_proc_and_bounded_by_the_peak() -> None:
    before = soak.rss_mb(os.getpid())
    ballast = bytearray(64 * 1024 * 1024)  # 64 MiB, touched: resident
    for index in range(0, len(ballast), 4096):
        ballast[index] = 1
    after = soak.rss_mb(os.getpid())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    assert after - before > 48, f"RSS grew by {after - before:.1f} MiB for 64 MiB written"
    assert 0 < after <= peak_mb + 1
    del ballast
    with pytest.raises(FileNotFoundError):
        soak.rss_mb(2**22 + 1)  # above Linux's largest PID: no such process


def test_soak_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="first <= studies"):
        soak.run(studies=2, first=3)
    with pytest.raises(ValueError, match="time_limit_s"):
        soak.run(studies=2, first=1, time_limit_s=0)


@pytest.mark.slow
@pytest.mark.orthanc
def test_a_short_soak_gives_each_study_one_result_set() -> None:
    report = soak.run(studies=3, first=1, engine=False, time_limit_s=240)
    assert report["completed"], report.get("error")
    assert report["all_exactly_one_result_set"], json.dumps(report)
    assert report["result_sets_per_study"] == {"1": 3}
    # A study started early whose inputs then changed runs again (superseded job, results replaced): under
    # load this can happen; it is never a second result set, and the processor ran once per job.
    assert report["jobs_per_study"] == {"1": 3} and report["processor_runs_as_expected"]
    runs = report["processor_runs_per_study"]
    assert sum(int(n) * count for n, count in runs.items()) == 3 + report["reruns_inputs_changed"]
    assert report["failed_jobs"] == 0 and not report["worker_restarted"]
    assert sorted(report["worker_rss_mb_by_studies"]) == ["1", "2", "3"]
    assert report["rss_after_1_mb"] > 0
    assert report["ratio"] == pytest.approx(report["rss_after_3_mb"] / report["rss_after_1_mb"], abs=1e-3)
