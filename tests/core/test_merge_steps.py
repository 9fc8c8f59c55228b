"""Tests of the merge rule's volume steps (uwm_d2.core.merge_steps) and its per-class settings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from uwm_d2.core.merge import MergeRule, MergeRuleError
from uwm_d2.core.merge_steps import (
    ClassRule,
    cut_level,
    quantize,
    remove_single_slice_components,
    smooth_z,
)


def one_class(volume: np.ndarray) -> np.ndarray:
    """A ``(D, H, W)`` map as the ``(D, 3, H, W)`` maps of a case-day, in the first class."""
    maps = np.zeros((volume.shape[0], 3, *volume.shape[1:]), dtype=volume.dtype)
    maps[:, 0] = volume
    return maps


class TestGrid:
    def test_quantize_rounds_to_255_levels_and_clips(self):
        values = np.array([-0.2, 0.0, 0.001, 0.002, 0.5, 0.9999, 1.0, 1.7], dtype=np.float32)
        assert quantize(values).tolist() == [0, 0, 0, 1, 128, 255, 255, 255]
        grid = np.array([3, 250], dtype=np.uint8)
        assert quantize(grid) is grid
        with pytest.raises(ValueError, match="uint8"):
            quantize(np.array([1], dtype=np.int32))

    def test_cut_level_is_the_smallest_grid_value_reaching_the_cut(self):
        assert cut_level(0.5) == 128
        assert cut_level(0.4) == 102  # 102 / 255 == 0.4 exactly
        assert cut_level(102.5 / 255) == 103
        assert cut_level(1.0) == 255

    def test_the_grid_changes_nothing_at_the_cut_one_half(self):
        below = np.nextafter(np.float32(0.5), np.float32(0))
        values = np.array([below, 0.5, np.nextafter(np.float32(0.5), np.float32(1))], np.float32)
        assert (quantize(values) >= cut_level(0.5)).tolist() == [False, True, True]

    def test_float_and_8_bit_maps_give_the_same_masks(self):
        rng = np.random.default_rng(3)
        maps = rng.random((9, 3, 16, 12)).astype(np.float32) ** 3
        rule = MergeRule(
            mask_threshold=(0.3, 0.45, 0.6),
            z_smoothing=(0.5, 0.0, 1.0),
            slice_min_pixels=(0, 10, 3),
            min_component_2d=(4, 0, 2),
            min_slices_3d=(2, 3, 1),
            keep_largest_3d=(False, True, False),
        )
        np.testing.assert_array_equal(rule.volume_masks(maps), rule.volume_masks(quantize(maps)))


def test_defaults_are_the_plain_cut_and_cleanup_3d_on_random_maps() -> None:
    rng = np.random.default_rng(11)
    maps = rng.random((7, 3, 20, 18)).astype(np.float32)
    maps[2, 1, 3, 3] = np.nextafter(np.float32(0.5), np.float32(0))
    np.testing.assert_array_equal(MergeRule().volume_masks(maps), maps >= 0.5)
    old_cleanup = np.stack(
        [remove_single_slice_components(maps[:, c] >= 0.5) for c in range(3)], axis=1
    )
    np.testing.assert_array_equal(MergeRule(cleanup_3d=True).volume_masks(maps), old_cleanup)


class TestSteps:
    def test_smoothing_averages_neighbours_with_fewer_at_the_ends(self):
        column = np.array([0, 90, 30, 200], dtype=np.uint8).reshape(4, 1, 1)
        smoothed = smooth_z(column, 0.5).reshape(-1).tolist()
        # First: (0 + 0.5*90) / 1.5 = 30; inner: (90 + 0.5*(0+30)) / 2 = 52.5 -> 52 (half to
        # even); (30 + 0.5*(90+200)) / 2 = 87.5 -> 88; last: (200 + 0.5*30) / 1.5 = 143.33 -> 143.
        assert smoothed == [30, 52, 88, 143]
        assert smooth_z(column[:1], 1.0).reshape(-1).tolist() == [0]  # no neighbour at all
        assert smooth_z(column, 0.0) is column

    def test_smoothing_removes_a_one_slice_blip_before_the_cut(self):
        volume = np.zeros((5, 4, 4), dtype=np.float32)
        volume[2, 1:3, 1:3] = 0.7  # alone on its slice: (0.7) / 2 = 0.35 after smoothing
        volume[0:5, 0, 0] = 0.9  # through every slice: stays above the cut
        masks = MergeRule(z_smoothing=(1.0, 0.0, 0.0)).volume_masks(one_class(volume))[:, 0]
        assert not masks[2, 1:3, 1:3].any()
        assert masks[:, 0, 0].all()

    def test_gate_needs_enough_pixels_and_a_high_enough_peak(self):
        volume = np.zeros((3, 6, 6), dtype=np.uint8)
        volume[0, :2, :2] = 200  # 4 pixels, peak 200
        volume[1, :3, :3] = 140  # 9 pixels, peak 140
        volume[2, :3, :3] = 140
        volume[2, 5, 5] = 240  # 10 pixels, peak 240
        gated = ClassRule(slice_min_pixels=5).masks(volume)
        assert gated.reshape(3, -1).sum(axis=1).tolist() == [0, 9, 10]
        peaked = ClassRule(slice_min_peak=0.75).masks(volume)  # 0.75 -> level 192
        assert peaked.reshape(3, -1).sum(axis=1).tolist() == [4, 0, 10]
        both = ClassRule(slice_min_pixels=5, slice_min_peak=0.75).masks(volume)
        assert both.reshape(3, -1).sum(axis=1).tolist() == [0, 0, 10]

    def test_small_2d_components_are_removed_8_connected(self):
        volume = np.zeros((1, 8, 8), dtype=np.uint8)
        volume[0, :3, :3] = 255  # 9 pixels
        volume[0, 5, 5] = volume[0, 6, 6] = 255  # 2 pixels, diagonal: one 8-connected component
        kept = ClassRule(min_component_2d=3).masks(volume)[0]
        assert kept[:3, :3].all() and kept.sum() == 9
        assert ClassRule(min_component_2d=2).masks(volume)[0].sum() == 11

    def test_short_3d_components_are_removed_by_their_span(self):
        volume = np.zeros((6, 8, 8), dtype=np.uint8)
        volume[0:4, 0:2, 0:2] = 255  # 4 slices
        volume[2:4, 5:7, 5:7] = 255  # 2 slices
        volume[5, 0, 7] = 255  # a stray single-slice voxel
        spans = {k: ClassRule(min_slices_3d=k).masks(volume) for k in (1, 2, 3, 5)}
        assert spans[1].sum() == 16 + 8 + 1
        assert spans[2].sum() == 16 + 8  # the stray voxel goes
        assert spans[3].sum() == 16  # the 2-slice blob goes too
        assert spans[5].sum() == 0

    def test_keep_largest_keeps_the_biggest_surviving_component(self):
        volume = np.zeros((4, 10, 10), dtype=np.uint8)
        volume[0, 0:5, 0:5] = 255  # 25 voxels on one slice
        volume[1:4, 7:9, 7:9] = 255  # 12 voxels over three slices
        largest = ClassRule(keep_largest_3d=True).masks(volume)
        assert largest.sum() == 25 and largest[0, 0, 0]
        # Short components go first, so the largest one left is the 3-slice blob.
        both = ClassRule(min_slices_3d=2, keep_largest_3d=True).masks(volume)
        assert both.sum() == 12 and both[1, 7, 7]
        assert not ClassRule(keep_largest_3d=True).masks(np.zeros((2, 3, 3), np.uint8)).any()


class TestSettings:
    def test_per_class_values_apply_to_their_class_only(self):
        volume = np.zeros((3, 5, 5), dtype=np.float32)
        volume[1, 2, 2] = 0.9  # a one-slice blob in every class
        maps = np.repeat(volume[:, None], 3, axis=1)
        masks = MergeRule(min_slices_3d=(1, 2, 1)).volume_masks(maps)
        assert masks[:, 0].any() and not masks[:, 1].any() and masks[:, 2].any()

    def test_one_value_and_equal_per_class_values_are_the_same_rule(self):
        assert MergeRule(z_smoothing=(0.5, 0.5, 0.5)) == MergeRule(z_smoothing=0.5)
        assert MergeRule(z_smoothing=[0.5]).z_smoothing == 0.5
        rule = MergeRule().with_class(1, min_slices_3d=3, keep_largest_3d=True)
        assert rule.min_slices_3d == (1, 3, 1) and rule.keep_largest_3d == (False, True, False)
        assert rule.class_rule(1) == ClassRule(min_slices_3d=3, keep_largest_3d=True)

    def test_cleanup_3d_is_at_least_two_slices_for_every_class(self):
        rule = MergeRule(cleanup_3d=True, min_slices_3d=(1, 3, 2))
        assert [rule.class_rule(c).min_slices_3d for c in range(3)] == [2, 3, 2]

    def test_a_tuned_rule_reads_back_equal_from_a_dict_and_from_yaml(self):
        rule = MergeRule(
            (0.1, 0.2, 0.3),
            mask_threshold=(0.35, 0.5, 0.45),
            min_area=4,
            z_smoothing=(0.25, 0.0, 0.5),
            slice_min_pixels=(0, 12, 0),
            slice_min_peak=(0.0, 0.0, 0.6),
            min_component_2d=(25, 0, 50),
            min_slices_3d=(3, 2, 1),
            keep_largest_3d=(False, False, True),
        )
        assert MergeRule.from_dict(rule.as_dict()) == rule
        assert MergeRule.from_dict(yaml.safe_load(yaml.safe_dump(rule.as_dict()))) == rule
        assert rule.as_dict()["mask_threshold"] == [0.35, 0.5, 0.45]
        assert MergeRule().as_dict()["z_smoothing"] == 0.0

    @pytest.mark.parametrize(
        ("settings", "match"),
        [
            ({"z_smoothing": 1.5}, r"^z_smoothing must be a number in \[0, 1\], got 1.5$"),
            ({"mask_threshold": (0.5, 0.0, 0.5)}, r"^mask_threshold must be a number in \(0, 1\]"),
            ({"slice_min_pixels": -1}, r"^slice_min_pixels must be an integer >= 0"),
            ({"min_component_2d": 2.5}, r"^min_component_2d must be an integer"),
            ({"min_slices_3d": 0}, r"^min_slices_3d must be an integer >= 1"),
            ({"keep_largest_3d": "yes"}, r"^keep_largest_3d must be true or false"),
            ({"slice_min_peak": (0.1, 0.2)}, r"^slice_min_peak needs 1 value or 3"),
        ],
        ids=["smoothing", "cut", "pixels", "component", "slices", "largest", "count"],
    )
    def test_bad_settings_are_one_line_errors_naming_them(self, settings, match):
        with pytest.raises(MergeRuleError, match=match) as caught:
            MergeRule(**settings)
        assert "\n" not in str(caught.value)

    def test_from_cfg_reads_the_new_keys_and_names_a_bad_one(self):
        settings = SimpleNamespace(
            SCORE_THRESHOLDS=(0.5,) * 3,
            MASK_THRESHOLD=0.5,
            MASK_THRESHOLDS=(0.4, 0.5, 0.6),
            Z_SMOOTHING=(0.5, 0.5, 0.5),
            MIN_SLICES_3D=(2, 3, 1),
            KEEP_LARGEST_3D=(False, True, False),
        )
        cfg = SimpleNamespace(UWM=SimpleNamespace(EVAL=settings))
        rule = MergeRule.from_cfg(cfg)
        assert rule.mask_threshold == (0.4, 0.5, 0.6) and rule.z_smoothing == 0.5
        assert rule.min_slices_3d == (2, 3, 1)
        settings.MIN_SLICES_3D = (2, 0, 1)
        with pytest.raises(ValueError, match=r"^UWM\.EVAL\.MIN_SLICES_3D must be an integer"):
            MergeRule.from_cfg(cfg)
        settings.MIN_SLICES_3D, settings.MASK_THRESHOLDS = (1, 1, 1), (0.4, 2.0, 0.5)
        with pytest.raises(ValueError, match=r"^UWM\.EVAL\.MASK_THRESHOLDS must be"):
            MergeRule.from_cfg(cfg)

    def test_per_class_cuts_need_the_class_axis_to_binarize(self):
        rule = MergeRule(mask_threshold=(0.2, 0.5, 0.8))
        maps = np.full((3, 2, 2), 0.6, dtype=np.float32)
        assert rule.binarize(maps)[:, 0, 0].tolist() == [True, True, False]
        with pytest.raises(ValueError, match="per-class cuts"):
            rule.binarize(np.zeros((2, 2), np.float32))


def test_3d_steps_on_the_bounding_box_equal_labelling_the_whole_volume() -> None:
    from scipy import ndimage

    from uwm_d2.core.merge_steps import filter_components_3d

    rng = np.random.default_rng(9)
    for _ in range(10):
        volume = np.zeros((9, 30, 28), dtype=bool)
        volume[2:8, 5:20, 6:20] = rng.random((6, 15, 14)) < 0.3
        labels, count = ndimage.label(volume, structure=np.ones((3, 3, 3)))
        spans = [box[0].stop - box[0].start for box in ndimage.find_objects(labels)]
        sizes = np.bincount(labels.ravel())[1:]
        for k, largest in ((3, False), (1, True), (2, True)):
            keep = np.array(spans) >= k
            if largest and keep.any():
                best = int(np.argmax(np.where(keep, sizes, -1)))
                keep = np.arange(count) == best
            expected = np.concatenate([[False], keep])[labels]
            np.testing.assert_array_equal(filter_components_3d(volume, k, largest), expected)
