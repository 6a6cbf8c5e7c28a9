"""Shared test fixtures: the real ProstateX study and copies of it that tests may damage."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, give each worker its own share of the CPUs (its processes inherit it).

    Every torch process sizes its thread pool to the CPUs it may run on
    (:func:`lesion_engine.model.devices.configure_cpu_threads`); with two workers on two CPUs, each worker's
    engines, trainings, Orthancs and reference runs would otherwise start two spinning OpenMP threads, four
    on two CPUs, and run several times slower than on one CPU each.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < count:
        return
    share = cpus[int(worker[2:]) % count :: count]
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = str(len(share))


FIXTURE_ROOT = Path(
    os.environ.get("LESION_AI_FIXTURE", REPO.parent / "shared" / "fixtures" / "prostatex-0001")
)


@pytest.fixture(scope="session")
def prostatex() -> Path:
    """Folder of the real ProstateX-0001 fixture (read only)."""
    if not (FIXTURE_ROOT / "dicom").is_dir():
        pytest.fail(
            f"the ProstateX fixture is missing at {FIXTURE_ROOT}; put the shared fixtures beside the repository "
            "or set LESION_AI_FIXTURE to the prostatex-0001 folder"
        )
    return FIXTURE_ROOT


@pytest.fixture(scope="session")
def prostatex_series(prostatex: Path) -> dict[int, Path]:
    """SeriesNumber -> folder of that series in the fixture."""
    out: dict[int, Path] = {}
    for folder in sorted((prostatex / "dicom").glob("*/*")):
        first = next(folder.glob("*.dcm"))
        out[int(pydicom.dcmread(first, stop_before_pixels=True).SeriesNumber)] = folder
    return out


def copy_series(series: dict[int, Path], numbers: list[int], dest: Path) -> dict[int, Path]:
    """Copy some fixture series into ``dest`` (writable); return SeriesNumber -> copied folder."""
    out = {}
    for number in numbers:
        target = dest / f"s{number:02d}"
        shutil.copytree(series[number], target)
        for path in target.iterdir():
            path.chmod(0o644)
        out[number] = target
    return out


VENDOR_MR_ROOT = Path(
    os.environ.get("LESION_AI_VENDOR_MR", REPO.parent / "shared" / "fixtures" / "vendor-mr")
)


@pytest.fixture(scope="session")
def vendor_mr() -> Path:
    """Folder of the real vendor MR fixtures (GE, Philips, Siemens; classic and Enhanced; read only)."""
    if not (VENDOR_MR_ROOT / "truth.json").is_file():
        pytest.fail(
            f"the vendor MR fixtures are missing at {VENDOR_MR_ROOT}; put the shared fixtures beside the "
            "repository or set LESION_AI_VENDOR_MR to the vendor-mr folder"
        )
    return VENDOR_MR_ROOT
