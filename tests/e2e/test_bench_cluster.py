"""The cluster benchmark (``benchmarks/cluster.py``): both figures, side by side, from a real two-Orthanc
cluster (with the tests' fake processor, so that it is short)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cluster
from orthanc_plugin.cli.dicomsend import dicom_files
from tests.support.node_env import make_study


def test_cluster_benchmark_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 2 studies"):
        cluster.run(studies=1, engine=False)


@pytest.mark.slow
@pytest.mark.orthanc
@pytest.mark.postgres
def test_the_cluster_benchmark_gives_studies_per_hour_with_1_and_2_workers(tmp_path: Path) -> None:
    make_study(tmp_path / "study")  # a tiny study (the benchmark's own has 117 images): the suite's time
    report = cluster.run(studies=2, engine=False, template=dicom_files([tmp_path / "study"]))
    assert report["completed"], report.get("error")
    for key, workers in (("workers_1", 1), ("workers_2", 2)):
        phase = report[key]
        assert phase["workers"] == workers and phase["exactly_one_result_set_each"], json.dumps(report)
        assert phase["jobs_done"] == 2 and phase["studies_per_hour"] == pytest.approx(
            2 / phase["seconds"] * 3600, rel=0.01
        )
    assert report["ratio_2_over_1"] == pytest.approx(
        report["studies_per_hour_2_workers"] / report["studies_per_hour_1_worker"], abs=0.01
    )
