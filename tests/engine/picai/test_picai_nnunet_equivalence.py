"""An imported PI-CAI nnU-Net gives the reference's results: the authors' process.py (nnUNet_predict) is the oracle.

Five folds in exactly nnU-Net v1's format are made by nnU-Net's own trainer class and trained briefly on
synthetic studies (:mod:`tests.oracles.picai_nnunet_reference`). The reference is ``process.py``'s ``process()``, run
unchanged on the series our roles choose (converted to ``.mha`` by picai_prep, as PI-CAI's archive is): it
calls ``nnUNet_predict`` of nnunet 1.7.0. The node imports the same model folder
(:func:`~lesion_engine.model.picai_nnunet.checkpoint.import_picai_nnunet`: restricted unpickling only) and runs it
with :class:`~lesion_engine.model.picai_nnunet.engine.NnunetDetectionEngine` on the same study read from DICOM by
our loader. Agreement: probability and detection maps on the T2W grid within 1e-3, the case-level likelihood
within 1e-4, the same lesions with centres within one voxel; and without test-time mirroring it breaks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.model.picai_nnunet.checkpoint import import_picai_nnunet
from lesion_engine.model.picai_nnunet.engine import NnunetDetectionEngine
from lesion_engine.model.picai_unet.pipeline import crop_or_pad
from lesion_engine.model.result_types import EngineResult
from tests.oracles.picai_nnunet_reference import (
    NnunetFolds,
    NnunetReferenceOutput,
    nnunet_folds_fixture,  # noqa: F401 - the session fixture
    run_reference,
)
from tests.oracles.picai_reference import fixture_reference_inputs, synthetic_reference_inputs

pytestmark = [pytest.mark.slow]

MAP_TOLERANCE = 1e-3
CASE_LEVEL_TOLERANCE = 1e-4


@dataclass
class Case:
    """One study run by both pipelines."""

    name: str
    prepared: PreparedStudy
    reference: NnunetReferenceOutput


def _reference_centres(detection: np.ndarray) -> list[tuple[float, ...]]:
    labels, count = ndimage.label(detection > 0, structure=np.ones((3, 3, 3)))
    blobs = []
    for index in range(1, count + 1):
        mask = labels == index
        blobs.append((float(detection[mask].max()), tuple(float(c) for c in ndimage.center_of_mass(mask))))
    blobs.sort(key=lambda item: -item[0])
    return [centre for _, centre in blobs]


def problems(reference: NnunetReferenceOutput, result: EngineResult, t2w: sitk.Image) -> list[str]:
    """What does not agree between a node result and the reference (empty when everything does)."""
    ours_probability = sitk.GetArrayFromImage(result.localization_map)
    shape = ours_probability.shape
    theirs_probability = np.asarray(crop_or_pad(crop_or_pad(reference.softmax, (20, 384, 384)), shape))
    ours_detection = sitk.GetArrayFromImage(result.detection_map)
    theirs_detection = sitk.GetArrayFromImage(reference.detection_map)
    out = []
    difference = float(np.abs(ours_probability - theirs_probability).max())
    if not difference <= MAP_TOLERANCE:
        out.append(f"probability maps differ by {difference:.2e}")
    difference = float(np.abs(ours_detection - theirs_detection).max())
    if not difference <= MAP_TOLERANCE:
        out.append(f"detection maps differ by {difference:.2e}")
    difference = abs(result.patient_score - reference.case_level)
    if not difference <= CASE_LEVEL_TOLERANCE:
        out.append(f"case-level likelihoods differ by {difference:.2e}")
    theirs = _reference_centres(theirs_detection)
    ours = []
    for lesion in result.lesions:
        x, y, z = t2w.TransformPhysicalPointToContinuousIndex([float(v) for v in lesion.center_lps_mm])
        ours.append((z, y, x))
    if len(theirs) != len(ours):
        out.append(f"{len(ours)} lesions, the reference has {len(theirs)}")
    else:
        for mine, other in zip(ours, theirs, strict=True):
            if max(abs(a - b) for a, b in zip(mine, other, strict=True)) > 1.0:
                out.append(f"lesion centre {mine} is more than one voxel from the reference's {other}")
    return out


# The fixtures below are session-scoped: pytest-xdist's work stealing may interleave this module's tests with
# other modules', and pytest rebuilds a module-scoped fixture each time its module comes back.
@pytest.fixture(scope="session")
def imported(nnunet_folds: NnunetFolds, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("picai-nnunet-artifact") / "picai-nnunet-test"
    import_picai_nnunet(nnunet_folds.model_dir, out, name="picai-nnunet-test", version="synthetic-1")
    return out


@pytest.fixture(scope="session")
def engine(imported: Path) -> NnunetDetectionEngine:
    return NnunetDetectionEngine.from_artifact(imported, "cpu")


@pytest.fixture(scope="session")
def fixture_case(
    prostatex_series: dict[int, Path],
    prostatex: Path,
    nnunet_folds: NnunetFolds,
    tmp_path_factory: pytest.TempPathFactory,
) -> Case:
    work = tmp_path_factory.mktemp("nnunet-reference-fixture")
    inputs = fixture_reference_inputs(prostatex_series, work / "in")
    reference = run_reference(*inputs, nnunet_folds.results, work)
    return Case("prostatex-0001", prepare_study(prostatex / "dicom"), reference)


@pytest.fixture(scope="session")
def synthetic_cases(nnunet_folds: NnunetFolds, tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    cases = []
    for study in nnunet_folds.studies[:1]:  # one synthetic study beside the real fixture (the suite's time)
        work = tmp_path_factory.mktemp(f"nnunet-reference-{study.name}")
        inputs = synthetic_reference_inputs(study, work / "in")
        reference = run_reference(*inputs, nnunet_folds.results, work)
        cases.append(Case(study.name, prepare_study(study / "dicom"), reference))
    return cases


def _check(case: Case, engine: NnunetDetectionEngine) -> EngineResult:
    result = engine.run(case.prepared)
    found = problems(case.reference, result, case.prepared.t2w)
    assert found == [], f"{case.name}: {found}"
    return result


@pytest.mark.fixture
def test_real_fixture_study_equals_the_reference(fixture_case: Case, engine: NnunetDetectionEngine) -> None:
    reference = sitk.GetArrayFromImage(fixture_case.reference.detection_map)
    assert reference.max() > 0, "the reference finds no candidate: the folds have no structure"
    assert float(np.ptp(fixture_case.reference.softmax)) > 0.05, "the reference map is flat"
    result = _check(fixture_case, engine)
    assert result.lesions and all(lesion.category is None for lesion in result.lesions)
    assert result.patient_score == pytest.approx(float(reference.max()), abs=CASE_LEVEL_TOLERANCE)
    assert result.to_json()["model"]["kind"] == "detection-map"


def test_a_synthetic_study_equals_the_reference_and_not_without_mirroring(
    synthetic_cases: list[Case], engine: NnunetDetectionEngine, imported: Path
) -> None:
    """Equal to the reference; and the tolerances cannot hide a missing step: without nnU-Net's test-time
    mirroring the maps differ. (One test, so that work stealing cannot run the reference on both workers.)"""
    assert len(synthetic_cases) == 1
    for case in synthetic_cases:
        assert sitk.GetArrayFromImage(case.reference.detection_map).max() > 0, case.name
        _check(case, engine)
    unmirrored = NnunetDetectionEngine.from_artifact(imported, "cpu")
    unmirrored.card = replace(unmirrored.card, pipeline=replace(unmirrored.card.pipeline, mirroring=False))
    case = synthetic_cases[0]
    assert problems(case.reference, unmirrored.run(case.prepared), case.prepared.t2w)
