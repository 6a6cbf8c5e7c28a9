"""Malformed radiologist SEGs are refused as labels, with the reason, and the build uses the newest sound one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from orthanc_plugin.intake.label_checks import MAX_LABEL_SEGMENTS, label_problem
from orthanc_plugin.plugin import NodePlugin
from tests.node.intake.test_node_labels import (
    READER,
    LabelOrthanc,
    _add_seg,
    _labels,
    _processed_study,
    _simplified,
    node,  # noqa: F401 - the fixture
)
from tests.support.seg_support import radiologist_seg
from training.datasets.node_source import NodeLabel, _newest_per_study
from training.synth import SynthConfig, generate_case


def _tags_of(seg: pydicom.Dataset) -> tuple[dict[str, Any], int]:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, seg, enforce_file_format=True)
    data = buffer.getvalue()
    return _simplified(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)), len(data)


@pytest.mark.slow
def test_a_real_seg_is_a_sound_label_and_each_defect_is_named(tmp_path: Path) -> None:
    case = generate_case(
        tmp_path / "synth", 0, 12, SynthConfig(vendor="siemens", lesion_kinds=("cspca",), profile="small")
    )
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "labels" / f"{case.name}_lesion.nii.gz"))) > 0
    seg = radiologist_seg(case / "dicom", [("Lesion 1 ISUP 3", lesion)], READER, 500)
    tags, size = _tags_of(seg)
    assert label_problem(tags, size) is None
    frames = int(tags["NumberOfFrames"])
    defects: dict[str, tuple[dict[str, Any], int | None]] = {
        "no segment": ({**tags, "SegmentSequence": []}, size),
        "segments": ({**tags, "SegmentSequence": [{"SegmentNumber": str(n)} for n in range(1, 2001)]}, size),
        "no frame": ({**tags, "NumberOfFrames": "0"}, size),
        "declares": ({**tags, "NumberOfFrames": "1000000"}, size),
        "bytes of pixel data": ({**tags, "NumberOfFrames": str(frames * 100)}, size),
        "per-frame": (
            {**tags, "PerFrameFunctionalGroupsSequence": tags["PerFrameFunctionalGroupsSequence"][:1]},
            size,
        ),
        "BitsAllocated": ({**tags, "BitsAllocated": "16"}, size),
        "pixels": ({**tags, "Rows": "0"}, size),
    }
    found = {name: label_problem(t, s) for name, (t, s) in defects.items()}
    assert all(problem is not None for problem in found.values()), found
    assert "2000 segments" in str(found["segments"]) and str(MAX_LABEL_SEGMENTS) in str(found["segments"])
    assert "1000000 frames" in str(found["declares"])
    assert "in a file of" in str(found["bytes of pixel data"])
    groups = [dict(g) for g in tags["PerFrameFunctionalGroupsSequence"]]
    groups[0] = {**groups[0], "SegmentIdentificationSequence": [{"ReferencedSegmentNumber": "9"}]}
    assert "segment 9" in str(label_problem({**tags, "PerFrameFunctionalGroupsSequence": groups}, size))


def test_malformed_segs_are_recorded_as_refused_with_the_reason(
    node: tuple[LabelOrthanc, NodePlugin],  # noqa: F811
) -> None:
    fake, plugin = node
    study, t2 = _processed_study(fake, plugin)
    _add_seg(fake, study, [t2])  # sound
    _add_seg(fake, study, [t2], segments=tuple((f"Lesion {n}", "MANUAL") for n in range(1, 2001)))
    _add_seg(fake, study, [t2], frames=1_000_000)
    _add_seg(fake, study, [t2], frames=0)
    plugin.on_stable_study(study)
    listed = _labels(fake, study=study)["labels"]
    assert len(listed) == 4
    refused = [label["refused"] for label in listed if label["refused"] is not None]
    assert len(refused) == 3, listed
    assert any("2000 segments" in r for r in refused)
    assert any("1000000 frames" in r for r in refused)
    assert any("no frame" in r for r in refused)
    assert all(label["segments"] == [] for label in listed if label["refused"] is not None)
    [sound] = [label for label in listed if label["refused"] is None]
    assert sound["segments"][0]["isup"] == 3


class _Sink:
    def __init__(self) -> None:
        self.ignored: list[tuple[str, str]] = []

    def add(self, study: Any) -> str | None:
        return None

    def skip(self, source: str, reason: str) -> None:
        raise AssertionError(f"nothing is skipped here: {source}: {reason}")

    def ignore(self, source: str, reason: str) -> None:
        self.ignored.append((source, reason))


def test_the_build_uses_the_newest_label_that_is_not_refused() -> None:
    study = "1.2.3.4"

    def label(number: int, refused: str | None = None) -> NodeLabel:
        return NodeLabel(number, "a" * 8, "b" * 8, "c" * 8, study, f"1.2.3.{number}", refused)

    sink = _Sink()
    chosen = _newest_per_study([label(1), label(2), label(3, "it has no frame")], sink)
    assert [c.id for c in chosen] == [2]
    assert any("refused by the node: it has no frame" in reason for _, reason in sink.ignored)
    assert any("older label" in reason for _, reason in sink.ignored)
    assert np.array_equal([c.id for c in _newest_per_study([label(5, "x")], _Sink())], [])
