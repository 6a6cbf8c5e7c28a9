"""The engine on the real fixture study: results on the T2W grid, lesions.json, crafted maps, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import highdicom as hd
import jsonschema
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from numpy.typing import NDArray
from scipy.spatial.distance import pdist
from torch import Tensor, nn

from lesion_engine.anatomy.gland import GlandSettings
from lesion_engine.cli.infer import (
    DETECTION_MAP,
    LESIONS_JSON,
    LOCALIZATION_MAP,
    SCHEMA_PATH,
    write_dicom_results,
)
from lesion_engine.cli.main import main
from lesion_engine.engine import Engine, EngineResult, axial_diameter_mm, max_diameter_mm, resolve_device
from lesion_engine.errors import ConfigError
from lesion_engine.intake.preprocess import PreparedStudy, prepare_study
from lesion_engine.model.candidates import blobs_touch
from lesion_engine.model.model_input import model_grid, to_model_input, to_model_input_from_images
from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr_lesion import LONG_AXIS, LONG_AXIS_TRACKING_ID
from tests.support.model_helpers import write_tiny_artifact

Box = tuple[tuple[int, int, int], tuple[int, int, int]]


@pytest.fixture(scope="module")
def prepared(prostatex: Path) -> PreparedStudy:
    """The fixture study, prepared once for this module."""
    return prepare_study(prostatex / "dicom")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight artifact."""
    return write_tiny_artifact(tmp_path_factory.mktemp("model") / "tiny", seed=5)


@pytest.fixture
def engine(artifact: Path) -> Engine:
    """A fresh engine (tests may replace its localization network)."""
    return Engine.from_artifact(artifact, "cpu")


@pytest.fixture(scope="module")
def schema() -> dict[str, object]:
    """The lesions.json JSON Schema."""
    data: dict[str, object] = json.loads(SCHEMA_PATH.read_text())
    return data


class CraftedLocalization(nn.Module):
    """Stands in for the localization network: lesion logit +10 inside the boxes, -10 elsewhere.

    Zone logits say peripheral zone inside the boxes and background elsewhere.
    """

    def __init__(self, boxes: list[Box]) -> None:
        super().__init__()
        self.boxes = boxes

    def forward(self, images: Tensor) -> Tensor:
        b, _, z, y, x = images.shape
        out = torch.full((b, 4, z, y, x), -10.0)
        out[:, 1] = 5.0
        for lo, hi in self.boxes:
            inside = (slice(None), slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            out[:, 0][inside] = 10.0
            out[:, 2][inside] = 20.0
        return out


def same_grid(image: sitk.Image, reference: sitk.Image) -> bool:
    """Whether two images share size, spacing, origin and direction."""
    return (
        image.GetSize() == reference.GetSize()
        and np.allclose(image.GetSpacing(), reference.GetSpacing())
        and np.allclose(image.GetOrigin(), reference.GetOrigin())
        and np.allclose(image.GetDirection(), reference.GetDirection())
    )


def check_consistency(result: EngineResult, prepared: PreparedStudy) -> None:
    """Masks are the detection map's blobs; ids, order and the patient score agree."""
    assert same_grid(result.detection_map, prepared.t2w)
    assert same_grid(result.localization_map, prepared.t2w)
    assert result.detection_map.GetPixelID() == sitk.sitkFloat32
    assert result.localization_map.GetPixelID() == sitk.sitkFloat32
    detection = sitk.GetArrayFromImage(result.detection_map)
    union = np.zeros(detection.shape, dtype=bool)
    labels = np.zeros(detection.shape, dtype=np.int32)
    for lesion in result.lesions:
        assert lesion.mask.shape == detection.shape
        assert lesion.mask.any()
        np.testing.assert_allclose(detection[lesion.mask], lesion.probability, rtol=1e-6)
        assert not (union & lesion.mask).any()
        union |= lesion.mask
        labels[lesion.mask] = lesion.id
    np.testing.assert_array_equal(detection > 0, union)
    assert not blobs_touch(labels)
    assert [lesion.id for lesion in result.lesions] == list(range(1, len(result.lesions) + 1))
    probabilities = [lesion.probability for lesion in result.lesions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert result.patient_score == (max(probabilities) if probabilities else 0.0)


@pytest.mark.fixture
def test_run_on_the_fixture(engine: Engine, prepared: PreparedStudy, schema: dict[str, object]) -> None:
    result = engine.run(prepared)
    check_consistency(result, prepared)
    assert result.study_instance_uid == prepared.study_instance_uid
    assert result.series == {role: prepared.roles[role].series_instance_uid for role in ("t2w", "adc", "hbv")}
    assert result.model["sha256"] == engine.card.weights_sha256
    assert set(result.timings_s) >= {"model_input", "localization", "candidates", "classification", "total"}
    values = sitk.GetArrayFromImage(result.localization_map)
    assert values.min() >= 0.0
    assert values.max() <= 1.0
    document = result.to_json()
    jsonschema.validate(document, schema)
    assert json.loads(json.dumps(document)) == document


@pytest.mark.fixture
def test_crafted_map_gives_the_expected_lesion(
    engine: Engine, prepared: PreparedStudy, schema: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    lo, hi = (8, 60, 60), (12, 70, 70)  # 4 x 10 x 10 voxels of 3 x 1 x 1 mm: 1.2 ml
    monkeypatch.setattr(engine.model, "loc", CraftedLocalization([(lo, hi)]))
    result = engine.run(prepared)
    check_consistency(result, prepared)
    assert len(result.lesions) == 1
    lesion = result.lesions[0]
    grid = model_grid(prepared.t2w, engine.card.preprocessing)
    centre = grid.TransformContinuousIndexToPhysicalPoint(
        [(a + b - 1) / 2 for a, b in zip(lo, hi, strict=True)][::-1]
    )
    # The model grid's slices lie half-way between the T2W's: the blob spans 3 or 5 T2W slices, not 4.
    assert np.allclose(lesion.center_lps_mm, centre, atol=1.6)
    assert 0.85 <= lesion.volume_ml <= 1.55
    t2w = prepared.t2w
    indices = np.argwhere(lesion.mask)
    assert lesion.volume_ml == pytest.approx(len(indices) * np.prod(t2w.GetSpacing()) / 1000)
    points = np.array([t2w.TransformIndexToPhysicalPoint([int(v) for v in i[::-1]]) for i in indices])
    assert np.allclose(lesion.center_lps_mm, points.mean(axis=0), atol=1e-6)
    assert lesion.max_diameter_mm == pytest.approx(float(pdist(points).max()), abs=1e-6)
    assert 13.0 <= lesion.max_diameter_mm <= 18.0  # 9.5 x 9.5 mm in-plane, 6 to 12 mm through-plane
    # in plane, the blob is about 10 x 10 mm on the T2W: its diagonal across the pixel edges
    assert 12.0 <= lesion.axial_diameter_mm <= 16.0
    assert lesion.axial_diameter_mm <= lesion.max_diameter_mm + 2 * max(t2w.GetSpacing()[:2])
    assert lesion.zone is None  # no gland (the gate is off for this artifact): no zone is claimed
    assert lesion.category in (2, 3, 4, 5)
    assert 0.0 < lesion.probability < 1.0
    jsonschema.validate(result.to_json(), schema)


@pytest.mark.fixture
def test_zone_comes_from_the_anatomy(
    engine: Engine, prepared: PreparedStudy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The zonal output says PZ everywhere here (as it does on a muscle beside the prostate): a lesion gets
    PZ only when centred in the gland, ``outside`` beside it, and no zone without a gland."""
    from tests.engine.anatomy.test_gland_plausibility import _GlandModel

    monkeypatch.setattr(engine.model, "loc", CraftedLocalization([((8, 60, 60), (12, 70, 70))]))
    [ungated] = engine.run(prepared).lesions
    centre = np.array(ungated.center_lps_mm)

    def ball(offset_mm: float) -> Any:
        def mask(image: sitk.Image) -> np.ndarray:
            points = np.stack(
                np.meshgrid(*(np.arange(n) for n in image.GetSize()[::-1]), indexing="ij"), axis=-1
            ).reshape(-1, 3)[:, ::-1]
            origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
            direction = np.array(image.GetDirection()).reshape(3, 3)
            lps = origin + (points * spacing) @ direction.T
            target = centre + np.array([offset_mm, 0.0, 0.0])
            inside = np.linalg.norm(lps - target, axis=1) <= 16.0
            found: np.ndarray = inside.reshape(image.GetSize()[::-1])
            return found

        return mask

    engine.gland = _GlandModel(ball(0.0))  # type: ignore[assignment]
    engine.gland_settings = GlandSettings(margin_mm=20.0)
    [inside] = engine.run(prepared).lesions
    assert inside.zone == "pz"
    engine.gland = _GlandModel(ball(30.0))  # type: ignore[assignment]
    engine.gland_settings = GlandSettings(margin_mm=20.0)
    [beside] = engine.run(prepared).lesions
    assert beside.zone == "outside"
    written = write_dicom_results(engine.run(prepared), prepared, tmp_path, ResultSettings())
    sr = pydicom.dcmread(next(p for p in written if p.name == "sr.dcm"))
    texts = " ".join(str(e.value) for e in sr.iterall() if e.VR in ("UT", "LT", "ST", "LO"))
    assert "outside the prostate" in texts and "zone of the prostate" not in texts


@pytest.mark.fixture
def test_crafted_map_with_two_blobs(
    engine: Engine, prepared: PreparedStudy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        engine.model, "loc", CraftedLocalization([((6, 40, 40), (10, 50, 50)), ((9, 75, 70), (13, 85, 82))])
    )
    result = engine.run(prepared)
    check_consistency(result, prepared)
    assert len(result.lesions) == 2
    assert {lesion.zone for lesion in result.lesions} == {None}
    # lesions.json's axial diameter is the SR's long axis of the same lesion
    written = write_dicom_results(result, prepared, tmp_path, ResultSettings())
    sr = hd.sr.srread(next(p for p in written if p.name == "sr.dcm"))
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    groups = [
        g
        for g in sr.content.get_planar_roi_measurement_groups()
        if g.tracking_identifier == LONG_AXIS_TRACKING_ID
    ]
    axes = [m.value for g in groups for m in g.get_measurements(name=LONG_AXIS)]
    assert axes == [pytest.approx(round(lesion.axial_diameter_mm, 2)) for lesion in result.lesions]


@pytest.mark.fixture
@pytest.mark.parametrize("crafted", [True, False], ids=["crafted-map", "network"])
def test_resampling_on_the_device_equals_the_simpleitk_path(
    engine: Engine, prepared: PreparedStudy, monkeypatch: pytest.MonkeyPatch, crafted: bool
) -> None:
    # On CUDA the network input and the localization map on the T2W grid are computed with torch on the
    # GPU; the same code runs on the CPU here and must give what the SimpleITK path gives.
    if crafted:
        boxes = [((6, 40, 40), (10, 50, 50)), ((9, 75, 70), (13, 85, 82))]
        monkeypatch.setattr(engine.model, "loc", CraftedLocalization(boxes))
    assert engine.resample_on_device is False  # the default on a CPU
    reference = engine.run(prepared)
    monkeypatch.setattr(engine, "resample_on_device", True)
    on_device = engine.run(prepared)
    a = sitk.GetArrayFromImage(reference.localization_map)
    b = sitk.GetArrayFromImage(on_device.localization_map)
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-4
    assert same_grid(reference.localization_map, on_device.localization_map)
    check_consistency(on_device, prepared)
    assert len(on_device.lesions) == len(reference.lesions)
    if crafted:
        assert len(reference.lesions) == 2
    for ours, theirs in zip(on_device.lesions, reference.lesions, strict=True):
        np.testing.assert_array_equal(ours.mask, theirs.mask)
        assert ours.probability == pytest.approx(theirs.probability, abs=1e-4)
        assert (ours.category, ours.zone, ours.volume_ml) == (theirs.category, theirs.zone, theirs.volume_ml)


@pytest.mark.fixture
def test_diffusion_images_on_the_whole_t2w_grid_are_computed_only_when_read(
    engine: Engine, prostatex: Path
) -> None:
    fresh = prepare_study(prostatex / "dicom")
    lazy = ("adc", "hbv", "high_b")
    assert not any(name in vars(fresh) for name in lazy)  # preparing does not resample
    engine.resample_on_device = True
    engine.run(fresh)
    assert not any(name in vars(fresh) for name in lazy)  # nor does the device path
    engine.resample_on_device = False
    engine.run(fresh)
    assert not any(
        name in vars(fresh) for name in lazy
    )  # the SimpleITK path computes the model grid's box only
    assert fresh.hbv.GetSize() == fresh.t2w.GetSize()


@pytest.mark.fixture
def test_the_model_input_from_the_t2w_box_is_that_of_the_whole_t2w_grid(
    engine: Engine, prostatex: Path
) -> None:
    fresh = prepare_study(prostatex / "dicom")
    config = engine.card.preprocessing
    boxed = to_model_input(fresh, config)
    assert config.hbv_source == "b1400" and fresh.high_b is not None
    whole = to_model_input_from_images(fresh.t2w, fresh.adc, fresh.high_b, config)
    assert boxed.images.shape == whole.images.shape
    assert float(np.abs(boxed.images - whole.images).max()) < 1e-5
    assert np.array_equal(sitk.GetArrayViewFromImage(boxed.grid), sitk.GetArrayViewFromImage(whole.grid))


def test_diameters_with_a_given_box_equal_those_without() -> None:
    image = sitk.Image(40, 30, 8, sitk.sitkUInt8)
    image.SetSpacing((0.5, 0.7, 3.0))
    mask: NDArray[np.bool_] = np.zeros((8, 30, 40), dtype=bool)
    mask[2:5, 10:20, 5:30] = True
    mask[3, 8:22, 12:14] = True
    box = (slice(2, 5), slice(8, 22), slice(5, 30))
    assert max_diameter_mm(mask, image, box) == max_diameter_mm(mask, image)
    assert axial_diameter_mm(mask, image, box) == axial_diameter_mm(mask, image)
    # index slice 3: the 10 x 25 rectangle plus a bar; the longest chord is the rectangle's diagonal
    assert axial_diameter_mm(mask, image) == pytest.approx(float(np.hypot(10 * 0.7, 25 * 0.5)))
    assert axial_diameter_mm(np.zeros_like(mask), image) == 0.0


@pytest.mark.fixture
def test_empty_map_gives_no_lesion(
    engine: Engine, prepared: PreparedStudy, schema: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.model, "loc", CraftedLocalization([]))
    result = engine.run(prepared)
    check_consistency(result, prepared)
    assert result.lesions == []
    assert result.patient_score == 0.0
    assert not sitk.GetArrayFromImage(result.detection_map).any()
    jsonschema.validate(result.to_json(), schema)


@pytest.mark.fixture
def test_batch_matches_single_runs(
    engine: Engine, prepared: PreparedStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.model, "loc", CraftedLocalization([((8, 60, 60), (12, 70, 70))]))
    single = engine.run(prepared)
    batch = engine.run_batch([prepared, prepared])
    assert len(batch) == 2
    for result in batch:
        assert [lesion.to_dict() for lesion in result.lesions] == [
            lesion.to_dict() for lesion in single.lesions
        ]
    assert engine.run_batch([]) == []
    assert engine.warm_up() > 0.0
    engine.resample_on_device = True  # as on a GPU: the resampling kernels are warmed up too
    assert engine.warm_up() > 0.0


def test_max_diameter_of_simple_masks() -> None:
    image = sitk.Image(10, 8, 6, sitk.sitkUInt8)
    image.SetSpacing((0.5, 0.5, 3.0))
    mask: NDArray[np.bool_] = np.zeros((6, 8, 10), dtype=bool)
    mask[2, 3, 4] = True
    assert max_diameter_mm(mask, image) == 0.0
    mask[2, 3, 2:9] = True  # a line of 7 voxels along x
    assert max_diameter_mm(mask, image) == pytest.approx(3.0)
    mask[1:5, 1:7, 1:9] = True  # a box: the space diagonal
    assert max_diameter_mm(mask, image) == pytest.approx(float(np.sqrt(3.5**2 + 2.5**2 + 9.0**2)))
    flat: NDArray[np.bool_] = np.zeros((6, 8, 10), dtype=bool)
    flat[3, 1:7, 2:10] = True  # a single slice: the hull of coplanar points
    assert max_diameter_mm(flat, image) == pytest.approx(float(np.hypot(2.5, 3.5)))
    assert max_diameter_mm(np.zeros((6, 8, 10), dtype=bool), image) == 0.0
    with pytest.raises(ValueError, match="differs"):
        max_diameter_mm(np.zeros((8, 6, 10), dtype=bool), image)


def test_the_engine_on_the_cpu_runs_its_convolutions_through_onednn(engine: Engine) -> None:
    convs = [m for m in engine.model.modules() if isinstance(m, nn.Conv3d)]
    assert engine.device.type == "cpu"
    assert convs and all(type(m) is not nn.Conv3d for m in convs), "see lesion_engine.model.devices"


def test_device_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None).type == "cpu"
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu-please")


@pytest.mark.fixture
def test_cli_infer_writes_results(
    prostatex: Path,
    artifact: Path,
    tmp_path: Path,
    schema: dict[str, object],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    assert (
        main(["infer", str(prostatex / "dicom"), "--out", str(out), "--model", str(artifact / "model.json")])
        == 0
    )
    assert "patient score" in capsys.readouterr().out
    document = json.loads((out / LESIONS_JSON).read_text())
    jsonschema.validate(document, schema)
    assert document["schema_version"] == "1.4"
    assert document["roles"]["t2w"]["series_instance_uid"] == document["series"]["t2w"]
    detection = sitk.ReadImage(str(out / DETECTION_MAP))
    localization = sitk.ReadImage(str(out / LOCALIZATION_MAP))
    assert same_grid(detection, localization)
    assert detection.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(detection)
    assert bool(values.any()) == bool(document["lesions"])
    assert float(values.max()) == pytest.approx(document["patient_score"], abs=1e-5)
    blob_values = sorted(float(v) for v in np.unique(values[values > 0]))
    probabilities = sorted(lesion["probability"] for lesion in document["lesions"])
    assert blob_values == pytest.approx(probabilities, abs=1e-5)
    # The DICOM results: an SR always, a SEG with one segment per lesion when there are lesions.
    sr = pydicom.dcmread(out / "sr.dcm")
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == document["study_instance_uid"]
    if document["lesions"]:
        seg = pydicom.dcmread(out / "seg.dcm")
        assert len(seg.SegmentSequence) == len(document["lesions"])
    else:
        assert not (out / "seg.dcm").exists()
    # Re-running gives the same SOP Instance UID: re-processing never duplicates objects in a PACS.
    again = tmp_path / "again"
    assert main(["infer", str(prostatex / "dicom"), "--out", str(again), "--model", str(artifact)]) == 0
    assert pydicom.dcmread(again / "sr.dcm").SOPInstanceUID == sr.SOPInstanceUID


def test_cli_infer_exit_codes(tmp_path: Path, artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "notes.txt").write_text("not DICOM")
    out = str(tmp_path / "out")
    assert main(["infer", str(study), "--out", out, "--model", str(artifact)]) == 1
    assert "study not usable" in capsys.readouterr().err
    assert not list(Path(out).glob("failure_*.dcm"))  # nothing readable: nothing to attach a failure to
    assert main(["infer", str(tmp_path / "absent"), "--out", out, "--model", str(artifact)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["infer", str(study), "--out", out, "--model", str(tmp_path / "no-model")]) == 2
    assert "model artifact not found" in capsys.readouterr().err
    pickle = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickle)
    assert main(["infer", str(study), "--out", out, "--model", str(pickle)]) == 2
    assert "only safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["infer", str(study), "--out", out, "--device", "tpu"])
    assert info.value.code == 2


def test_cli_infer_on_a_synthetic_study(tmp_path: Path, artifact: Path, schema: dict[str, object]) -> None:
    from training.synth import SynthConfig, generate_case

    case = generate_case(tmp_path / "synth", 0, 7, SynthConfig(profile="small", enhanced=True, tilt_deg=7.0))
    truth = json.loads((case / "truth.json").read_text())
    out = tmp_path / "out"
    assert main(["infer", str(case / "dicom"), "--out", str(out), "--model", str(artifact)]) == 0
    document = json.loads((out / LESIONS_JSON).read_text())
    jsonschema.validate(document, schema)
    assert document["study_instance_uid"] == truth["study_instance_uid"]
    for role in ("t2w", "adc", "hbv"):
        assert document["series"][role] == truth["roles"][role]["series_instance_uid"]
    reference = sitk.ReadImage(str(case / truth["labels"]["lesion"]))
    for name in (DETECTION_MAP, LOCALIZATION_MAP):
        assert same_grid(sitk.ReadImage(str(out / name)), reference)
    assert (
        pydicom.dcmread(out / "sr.dcm").PatientID
        == pydicom.dcmread(next((case / "dicom").rglob("*.dcm")), stop_before_pixels=True).PatientID
    )


@pytest.mark.fixture
def test_cli_infer_writes_a_failure_result_for_an_unusable_study(
    prostatex_series: dict[int, Path], artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "study"
    for number in (7, 9, 10):  # no ADC series
        shutil.copytree(prostatex_series[number], study / str(number))
    out = tmp_path / "out"
    assert main(["infer", str(study), "--out", str(out), "--model", str(artifact)]) == 1
    assert "NoADCError" in capsys.readouterr().err
    failures = [pydicom.dcmread(path) for path in sorted(out.glob("failure_*.dcm"))]
    assert failures
    assert any(ds.Modality == "SR" for ds in failures)
    sr = next(ds for ds in failures if ds.Modality == "SR")
    texts = [str(element.value) for element in sr.iterall() if element.keyword == "TextValue"]
    assert any("no ADC map found" in text for text in texts)
