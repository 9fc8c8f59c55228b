"""Tests of the instance → per-class merge rule and the 3D clean-up (uwm_d2.core.merge)."""

from __future__ import annotations

import numpy as np
import pytest

from uwm_d2.core.merge import merge_instances, remove_single_slice_components


def _box(shape: tuple[int, int], rows: slice, cols: slice, value: float = 1.0) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.float32)
    mask[rows, cols] = value
    return mask


def test_overlapping_instances_of_a_class_are_united() -> None:
    masks = np.stack(
        [_box((6, 8), slice(0, 3), slice(0, 4)), _box((6, 8), slice(2, 5), slice(2, 6))]
    )
    merged = merge_instances(masks, [0.9, 0.8], [1, 1], score_thresholds=[0.5, 0.5, 0.5])
    assert merged.shape == (3, 6, 8)
    assert merged.dtype == np.bool_
    np.testing.assert_array_equal(merged[1], (masks[0] >= 0.5) | (masks[1] >= 0.5))
    assert not merged[0].any() and not merged[2].any()


def test_instances_go_to_their_own_class() -> None:
    masks = np.stack(
        [_box((4, 4), slice(0, 1), slice(0, 4)), _box((4, 4), slice(3, 4), slice(0, 4))]
    )
    merged = merge_instances(masks, [0.9, 0.9], [2, 0], score_thresholds=[0.5] * 3)
    np.testing.assert_array_equal(merged[2], masks[0] > 0)
    np.testing.assert_array_equal(merged[0], masks[1] > 0)
    assert not merged[1].any()


def test_score_thresholds_are_per_class_and_inclusive() -> None:
    masks = np.stack([_box((4, 4), slice(0, 2), slice(0, 2))] * 3)
    scores = [0.4, 0.4, 0.7]
    classes = [0, 1, 2]
    merged = merge_instances(masks, scores, classes, score_thresholds=[0.3, 0.4, 0.8])
    assert merged[0].any()  # 0.4 >= 0.3
    assert merged[1].any()  # 0.4 >= 0.4: the threshold itself is kept
    assert not merged[2].any()  # 0.7 < 0.8


def test_mask_threshold_binarizes_probabilities() -> None:
    probabilities = np.array([[[0.2, 0.5, 0.49, 0.9]]], dtype=np.float32)
    low = merge_instances(probabilities, [1.0], [0], [0.5] * 3, mask_threshold=0.5)
    assert low[0].tolist() == [[False, True, False, True]]
    high = merge_instances(probabilities, [1.0], [0], [0.5] * 3, mask_threshold=0.9)
    assert high[0].tolist() == [[False, False, False, True]]


def test_bool_and_integer_masks_are_used_as_they_are() -> None:
    binary = np.array([[[True, False, True]]])
    merged = merge_instances(binary, [1.0], [1], [0.5] * 3, mask_threshold=0.99)
    assert merged[1].tolist() == [[True, False, True]]
    integer = np.array([[[0, 1, 255]]], dtype=np.uint8)
    merged = merge_instances(integer, [1.0], [1], [0.5] * 3, mask_threshold=0.99)
    assert merged[1].tolist() == [[False, True, True]]


def test_min_area_counts_binarized_pixels() -> None:
    small = _box((5, 5), slice(0, 2), slice(0, 2), value=0.9)  # 4 pixels
    faint = _box((5, 5), slice(0, 5), slice(0, 5), value=0.3)  # 25 pixels, all below 0.5
    faint[4, 4] = 0.8  # one pixel above
    masks = np.stack([small, faint])
    merged = merge_instances(masks, [1.0, 1.0], [0, 1], [0.5] * 3, min_area=4)
    assert merged[0].sum() == 4  # exactly min_area: kept
    assert not merged[1].any()  # binarized area 1 < 4, though its soft area is large
    merged = merge_instances(masks, [1.0, 1.0], [0, 1], [0.5] * 3, min_area=5)
    assert not merged[0].any()


def test_no_instances_gives_empty_masks() -> None:
    merged = merge_instances(np.zeros((0, 7, 9), np.float32), [], [], [0.5] * 3)
    assert merged.shape == (3, 7, 9)
    assert not merged.any()
    merged = merge_instances(np.zeros((0,)), [], [], [0.5] * 3, image_shape=(7, 9))
    assert merged.shape == (3, 7, 9)
    assert not merged.any()
    with pytest.raises(ValueError, match="N, H, W"):
        merge_instances(np.zeros((0,)), [], [], [0.5] * 3)


def test_num_classes_sets_the_channels() -> None:
    masks = np.ones((1, 2, 2), dtype=bool)
    merged = merge_instances(masks, [1.0], [4], [0.0] * 5, num_classes=5)
    assert merged.shape == (5, 2, 2)
    assert merged[4].all() and not merged[:4].any()


def test_merge_rejects_inconsistent_input() -> None:
    masks = np.ones((2, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="lengths"):
        merge_instances(masks, [1.0], [0], [0.5] * 3)
    with pytest.raises(ValueError, match="thresholds"):
        merge_instances(masks, [1.0, 1.0], [0, 0], [0.5] * 2)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        merge_instances(masks, [1.0, 1.0], [0, 3], [0.5] * 3)
    with pytest.raises(ValueError, match="integers"):
        merge_instances(masks, [1.0, 1.0], [0.0, 1.0], [0.5] * 3)
    with pytest.raises(ValueError, match="image_shape"):
        merge_instances(masks, [1.0, 1.0], [0, 0], [0.5] * 3, image_shape=(4, 3))


def test_single_slice_components_are_removed_multi_slice_kept() -> None:
    volume = np.zeros((6, 10, 10), dtype=bool)
    volume[1:4, 1:3, 1:3] = True  # spans three slices: kept
    volume[2, 7:9, 7:9] = True  # one slice only: removed
    volume[5, 0, 9] = True  # a single voxel on the last slice: removed
    volume[4, 6, 0] = volume[5, 7, 1] = True  # diagonal (corner) neighbours over two slices: kept
    cleaned = remove_single_slice_components(volume)
    assert cleaned.dtype == np.bool_
    expected = np.zeros_like(volume)
    expected[1:4, 1:3, 1:3] = True
    expected[4, 6, 0] = expected[5, 7, 1] = True
    np.testing.assert_array_equal(cleaned, expected)
    assert volume[2, 7, 7]  # the input is not modified


def test_single_slice_cleanup_edge_cases() -> None:
    assert not remove_single_slice_components(np.zeros((3, 4, 4), dtype=np.uint8)).any()
    flat = np.ones((1, 4, 4), dtype=np.uint8)
    assert not remove_single_slice_components(flat).any()  # every component spans one slice
    full = np.ones((2, 4, 4), dtype=np.uint8)
    assert remove_single_slice_components(full).all()
    with pytest.raises(ValueError, match="D, H, W"):
        remove_single_slice_components(np.ones((4, 4)))


class TestClassProbabilityMaps:
    """The soft merge: its cut at the mask threshold is merge_instances, for any instances."""

    def test_cut_equals_merge_instances_on_random_instances(self):
        from uwm_d2.core.merge import class_probability_maps

        rng = np.random.default_rng(7)
        for _ in range(20):
            count = int(rng.integers(0, 6))
            masks = rng.random((count, 12, 9)).astype(np.float32)
            scores = rng.random(count)
            classes = rng.integers(0, 3, count)
            args = (masks, scores, classes, (0.3, 0.5, 0.7), 0.6, 20)
            maps = class_probability_maps(*args, image_shape=(12, 9))
            assert maps.shape == (3, 12, 9) and maps.dtype == np.float32
            np.testing.assert_array_equal(maps >= 0.6, merge_instances(*args, image_shape=(12, 9)))

    def test_map_is_the_max_of_kept_instances_only(self):
        from uwm_d2.core.merge import class_probability_maps

        masks = np.array([[[0.9, 0.2]], [[0.4, 0.8]], [[1.0, 1.0]]], dtype=np.float32)
        maps = class_probability_maps(
            masks, np.array([0.9, 0.9, 0.1]), np.array([1, 1, 1]), (0.5, 0.5, 0.5)
        )
        np.testing.assert_allclose(maps[1], [[0.9, 0.8]])  # third instance's score is too low
        assert not maps[0].any() and not maps[2].any()
