"""An imported PI-CAI U-Net gives the reference pipeline's results: the authors' process.py is the oracle.

Five fold checkpoints in exactly the published format are made by picai_baseline's own
``neural_network_for_run`` and trained briefly on synthetic studies (:mod:`tests.oracles.picai_reference`). The
reference is ``process.py``'s ``predict()``, run unchanged on the series our roles choose, converted to
``.mha`` by picai_prep as the PI-CAI archive is; the node imports the same checkpoints
(``lesion-ai models import picai-unet``) and runs them with :class:`~lesion_engine.model.picai_unet.engine.DetectionEngine`
on the same study read from DICOM by our own loader. Agreement: the probability and detection maps on the
T2W grid within 1e-3 (maximum absolute difference), the case-level likelihood within 1e-4, the same lesions
with centres within one voxel.

Each pipeline step matters: dropping the blur or the removal of weak candidates (settings of the card's
pipeline) breaks the agreement, which is checked too, so that the tolerances cannot hide a missing step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.engine import load_engine
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.model.picai_unet.card import DetectionModelCard
from lesion_engine.model.picai_unet.checkpoint import import_picai_unet
from lesion_engine.model.picai_unet.engine import DetectionEngine
from lesion_engine.model.picai_unet.pipeline import crop_or_pad
from lesion_engine.model.result_types import EngineResult
from tests.oracles.picai_reference import (
    PicaiFolds,
    ReferenceOutput,
    fixture_reference_inputs,
    load_reference_folds,
    picai_folds,  # noqa: F401 - the session fixture
    run_reference,
    synthetic_reference_inputs,
)

pytestmark = [pytest.mark.slow]

MAP_TOLERANCE = 1e-3
CASE_LEVEL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Agreement:
    """How far the node's result is from the reference's."""

    probability_max_abs: float
    detection_max_abs: float
    case_level_abs: float
    reference_centres: list[tuple[float, float, float]]
    our_centres: list[tuple[float, float, float]]

    def problems(self) -> list[str]:
        """What does not agree (empty when everything does)."""
        out = []
        if not self.probability_max_abs <= MAP_TOLERANCE:
            out.append(f"probability maps differ by {self.probability_max_abs:.2e}")
        if not self.detection_max_abs <= MAP_TOLERANCE:
            out.append(f"detection maps differ by {self.detection_max_abs:.2e}")
        if not self.case_level_abs <= CASE_LEVEL_TOLERANCE:
            out.append(f"case-level likelihoods differ by {self.case_level_abs:.2e}")
        if len(self.reference_centres) != len(self.our_centres):
            out.append(f"{len(self.our_centres)} lesions, the reference has {len(self.reference_centres)}")
        else:
            for ours, theirs in zip(self.our_centres, self.reference_centres, strict=True):
                if max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) > 1.0:
                    out.append(f"lesion centre {ours} is more than one voxel from the reference's {theirs}")
        return out


def _reference_centres(detection: NDArray[np.float32]) -> list[tuple[float, float, float]]:
    """Centres (z, y, x voxels) of the reference's blobs, by decreasing likelihood."""
    labels, count = ndimage.label(detection > 0, structure=np.ones((3, 3, 3)))
    blobs = []
    for index in range(1, count + 1):
        mask = labels == index
        centre = ndimage.center_of_mass(mask)
        blobs.append((float(detection[mask].max()), tuple(float(c) for c in centre)))
    blobs.sort(key=lambda item: -item[0])
    return [centre for _, centre in blobs]  # type: ignore[misc]


def _our_centres(result: EngineResult, t2w: sitk.Image) -> list[tuple[float, float, float]]:
    out = []
    for lesion in result.lesions:
        x, y, z = t2w.TransformPhysicalPointToContinuousIndex([float(v) for v in lesion.center_lps_mm])
        out.append((float(z), float(y), float(x)))
    return out


def agreement(reference: ReferenceOutput, result: EngineResult, t2w: sitk.Image) -> Agreement:
    """Compare one node result with the reference's outputs on the same study."""
    ours_detection = sitk.GetArrayFromImage(result.detection_map)
    theirs_detection = sitk.GetArrayFromImage(reference.detection_map)
    ours_probability = sitk.GetArrayFromImage(result.localization_map)
    theirs_probability = np.asarray(crop_or_pad(reference.softmax_t2w, ours_probability.shape))
    return Agreement(
        probability_max_abs=float(np.abs(ours_probability - theirs_probability).max()),
        detection_max_abs=float(np.abs(ours_detection - theirs_detection).max()),
        case_level_abs=abs(result.patient_score - reference.case_level),
        reference_centres=_reference_centres(theirs_detection),
        our_centres=_our_centres(result, t2w),
    )


@dataclass
class Case:
    """One study run by both pipelines."""

    name: str
    prepared: PreparedStudy
    reference: ReferenceOutput


# The fixtures below are session-scoped: pytest-xdist's work stealing may interleave this module's tests with
# other modules', and pytest rebuilds a module-scoped fixture each time its module comes back.
@pytest.fixture(scope="session")
def imported(picai_folds: PicaiFolds, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("picai-artifact") / "picai-unet-test"
    import_picai_unet(picai_folds.weights_dir, out, name="picai-unet-test", version="synthetic-1")
    return out


@pytest.fixture(scope="session")
def engine(imported: Path) -> DetectionEngine:
    loaded = load_engine(imported, "cpu")
    assert isinstance(loaded, DetectionEngine)
    return loaded


@pytest.fixture(scope="session")
def reference_models(picai_folds: PicaiFolds) -> list[torch.nn.Module]:  # noqa: F811
    return load_reference_folds(picai_folds.weights_dir)


@pytest.fixture(scope="session")
def fixture_case(
    prostatex_series: dict[int, Path],
    prostatex: Path,
    reference_models: list[torch.nn.Module],
    tmp_path_factory: pytest.TempPathFactory,
) -> Case:
    work = tmp_path_factory.mktemp("reference-fixture")
    inputs = fixture_reference_inputs(prostatex_series, work / "in")
    reference = run_reference(*inputs, reference_models, work / "out")
    return Case("prostatex-0001", prepare_study(prostatex / "dicom"), reference)


@pytest.fixture(scope="session")
def synthetic_cases(
    picai_folds: PicaiFolds,  # noqa: F811
    reference_models: list[torch.nn.Module],
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Case]:
    cases = []
    for study in picai_folds.studies[:2]:
        work = tmp_path_factory.mktemp(f"reference-{study.name}")
        inputs = synthetic_reference_inputs(study, work / "in")
        reference = run_reference(*inputs, reference_models, work / "out")
        cases.append(Case(study.name, prepare_study(study / "dicom"), reference))
    return cases


def _check(case: Case, engine: DetectionEngine) -> EngineResult:
    result = engine.run(case.prepared)
    found = agreement(case.reference, result, case.prepared.t2w)
    assert found.problems() == [], f"{case.name}: {found}"
    return result


@pytest.mark.fixture
def test_real_fixture_study_equals_the_reference(fixture_case: Case, engine: DetectionEngine) -> None:
    reference = sitk.GetArrayFromImage(fixture_case.reference.detection_map)
    assert reference.max() > 0, "the reference finds no candidate: the folds have no structure"
    assert float(np.ptp(fixture_case.reference.softmax_t2w)) > 0.05, "the reference map is flat"
    result = _check(fixture_case, engine)
    assert result.lesions and all(lesion.category is None for lesion in result.lesions)
    assert result.patient_score == pytest.approx(float(reference.max()), abs=CASE_LEVEL_TOLERANCE)
    assert result.to_json()["model"]["kind"] == "detection-map"


def test_synthetic_studies_equal_the_reference(synthetic_cases: list[Case], engine: DetectionEngine) -> None:
    assert len(synthetic_cases) == 2
    for case in synthetic_cases:
        assert sitk.GetArrayFromImage(case.reference.detection_map).max() > 0, case.name
        _check(case, engine)


@pytest.mark.fixture
def test_dropping_a_step_breaks_the_agreement(
    fixture_case: Case, synthetic_cases: list[Case], imported: Path
) -> None:
    """The tolerances cannot hide a missing step: without the blur, or without removing weak candidates
    (on a study where the reference removed one), the results no longer agree."""
    cases = [fixture_case, *synthetic_cases]
    for changes, needs_weak in (({"blur_sigma": 0.0}, False), ({"weak_candidate_divisor": 0.0}, True)):
        case = next((c for c in cases if not needs_weak or _has_weak_candidate(c)), None)
        assert case is not None, f"no study shows the effect of {changes}"
        engine = load_engine(imported, "cpu")
        assert isinstance(engine, DetectionEngine)
        engine.card = _with_pipeline(engine, **changes)
        found = agreement(case.reference, engine.run(case.prepared), case.prepared.t2w)
        assert found.problems(), f"{changes} on {case.name} still agrees: {found}"


def _has_weak_candidate(case: Case) -> bool:
    """Whether the reference removed a candidate below max / 5 on this study."""
    from report_guided_annotation import extract_lesion_candidates

    softmax: Any = case.reference.softmax_t2w
    detection = extract_lesion_candidates(softmax, threshold="dynamic")[0]
    values = np.unique(detection[detection > 0])
    return bool(values.size and (values < values.max() / 5).any())


def _with_pipeline(engine: DetectionEngine, **changes: float) -> DetectionModelCard:
    return replace(engine.card, pipeline=engine.card.pipeline.replace(**changes))
