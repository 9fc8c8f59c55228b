"""The rule search (uwm_d2.crossval): exact building blocks, planted rules, the CV estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.merge_steps import ClassRule, cut_level, quantize, smooth_z
from uwm_d2.core.readings import tally_case_day
from uwm_d2.crossval.candidates import class_masks, dice_counts_at_every_cut
from uwm_d2.crossval.search import SearchGrid, search_rule
from uwm_d2.crossval.sources import OofSource
from uwm_d2.crossval.synthetic import SyntheticScan, write_synthetic

from .planted import case_day, organ_volume, stray_volume, write_planted

#: Only the 3D span is searched: what a planted stray needs, nothing else moves.
SPAN_ONLY = SearchGrid(
    z_smoothing=(0.0,),
    mask_threshold=(0.5,),
    slice_min_pixels=(0,),
    slice_min_peak=(0.0,),
    min_component_2d=(0,),
    min_slices_3d=(1, 2, 3, 4),
    keep_largest_3d=(False,),
    rounds=1,
)


def test_dice_at_every_cut_equals_cutting_the_map() -> None:
    rng = np.random.default_rng(2)
    grid = rng.integers(0, 256, size=(5, 9, 7)).astype(np.uint8)
    grid[1] = 0  # an empty slice
    truth = rng.random((5, 9, 7)) < 0.3
    intersection, total = dice_counts_at_every_cut(grid, truth)
    assert intersection.shape == total.shape == (5, 257)
    for level in (0, 1, 77, 128, 255, 256):
        mask = grid >= level
        np.testing.assert_array_equal(intersection[:, level], (mask & truth).sum(axis=(1, 2)))
        np.testing.assert_array_equal(total[:, level], mask.sum(axis=(1, 2)) + truth.sum((1, 2)))


def test_shared_steps_give_each_rule_its_own_masks() -> None:
    rng = np.random.default_rng(4)
    grid = quantize(rng.random((8, 20, 18)).astype(np.float32) ** 2)
    rules = [
        ClassRule(mask_threshold=t, z_smoothing=w, slice_min_pixels=n, min_component_2d=m,
                  min_slices_3d=k, keep_largest_3d=largest)
        for t in (0.3, 0.5) for w in (0.0, 0.5) for n in (0, 40) for m in (0, 3)
        for k in (1, 3) for largest in (False, True)
    ]  # fmt: skip
    seen = 0
    for rule, mask, cut_only, _ in class_masks(grid, rules):
        np.testing.assert_array_equal(mask, rule.masks(grid))
        if cut_only:  # nothing after the cut changed the mask: the histogram Dice applies
            cut = smooth_z(grid, rule.z_smoothing) >= cut_level(rule.mask_threshold)
            np.testing.assert_array_equal(mask, cut)
        seen += 1
    assert seen == len(rules)


def _stray_days() -> dict:
    """Organs over 6 slices, and in some case-days a stray blob over 2 slices."""
    days = {}
    for index in range(6):
        stray = stray_volume(2 * (index % 3), 2) if index % 2 == 0 else None
        truth, maps = case_day(organ_volume(2, 6), stray)
        days[f"case{index + 1}_day0"] = (truth, maps, index % 3)
    return days


def test_the_search_finds_a_planted_3d_span_and_never_loses(tmp_path: Path) -> None:
    oof, labels = write_planted(tmp_path, _stray_days())
    result = search_rule([oof], labels, MergeRule(), reading="project", grid=SPAN_ONLY)
    # Span 2 keeps the 2-slice strays; span 3 is the first that removes them (4 is no better).
    assert result.chosen.min_slices_3d == 3 and not result.chosen.cleanup_3d
    assert result.summary("default")["score"] < 1.0
    assert result.summary("chosen")["score"] == pytest.approx(1.0)
    for fold, rule in result.fold_rules.items():
        assert rule.min_slices_3d == 3, fold  # every fold's complement holds strays


@pytest.mark.parametrize("reading", ["project", "competition", "mlebench"])
def test_the_chosen_rule_never_scores_below_the_default(tmp_path: Path, reading: str) -> None:
    scans = [SyntheticScan(case, 0, 12, 24, 20, case % 2) for case in range(1, 5)]
    oof, labels = write_synthetic(tmp_path, scans, seed=3)
    grid = SearchGrid(
        z_smoothing=(0.0, 0.5),
        mask_threshold=(0.4, 0.6),
        slice_min_pixels=(0, 20),
        slice_min_peak=(0.0,),
        min_component_2d=(0, 10),
        min_slices_3d=(1, 3),
        keep_largest_3d=(False, True),
        rounds=1,
    )
    default = MergeRule(mask_threshold=0.45, cleanup_3d=True)  # off the grid: tried anyway
    result = search_rule([oof], labels, default, reading=reading, grid=grid)
    before = result.summary("default")["score"]
    after = result.summary("chosen")["score"]
    assert after >= before
    # The report's default is the config's rule, scored through MergeRule.volume_masks.
    folder = OofSource.open([oof])
    first = folder.case_days[0]
    _, maps = folder.read(first)
    assert result.tallies[first]["default"][reading] == _tally(reading, default, maps, tmp_path)


def _tally(reading: str, rule: MergeRule, maps: np.ndarray, root: Path):
    """The tally of the first synthetic case-day under ``rule``, computed directly."""
    import pandas as pd

    from uwm_d2.core.rle import rle_decode

    labels = pd.read_csv(root / "train.csv", keep_default_na=False)
    masks = rule.volume_masks(maps)
    pairs = {}
    for class_index, name in enumerate(CLASSES):
        rows = labels[(labels["class"] == name) & labels["id"].str.startswith("case1_day0_")]
        truth = np.stack([rle_decode(rle, maps.shape[2:]) for rle in rows["segmentation"]])
        pairs[name] = (masks[:, class_index], truth.astype(bool))
    return tally_case_day(reading, pairs)


def test_the_cross_validated_estimate_applies_each_folds_rule_to_it(tmp_path: Path) -> None:
    """Fold 0 has 2-slice strays next to long organs; fold 1 has 2-slice organs and no strays.

    Chosen on fold 1 alone, the rule keeps span 1 (nothing to gain) and leaves fold 0's strays;
    chosen on fold 0 alone, it takes span 3 and deletes fold 1's organs. The estimate is those
    two applications summed, below the in-sample score.
    """
    days = {}
    for index in range(3):
        truth, maps = case_day(organ_volume(1, 6), stray_volume(8, 2))
        days[f"case{index + 1}_day0"] = (truth, maps, 0)
        truth, maps = case_day(organ_volume(3, 2), None)
        days[f"case{index + 11}_day0"] = (truth, maps, 1)
    oof, labels = write_planted(tmp_path, days)
    result = search_rule([oof], labels, MergeRule(), reading="project", grid=SPAN_ONLY)
    assert result.fold_rules[0].min_slices_3d == 1  # chosen without fold 0
    assert result.fold_rules[1].min_slices_3d == 3  # chosen without fold 1
    expected = 0
    for name, (truth, maps, fold) in days.items():
        rule = MergeRule(min_slices_3d=1 if fold == 0 else 3)
        masks = rule.volume_masks(maps)
        pairs = {c: (masks[:, i], truth[:, i]) for i, c in enumerate(CLASSES)}
        expected = expected + tally_case_day("project", pairs, name)
    estimate, expected = result.summary("cross_validated"), expected.summary()
    for key in ("score", "dice", "hausdorff", "num_dice_rows", "num_hausdorff_volumes"):
        assert estimate[key] == pytest.approx(expected[key])
    assert estimate["score"] < result.summary("chosen")["score"]
    assert estimate["score"] < result.summary("default")["score"]


def test_sources_must_agree_and_average_by_weight(tmp_path: Path) -> None:
    days = _stray_days()
    first, _ = write_planted(tmp_path, days, name="a")
    halved = {name: (truth, maps * 0.5, fold) for name, (truth, maps, fold) in days.items()}
    second, _ = write_planted(tmp_path, halved, name="b")
    source = OofSource.open([first, second], [3, 1])
    _, maps = source.read("case1_day0")
    expected = np.rint(
        0.75 * quantize(days["case1_day0"][1]) + 0.25 * quantize(halved["case1_day0"][1])
    )
    np.testing.assert_array_equal(maps, expected.astype(np.uint8))
    fewer = dict(list(days.items())[:-1])
    third, _ = write_planted(tmp_path, fewer, name="c")
    with pytest.raises(UWMInputError, match="hold other case-days"):
        OofSource.open([first, third])
    refolded = {name: (truth, maps, (fold + 1) % 3) for name, (truth, maps, fold) in days.items()}
    fourth, _ = write_planted(tmp_path, refolded, name="d")
    with pytest.raises(UWMInputError, match="differ in the folds of case1_day0"):
        OofSource.open([first, fourth])
    with pytest.raises(UWMInputError, match="one weight >= 0 per probability folder"):
        OofSource.open([first, second], [1])


def test_a_slice_without_truth_rows_is_named(tmp_path: Path) -> None:
    oof, labels = write_planted(tmp_path, _stray_days())
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(line for line in lines if "case2_day0_slice_0004" not in line))
    with pytest.raises(UWMInputError, match="no rows for slice case2_day0_slice_0004 of case2"):
        search_rule([oof], labels, MergeRule(), grid=SPAN_ONLY)


def test_a_case_days_tallies_travel_between_processes(tmp_path: Path) -> None:
    import pickle

    from uwm_d2.crossval.candidates import CaseDayJob, evaluate_case_day
    from uwm_d2.crossval.truth import TruthTable

    oof, labels = write_planted(tmp_path, _stray_days())
    source = OofSource.open([oof])
    rows = tuple(TruthTable(labels).rows("case1_day0", source.slice_ids("case1_day0")))
    items = ((0, ClassRule()), (1, ClassRule(min_slices_3d=3)))
    joint = ((ClassRule(),) * 3,)
    job = CaseDayJob(source, "case1_day0", rows, "train.csv", "project", items, joint)
    result = evaluate_case_day(pickle.loads(pickle.dumps(job)))
    back = pickle.loads(pickle.dumps(result))
    assert back.class_tallies == result.class_tallies and back.joint_tallies == result.joint_tallies
    assert back.class_tallies[items[1]].summary()["score"] == pytest.approx(1.0)
