"""Radiologists' saved SRs read as verdicts by the node (against a fake ``orthanc`` module): recorded once,
replaced by a later SR with history kept, listed by ``GET /lesion-ai/verdicts`` and on the Models listing,
never a job; hostile SRs give no verdict and the node goes on.

The SRs are the real ones OHIF wrote (``tests/data/ohif-sr``), the images the fixture's T2W series.
"""

from __future__ import annotations

import copy
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from orthanc_plugin.intake.studies import StudyRecord
from orthanc_plugin.intake.verdicts import VERDICTS_FILE
from orthanc_plugin.plugin import NodePlugin
from tests.node.intake.test_node_labels import LabelOrthanc, _jobs, _processed_study
from tests.node.server.test_node_plugin import _settings
from tests.paths import DATA

DATA = DATA / "ohif-sr"
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
MODEL = "lesion-ai-default 1.0.0"


class VerdictOrthanc(LabelOrthanc):
    """The fake module, with a study's instances listed (their SOPInstanceUIDs) as Orthanc lists them."""

    def _get(self, path: str, query: dict[str, list[str]]) -> Any:
        if m := re.fullmatch(r"/studies/([^/]+)/instances", path):
            study = self.studies.get(m.group(1))
            if study is None:
                raise self._missing()
            out = []
            for series_id in study.series:
                for instance in self.series[series_id].instances:
                    ds = pydicom.dcmread(io.BytesIO(self.files[instance]), stop_before_pixels=True)
                    out.append({"ID": instance, "MainDicomTags": {"SOPInstanceUID": str(ds.SOPInstanceUID)}})
            return out
        return super()._get(path, query)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[VerdictOrthanc, NodePlugin]]:
    settings = _settings(tmp_path)
    fake = VerdictOrthanc({"LesionAI": settings.to_section()})
    plugin = NodePlugin(fake, settings)
    plugin.install()
    yield fake, plugin
    plugin.stop()


def _add_files(fake: VerdictOrthanc, study: str, files: list[bytes], **series: Any) -> str:
    series_id = fake.add_series(study, instances=len(files), **series)
    for instance, data in zip(fake.series[series_id].instances, files, strict=True):
        fake.files[instance] = data
    return series_id


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _judged_study(fake: VerdictOrthanc, plugin: NodePlugin, prostatex_series: dict[int, Path]) -> str:
    """A processed study holding the fixture's T2W images and the node's SR (a result of its record)."""
    study, _ = _processed_study(fake, plugin)
    node_sr = (DATA / "node-sr.dcm").read_bytes()
    fake.studies[study].tags["StudyInstanceUID"] = str(pydicom.dcmread(io.BytesIO(node_sr)).StudyInstanceUID)
    t2w = [p.read_bytes() for p in sorted(prostatex_series[10].glob("*.dcm"))]
    _add_files(fake, study, t2w, SeriesDescription="t2_tse_tra (fixture)")
    ours = _add_files(fake, study, [node_sr], Modality="SR", Manufacturer="Lesion AI", sop_class=SR_3D)
    record = StudyRecord.from_text(fake.studies[study].metadata[plugin.settings.metadata_name])
    record.result_series.append(ours)
    fake.studies[study].metadata[plugin.settings.metadata_name] = record.to_text()
    return study


def _save(fake: VerdictOrthanc, study: str, sr: bytes | Dataset) -> None:
    data = sr if isinstance(sr, bytes) else _bytes(sr)
    _add_files(
        fake, study, [data], Modality="SR", Manufacturer="Unspecified", sop_class=ENHANCED_SR, aet="OHIF"
    )


def _verdicts(fake: VerdictOrthanc, **query: str) -> Any:
    output = fake.rest("GET", "/lesion-ai/verdicts", get=query)
    assert output.status == 200, output.body
    return output.json()


def test_a_saved_sr_is_recorded_as_verdicts_once_and_queues_nothing(
    node: tuple[VerdictOrthanc, NodePlugin], prostatex_series: dict[int, Path], tmp_path: Path
) -> None:
    fake, plugin = node
    study = _judged_study(fake, plugin, prostatex_series)
    plugin.enqueue_study(study)
    jobs = _jobs(plugin)
    assert _verdicts(fake)["verdicts"] == []  # the node's own SR is no verdict
    _save(fake, study, (DATA / "ohif-sr-verdicts.dcm").read_bytes())
    plugin.enqueue_study(study)
    plugin.enqueue_study(study)  # seen again: recorded once
    assert _jobs(plugin) == jobs
    answer = _verdicts(fake)
    [record] = answer["verdicts"]
    assert record["counts"] == {"accepted": 7, "rejected": 1, "missed": 1}
    assert record["model"] == MODEL and record["current"] and record["refused"] is None
    assert [f["label"] for f in record["findings"] if f["verdict"] == "rejected"] == ["Lesion 1 long axis"]
    # OHIF's observer is the placeholder unknown^unknown: the sender is the AE title that stored it.
    assert record["sender"]["name"] == "OHIF" and "observer" not in record["sender"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", record["content_time"])
    assert answer["summary"] == {
        MODEL: {"accepted": 7, "rejected": 1, "missed": 1, "studies": 1, "ppv": 0.875}
    }
    assert _verdicts(fake, study=study)["total"] == 1
    assert _verdicts(fake, study="another")["total"] == 0
    assert _verdicts(fake, model="other 1.0")["total"] == 0
    assert (plugin.settings.home / VERDICTS_FILE).stat().st_mode & 0o077 == 0  # it names studies
    assert fake.rest("GET", "/lesion-ai/verdicts", get={"history": "maybe"}).status == 400

    # A later SR replaces the current verdicts; the earlier one stays in the history.
    _save(fake, study, (DATA / "ohif-sr-unchanged.dcm").read_bytes())
    plugin.enqueue_study(study)
    [current] = _verdicts(fake)["verdicts"]
    assert current["counts"] == {"accepted": 8, "rejected": 0, "missed": 0}
    assert [r["current"] for r in _verdicts(fake, history="true")["verdicts"]] == [True, False]
    assert _verdicts(fake)["summary"][MODEL]["ppv"] == 1.0
    assert _jobs(plugin) == jobs


def _hostile(kind: str) -> Dataset:
    sr = pydicom.dcmread(DATA / "ohif-sr-verdicts.dcm")
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    [measurements] = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups = measurements.ContentSequence
    num = next(i for i in groups[0].ContentSequence if i.ValueType == "NUM")
    scoord = num.ContentSequence[0]
    if kind == "another study":
        scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.5"
    elif kind == "10,000 measurements":
        groups.extend([copy.deepcopy(groups[0])] * (10_000 - len(groups)))
    elif kind == "outside the image":
        scoord.GraphicData = [v + 5000.0 for v in scoord.GraphicData]
    elif kind == "not an SR of the study":
        sr.StudyInstanceUID = pydicom.uid.generate_uid()
    return sr


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("another study", "not one of this study's"),
        ("10,000 measurements", "bytes, more than the 8388608 read"),  # 19 MB
        ("outside the image", "points outside its image"),
        ("not an SR of the study", "another StudyInstanceUID"),
    ],
)
def test_hostile_srs_give_no_verdict_and_the_node_goes_on(
    node: tuple[VerdictOrthanc, NodePlugin],
    prostatex_series: dict[int, Path],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    reason: str,
) -> None:
    fake, plugin = node
    study = _judged_study(fake, plugin, prostatex_series)
    _save(fake, study, (DATA / "ohif-sr-verdicts.dcm").read_bytes())
    plugin.enqueue_study(study)
    jobs = _jobs(plugin)
    _save(fake, study, _hostile(kind))
    with caplog.at_level(logging.WARNING, "orthanc_plugin.intake.verdicts"):
        plugin.enqueue_study(study)
    assert "gives no verdict: " in caplog.text and reason in caplog.text, caplog.text
    [current] = _verdicts(fake)["verdicts"]  # the earlier verdicts stay current
    assert current["counts"] == {"accepted": 7, "rejected": 1, "missed": 1}
    refused = [r for r in _verdicts(fake, history="true")["verdicts"] if r["refused"]]
    assert len(refused) == 1 and reason in refused[0]["refused"] and refused[0]["counts"] is None
    assert _jobs(plugin) == jobs
    plugin.enqueue_study(study)  # the node goes on: the refused SR is not read again
    assert _verdicts(fake, history="true")["total"] == 2


def test_an_sr_in_a_study_without_the_nodes_sr_is_not_read(
    node: tuple[VerdictOrthanc, NodePlugin], caplog: pytest.LogCaptureFixture
) -> None:
    fake, plugin = node
    study, _ = _processed_study(fake, plugin)
    _save(fake, study, (DATA / "ohif-sr-verdicts.dcm").read_bytes())
    with caplog.at_level(logging.INFO, "orthanc_plugin.intake.verdicts"):
        plugin.enqueue_study(study)
    assert "the study holds no SR of the node" in caplog.text
    assert _verdicts(fake, history="true")["total"] == 0
