"""``lesion-ai dataset build``: DICOM studies + labels (files or a radiologist's SEG) -> PI-CAI layout."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from lesion_engine.intake.preprocess import prepare_study
from lesion_engine.labels.seg_labels import SegLabelOptions, node_made, parse_grade
from lesion_engine.model.model_input import PreprocessConfig
from tests.support.seg_support import radiologist_seg
from training.datasets.dataset_build import BuildOptions, build_dataset, register
from training.datasets.dataset_inputs import find_studies
from training.datasets.picai_data import PicaiLayout, find_picai_cases, picai_case
from training.synth import SynthConfig, generate_case

CASE = "10795_1000811"
LESION_DIR = Path("picai_labels/csPCa_lesion_delineations/human_expert/resampled")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["dataset", "build", *argv])
    code: int = args.func(args)
    return code


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------ conventions
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ISUP 3", (3, None)),
        ("Lesion 1 isup grade 2", (2, None)),
        ("GG=4", (4, None)),
        ("PI-RADS 4", (None, 4)),
        ("PIRADS v2.1 5", (None, 5)),
        ("PI-RADS 3, ISUP 1", (1, 3)),
        ("lesion", (None, None)),
        ("Lesion 1: category 4, p=0.80", (None, None)),
    ],
)
def test_parse_grade(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_grade(text) == expected


def test_node_made() -> None:
    ours = pydicom.Dataset()
    ours.Manufacturer = "Lesion AI"
    assert node_made(ours, ("Lesion AI",)) is not None
    theirs = pydicom.Dataset()
    theirs.Manufacturer = "OHIF"
    assert node_made(theirs, ("Lesion AI",)) is None
    equipment = pydicom.Dataset()
    equipment.Manufacturer = "Lesion AI"
    theirs.ContributingEquipmentSequence = [equipment]
    assert node_made(theirs, ("Lesion AI",)) is not None  # no manual segment
    segment = pydicom.Dataset()
    segment.SegmentAlgorithmType = "MANUAL"
    theirs.SegmentSequence = [segment]
    assert node_made(theirs, ("Lesion AI",)) is None  # a radiologist's correction of a node SEG


# ------------------------------------------------------------------------------------- real fixture
def _fixture_inputs(prostatex: Path, tmp_path: Path) -> tuple[Path, Path]:
    studies, skipped = find_studies([prostatex / "dicom"])
    assert len(studies) == 1
    assert skipped == []
    ids = tmp_path / "case_ids.csv"
    ids.write_text(f"StudyInstanceUID,case_id\n{studies[0].study_instance_uid},{CASE}\n")
    labels = tmp_path / "labels"
    shutil.copytree(prostatex / "picai_labels", labels)
    return ids, labels


@pytest.mark.slow
@pytest.mark.fixture
def test_fixture_builds_into_picai_layout_idempotently(
    prostatex: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids, labels = _fixture_inputs(prostatex, tmp_path)
    out = tmp_path / "out"
    argv = [str(prostatex / "dicom"), "--out", str(out), "--labels", str(labels), "--case-ids", str(ids)]
    assert _cli(argv) == 0
    assert "built 1 case(s)" in capsys.readouterr().out
    for name in ("t2w", "adc", "hbv"):
        assert (out / "10795" / f"{CASE}_{name}.mha").is_file()
    record = json.loads((out / "dataset.json").read_text())
    entry = record["cases"][CASE]
    assert entry["images"]["t2w"]["description"] == "t2_tse_tra"
    assert entry["labels"]["source"] == "files"
    assert entry["marksheet"]["case_csPCa"] == "NO"  # from the fixture's marksheet row
    # the images are the node's: same T2W grid and values as prepare_study gives
    prepared = prepare_study(prostatex / "dicom")
    t2w = sitk.ReadImage(str(out / "10795" / f"{CASE}_t2w.mha"))
    assert t2w.GetSize() == prepared.t2w.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(t2w), sitk.GetArrayFromImage(prepared.t2w))
    gland = sitk.ReadImage(
        str(out / "picai_labels/anatomical_delineations/whole_gland/provided" / f"{CASE}.nii.gz")
    )
    assert sitk.GetArrayFromImage(gland).sum() > 1000
    # the training reader loads it
    layout = PicaiLayout(images_root=out, labels_root=out / "picai_labels")
    assert find_picai_cases(layout) == [CASE]
    case = picai_case(layout, CASE, PreprocessConfig())
    assert case is not None
    assert case.images.shape == (3, 20, 128, 128)
    assert case.has_zones
    assert case.meta["label_source"] == "human_expert"
    # a second run changes nothing and says so
    before = _snapshot(out)
    assert _cli(argv) == 0
    assert "nothing changed: 1 case(s) up to date" in capsys.readouterr().out
    assert _snapshot(out) == before
    # a changed input is rebuilt
    (labels / f"{CASE}_gland.nii.gz").unlink()
    assert _cli(argv) == 0
    assert "built 1 case(s)" in capsys.readouterr().out
    assert not (out / "picai_labels/anatomical_delineations/whole_gland/provided" / f"{CASE}.nii.gz").exists()


@pytest.mark.slow
@pytest.mark.fixture
def test_fixture_label_on_another_grid_is_refused(prostatex: Path, tmp_path: Path) -> None:
    ids, labels = _fixture_inputs(prostatex, tmp_path)
    path = labels / f"{CASE}_lesion.nii.gz"
    label = sitk.ReadImage(str(path))
    shifted = sitk.Image(label)
    shifted.SetOrigin(tuple(v + 400.0 for v in label.GetOrigin()))  # another study's grid
    sitk.WriteImage(shifted, str(path))
    out = tmp_path / "out"
    result = build_dataset([prostatex / "dicom"], out, labels, case_ids=ids)
    assert result.built == []
    assert len(result.skipped) == 1
    assert "another grid" in result.skipped[0]["reason"]
    assert not (out / "10795").exists()
    assert not any(out.glob(".building-*"))
    assert json.loads((out / "dataset.json").read_text())["cases"] == {}


# ------------------------------------------------------------------------ synthetic study with SEGs
def _seg(
    case_dir: Path,
    segments: list[tuple[str, np.ndarray]],
    manufacturer: str,
    number: int,
    gland: np.ndarray | None = None,
) -> pydicom.Dataset:
    return radiologist_seg(case_dir / "dicom", segments, manufacturer, number, gland)


@pytest.fixture(scope="module")
def synthetic_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return generate_case(root, 0, 11, SynthConfig(vendor="siemens", lesion_kinds=("cspca",), profile="small"))


def _labels(case_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    case_id = case_dir.name
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "labels" / f"{case_id}_lesion.nii.gz")))
    gland = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "labels" / f"{case_id}_gland.nii.gz")))
    assert lesion.any()
    return lesion > 0, gland > 0


@pytest.mark.slow
def test_radiologist_seg_is_used_and_node_seg_ignored(synthetic_case: Path, tmp_path: Path) -> None:
    lesion, gland = _labels(synthetic_case)
    studies = tmp_path / "studies"
    shutil.copytree(synthetic_case / "dicom", studies / "case")
    _seg(synthetic_case, [("Lesion 1 ISUP 3", lesion)], "OHIF", 300, gland=gland).save_as(
        studies / "reader.dcm"
    )
    everything = np.ones_like(lesion)
    _seg(synthetic_case, [("Lesion 1: ISUP 5", everything)], "Lesion AI", 301).save_as(studies / "node.dcm")
    out = tmp_path / "out"
    result = build_dataset([studies], out)
    assert len(result.built) == 1
    assert any("made by the node" in entry["reason"] for entry in result.ignored)
    case_id = result.built[0]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / LESION_DIR / f"{case_id}.nii.gz")))
    assert set(np.unique(label)) == {0, 3}
    np.testing.assert_array_equal(label > 0, lesion)
    record = json.loads((out / "dataset.json").read_text())["cases"][case_id]
    assert record["labels"]["source"] == "seg"
    assert record["labels"]["seg"] == "reader.dcm"
    assert record["marksheet"]["case_csPCa"] == "YES"
    assert record["marksheet"]["case_ISUP"] == "3"
    layout = PicaiLayout(images_root=out, labels_root=out / "picai_labels")
    case = picai_case(layout, case_id, PreprocessConfig(spacing_zyx=(3.0, 2.0, 2.0), size_zyx=(12, 64, 64)))
    assert case is not None
    assert [lesion_record.isup for lesion_record in case.lesions] == [3]
    # a PI-RADS-only SEG: csPCa of unknown grade (value 1) at PI-RADS >= 4; never with --pirads-cspca never
    (studies / "reader.dcm").unlink()
    _seg(synthetic_case, [("PI-RADS 4", lesion)], "OHIF", 300).save_as(studies / "reader.dcm")
    assert build_dataset([studies], out).built == [case_id]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / LESION_DIR / f"{case_id}.nii.gz")))
    assert set(np.unique(label)) == {0, 1}
    never = BuildOptions(seg=SegLabelOptions(pirads_cspca=None))
    assert build_dataset([studies], out, options=never).built == [case_id]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / LESION_DIR / f"{case_id}.nii.gz")))
    assert not label.any()


@pytest.mark.slow
def test_hostile_segs_skip_the_case_and_leave_nothing(synthetic_case: Path, tmp_path: Path) -> None:
    lesion, _ = _labels(synthetic_case)
    studies = tmp_path / "studies"
    shutil.copytree(synthetic_case / "dicom", studies / "case")
    _seg(synthetic_case, [("ISUP 2", lesion)], "OHIF", 300).save_as(studies / "reader.dcm")
    out = tmp_path / "out"
    (case_id,) = build_dataset([studies], out).built
    assert (out / LESION_DIR / f"{case_id}.nii.gz").is_file()
    # a segment without grade: the case is skipped, its earlier outputs removed
    _seg(synthetic_case, [("lesion", lesion)], "OHIF", 300).save_as(studies / "reader.dcm")
    result = build_dataset([studies], out)
    assert result.removed == [case_id]
    assert "states no grade" in result.skipped[0]["reason"]
    assert "ISUP 3" in result.skipped[0]["reason"]  # says how to name it
    assert not (out / LESION_DIR / f"{case_id}.nii.gz").exists()
    assert not (out / case_id.split("_")[0] / f"{case_id}_t2w.mha").exists()
    assert json.loads((out / "dataset.json").read_text())["cases"] == {}
    marksheet = (out / "picai_labels/clinical_information/marksheet.csv").read_text().splitlines()
    assert len(marksheet) == 1  # the header only
    # a corrupt SEG (pixel data cut short)
    good = _seg(synthetic_case, [("ISUP 4", lesion)], "OHIF", 300)
    good.save_as(studies / "reader.dcm")
    data = (studies / "reader.dcm").read_bytes()
    (studies / "reader.dcm").write_bytes(data[: len(data) - 200])
    result = build_dataset([studies], out)
    assert result.built == []
    assert "cannot be read" in result.skipped[0]["reason"]
    assert not any(out.glob(".building-*"))
    # no labels at all
    (studies / "reader.dcm").unlink()
    result = build_dataset([studies], out)
    assert "labels missing" in result.skipped[0]["reason"]
    assert _cli([str(studies), "--out", str(out)]) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to build"),
        (["--user", "someone"], "--user is for --from-node"),
        (["--from-node", "http://127.0.0.1:9", "--max-study-gb", "0"], "--max-study-gb must be positive"),
        (["--from-node", "ftp://node"], "http(s) URL"),
        (["--from-node", "http://127.0.0.1:9", "--password", "x"], "without a user"),
    ],
)
def test_bad_node_arguments_are_refused(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LESION_AI_NODE_USER", raising=False)
    monkeypatch.delenv("LESION_AI_NODE_PASSWORD", raising=False)
    assert _cli([*argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
