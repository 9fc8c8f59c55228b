"""Tests of the competition metric and clinical figures (uwm_d2.core.metrics).

The fast Hausdorff is checked against a brute-force reference built from
``scipy.spatial.distance.directed_hausdorff`` on every foreground voxel; that reference lives here
(and in the benchmark), never in the package. Small volumes rarely reach the block pruning of
``_max_nearest`` (it starts above a few hundred candidate voxels), so the comparisons also run
with it forced on every source voxel (``pruning_everywhere``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist, directed_hausdorff

import uwm_d2.core.metrics as metrics
from uwm_d2.core.metrics import (
    HausdorffPair,
    dice_3d,
    dice_coefficient,
    hausdorff_distance,
    hd95_mm,
)
from uwm_d2.core.readings import PROJECT


@pytest.fixture(params=["default", "pruning_everywhere"])
def pruning(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test as shipped, and again with the block pruning used for any number of voxels."""
    if request.param == "pruning_everywhere":
        monkeypatch.setattr(metrics, "_DIRECT_QUERY", 0)
    return request.param


def brute_force_hausdorff(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None
) -> float:
    """Reference: symmetric Hausdorff over all foreground voxel coordinates, both directions."""
    scale = np.asarray(spacing if spacing is not None else (1.0,) * pred.ndim, dtype=np.float64)
    p = np.argwhere(pred).astype(np.float64) * scale
    g = np.argwhere(truth).astype(np.float64) * scale
    return max(directed_hausdorff(p, g)[0], directed_hausdorff(g, p)[0])


def brute_force_hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Reference HD95: surfaces by explicit 6-neighbour checks, all-pairs distances, percentiles."""

    def surface(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~inner).astype(np.float64) * np.asarray(spacing)

    sp, sg = surface(pred), surface(truth)
    distances = cdist(sp, sg)
    return float(
        max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))
    )


def _random_volume(rng: np.random.Generator, shape: tuple[int, ...], density: float) -> np.ndarray:
    volume = rng.random(shape) < density
    if not volume.any():
        volume[tuple(rng.integers(0, side) for side in shape)] = True
    return volume


# ---------------------------------------------------------------- Dice


def test_dice_hand_computed() -> None:
    pred = np.array([[1, 1, 0, 0]], dtype=bool)
    truth = np.array([[0, 1, 1, 1]], dtype=bool)
    assert dice_coefficient(pred, truth) == pytest.approx(2 * 1 / (2 + 3))
    assert dice_coefficient(truth, truth) == 1.0


def test_dice_empty_rules() -> None:
    empty = np.zeros((4, 5), dtype=bool)
    some = empty.copy()
    some[1, 2] = True
    assert dice_coefficient(empty, empty) == 1.0
    assert dice_coefficient(some, empty) == 0.0
    assert dice_coefficient(empty, some) == 0.0


def test_dice_accepts_numeric_masks_and_checks_shapes() -> None:
    assert dice_coefficient(np.array([[0, 255]]), np.array([[0.0, 1.0]])) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice_coefficient(np.zeros((2, 3)), np.zeros((3, 2)))


def test_dice_3d() -> None:
    pred = np.zeros((3, 4, 4), dtype=bool)
    truth = np.zeros((3, 4, 4), dtype=bool)
    assert dice_3d(pred, truth) == 1.0
    pred[0, :2, :2] = True  # 4 voxels
    truth[0, :2, :1] = True  # 2 voxels, both inside pred
    truth[2, 3, 3] = True  # 1 more
    assert dice_3d(pred, truth) == pytest.approx(2 * 2 / (4 + 3))
    with pytest.raises(ValueError):
        dice_3d(np.zeros((4, 4)), np.zeros((4, 4)))


# ---------------------------------------------------------------- Hausdorff


def test_hausdorff_hand_computed() -> None:
    pred = np.zeros((2, 5, 6), dtype=bool)
    truth = np.zeros((2, 5, 6), dtype=bool)
    pred[0, 0, 0] = True
    truth[0, 3, 4] = True  # 3-4-5 triangle
    assert hausdorff_distance(pred, truth) == 5.0
    assert hausdorff_distance(pred, truth, spacing=(3.0, 2.0, 1.0)) == pytest.approx(
        math.hypot(6.0, 4.0)
    )
    assert PROJECT.hausdorff(pred, truth) == pytest.approx(5.0 / math.sqrt(2**2 + 5**2 + 6**2))


def test_hausdorff_is_symmetric_and_counts_interior_voxels() -> None:
    # Truth is a filled 9x9 square; prediction is one voxel in its corner. Directed
    # truth -> pred is the far corner (8, 8): sqrt(128); pred -> truth is 0.
    pred = np.zeros((1, 9, 9), dtype=bool)
    truth = np.ones((1, 9, 9), dtype=bool)
    pred[0, 0, 0] = True
    assert hausdorff_distance(pred, truth) == pytest.approx(math.sqrt(128))
    assert hausdorff_distance(truth, pred) == pytest.approx(math.sqrt(128))


def test_hausdorff_maximum_can_lie_inside_a_mask(pruning: str) -> None:
    # A filled disk inside a ring: the worst prediction voxel is the disk's centre, an interior
    # voxel, so a surface-only shortcut would be wrong.
    yy, xx = np.mgrid[:21, :21]
    radius = np.hypot(yy - 10, xx - 10)
    truth = ((radius >= 8) & (radius <= 9))[None]
    pred = (radius <= 7)[None]
    value = hausdorff_distance(pred, truth)
    assert value == pytest.approx(brute_force_hausdorff(pred, truth), abs=1e-9)
    assert value >= 8.0
    # The same in 3D, a ball inside a shell, large enough for every pruning level.
    grid = np.indices((33, 33, 33))
    radius = np.sqrt(sum((axis - 16.0) ** 2 for axis in grid))
    shell, ball = (radius >= 14) & (radius <= 15), radius <= 11
    for spacing in ((1.0, 1.0, 1.0), (3.0, 1.63, 1.5)):
        assert hausdorff_distance(ball, shell, spacing) == pytest.approx(
            brute_force_hausdorff(ball, shell, spacing), abs=1e-9
        )


def test_hausdorff_identical_and_subset() -> None:
    rng = np.random.default_rng(1)
    volume = _random_volume(rng, (4, 9, 7), 0.3)
    assert hausdorff_distance(volume, volume) == 0.0
    assert PROJECT.hausdorff(volume, volume) == 0.0


def test_hausdorff_undefined_for_empty_masks() -> None:
    empty = np.zeros((2, 3, 3), dtype=bool)
    some = empty.copy()
    some[0, 0, 0] = True
    for pred, truth in [(empty, empty), (empty, some), (some, empty)]:
        with pytest.raises(ValueError, match="empty"):
            hausdorff_distance(pred, truth)


def test_project_hausdorff_empty_rules() -> None:
    empty = np.zeros((3, 4, 5), dtype=bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert PROJECT.hausdorff(empty, empty) == 0.0
    assert PROJECT.hausdorff(some, empty) == 1.0
    assert PROJECT.hausdorff(empty, some) == 1.0


def test_project_hausdorff_of_opposite_corners_stays_below_one() -> None:
    # Voxel centres span (D-1, H-1, W-1), so with unit spacing the clip to 1 never binds.
    pred = np.zeros((1, 4, 3), dtype=bool)
    truth = np.zeros((1, 4, 3), dtype=bool)
    pred[0, 0, 0] = truth[0, 3, 2] = True
    value = PROJECT.hausdorff(pred, truth)
    assert value == pytest.approx(math.sqrt(9 + 4) / math.sqrt(1 + 16 + 9))
    assert value <= 1.0


def test_hausdorff_checks_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        hausdorff_distance(np.ones((2, 2, 2)), np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance(np.ones((2, 2, 2)), np.ones((2, 2, 2)), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance(np.ones((2, 2, 2)), np.ones((2, 2, 2)), spacing=(1.0, 0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 12), st.integers(1, 12)),
    densities=st.tuples(st.floats(0.01, 0.6), st.floats(0.01, 0.6)),
    anisotropic=st.booleans(),
    prune_everywhere=st.booleans(),
)
def test_hausdorff_matches_brute_force(
    seed: int,
    shape: tuple[int, int, int],
    densities: tuple[float, float],
    anisotropic: bool,
    prune_everywhere: bool,
) -> None:
    rng = np.random.default_rng(seed)
    pred = _random_volume(rng, shape, densities[0])
    truth = _random_volume(rng, shape, densities[1])
    spacing = (3.0, 1.63, 1.5) if anisotropic else (1.0, 1.0, 1.0)
    with pytest.MonkeyPatch.context() as patch:
        if prune_everywhere:
            patch.setattr(metrics, "_DIRECT_QUERY", 0)
        fast = hausdorff_distance(pred, truth, spacing)
    assert fast == pytest.approx(brute_force_hausdorff(pred, truth, spacing), abs=1e-9)


def test_hausdorff_matches_brute_force_on_separated_blobs(pruning: str) -> None:
    # Sparse objects scattered over a large volume.
    rng = np.random.default_rng(7)
    for _ in range(10):
        pred = np.zeros((20, 40, 40), dtype=bool)
        truth = np.zeros((20, 40, 40), dtype=bool)
        for volume in (pred, truth):
            for _ in range(rng.integers(1, 4)):
                z, y, x = rng.integers(0, 18), rng.integers(0, 36), rng.integers(0, 36)
                volume[z : z + 2, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
        assert hausdorff_distance(pred, truth) == pytest.approx(
            brute_force_hausdorff(pred, truth), abs=1e-9
        )


def _organ(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A lumpy ellipsoid in the middle of the volume: a small stand-in for an organ."""
    grid = np.indices(shape, dtype=np.float64)
    centre = np.array(shape) / 2 + rng.normal(0, 1, 3)
    radii = np.array(shape) * rng.uniform(0.2, 0.3, 3)
    inside = sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre, radii, strict=True))
    return inside <= 1 + 0.3 * rng.standard_normal(shape)


def test_hausdorff_matches_brute_force_with_far_stray_blobs(pruning: str) -> None:
    # A prediction near the organ (shifted, grown or shrunk) plus a few voxels anywhere in the
    # volume, the false positives that used to make the work span the whole scan; and the same
    # prediction without them. Both directions matter: the blob is far from the truth, and the
    # truth's nearest prediction voxels are still the organ's.
    rng = np.random.default_rng(2022)
    shape = (12, 30, 26)
    for trial in range(12):
        truth = _organ(shape, rng)
        pred = np.roll(truth, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
        if trial % 3 == 1:
            pred = ndimage.binary_dilation(pred, iterations=2)
        elif trial % 3 == 2:
            pred = ndimage.binary_erosion(pred)
        stray = pred.copy()
        for _ in range(rng.integers(1, 4)):
            z, y, x = (int(rng.integers(0, side - 1)) for side in shape)
            stray[z : z + rng.integers(1, 3), y : y + 2, x] = True
        for candidate in (pred, stray):
            for spacing in ((1.0, 1.0, 1.0), (3.0, 1.63, 1.5), tuple(1.0 / n for n in shape)):
                assert hausdorff_distance(candidate, truth, spacing) == pytest.approx(
                    brute_force_hausdorff(candidate, truth, spacing), abs=1e-9
                )
            diagonal = math.sqrt(sum(side * side for side in shape))
            assert PROJECT.hausdorff(candidate, truth) == pytest.approx(
                min(brute_force_hausdorff(candidate, truth) / diagonal, 1.0), abs=1e-12
            )


def test_hausdorff_pair_serves_several_spacings_and_2d_masks() -> None:
    rng = np.random.default_rng(5)
    pred = _random_volume(rng, (5, 11, 9), 0.2)
    truth = _random_volume(rng, (5, 11, 9), 0.2)
    pair = HausdorffPair(pred, truth)
    assert (pair.pred_count, pair.truth_count) == (pred.sum(), truth.sum())
    assert not pair.identical and HausdorffPair(pred, pred.copy()).identical
    for spacing in (None, (1.0, 1.0, 1.0), (3.0, 1.5, 1.5), (0.2, 1 / 11, 1 / 9)):
        assert pair.distance(spacing) == pytest.approx(
            brute_force_hausdorff(pred, truth, spacing), abs=1e-9
        )
    # Any number of dimensions; non-contiguous views (a class of a (D, C, H, W) stack) too.
    assert hausdorff_distance(pred[2], truth[2], None) == pytest.approx(
        brute_force_hausdorff(pred[2], truth[2]), abs=1e-9
    )
    stacked = np.stack([pred, truth], axis=1)
    assert hausdorff_distance(stacked[:, 0], stacked[:, 1]) == pytest.approx(
        brute_force_hausdorff(pred, truth), abs=1e-9
    )


# ---------------------------------------------------------------- HD95 (mm)


def _sphere(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre, strict=True)) <= radius**2


def test_hd95_single_voxels_use_real_spacing() -> None:
    pred = np.zeros((3, 4, 4), dtype=bool)
    truth = np.zeros((3, 4, 4), dtype=bool)
    pred[0, 1, 1] = True
    truth[1, 1, 1] = True  # one slice (3 mm) away
    assert hd95_mm(pred, truth, (3.0, 1.5, 1.5)) == pytest.approx(3.0)
    truth[1, 1, 1], truth[0, 1, 3] = False, True  # two columns (2 x 1.63 mm) away
    assert hd95_mm(pred, truth, (3.0, 1.63, 1.63)) == pytest.approx(3.26)


def test_hd95_of_shifted_sphere_matches_reference() -> None:
    truth = _sphere((16, 30, 30), (8, 15, 15), 6.5)
    pred = np.roll(truth, 2, axis=2)  # shifted two columns
    spacing = (3.0, 1.5, 1.5)
    value = hd95_mm(pred, truth, spacing)
    assert value == pytest.approx(brute_force_hd95(pred, truth, spacing), abs=1e-9)
    assert 0.0 < value <= 2 * 1.5 + 1e-9  # never more than the shift itself
    assert hd95_mm(truth, truth, spacing) == 0.0
    # Distances scale with the spacing.
    doubled = tuple(2 * step for step in spacing)
    assert hd95_mm(pred, truth, doubled) == pytest.approx(2 * value)


def test_hd95_objects_at_the_volume_border_match_reference() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        pred = _random_volume(rng, (5, 9, 8), 0.5)
        truth = _random_volume(rng, (5, 9, 8), 0.5)
        spacing = (3.0, 1.63, 1.5)
        assert hd95_mm(pred, truth, spacing) == pytest.approx(
            brute_force_hd95(pred, truth, spacing), abs=1e-9
        )


def test_hd95_with_far_stray_blobs_matches_reference() -> None:
    rng = np.random.default_rng(9)
    shape = (10, 24, 20)
    for _ in range(4):
        truth = _organ(shape, rng)
        pred = np.roll(truth, 1, axis=2)
        pred[tuple(int(rng.integers(0, side)) for side in shape)] = True
        spacing = (3.0, 1.63, 1.5)
        assert hd95_mm(pred, truth, spacing) == pytest.approx(
            brute_force_hd95(pred, truth, spacing), abs=1e-9
        )


def test_hd95_is_nan_when_either_is_empty() -> None:
    empty = np.zeros((3, 4, 4), dtype=bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert math.isnan(hd95_mm(empty, empty))
    assert math.isnan(hd95_mm(some, empty))
    assert math.isnan(hd95_mm(empty, some))
