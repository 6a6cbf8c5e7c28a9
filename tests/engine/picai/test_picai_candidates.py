"""PI-CAI's dynamic lesion-candidate extraction: ours against report_guided_annotation 0.3.4, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.model.picai_unet import candidates
from lesion_engine.model.picai_unet.candidates import DynamicExtraction, extract_dynamic

rga = pytest.importorskip("report_guided_annotation.extract_lesion_candidates")

Map = NDArray[np.floating[Any]]
Result = tuple[Map, list[tuple[int, float]], NDArray[np.int_]]


def reference(softmax: Map, settings: DynamicExtraction) -> Result:
    """The PI-CAI reference, called as the pipeline calls it."""
    if settings.max_prob_failsafe_stopping_threshold == 0.01:
        result: Result = rga.extract_lesion_candidates(
            softmax,
            threshold="dynamic" if settings.version == 1 else "dynamic-v2",
            min_voxels_detection=settings.min_voxels_detection,
            num_lesions_to_extract=settings.num_lesions_to_extract,
            dynamic_threshold_factor=settings.dynamic_threshold_factor,
            max_prob_round_decimals=None,
            remove_adjacent_lesion_candidates=settings.remove_adjacent_lesion_candidates,
        )
        return result
    converted = softmax.astype(np.float32) if softmax.dtype == np.float16 else softmax
    result = rga.extract_lesion_candidates_dynamic(
        converted, max_prob_round_decimals=None, **settings.to_dict()
    )
    return result


def assert_identical(ours: Result, ref: Result) -> None:
    """All three outputs equal bit for bit, with the same dtypes and Python types."""
    for mine, theirs in ((ours[0], ref[0]), (ours[2], ref[2])):
        assert mine.dtype == theirs.dtype
        assert mine.shape == theirs.shape
        assert np.ascontiguousarray(mine).tobytes() == np.ascontiguousarray(theirs).tobytes()
    assert [(type(i), type(c)) for i, c in ours[1]] == [(int, float)] * len(ours[1])
    assert [(i, c.hex()) for i, c in ours[1]] == [(i, float(c).hex()) for i, c in ref[1]]


# --------------------------------------------------------------------------- map generators


def scaled(field: NDArray[np.float64], top: float) -> NDArray[np.float32]:
    """The field mapped to [0, top] as float32."""
    low, high = float(field.min()), float(field.max())
    return ((field - low) / max(high - low, 1e-12) * top).astype(np.float32)


def smooth(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float = 2.0) -> NDArray[np.float32]:
    """A smooth random field through a sigmoid, values in about 0..0.6."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), (sigma / 3, sigma, sigma))
    field = field / max(float(field.std()), 1e-12)
    return scaled(1 / (1 + np.exp(-3 * field)), 0.6)


def blobs(rng: np.random.Generator, shape: tuple[int, int, int], count: int = 5) -> NDArray[np.float32]:
    """Gaussian blobs of different heights and sizes over weak smooth noise."""
    grid = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    total = 0.05 * smooth(rng, shape).astype(np.float64)
    for _ in range(count):
        centre = [rng.uniform(0, n) for n in shape]
        sigma = [rng.uniform(0.7, 2.0), rng.uniform(1.0, 5.0), rng.uniform(1.0, 5.0)]
        d2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, sigma, strict=True))
        total = total + rng.uniform(0.05, 0.9) * np.exp(-0.5 * d2)
    return total.astype(np.float32)


def realistic(rng: np.random.Generator, shape: tuple[int, int, int]) -> NDArray[np.float32]:
    """Like a network's map: blurred sigmoid of Gaussian blobs plus smooth noise, values in 0..0.6."""
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    logit = np.full(shape, -4.0, dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        centre = [rng.uniform(0, n) for n in shape]
        sigma = [rng.uniform(1, 3), rng.uniform(2, 8), rng.uniform(2, 8)]
        d2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, sigma, strict=True))
        logit += (rng.uniform(1.5, 5.0) * np.exp(-0.5 * d2)).astype(np.float32)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (1, 3, 3))
    prob = 1 / (1 + np.exp(-(logit + np.float32(8) * noise)))
    prob = ndimage.gaussian_filter(prob, (0.5, 1.0, 1.0))
    out: NDArray[np.float32] = (prob * np.float32(0.6 / float(prob.max()))).astype(np.float32)
    return out


def plateaus(rng: np.random.Generator, shape: tuple[int, int, int]) -> NDArray[np.float32]:
    """A smooth field quantized to steps of 0.05: many components share their maximum."""
    return (np.round(smooth(rng, shape, 1.5) * 20) / 20).astype(np.float32)


def boxes(rng: np.random.Generator, shape: tuple[int, int, int]) -> NDArray[np.float32]:
    """Constant boxes of a few repeated values: exact ties, touching candidates."""
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(12):
        lo = [int(rng.integers(0, n)) for n in shape]
        size = [int(rng.integers(1, 4)), int(rng.integers(1, 7)), int(rng.integers(1, 7))]
        value = np.float32(rng.choice([0.2, 0.3, 0.5, 0.5, 0.8]))
        out[tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))] = value
    return out


def spikes(rng: np.random.Generator, shape: tuple[int, int, int], count: int = 4) -> NDArray[np.float32]:
    """Blobs with tiny (<= 10 voxel) spikes above them: the global maximum lies in a small component."""
    out = blobs(rng, shape, 3) * np.float32(0.5)
    for _ in range(count):
        z, y, x = (int(rng.integers(0, n)) for n in shape)
        out[z, y : y + int(rng.integers(1, 3)), x : x + int(rng.integers(1, 4))] = rng.uniform(0.7, 0.95)
    return out


def tiny_only(rng: np.random.Generator, shape: tuple[int, int, int]) -> NDArray[np.float32]:
    """A weak field and one tiny spike far above it: every component is small (version 1's bug)."""
    out = smooth(rng, shape) * np.float32(0.2)
    z, y, x = (int(rng.integers(0, max(n - 1, 1))) for n in shape)
    out[z, y : y + 2, x : x + 2] = np.float32(0.9)
    return out


def tie_against_raster(shape: tuple[int, int, int]) -> NDArray[np.float32]:
    """Two blobs with the same peak: A's peak comes first in raster order, B's first voxel does."""
    out = np.zeros(shape, dtype=np.float32)
    out[4:7, 3:7, 3:7] = 0.3  # A, peak at (5, 5, 5)
    out[5, 5, 5] = 0.5
    out[1:10, 20:24, 3:7] = 0.3  # B starts at z = 1, peak at (5, 22, 5)
    out[5, 22, 5] = 0.5
    return out


def adjacent(shape: tuple[int, int, int]) -> NDArray[np.float32]:
    """A strong blob and a weaker one that touches it diagonally once the strong one is removed."""
    out = np.zeros(shape, dtype=np.float32)
    out[2:5, 2:8, 2:8] = 0.9
    out[5:8, 8:14, 8:14] = 0.3
    out[3:6, 20:26, 20:26] = 0.25
    return out


SHAPES = [(6, 24, 24), (10, 40, 40), (3, 16, 20), (9, 28, 40), (1, 30, 30)]
Factory = Callable[[np.random.Generator, tuple[int, int, int]], Map]
KINDS: dict[str, Factory] = {
    "smooth": smooth,
    "realistic": realistic,
    "blobs": blobs,
    "plateaus": plateaus,
    "boxes": boxes,
    "spikes": spikes,
    "many_spikes": lambda rng, shape: spikes(rng, shape, 40),
    "tiny_only": tiny_only,
    "low": lambda rng, shape: smooth(rng, shape) * np.float32(0.016),
    "negative": lambda rng, shape: smooth(rng, shape) - np.float32(0.15),
    "noise": lambda rng, shape: np.round(rng.uniform(0, 0.6, shape), 1).astype(np.float32),
    "float64": lambda rng, shape: blobs(rng, shape).astype(np.float64),
    "float16": lambda rng, shape: blobs(rng, shape).astype(np.float16),
    "float16_smooth": lambda rng, shape: smooth(rng, shape).astype(np.float16),
}


def generated_cases() -> list[Any]:
    """Seeded maps of every kind and shape, with varied settings."""
    cases = []
    for number, (kind, shape) in enumerate((k, s) for k in KINDS for s in SHAPES):
        settings = DynamicExtraction(
            num_lesions_to_extract=1 + number % 7,
            min_voxels_detection=(10, 10, 3, 0, 25)[number % 5],
            dynamic_threshold_factor=(2.5, 2.5, 1.5, 4.0)[number % 4],
            remove_adjacent_lesion_candidates=number % 3 != 1,
            version=1 + (number % 6 == 5),
        )
        cases.append(pytest.param(kind, shape, number, settings, id=f"{kind}-{'x'.join(map(str, shape))}"))
    return cases


@pytest.mark.parametrize("seed", range(8))
def test_realistic_maps_match_the_reference(seed: int) -> None:
    softmax = realistic(np.random.default_rng(100 + seed), (19, 64, 64))
    settings = DynamicExtraction(version=1 + seed % 2, num_lesions_to_extract=5 + seed % 3)
    assert_identical(extract_dynamic(softmax, settings), reference(softmax, settings))


@pytest.mark.parametrize(("kind", "shape", "seed", "settings"), generated_cases())
def test_generated_maps_match_the_reference(
    kind: str, shape: tuple[int, int, int], seed: int, settings: DynamicExtraction
) -> None:
    softmax = KINDS[kind](np.random.default_rng(seed), shape)
    assert_identical(extract_dynamic(softmax, settings), reference(softmax, settings))


SPECIAL_SETTINGS = [
    DynamicExtraction(),
    DynamicExtraction(version=2),
    DynamicExtraction(remove_adjacent_lesion_candidates=False, num_lesions_to_extract=7),
    DynamicExtraction(min_voxels_detection=0, num_lesions_to_extract=3, version=2),
    DynamicExtraction(max_prob_failsafe_stopping_threshold=0.35, num_lesions_to_extract=7),
]


@pytest.mark.parametrize("settings", SPECIAL_SETTINGS, ids=lambda s: "-".join(map(str, s.to_dict().values())))
@pytest.mark.parametrize(
    "softmax",
    [
        pytest.param(tie_against_raster((12, 30, 12)), id="tie-against-raster"),
        pytest.param(adjacent((10, 30, 30)), id="adjacent"),
        pytest.param(np.zeros((4, 8, 8), dtype=np.float32), id="zeros"),
        pytest.param(np.full((4, 8, 8), 0.005, dtype=np.float32), id="below-failsafe"),
        pytest.param(np.full((3, 5, 5), 0.4, dtype=np.float32), id="one-plateau"),
        pytest.param(np.full((2, 2, 2), np.float32(0.01)), id="failsafe-in-float32"),
        pytest.param(np.asfortranarray(blobs(np.random.default_rng(7), (8, 20, 24))), id="fortran-order"),
        pytest.param(blobs(np.random.default_rng(8), (8, 40, 24))[:, ::-2, ::2], id="strided"),
        pytest.param(blobs(np.random.default_rng(9), (19, 96, 96), 8), id="larger-map"),
    ],
)
def test_special_maps_match_the_reference(softmax: Map, settings: DynamicExtraction) -> None:
    assert_identical(extract_dynamic(softmax, settings), reference(softmax, settings))


def test_ties_go_to_the_component_first_in_raster_order() -> None:
    softmax = tie_against_raster((12, 30, 12))
    _, confidences, indexed = extract_dynamic(softmax, DynamicExtraction(num_lesions_to_extract=1))
    assert confidences == [(1, float(np.float32(0.5)))]
    assert indexed[1, 20, 3] == 1
    assert indexed[5, 5, 5] == 0


def test_version_1_bug_makes_the_whole_volume_a_lesion_of_confidence_0() -> None:
    softmax = np.zeros((5, 12, 12), dtype=np.float32)
    softmax[2, 3:5, 3:5] = 0.9  # 4 voxels: every component is small
    hard, confidences, indexed = extract_dynamic(softmax)
    assert confidences == [(1, 0.0)]
    assert not hard.any()
    assert (indexed == 1).all()
    assert extract_dynamic(softmax, DynamicExtraction(version=2))[1] == []


def test_small_components_are_those_of_at_most_min_voxels() -> None:
    softmax = np.zeros((3, 10, 10), dtype=np.float32)
    softmax[1, 2:4, 2:7] = 0.5  # 10 voxels
    assert extract_dynamic(softmax, DynamicExtraction(version=2))[1] == []
    assert extract_dynamic(softmax, DynamicExtraction(min_voxels_detection=9))[1] == [(1, 0.5)]


def test_small_components_on_the_full_volume_path() -> None:
    """Many spikes above the blobs send the search to the full volume, where <= min_voxels also holds."""
    softmax = np.zeros((3, 40, 40), dtype=np.float32)
    for number in range(20):  # 20 one-voxel spikes, 0.80 .. 0.99
        softmax[1, 2 * number, 0] = 0.8 + 0.01 * number
    softmax[1, 10, 10:20] = 0.7  # 10 voxels: small
    softmax[1, 20, 10:21] = 0.6  # 11 voxels: the lesion
    ours = extract_dynamic(softmax, DynamicExtraction(num_lesions_to_extract=1))
    assert ours[1] == [(1, float(np.float32(0.6)))]
    assert_identical(ours, reference(softmax, DynamicExtraction(num_lesions_to_extract=1)))


def test_the_threshold_is_computed_and_compared_in_the_map_dtype() -> None:
    """max / 2.5 in float32 rounds below the exact value: the rim at that float32 value belongs to the blob."""
    peak = np.float32(0.46187204)
    rim = peak / np.float32(2.5)
    assert float(rim) < float(peak) / 2.5
    softmax = np.zeros((3, 8, 8), dtype=np.float32)
    softmax[1, 2, 2:7] = peak  # 5 voxels: small on their own
    softmax[1, 3, 2:8] = rim  # 6 more at exactly the float32 threshold: 11 voxels, a lesion
    ours = extract_dynamic(softmax)
    assert ours[1] == [(1, float(peak))]
    assert_identical(ours, reference(softmax, DynamicExtraction()))


def test_float16_maps_give_float32_blobs() -> None:
    softmax = blobs(np.random.default_rng(3), (6, 24, 24)).astype(np.float16)
    assert extract_dynamic(softmax)[0].dtype == np.float32


def test_the_search_paths_are_all_exercised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tie, small-component and full-volume paths run (so the comparisons above test them)."""
    calls: list[str] = []
    full, grow = candidates._Search._label, candidates._grow

    def counted_full(*args: Any) -> Any:
        calls.append("full")
        return full(*args)

    def counted_grow(*args: Any) -> Any:
        calls.append("grow")
        return grow(*args)

    monkeypatch.setattr(candidates._Search, "_label", counted_full)
    monkeypatch.setattr(candidates, "_grow", counted_grow)
    extract_dynamic(tie_against_raster((12, 30, 12)))
    assert calls[:2] == ["grow", "full"]
    calls.clear()
    extract_dynamic(spikes(np.random.default_rng(1), (6, 24, 24), 40))
    assert "full" in calls
    calls.clear()
    extract_dynamic(
        spikes(np.random.default_rng(2), (10, 40, 40), 2), DynamicExtraction(num_lesions_to_extract=1)
    )
    assert calls.count("grow") > 1
    assert "full" not in calls


@pytest.mark.parametrize(
    ("softmax", "message"),
    [
        (np.zeros((4, 4), dtype=np.float32), "3-D"),
        (np.zeros((0, 4, 4), dtype=np.float32), "non-empty"),
        (np.zeros((2, 4, 4), dtype=np.int64), "floating-point"),
        (np.full((2, 4, 4), np.nan, dtype=np.float32), "NaN or infinite"),
    ],
)
def test_bad_maps_are_refused(softmax: Map, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        extract_dynamic(softmax)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_voxels_detection": -1}, "min_voxels_detection must be >= 0"),
        ({"min_voxels_detection": 2.0}, "min_voxels_detection must be an integer"),
        ({"num_lesions_to_extract": 0}, "num_lesions_to_extract must be >= 1"),
        ({"num_lesions_to_extract": True}, "num_lesions_to_extract must be an integer"),
        ({"dynamic_threshold_factor": 1.0}, "dynamic_threshold_factor must be > 1"),
        ({"dynamic_threshold_factor": float("inf")}, "dynamic_threshold_factor must be a finite number"),
        ({"dynamic_threshold_factor": "2.5"}, "dynamic_threshold_factor must be a finite number"),
        ({"max_prob_failsafe_stopping_threshold": 0.0}, "max_prob_failsafe_stopping_threshold must be > 0"),
        ({"max_prob_failsafe_stopping_threshold": float("nan")}, "must be a finite number"),
        ({"remove_adjacent_lesion_candidates": 1}, "remove_adjacent_lesion_candidates must be a bool"),
        ({"version": 3}, r"version must be 1 \('dynamic'\) or 2"),
    ],
)
def test_invalid_settings_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicExtraction.from_dict(changes)


def test_settings_round_trip_through_a_dict() -> None:
    settings = DynamicExtraction(
        min_voxels_detection=3,
        num_lesions_to_extract=7,
        dynamic_threshold_factor=3,
        remove_adjacent_lesion_candidates=False,
        max_prob_failsafe_stopping_threshold=0.02,
        version=2,
    )
    data = settings.to_dict()
    assert data == {
        "min_voxels_detection": 3,
        "num_lesions_to_extract": 7,
        "dynamic_threshold_factor": 3.0,
        "remove_adjacent_lesion_candidates": False,
        "max_prob_failsafe_stopping_threshold": 0.02,
        "version": 2,
    }
    assert type(data["dynamic_threshold_factor"]) is float
    assert DynamicExtraction.from_dict(data) == settings
    assert DynamicExtraction.from_dict({}) == DynamicExtraction()


def test_unknown_settings_are_named() -> None:
    with pytest.raises(ValueError, match="unknown DynamicExtraction settings: threshold, zeta"):
        DynamicExtraction.from_dict({"zeta": 1, "version": 2, "threshold": "dynamic"})
