"""Training data: lesion categories, the case cache, synthetic cases and the PI-CAI layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.training_support import TINY_GRID, make_picai_layout, make_synthetic
from training.datasets.cases import (
    UNKNOWN,
    TrainingCase,
    category_index,
    load_case,
    save_case,
    target_category,
)
from training.datasets.dataset import CropDataset, DataSpec, build_cache, collate, list_cases
from training.datasets.picai_data import PicaiLayout, find_picai_cases, picai_case, read_marksheet, read_split
from training.datasets.synthetic_data import synthetic_case


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def picai(synthetic: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_picai_layout(synthetic, tmp_path_factory.mktemp("picai"))


def test_category_mapping() -> None:
    assert target_category("bph", 0) == 2
    assert target_category("prostatitis", 0) == 2
    assert target_category("background", 0) == 2
    assert target_category("indolent", 1) == 3
    assert target_category("cspca", 2) == 4
    assert [target_category("cspca", isup) for isup in (3, 4, 5)] == [5, 5, 5]
    assert target_category("cspca", UNKNOWN) == UNKNOWN
    assert [category_index(c) for c in (2, 3, 4, 5, UNKNOWN)] == [0, 1, 2, 3, UNKNOWN]
    with pytest.raises(ValueError, match="kind"):
        target_category("cyst", 0)
    with pytest.raises(ValueError, match="ISUP"):
        target_category("cspca", 1)


def test_synthetic_case_has_every_lesion_kind(synthetic: list[Path], tmp_path: Path) -> None:
    case = synthetic_case(synthetic[0], TINY_GRID)
    assert case.images.shape == (3, *TINY_GRID.size_zyx)
    assert case.images.dtype == np.float32
    kinds = sorted(lesion.kind for lesion in case.lesions)
    assert kinds == ["bph", "cspca"]
    cancer = next(lesion for lesion in case.lesions if lesion.kind == "cspca")
    mimic = next(lesion for lesion in case.lesions if lesion.kind == "bph")
    assert cancer.category in (4, 5) and mimic.category == 2
    # csPCa voxels are those of the csPCa label, and the index map points at the right records
    assert np.array_equal(case.cspca > 0, case.lesion_index == cancer.label)
    assert np.any(case.lesion_index == mimic.label)
    assert case.has_zones and set(np.unique(case.zones)) <= {0, 1, 2} and np.any(case.zones == 2)
    assert case.is_cspca
    # the cache keeps everything and holds no pickled object
    path = save_case(case, tmp_path / "case.npz")
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"images", "cspca", "zones", "lesion_index", "header"}
    again = load_case(path)
    assert again.lesions == case.lesions
    assert np.array_equal(again.images, case.images)
    assert np.array_equal(again.lesion_index, case.lesion_index)

    negative = synthetic_case(synthetic[1], TINY_GRID)
    assert negative.lesions == () and not negative.is_cspca


def test_training_case_rejects_inconsistent_arrays() -> None:
    images = np.zeros((3, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="zones"):
        TrainingCase(
            "x_y",
            images,
            np.zeros((4, 8, 8), np.int16),
            np.zeros((4, 8, 9), np.uint8),
            np.zeros((4, 8, 8), np.int16),
            (),
            False,
            "synthetic",
        )


def test_cache_and_crops(synthetic: list[Path], tmp_path: Path) -> None:
    spec = DataSpec(synthetic[0].parent)
    assert list_cases(spec) == [p.name for p in synthetic]
    files = build_cache(spec, TINY_GRID, tmp_path / "cache")
    assert len(files) == 3
    stamp = files[0].stat().st_mtime_ns
    assert build_cache(spec, TINY_GRID, tmp_path / "cache") == files  # reused, not rebuilt
    assert files[0].stat().st_mtime_ns == stamp
    dataset = CropDataset(files, (8, 32, 32), seed=3, samples_per_epoch=6, foreground_prob=1.0)
    sample = dataset[0]
    assert sample["images"].shape == (3, 8, 32, 32)
    assert sample["lesions"].shape[1] == 6
    again = dataset[0]
    assert np.array_equal(sample["images"], again["images"])  # deterministic per (seed, epoch, index)
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[0]["images"], sample["images"])
    batch = collate([dataset[i] for i in range(3)])
    assert tuple(batch.images.shape) == (3, 3, 8, 32, 32)
    assert tuple(batch.cspca.shape) == (3, 8, 32, 32)
    # foreground crops of the lesion cases hold their lesions
    assert len(batch.lesions[0]) >= 1 and len(batch.lesions[2]) >= 1


def test_picai_marksheet_and_splits(picai: tuple[Path, Path], synthetic: list[Path]) -> None:
    images_root, labels_root = picai
    ids = [p.name for p in synthetic]
    marksheet = read_marksheet(labels_root / "clinical_information" / "marksheet.csv")
    assert list(marksheet) == ids
    assert marksheet[ids[1]].case_cspca is False
    assert marksheet[ids[2]].case_cspca is True
    split_dir = labels_root.parent / "splits"
    assert read_split(split_dir, 0, "train") == ids[:2]
    assert read_split(split_dir, 0, "valid") == ids[2:]
    assert read_split(split_dir / "ds-config-valid-fold-0.json", 0) == ids[2:]
    nnunet = labels_root.parent / "splits.json"
    assert read_split(nnunet, 0, "train") == ids[1:]
    assert read_split(nnunet, 0, "valid") == ids[:1]
    with pytest.raises(ValueError, match="fold 3"):
        read_split(nnunet, 3, "train")
    with pytest.raises(ValueError, match="does not exist"):
        read_split(split_dir, 4, "train")
    layout = PicaiLayout(images_root, labels_root)
    assert find_picai_cases(layout) == ids
    assert find_picai_cases(layout, read_split(split_dir, 0, "valid")) == ids[2:]


def test_picai_cases(picai: tuple[Path, Path], synthetic: list[Path], tmp_path: Path) -> None:
    images_root, labels_root = picai
    ids = [p.name for p in synthetic]
    layout = PicaiLayout(images_root, labels_root)
    positive = picai_case(layout, ids[0], TINY_GRID)
    assert positive is not None and positive.source == "picai"
    assert positive.meta["label_source"] == "human_expert"
    assert [lesion.kind for lesion in positive.lesions] == ["cspca"]
    assert positive.lesions[0].isup >= 2 and positive.lesions[0].category in (4, 5)
    assert positive.has_zones and np.any(positive.zones == 1) and np.any(positive.zones == 2)
    negative = picai_case(layout, ids[1], TINY_GRID)
    assert negative is not None and negative.lesions == () and not negative.is_cspca
    # no expert label, csPCa by the marksheet: the AI-derived label (grade unknown) is used
    fallback = picai_case(layout, ids[2], TINY_GRID)
    assert fallback is not None and fallback.meta["label_source"] == "AI/Bosma22a"
    assert fallback.lesions[0].isup == UNKNOWN and fallback.lesions[0].category == UNKNOWN
    assert picai_case(PicaiLayout(images_root, labels_root, label_source="human"), ids[2], TINY_GRID) is None
    # the same through a data spec with a split, as `lesion-ai train --data-format picai` builds it
    spec = DataSpec(
        images_root, "picai", labels_root=labels_root, split=labels_root.parent / "splits", subset="train"
    )
    files = build_cache(spec, TINY_GRID, tmp_path / "cache")
    assert [load_case(f).case_id for f in files] == ids[:2]
    assert json.loads(json.dumps(spec.to_dict()))["data_format"] == "picai"
