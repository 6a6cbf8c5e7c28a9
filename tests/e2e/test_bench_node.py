"""The node benchmark's study copies (``benchmarks/node.py``): new UIDs, and counts announced when asked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pydicom
import pytest

from benchmarks import node
from orthanc_plugin.intake.completeness import announced_images

pytestmark = pytest.mark.fixture


def test_a_copy_announces_each_series_count_only_when_asked(
    prostatex_series: dict[int, Path], tmp_path: Path
) -> None:
    files = [*sorted(prostatex_series[10].iterdir())[:4], *sorted(prostatex_series[8].iterdir())[:3]]
    originals = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    plain = [pydicom.dcmread(f) for f in node._copy(files, 0, tmp_path / "plain")]
    announced = [pydicom.dcmread(f) for f in node._copy(files, 1, tmp_path / "announced", announce=True)]
    assert all("ImagesInAcquisition" not in ds for ds in plain)
    assert {str(ds.StudyInstanceUID) for ds in plain}.isdisjoint(
        {str(ds.StudyInstanceUID) for ds in originals}
    )
    per_series = Counter(str(ds.SeriesInstanceUID) for ds in announced)
    assert sorted(per_series.values()) == [3, 4]
    assert [announced_images(ds) for ds in announced] == [
        per_series[str(ds.SeriesInstanceUID)] for ds in announced
    ]
    assert all(announced_images(ds) is None for ds in originals)
