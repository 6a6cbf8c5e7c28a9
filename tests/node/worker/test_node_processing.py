"""The node's processing module: model identity without torch, the engine processor's failure reports,
outcomes keyed by output, and loading an alternative processor."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pydicom
import pytest

from lesion_engine.errors import ModelArtifactError
from lesion_engine.model.model_card import model_identity
from lesion_engine.results.outputs import Output
from orthanc_plugin.worker.processing import (
    EngineProcessor,
    ProcessingOutcome,
    ProcessingRequest,
    ProcessorSettings,
    encode,
    headers_of,
    load_processor,
    warm_up,
)
from tests.support.node_env import make_study
from tests.support.node_fakes import FakeProcessor

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_model_identity(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(
        json.dumps({"name": "bpmri", "version": "1.2", "weights_sha256": "ab" * 32})
    )
    assert model_identity(str(tmp_path)) == "bpmri:1.2:abababababababab"
    assert model_identity(str(tmp_path / "missing")) == "none"
    assert model_identity(str(tmp_path), "pkg.mod:factory") == "processor:pkg.mod:factory"
    assert model_identity(str(tmp_path), None, "site-model-7") == "site-model-7"


@pytest.mark.fixture
def test_missing_model_gives_a_failure_report(prostatex: Path, tmp_path: Path) -> None:
    instances = [p.read_bytes() for p in sorted((prostatex / "dicom").rglob("*.dcm"))]
    processor = EngineProcessor(ProcessorSettings(model=str(tmp_path / "no-model")))
    outcome = processor(instances, ProcessingRequest(job_id=1, study_id="s", rule="r"))
    assert outcome.failed and outcome.reason is not None
    assert outcome.reason.startswith("the AI model is not available on this node")
    objects = [_read(o) for o in outcome.report]
    assert objects and any(str(o.SOPClassUID).startswith(SR_PREFIX) for o in objects)
    study_uid = headers_of(instances[:1])[0].StudyInstanceUID
    assert {o.StudyInstanceUID for o in objects} == {study_uid}


def test_unusable_study_gives_a_failure_report(tmp_path: Path) -> None:
    make_study(tmp_path / "study", series=("t2_tse_tra",))
    instances = [p.read_bytes() for p in sorted((tmp_path / "study").iterdir())]
    outcome = EngineProcessor(ProcessorSettings())(
        instances, ProcessingRequest(job_id=1, study_id="s", rule="r")
    )
    assert outcome.failed and outcome.reason
    assert outcome.report and str(_read(outcome.report[0]).SOPClassUID).startswith(SR_PREFIX)


def test_non_mr_study_gives_a_failure_report(tmp_path: Path) -> None:
    make_study(tmp_path / "ct", modality="CT", study_description="CT", body_part="CHEST")
    instances = [p.read_bytes() for p in sorted((tmp_path / "ct").iterdir())]
    outcome = EngineProcessor(ProcessorSettings())(
        instances, ProcessingRequest(job_id=1, study_id="s", rule="r")
    )
    assert outcome.failed and outcome.reason is not None and "not an MR study" in outcome.reason
    assert outcome.report and not outcome.objects


def test_failure_report_needs_a_readable_instance() -> None:
    assert EngineProcessor(ProcessorSettings()).failure([b"not dicom"], "reason") == []


def test_outcomes_are_keyed_by_output(tmp_path: Path) -> None:
    fake = FakeProcessor(ProcessorSettings())
    make_study(tmp_path / "mr")
    instances = [p.read_bytes() for p in sorted((tmp_path / "mr").iterdir())]
    outcome = fake(instances, ProcessingRequest(job_id=1, study_id="s", rule="r", outputs=(Output.SR,)))
    assert list(outcome.objects) == [Output.SR]
    both = fake(instances, ProcessingRequest(job_id=1, study_id="s", rule="r"))  # the default outputs
    assert list(both.objects) == [Output.SEG, Output.SR]
    [seg], [sr] = (both.objects[o] for o in (Output.SEG, Output.SR))
    assert both.to_store() == [seg, sr] and not both.failed
    assert str(_read(seg).Modality) == "SEG" and str(_read(sr).Modality) == "SR"
    assert encode(_read(seg))[128:132] == b"DICM"
    with pytest.raises(TypeError, match="parse_outputs"):
        ProcessingRequest(job_id=1, study_id="s", rule="r", outputs=("seg",))  # type: ignore[arg-type]


def test_outcome_of_a_study_that_cannot_be_analysed() -> None:
    failed = ProcessingOutcome.could_not_analyse("no axial T2W", [b"FAIL-SR"])
    assert failed.failed and failed.to_store() == [b"FAIL-SR"] and failed.objects == {}
    with pytest.raises(ValueError, match="needs a reason"):
        ProcessingOutcome(failed=True)
    with pytest.raises(ValueError, match="must be failed"):
        ProcessingOutcome(report=(b"x",))


def test_load_processor() -> None:
    assert isinstance(load_processor("tests.support.node_fakes:factory", ProcessorSettings()), FakeProcessor)
    assert isinstance(load_processor(None, ProcessorSettings()), EngineProcessor)
    with pytest.raises(AttributeError):
        load_processor("tests.support.node_fakes:nothing", ProcessorSettings())


def test_a_failing_report_writer_does_not_turn_a_failure_into_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lesion_engine.results.writer

    def broken(*args: object, **kwargs: object) -> list[pydicom.Dataset]:
        raise ValueError("writer bug")

    monkeypatch.setattr(lesion_engine.results.writer, "write_failure", broken)
    make_study(tmp_path / "ct", modality="CT", study_description="CT", body_part="CHEST")
    instances = [p.read_bytes() for p in sorted((tmp_path / "ct").iterdir())]
    outcome = EngineProcessor(ProcessorSettings())(
        instances, ProcessingRequest(job_id=1, study_id="s", rule="r")
    )
    assert outcome.failed and outcome.report == () and outcome.to_store() == []


def test_a_worker_loads_and_warms_its_model_before_the_first_job(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    steps: list[str] = []

    class LoadedEngine:
        model_info = "the configured model"

        def warm_up(self) -> float:
            steps.append("warm")
            return 0.0

    def load_engine(*args: object, **kwargs: object) -> LoadedEngine:
        steps.append("load")
        return LoadedEngine()

    monkeypatch.setattr("lesion_engine.engine.load_engine", load_engine)
    processor = EngineProcessor(ProcessorSettings())
    assert warm_up(processor) and steps == ["load", "warm"]
    assert processor.engine() is processor.engine() and steps == ["load", "warm"]  # loaded once
    assert warm_up(processor) and steps == ["load", "warm"]  # warmed once

    class Unloadable:
        def warm_up(self) -> float:
            raise ModelArtifactError("model.safetensors is missing")

    assert not warm_up(Unloadable())  # type: ignore[arg-type]
    assert "could not be loaded ahead of the first job: model.safetensors is missing" in caplog.text
    assert not warm_up(FakeProcessor(ProcessorSettings()))  # nothing to warm up

    class OwnEngine(EngineProcessor):  # as the tests' ungated engine: its engine() builds its own
        def engine(self) -> Any:
            with self._lock:
                if self._engine is None:
                    steps.append("own")
                    self._engine = LoadedEngine()  # type: ignore[assignment]
                return self._engine

    steps.clear()
    own = OwnEngine(ProcessorSettings())
    assert warm_up(own) and steps == ["own", "warm"] and isinstance(own.engine(), LoadedEngine)
