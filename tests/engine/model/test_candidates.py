"""Dynamic-threshold lesion-candidate extraction on synthetic maps with known blobs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from lesion_engine.model.candidates import (
    CandidateConfig,
    blobs_touch,
    extract_candidates,
    label_map,
    separate_labels,
)

SHAPE = (12, 48, 48)


def gaussian(
    centre: tuple[int, int, int], peak: float, sigma: tuple[float, float, float]
) -> NDArray[np.float32]:
    """A Gaussian blob on the test grid."""
    z, y, x = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    d2 = sum(((c - m) / s) ** 2 for c, m, s in zip((z, y, x), centre, sigma, strict=True))
    return (peak * np.exp(-0.5 * d2)).astype(np.float32)


def cube(value: float, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> NDArray[np.float32]:
    """A map that holds ``value`` in the box [lo, hi) and 0 elsewhere."""
    out = np.zeros(SHAPE, dtype=np.float32)
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = value
    return out


def test_two_blobs_found_in_peak_order() -> None:
    prob = np.maximum(gaussian((4, 12, 12), 0.7, (1.5, 3, 3)), gaussian((7, 34, 30), 0.9, (1.5, 3, 3)))
    found = extract_candidates(prob, CandidateConfig())
    assert [c.index for c in found] == [1, 2]
    assert found[0].peak == pytest.approx(0.9, abs=1e-6)
    assert found[0].peak_zyx == (7, 34, 30)
    assert found[0].center_zyx == (7, 34, 30)
    assert found[1].peak_zyx == (4, 12, 12)
    for candidate in found:
        assert candidate.mask.shape == SHAPE
        assert candidate.voxels == int(candidate.mask.sum())
        assert candidate.mask[candidate.peak_zyx]


def test_region_holds_the_voxels_above_the_dynamic_threshold() -> None:
    prob = gaussian((6, 24, 24), 0.8, (2, 4, 4))
    found = extract_candidates(prob, CandidateConfig(dynamic_fraction=0.5, floor=0.01))
    assert len(found) == 1
    np.testing.assert_array_equal(found[0].mask, prob >= 0.4)


def test_floor_raises_the_threshold_of_weak_peaks() -> None:
    prob = gaussian((6, 24, 24), 0.3, (2, 4, 4))
    found = extract_candidates(prob, CandidateConfig(min_peak=0.1, dynamic_fraction=0.2, floor=0.15))
    assert len(found) == 1
    np.testing.assert_array_equal(found[0].mask, prob >= 0.15)


def test_min_peak_stops_extraction() -> None:
    prob = np.maximum(gaussian((4, 12, 12), 0.9, (1.5, 3, 3)), gaussian((7, 34, 30), 0.25, (1.5, 3, 3)))
    assert len(extract_candidates(prob, CandidateConfig(min_peak=0.3))) == 1
    assert len(extract_candidates(prob, CandidateConfig(min_peak=0.2))) == 2


def test_max_lesions_caps_the_count_keeping_the_highest() -> None:
    centres = [(3, 10, 10), (3, 10, 38), (8, 38, 10), (8, 38, 38)]
    peaks = [0.5, 0.9, 0.7, 0.6]
    prob = np.max([gaussian(c, p, (1.2, 2.5, 2.5)) for c, p in zip(centres, peaks, strict=True)], axis=0)
    assert len(extract_candidates(prob, CandidateConfig(max_lesions=5))) == 4
    found = extract_candidates(prob, CandidateConfig(max_lesions=2))
    assert [c.peak_zyx for c in found] == [centres[1], centres[2]]


def test_small_regions_are_dropped_but_do_not_stop_extraction() -> None:
    prob = cube(0.6, (5, 30, 30), (8, 36, 36))
    prob[2, 5, 5] = 0.95  # a one-voxel spike, higher than the real blob
    found = extract_candidates(prob, CandidateConfig(min_voxels=10))
    assert len(found) == 1
    assert found[0].voxels == 3 * 6 * 6
    assert len(extract_candidates(prob, CandidateConfig(min_voxels=1))) == 2


def test_regions_touching_an_earlier_candidate_are_dropped() -> None:
    # A strong plateau with a weak one beside it: the weak one is below the first dynamic threshold, so it
    # would become a second candidate touching the first; as in PI-CAI it is dropped.
    prob = cube(0.9, (3, 10, 10), (8, 20, 20)) + cube(0.3, (3, 20, 10), (8, 30, 20))
    prob += cube(0.25, (3, 35, 35), (8, 40, 40))  # a separate weak blob is still found after it
    found = extract_candidates(prob, CandidateConfig(min_peak=0.2, dynamic_fraction=0.5, floor=0.05))
    assert [c.voxels for c in found] == [5 * 10 * 10, 5 * 5 * 5]
    assert not blobs_touch(label_map(found, SHAPE))


def test_shoulders_of_a_blob_are_not_extra_candidates() -> None:
    prob = gaussian((6, 24, 24), 0.9, (2, 4, 4))
    found = extract_candidates(prob, CandidateConfig(min_peak=0.05, dynamic_fraction=0.8, floor=0.01))
    assert len(found) == 1


@pytest.mark.parametrize(("connectivity", "voxels"), [(26, [2 * 64]), (6, [64])])
def test_connectivity(connectivity: int, voxels: list[int]) -> None:
    # Two cubes that meet only at an edge: one region with 26-connectivity; with 6-connectivity the second
    # cube is a region of its own, which touches the first and is dropped.
    prob = cube(0.8, (3, 10, 10), (7, 14, 14)) + cube(0.8, (3, 14, 14), (7, 18, 18))
    found = extract_candidates(prob, CandidateConfig(connectivity=connectivity, min_voxels=5))
    assert [c.voxels for c in found] == voxels


def test_centre_lies_inside_a_non_convex_region() -> None:
    prob = np.zeros(SHAPE, dtype=np.float32)
    prob[5, 10:30, 10] = 0.8  # an L: its centre of mass lies outside it
    prob[5, 29, 10:30] = 0.8
    found = extract_candidates(prob, CandidateConfig(min_voxels=5))
    assert len(found) == 1
    assert found[0].mask[found[0].center_zyx]


def test_empty_and_flat_maps_give_no_candidates() -> None:
    assert extract_candidates(np.zeros(SHAPE, dtype=np.float32)) == []
    assert extract_candidates(np.full(SHAPE, 0.05, dtype=np.float32)) == []


def test_noise_map_terminates_quickly() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random(SHAPE).astype(np.float32) ** 8  # many isolated small peaks
    found = extract_candidates(prob, CandidateConfig(min_voxels=50))
    assert all(c.voxels >= 50 for c in found)


@pytest.mark.parametrize(
    ("prob", "message"),
    [(np.zeros((4, 4)), "3D"), (np.full(SHAPE, np.nan), "NaN")],
)
def test_invalid_maps_are_refused(prob: NDArray[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        extract_candidates(prob)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_peak": 0.0}, "min_peak"),
        ({"min_peak": 1.5}, "min_peak"),
        ({"dynamic_fraction": 0.0}, "dynamic_fraction"),
        ({"floor": -0.1}, "floor"),
        ({"max_lesions": 0}, "max_lesions"),
        ({"max_lesions": 2.5}, "max_lesions"),
        ({"min_voxels": 0}, "min_voxels"),
        ({"connectivity": 18}, "connectivity"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CandidateConfig(**kwargs)


def test_config_round_trip() -> None:
    config = CandidateConfig(
        min_peak=0.2, dynamic_fraction=0.5, floor=0.1, max_lesions=3, min_voxels=4, connectivity=6
    )
    assert CandidateConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown candidate settings: bogus"):
        CandidateConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_separate_labels_clears_voxels_next_to_lower_labels() -> None:
    labels = np.zeros((3, 6, 6), dtype=np.uint16)
    labels[:, :, :3] = 1
    labels[:, :, 3:] = 2
    labels[1, 1, 5] = 3  # inside label 2's area, touching 2 only
    assert blobs_touch(labels)
    out = separate_labels(labels)
    assert not blobs_touch(out)
    np.testing.assert_array_equal(out == 1, labels == 1)  # the lowest label keeps every voxel
    assert not (out[:, :, 3] == 2).any()  # label 2 lost its face next to label 1
    assert (out == 2).any()
    assert not (out == 3).any()  # label 3 was surrounded by label 2


def test_blobs_touch_ignores_single_blobs_and_gaps() -> None:
    labels = np.zeros((3, 6, 6), dtype=np.uint8)
    assert not blobs_touch(labels)
    labels[1, 1:3, 1:3] = 1
    labels[1, 4:6, 4:6] = 2
    assert not blobs_touch(labels)
    labels[1, 3, 3] = 2  # diagonal contact with label 1
    assert blobs_touch(labels)


def reference_extraction(values: NDArray[np.float32], config: CandidateConfig) -> list[dict[str, Any]]:
    """The algorithm of the module docstring, written plainly on the whole map (slow, obviously right)."""
    structure = ndimage.generate_binary_structure(3, 1 if config.connectivity == 6 else 3)
    work = values.astype(np.float32, copy=True)
    forbidden = np.zeros(work.shape, dtype=bool)
    found: list[dict[str, Any]] = []
    rejected = 0
    while len(found) < config.max_lesions and rejected < 100 * config.max_lesions + 1000:
        seed = np.unravel_index(int(np.argmax(work)), work.shape)
        peak = float(work[seed])
        if peak < config.min_peak:
            break
        labels, _ = ndimage.label(work >= max(peak * config.dynamic_fraction, config.floor), structure)
        region = labels == labels[seed]
        work[region] = 0.0
        touch = ndimage.binary_dilation(region, structure=np.ones((3, 3, 3), dtype=bool))
        if (region & forbidden).any():
            forbidden |= touch
            rejected += 1
            continue
        if region.sum() < config.min_voxels:
            rejected += 1
            continue
        forbidden |= touch
        points = np.argwhere(region)
        nearest = points[np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1))]
        best = np.unravel_index(int(np.argmax(np.where(region, values, -np.inf))), values.shape)
        found.append(
            {
                "mask": region,
                "peak": float(values[best]),
                "peak_zyx": tuple(int(v) for v in best),
                "center_zyx": tuple(int(v) for v in nearest),
            }
        )
    return found


@pytest.mark.parametrize("seed", range(40))
def test_extraction_equals_the_plain_reference_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(4, 16)), int(rng.integers(8, 48)), int(rng.integers(8, 48)))
    smooth = ndimage.gaussian_filter(rng.random(shape), sigma=float(rng.uniform(0.6, 2.5)))
    values = ((smooth - smooth.min()) / (np.ptp(smooth) + 1e-9)).astype(np.float32)
    if seed % 3 == 0:
        values = np.round(values, 1)  # plateaus: ties between seeds and peaks
    config = CandidateConfig(
        min_peak=float(rng.uniform(0.1, 0.6)),
        dynamic_fraction=float(rng.uniform(0.3, 0.9)),
        max_lesions=int(rng.integers(1, 8)),
        min_voxels=int(rng.integers(1, 15)),
        connectivity=int(rng.choice([6, 26])),
    )
    ours = extract_candidates(values, config)
    expected = reference_extraction(values, config)
    assert len(ours) == len(expected)
    for candidate, reference in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(candidate.mask, reference["mask"])
        assert candidate.voxels == int(reference["mask"].sum())
        assert (candidate.peak, candidate.peak_zyx, candidate.center_zyx) == (
            reference["peak"],
            reference["peak_zyx"],
            reference["center_zyx"],
        )
