"""Tests of the PI-CAI reference helper (tests/oracles/picai_reference.py): the loaded ``process.py``, the fold
checkpoints it builds, and the reference pipeline's outputs on the real fixture and a synthetic study."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import monai.utils
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.oracles.picai_reference import (
    FOLDS,
    IMG_SPEC,
    PicaiFolds,
    ReferenceOutput,
    cache_key,
    cached_fold_checkpoints,
    dicom_series_to_mha,
    fixture_reference_inputs,
    load_reference,
    load_reference_folds,
    new_fold_network,
    picai_folds_fixture,  # noqa: F401  (the session fixture picai_folds)
    reference_process_path,
    run_reference,
    synthetic_reference_inputs,
)
from tests.paths import REPO

# Parameters of picai_baseline's U-Net for process.py's img_spec (as in the published unet_F*.pt).
PUBLISHED_PARAMETERS = 31_803_756
PUBLISHED_TENSORS = 32
PUBLISHED_SHAPES = {
    "model.0.conv.weight": (32, 3, 3, 3, 3),
    "model.0.conv.bias": (32,),
    "model.0.adn.A.weight": (1,),
    "model.1.submodule.0.conv.weight": (64, 32, 3, 3, 3),
}


@pytest.fixture(scope="module")
def reference_models(picai_folds: PicaiFolds) -> list[torch.nn.Module]:
    return load_reference_folds(picai_folds.weights_dir)


def check_reference_output(out: ReferenceOutput, t2w: Path) -> None:
    """What predict() must give on any study: a map on the T2W grid with candidates and its likelihood."""
    reference = sitk.ReadImage(str(t2w))
    dmap = out.detection_map
    assert dmap.GetSize() == reference.GetSize()
    assert np.allclose(dmap.GetSpacing(), reference.GetSpacing())
    assert np.allclose(dmap.GetOrigin(), reference.GetOrigin())
    assert np.allclose(dmap.GetDirection(), reference.GetDirection())
    values = sitk.GetArrayFromImage(dmap)
    assert values.max() > 0, "no lesion candidate"
    assert out.case_level == float(values.max())
    assert 0 < out.case_level <= 1
    # Every candidate is one value, the max of the softmax in it; none below a fifth of the strongest.
    candidates = np.unique(values[values > 0])
    assert candidates.min() >= out.case_level / 5
    softmax = out.softmax_t2w
    assert softmax.dtype == np.float32
    assert softmax.shape == values.shape
    # The map predict() passed to extract_lesion_candidates: each candidate's value is the max of it there.
    found = values > 0
    assert np.all(softmax[found] <= values[found] + 1e-6)
    assert out.case_level <= float(softmax.max()) + 1e-6
    assert float(softmax.std()) > 0.01, "flat probability map"
    assert out.seconds > 0


def test_reference_loads_with_shims() -> None:
    module = load_reference()
    assert load_reference() is module
    assert callable(module.csPCaAlgorithm.predict)
    assert "evalutils" not in sys.modules  # the stub was there only while process.py was executed
    assert callable(vars(monai.utils)["alias"])
    assert callable(vars(monai.utils)["export"])
    # The img_spec that the helper gives predict() is process.py's own.
    source = reference_process_path().read_text(encoding="utf-8")
    for name, value in IMG_SPEC.items():
        assert re.search(rf"'{name}':\s*{re.escape(repr(value))}", source), name


def test_cache_key_is_stable() -> None:
    assert cache_key() == cache_key()
    assert cache_key(0) != cache_key(1)


@pytest.mark.slow
def test_checkpoints_have_the_published_format(picai_folds: PicaiFolds) -> None:
    weights_dir, studies = picai_folds
    assert sorted(p.name for p in weights_dir.iterdir()) == [f"unet_F{fold}.pt" for fold in FOLDS]
    assert studies
    assert all((study / "truth.json").is_file() for study in studies)
    fresh = new_fold_network().state_dict()
    first_tensors: list[torch.Tensor] = []
    for fold in FOLDS:
        path = weights_dir / f"unet_F{fold}.pt"
        assert 125e6 < path.stat().st_size < 130e6  # about 127 MB, like the published checkpoints
        checkpoint = torch.load(path, weights_only=True)
        assert isinstance(checkpoint, dict)
        assert list(checkpoint) == ["model_state_dict"]
        state = checkpoint["model_state_dict"]
        assert len(state) == PUBLISHED_TENSORS
        assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in fresh.items()}
        for name, shape in PUBLISHED_SHAPES.items():
            assert tuple(state[name].shape) == shape
        assert all(v.dtype == torch.float32 for v in state.values())
        assert sum(v.numel() for v in state.values()) == PUBLISHED_PARAMETERS
        first_tensors.append(state["model.0.conv.weight"])
    # Five different networks (a seed and a data order per fold).
    for i in range(len(first_tensors)):
        for j in range(i + 1, len(first_tensors)):
            assert not torch.equal(first_tensors[i], first_tensors[j])


@pytest.mark.slow
def test_cache_is_reused(picai_folds: PicaiFolds) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in picai_folds.weights_dir.iterdir()}
    again = cached_fold_checkpoints(REPO)
    assert again == picai_folds
    assert {p.name: p.stat().st_mtime_ns for p in again.weights_dir.iterdir()} == before
    assert picai_folds.weights_dir.parent.parent == REPO / "var" / "picai_reference"


@pytest.mark.slow
def test_load_reference_folds_loads_the_folds_present(picai_folds: PicaiFolds, tmp_path: Path) -> None:
    (tmp_path / "unet_F3.pt").symlink_to(picai_folds.weights_dir / "unet_F3.pt")
    models = load_reference_folds(tmp_path)
    assert len(models) == 1
    expected = torch.load(picai_folds.weights_dir / "unet_F3.pt", weights_only=True)["model_state_dict"]
    for name, value in models[0].state_dict().items():
        assert torch.equal(value, expected[name])
    with pytest.raises(FileNotFoundError):
        load_reference_folds(tmp_path / "empty")


@pytest.mark.fixture
def test_dicom_series_to_mha_keeps_the_pixel_type(prostatex_series: dict[int, Path], tmp_path: Path) -> None:
    files = sorted(prostatex_series[10].glob("*.dcm"))
    image = dicom_series_to_mha(files, tmp_path / "t2w.mha")
    assert image.GetPixelID() == sitk.sitkUInt16
    assert image.GetSize() == (384, 384, 19)
    assert np.allclose(image.GetSpacing(), (0.5, 0.5, 3.0), atol=1e-6)
    back = sitk.ReadImage(str(tmp_path / "t2w.mha"))
    assert back.GetPixelID() == sitk.sitkUInt16
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert np.allclose(back.GetOrigin(), image.GetOrigin())
    assert np.allclose(back.GetDirection(), image.GetDirection())


@pytest.mark.slow
@pytest.mark.fixture
def test_reference_on_the_fixture(
    prostatex_series: dict[int, Path], reference_models: list[torch.nn.Module], tmp_path: Path
) -> None:
    assert len(reference_models) == len(FOLDS)
    t2w, adc, hbv = fixture_reference_inputs(prostatex_series, tmp_path / "in")
    assert sitk.ReadImage(str(t2w)).GetPixelID() == sitk.sitkUInt16
    out = run_reference(t2w, adc, hbv, reference_models, tmp_path / "out")
    check_reference_output(out, t2w)
    assert (tmp_path / "out" / "cspca_detection_map.mha").is_file()
    assert (tmp_path / "out" / "cspca-case-level-likelihood.json").is_file()
    print(f"reference predict() on the fixture: {out.seconds:.1f} s, case level {out.case_level:.4f}")


@pytest.mark.slow
def test_reference_on_a_synthetic_study(
    picai_folds: PicaiFolds, reference_models: list[torch.nn.Module], tmp_path: Path
) -> None:
    study = picai_folds.studies[0]
    t2w, adc, hbv = synthetic_reference_inputs(study, tmp_path / "in")
    out = run_reference(t2w, adc, hbv, reference_models, tmp_path / "out")
    check_reference_output(out, t2w)
    # The study's csPCa lesion (on the same T2W grid) is found: it overlaps the strongest candidate.
    label = sitk.ReadImage(str(study / "labels" / f"{study.name}_lesion.nii.gz"))
    lesion = sitk.GetArrayFromImage(label) > 0
    values = sitk.GetArrayFromImage(out.detection_map)
    assert lesion.shape == values.shape
    assert values[lesion].max() == out.case_level
