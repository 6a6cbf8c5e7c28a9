"""The DICOM results pass the validators that viewers' makers and IHE use.

Cases: the fixture's T2W series with two crafted lesions and a non-ASCII patient name (with Parametric
Map and overlays; and again without a SEG, with a crafted prostate gland), a negative study (without and
with a prostate gland), a failed study, the real fixture as the node sees it (prepared study, one lesion
per zone of its PI-CAI zone mask, the PI-CAI gland mask as its prostate gland), and a generated study with
its ground-truth lesion. Every warning the validators print is shown in the test output (``-rP``) so that it
can be reviewed.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from lesion_engine.results.settings import ResultSettings
from lesion_engine.results.structured.sr_lesion import lesion_labels
from lesion_engine.results.writer import write_failure, write_results
from tests.support import validators
from tests.support.results_cases import (
    GATE_WARNING,
    T2W_SERIES_NUMBER,
    FakeResult,
    detection_map_result,
    ellipsoid,
    fixture_case,
    grid_info,
    negative_result,
    positive_result,
    read_series,
    renamed,
    save_all,
    synthetic_case,
    with_gland,
)

pytestmark = pytest.mark.fixture

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
PATIENT = "Müller^Jürgen"
OUTLINE_TOOL = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
LENGTH_TOOL = "Cornerstone3DTools@^0.1.0:Length"


@dataclass
class Case:
    """One written case: its source MR files, the objects written, and the result behind them."""

    name: str
    sources: list[Path]
    objects: list[Path]
    result: FakeResult | None
    t2w: list[Dataset]

    def of_modality(self, modality: str) -> list[Path]:
        return [p for p in self.objects if p.stem.endswith(f"_{modality}")]


# The fixtures below are session-scoped: pytest-xdist's work stealing may interleave this module's tests with
# other modules', and pytest rebuilds a module-scoped fixture each time its module comes back.
@pytest.fixture(scope="session")
def cases(
    tmp_path_factory: pytest.TempPathFactory, prostatex_series: dict[int, Path], prostatex: Path
) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("results")
    t2w = renamed(read_series(prostatex_series[T2W_SERIES_NUMBER]), PATIENT)
    sources = save_all(t2w, root / "source", "mr")
    out: dict[str, Case] = {}
    positive = positive_result(t2w)
    written = write_results(positive, t2w, ResultSettings(write_pmap=True, write_sc=True), analysis_time=WHEN)
    out["positive"] = Case(
        "positive", sources, save_all(written.all(), root / "positive", "ai"), positive, t2w
    )
    detection = detection_map_result(t2w)
    written = write_results(
        detection, t2w, ResultSettings(write_pmap=True, write_sc=True), analysis_time=WHEN
    )
    out["detection-map"] = Case(
        "detection-map", sources, save_all(written.all(), root / "detection-map", "ai"), detection, t2w
    )
    # A lesion centred beside the gland: no zone and no prostate finding site.
    [first, second] = positive.lesions
    beside = dataclasses.replace(positive, lesions=[first, dataclasses.replace(second, zone="outside")])
    written = write_results(beside, t2w, ResultSettings(write_sc=True), analysis_time=WHEN)
    out["outside"] = Case("outside", sources, save_all(written.all(), root / "outside", "ai"), beside, t2w)
    # A negative study whose gate failed: the SR carries the gate's warning as a finding.
    negative = dataclasses.replace(negative_result(t2w), warnings=[GATE_WARNING])
    written = write_results(negative, t2w, analysis_time=WHEN)
    out["negative"] = Case(
        "negative", sources, save_all(written.all(), root / "negative", "ai"), negative, t2w
    )
    shape, spacing = grid_info(t2w)
    gland = ellipsoid(shape, (9, 220, 190), (5, 60, 70))
    no_seg = with_gland(positive, gland, spacing)
    written = write_results(no_seg, t2w, ResultSettings(write_seg=False), analysis_time=WHEN)
    out["no-seg"] = Case("no-seg", sources, save_all(written.all(), root / "no-seg", "ai"), no_seg, t2w)
    negative_gland = with_gland(negative, gland, spacing)
    written = write_results(negative_gland, t2w, analysis_time=WHEN)
    out["negative-gland"] = Case(
        "negative-gland", sources, save_all(written.all(), root / "negative-gland", "ai"), negative_gland, t2w
    )
    failed = write_failure(t2w, "no ADC series found", analysis_time=WHEN)
    out["failure"] = Case("failure", sources, save_all(failed, root / "failure", "ai"), None, t2w)
    real = fixture_case(prostatex)
    written = write_results(
        real.result, real.t2w_datasets, input_series_uids=real.input_series_uids, analysis_time=WHEN
    )
    real_sources = save_all(real.t2w_datasets, root / "real-source", "mr")
    out["fixture"] = Case(
        "fixture",
        real_sources,
        save_all(written.all(), root / "fixture", "ai"),
        real.result,
        real.t2w_datasets,
    )
    synthetic = synthetic_case(root / "synthetic-study")
    written = write_results(
        synthetic.result,
        synthetic.t2w_datasets,
        input_series_uids=synthetic.input_series_uids,
        analysis_time=WHEN,
    )
    out["synthetic"] = Case(
        "synthetic",
        save_all(synthetic.t2w_datasets, root / "synthetic-source", "mr"),
        save_all(written.all(), root / "synthetic", "ai"),
        synthetic.result,
        synthetic.t2w_datasets,
    )
    return out


def _show(report: validators.Report, label: str) -> None:
    for line in report.warnings:
        print(f"{report.tool} {label}: {line}")


def test_dciodvfy_finds_no_error(cases: dict[str, Case]) -> None:
    checked = 0
    for case in cases.values():
        for path in case.objects:
            report = validators.dciodvfy(path)
            _show(report, path.name)
            assert report.errors == [], f"{path.name}:\n{report.output}"
            checked += 1
    assert checked >= 10


def test_dsrdump_reads_every_sr(cases: dict[str, Case]) -> None:
    srs = [p for case in cases.values() for p in case.of_modality("SR")]
    assert len(srs) == 9
    for path in srs:
        report = validators.dsrdump(path)
        assert report.returncode == 0, f"{path.name}:\n{report.output}"
        assert "Imaging Measurement Report" in report.output or "Diagnostic Imaging Report" in report.output
    # dcmtk reads the gate's warning as a finding of the negative study's report.
    [negative] = cases["negative"].of_modality("SR")
    assert "Warning: the gland model" in validators.dsrdump(negative).output  # dsrdump cuts long texts


#: The cases whose Key Object Selection PixelMed validates.
KOS_CASES = ("positive", "negative")


@pytest.fixture(scope="session")
def pixelmed(cases: dict[str, Case]) -> dict[Path, validators.Report]:
    """PixelMed's SR validator on every SR of the cases and the KOS of the positive and the negative one (the
    KOS of the other cases differ only in the objects they list), in one Java process (some 6 s a file)."""
    kos = [p for name in KOS_CASES for p in cases[name].of_modality("KO")]
    paths = [*(p for case in cases.values() for p in case.of_modality("SR")), *kos]
    return dict(zip(paths, validators.pixelmed_sr_many(paths), strict=True))


@pytest.mark.slow
def test_pixelmed_sr_validator_finds_no_error(
    cases: dict[str, Case], pixelmed: dict[Path, validators.Report]
) -> None:
    names = [name for name in cases if name != "synthetic"]
    srs = [p for name in names for p in cases[name].of_modality("SR")]
    reports = [pixelmed[p] for p in srs]
    for path, report in zip(srs, reports, strict=True):
        _show(report, path.name)
        assert "IOD validation complete" in report.output, report.output
        assert report.errors == [], f"{path.name}:\n{report.output}"
    assert any("Found Root Template TID_1500" in r.output for r in reports)


@pytest.mark.slow
def test_pixelmed_validates_the_key_object_selections(
    cases: dict[str, Case], pixelmed: dict[Path, validators.Report]
) -> None:
    """PixelMed's SR validator checks the KOS's IOD and its template (TID 2010), positive and negative."""
    kos = [p for name in KOS_CASES for p in cases[name].of_modality("KO")]
    assert len(kos) == 2
    reports = [pixelmed[p] for p in kos]
    for path, report in zip(kos, reports, strict=True):
        _show(report, path.name)
        assert "IOD validation complete" in report.output, report.output
        assert report.errors == [], f"{path.name}:\n{report.output}"
        assert "Found Root Template TID_2010" in report.output, report.output


@pytest.mark.slow
def test_pixelmed_sr_validator_on_a_single_lesion_report(
    cases: dict[str, Case], pixelmed: dict[Path, validators.Report]
) -> None:
    # PixelMed (2022) applies TID 1410 to every group when exactly one group holds an Image Region SCOORD;
    # each lesion has two planar groups (outline, long axis), so a one-lesion report must pass as well.
    (sr,) = cases["synthetic"].of_modality("SR")
    report = pixelmed[sr]
    _show(report, sr.name)
    assert "IOD validation complete" in report.output, report.output
    assert report.errors == [], f"{sr.name}:\n{report.output}"


def _without_files(lines: list[str]) -> set[str]:
    return {re.sub(r" for file <[^>]*>( versus <[^>]*>)?", "", line) for line in lines}


def test_dcentvfy_finds_sources_and_results_consistent(cases: dict[str, Case]) -> None:
    for case in cases.values():
        baseline = validators.dcentvfy(case.sources)
        report = validators.dcentvfy(case.sources + case.objects)
        _show(report, case.name)
        # The source itself references a study component it does not hold; only new errors count.
        new = _without_files(report.errors) - _without_files(baseline.errors)
        assert new == set(), f"{case.name}:\n{report.output}"


def _reference_grid(t2w: list[Path]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in t2w])
    image: sitk.Image = reader.Execute()
    return image


@pytest.mark.parametrize("name", ["positive", "detection-map", "fixture", "synthetic"])
def test_segimage2itkimage_reads_the_masks_back(cases: dict[str, Case], name: str, tmp_path: Path) -> None:
    case = cases[name]
    assert case.result is not None
    (seg,) = case.of_modality("SEG")
    report, images, meta = validators.segimage2itkimage(seg, tmp_path / "seg")
    assert report.returncode == 0, report.output
    assert len(images) == len(case.result.lesions)
    labels = [s["SegmentLabel"] for group in meta["segmentAttributes"] for s in group]
    assert labels[0].startswith("Lesion 1")
    files = sorted(case.sources, key=lambda p: p.name)
    reference = _reference_grid(files)
    volume = sitk.GetArrayFromImage(reference)
    for lesion, path in zip(case.result.lesions, sorted(images, key=lambda p: int(p.stem)), strict=True):
        on_grid = sitk.Resample(
            sitk.ReadImage(str(path)), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0
        )
        mask = sitk.GetArrayFromImage(on_grid) > 0
        assert mask.shape == volume.shape
        # The reader's slice order along the normal is that of the engine's grid (or reversed).
        expected = lesion.mask if _ascending(reference) else lesion.mask[::-1]
        assert np.array_equal(mask, expected)


def _ascending(image: sitk.Image) -> bool:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    return bool(np.dot(direction[:, 2], normal) > 0)


@pytest.mark.parametrize(
    "name",
    ["positive", "detection-map", "negative", "negative-gland", "fixture", "synthetic", "no-seg", "outside"],
)
def test_tid1500reader_parses_every_measurement(cases: dict[str, Case], name: str, tmp_path: Path) -> None:
    case = cases[name]
    assert case.result is not None
    (sr,) = case.of_modality("SR")
    report, data = validators.tid1500reader(sr, tmp_path / "sr.json")
    assert report.errors == [] and "rror" not in report.output, report.output
    groups = data["Measurements"]
    # The prostate volume: one group when the result has a gland (the anatomical gate), none without.
    prostate = [g for g in groups if g["TrackingIdentifier"] == "Prostate gland"]
    groups = [g for g in groups if g["TrackingIdentifier"] != "Prostate gland"]
    if case.result.gland_volume_ml is None:
        assert prostate == []
    else:
        (gland,) = prostate
        assert gland["FindingSite"]["CodeValue"] == "41216001"
        (volume,) = gland["measurementItems"]
        assert volume["quantity"]["CodeValue"] == "118565006" and volume["units"]["CodeValue"] == "ml"
        assert float(volume["value"]) == pytest.approx(case.result.gland_volume_ml, abs=0.05)
        assert volume["measurementAlgorithmIdentification"]["AlgorithmName"] == "gland-net"
    if not case.result.lesions:
        (patient,) = groups
        (score,) = patient["measurementItems"]
        assert float(score["value"]) == pytest.approx(100 * case.result.patient_score)
        assert score["units"]["CodeValue"] == "%"
        return
    lesion_values = [
        {
            "Volume": lesion.volume_ml,
            "Diameter": lesion.max_diameter_mm,
            "Probability of cancer": 100 * lesion.probability,
        }
        for lesion in case.result.lesions
    ]
    outlines = [g for g in groups if g["TrackingIdentifier"] == OUTLINE_TOOL]
    axes = [g for g in groups if g["TrackingIdentifier"] == LENGTH_TOOL]
    assert len(outlines) == len(axes) == len(case.result.lesions)
    for lesion, outline_group, axis_group in zip(case.result.lesions, outlines, axes, strict=True):
        # A standard reader sees the label as a qualitative evaluation (Comment) of each planar group.
        comments = [
            e["conceptValue"]
            for e in outline_group["qualitativeEvaluations"]
            if e["conceptCode"]["CodeValue"] == "121106"
        ]
        assert comments == [lesion_labels(lesion).outline]
        assert [item["quantity"]["CodeMeaning"] for item in axis_group["measurementItems"]] == ["Long axis"]
    segment_groups = [g for g in groups if "ReferencedSegment" in g]
    if name == "no-seg":
        assert segment_groups == []
        for expected, group in zip(lesion_values, outlines, strict=True):
            values = {
                item["quantity"]["CodeMeaning"]: float(item["value"]) for item in group["measurementItems"]
            }
            assert values.pop("Area") > 0
            assert values == pytest.approx(expected, abs=1e-3)
        return
    assert len(segment_groups) == len(case.result.lesions)
    for lesion, expected, group in zip(case.result.lesions, lesion_values, segment_groups, strict=True):
        assert group["ReferencedSegment"] == lesion.id
        assert group["TrackingIdentifier"] == f"Lesion {lesion.id}"
        values = {item["quantity"]["CodeMeaning"]: float(item["value"]) for item in group["measurementItems"]}
        assert values == pytest.approx(expected, abs=1e-3)
        units = {
            item["quantity"]["CodeMeaning"]: item["units"]["CodeValue"] for item in group["measurementItems"]
        }
        assert units["Probability of cancer"] == "%"
        for item in group["measurementItems"]:
            assert item["measurementAlgorithmIdentification"]["AlgorithmName"] == "lesion-net"
