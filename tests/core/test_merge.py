"""Tests of the instance → per-class merge rule and the 3D clean-up (uwm_d2.core.merge)."""

from __future__ import annotations

import numpy as np
import pytest

from uwm_d2.core.merge import MergeRule, remove_single_slice_components


def merge_instances(
    masks, scores, classes, score_thresholds, mask_threshold=0.5, min_area=0, image_shape=None
):
    """The rule's instance merge, spelt as a function for the table-like tests below."""
    rule = MergeRule(tuple(score_thresholds), mask_threshold, min_area)
    return rule.merge_instances(masks, scores, classes, image_shape=image_shape)


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


def test_the_number_of_thresholds_sets_the_channels() -> None:
    masks = np.ones((1, 2, 2), dtype=bool)
    merged = merge_instances(masks, [1.0], [4], [0.0] * 5)
    assert merged.shape == (5, 2, 2)
    assert merged[4].all() and not merged[:4].any()


def test_merge_rejects_inconsistent_input() -> None:
    masks = np.ones((2, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="lengths"):
        merge_instances(masks, [1.0], [0], [0.5] * 3)
    with pytest.raises(ValueError, match="threshold"):
        merge_instances(masks, [1.0, 1.0], [0, 0], [])
    with pytest.raises(ValueError, match="mask_threshold"):
        merge_instances(masks, [1.0, 1.0], [0, 0], [0.5] * 3, mask_threshold=0.0)
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
        rng = np.random.default_rng(7)
        for _ in range(20):
            count = int(rng.integers(0, 6))
            masks = rng.random((count, 12, 9)).astype(np.float32)
            scores = rng.random(count)
            classes = rng.integers(0, 3, count)
            rule = MergeRule((0.3, 0.5, 0.7), mask_threshold=0.6, min_area=20)
            maps = rule.instance_maps(masks, scores, classes, image_shape=(12, 9))
            assert maps.shape == (3, 12, 9) and maps.dtype == np.float32
            # The independent hard form: union of each class's kept, binarized instances (on
            # the 8-bit grid, where the rule cuts: round(255 p) >= 153 is p >= 0.6 there).
            binary = np.rint(masks.astype(np.float64) * 255) >= 153
            kept = (scores >= np.array([0.3, 0.5, 0.7])[classes]) & (
                binary.reshape(count, 12 * 9).sum(axis=1) >= 20
            )
            expected = np.zeros((3, 12, 9), dtype=bool)
            for index in np.flatnonzero(kept):
                expected[classes[index]] |= binary[index]
            np.testing.assert_array_equal(rule.binarize(maps), expected)
            np.testing.assert_array_equal(
                rule.merge_instances(masks, scores, classes, image_shape=(12, 9)), expected
            )

    def test_map_is_the_max_of_kept_instances_only(self):
        masks = np.array([[[0.9, 0.2]], [[0.4, 0.8]], [[1.0, 1.0]]], dtype=np.float32)
        maps = MergeRule().instance_maps(masks, np.array([0.9, 0.9, 0.1]), np.array([1, 1, 1]))
        np.testing.assert_allclose(maps[1], [[0.9, 0.8]])  # third instance's score is too low
        assert not maps[0].any() and not maps[2].any()


class TestVolumeMasks:
    """Probability maps of a whole case-day → masks: the cut, then the optional 3D clean-up."""

    def test_cut_then_cleanup_per_class(self):
        maps = np.zeros((4, 3, 6, 6), dtype=np.float32)
        maps[0:3, 0, 1:3, 1:3] = 0.8  # three slices deep: kept by the clean-up
        maps[2, 1, 4, 4] = 0.9  # one slice only: removed by the clean-up
        maps[1, 2, 0, 0] = 0.4  # below the cut
        plain = MergeRule().volume_masks(maps)
        np.testing.assert_array_equal(plain, maps >= 0.5)
        cleaned = MergeRule(cleanup_3d=True).volume_masks(maps)
        assert cleaned[0:3, 0, 1:3, 1:3].all() and cleaned[:, 0].sum() == 12
        assert not cleaned[:, 1].any() and not cleaned[:, 2].any()

    def test_from_cfg_reads_the_eval_keys(self):
        from types import SimpleNamespace

        settings = SimpleNamespace(
            SCORE_THRESHOLDS=(0.1, 0.2, 0.3),
            MASK_THRESHOLD=0.4,
            MIN_AREA=7,
            CLEANUP_3D=True,
            SEMANTIC_WEIGHT=0.25,
        )
        rule = MergeRule.from_cfg(SimpleNamespace(UWM=SimpleNamespace(EVAL=settings)))
        assert rule == MergeRule((0.1, 0.2, 0.3), 0.4, 7, True, 0.25)
        assert rule.as_dict()["score_thresholds"] == [0.1, 0.2, 0.3]


def test_combine_weighs_the_kinds_of_one_model() -> None:
    instances = np.full((3, 2, 2), 0.2, dtype=np.float32)
    semantic = np.full((3, 2, 2), 0.6, dtype=np.float32)
    rule = MergeRule(semantic_weight=0.25)
    np.testing.assert_allclose(rule.combine(instances, semantic), 0.75 * 0.2 + 0.25 * 0.6)
    np.testing.assert_array_equal(rule.combine(instances=instances), instances)
    np.testing.assert_array_equal(rule.combine(semantic=semantic), semantic)
    with pytest.raises(ValueError, match="differ"):
        rule.combine(instances, semantic[:, :1])
    with pytest.raises(ValueError, match="semantic_weight"):
        MergeRule(semantic_weight=1.5)


def test_a_rule_written_as_a_dict_reads_back_equal() -> None:
    rule = MergeRule((0.1, 0.2, 0.3), mask_threshold=0.4, min_area=7, cleanup_3d=True)
    assert MergeRule.from_dict(rule.as_dict()) == rule
    assert MergeRule.from_dict({}) == MergeRule()


def test_an_unknown_rule_setting_is_named() -> None:
    with pytest.raises(ValueError, match="'mask_cut'"):
        MergeRule.from_dict({"mask_cut": 0.5})
