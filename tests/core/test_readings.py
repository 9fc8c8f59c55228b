"""Tests of the named readings of the metric (uwm_d2.core.readings) against brute force.

Each reading is checked against a reference written here from its definition alone: Dice rows by
explicit sums, Hausdorff by ``scipy.spatial.distance.directed_hausdorff`` on every voxel's
coordinates, MLE-bench's column-major scrambling by moving pixels one at a time.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

from uwm_d2.core.readings import (
    COMPETITION,
    DEFAULT_READING,
    MLEBENCH,
    PROJECT,
    READINGS,
    Reading,
    ReadingTally,
    column_major_layout,
    resolve_readings,
    score_readings,
    tally_case_day,
)


def brute_hausdorff(pred: np.ndarray, truth: np.ndarray, scale: np.ndarray) -> float:
    p = np.argwhere(pred) * scale
    g = np.argwhere(truth) * scale
    return max(directed_hausdorff(p, g)[0], directed_hausdorff(g, p)[0])


def reference_term(reading: str, pred: np.ndarray, truth: np.ndarray) -> float:
    """The Hausdorff term of one volume under a reading, from its definition."""
    p_any, g_any = bool(pred.any()), bool(truth.any())
    if not p_any and not g_any:
        return math.nan if reading == "mlebench" else 0.0
    if p_any != g_any:
        return 1.0
    if reading == "mlebench":
        if np.array_equal(pred, truth):
            return 0.0
        if pred.sum() > 10 * truth.sum():
            return 1.0
    if reading == "project":
        diagonal = math.sqrt(sum(side * side for side in pred.shape))
        return min(brute_hausdorff(pred, truth, np.ones(3)) / diagonal, 1.0)
    return brute_hausdorff(pred, truth, 1.0 / np.array(pred.shape)) / math.sqrt(3)


def reference_dice_rows(reading: str, pred: np.ndarray, truth: np.ndarray) -> list[float]:
    both_empty = {"project": 1.0, "competition": 0.0, "mlebench": math.nan}[reading]
    rows = []
    for p, g in zip(pred, truth, strict=True):
        total = int(p.sum()) + int(g.sum())
        rows.append(both_empty if total == 0 else 2.0 * int((p & g).sum()) / total)
    return rows


def scrambled(volume: np.ndarray) -> np.ndarray:
    """Column-major reading of row-major slices, one pixel at a time."""
    depth, height, width = volume.shape
    out = np.zeros_like(volume)
    for z in range(depth):
        for y in range(height):
            for x in range(width):
                flat = y * width + x  # the pixel's number in the row-major string
                # A column-major decoder puts pixel number ``flat`` at row flat % H, column
                # flat // H of the (H, W) image.
                out[z, flat % height, flat // height] = volume[z, y, x]
    return out


def reference_scores(volumes: dict, reading: str) -> dict[str, float]:
    rows: list[float] = []
    terms: list[float] = []
    case_days = dict.fromkeys(case_day for case_day, _ in volumes)
    for case_day in case_days:
        pairs = [pair for (day, _), pair in volumes.items() if day == case_day]
        for pred, truth in pairs:
            rows += reference_dice_rows(reading, pred, truth)
            if reading != "mlebench":
                terms.append(reference_term(reading, pred, truth))
        if reading == "mlebench":
            pred = scrambled(np.logical_or.reduce([p for p, _ in pairs]))
            truth = scrambled(np.logical_or.reduce([g for _, g in pairs]))
            terms.append(reference_term(reading, pred, truth))
    dice = float(np.nanmean(rows)) if not np.isnan(rows).all() else None
    hausdorff = float(np.nanmean(terms)) if not np.isnan(terms).all() else None
    score = None if dice is None else 0.4 * dice + 0.6 * (1 - hausdorff)
    return {"score": score, "dice": dice, "hausdorff": hausdorff}


def _random_volumes(rng: np.random.Generator, shape: tuple[int, int, int]) -> dict:
    volumes = {}
    for case in range(3):
        for name in ("large_bowel", "small_bowel", "stomach"):
            truth = ndimage.binary_dilation(rng.random(shape) < 0.015)
            pred = np.roll(truth, tuple(rng.integers(-1, 2, size=3)), axis=(0, 1, 2))
            pred |= rng.random(shape) < 0.004  # scattered false positives
            volumes[(f"case{case}_day{case + 2}", name)] = (pred, truth)
    return volumes


# ---------------------------------------------------------------- registry


def test_registry_names_and_resolution() -> None:
    assert list(READINGS) == ["project", "competition", "mlebench"]
    assert DEFAULT_READING == "project"
    assert READINGS["project"] is PROJECT
    assert resolve_readings("all") == (PROJECT, COMPETITION, MLEBENCH)
    assert resolve_readings("mlebench") == (MLEBENCH,)
    assert resolve_readings(["competition", "all", "competition"]) == (
        COMPETITION,
        PROJECT,
        MLEBENCH,
    )
    custom = Reading("strict", "test", 0.0, True, True, 0.0)
    assert resolve_readings([custom, "project"]) == (custom, PROJECT)
    with pytest.raises(ValueError, match="unknown reading 'kaggle'"):
        resolve_readings(["project", "kaggle"])
    with pytest.raises(ValueError, match="no reading"):
        resolve_readings([])
    with pytest.raises(TypeError):
        READINGS["mine"] = custom  # type: ignore[index]


def test_column_major_layout_by_hand() -> None:
    # One 2 x 3 slice (H=2, W=3) whose row-major pixels are numbered 0..5.
    volume = np.arange(6).reshape(1, 2, 3)
    # Column-major: pixel k goes to row k % 2, column k // 2.
    assert column_major_layout(volume).tolist() == [[[0, 2, 4], [1, 3, 5]]]
    square = np.arange(9).reshape(1, 3, 3)
    assert np.array_equal(column_major_layout(square), square.transpose(0, 2, 1))
    rng = np.random.default_rng(0)
    volume = rng.random((3, 7, 9)) < 0.3
    assert np.array_equal(column_major_layout(volume), scrambled(volume))


# ---------------------------------------------------------------- hand-computed cases


def test_one_case_day_by_hand() -> None:
    # (D, H, W) = (3, 4, 5): slice 0 holds a prediction voxel, slice 1 a truth voxel, slice 2 is
    # empty on both sides.
    pred = np.zeros((3, 4, 5), dtype=bool)
    truth = np.zeros((3, 4, 5), dtype=bool)
    pred[0, 0, 0] = True
    truth[1, 3, 4] = True
    volumes = {("case1_day0", "stomach"): (pred, truth)}
    result = score_readings(volumes, "all")["readings"]

    project_hd = math.sqrt(1 + 9 + 16) / math.sqrt(9 + 16 + 25)
    assert result["project"]["dice"] == pytest.approx((0 + 0 + 1) / 3)
    assert result["project"]["hausdorff"] == pytest.approx(project_hd)
    # Unit cube: the offset (1, 3, 4) becomes (1/3, 3/4, 4/5), then / sqrt(3).
    unit_hd = math.sqrt((1 / 3) ** 2 + (3 / 4) ** 2 + (4 / 5) ** 2) / math.sqrt(3)
    assert result["competition"]["dice"] == 0.0  # the empty slice counts 0
    assert result["competition"]["hausdorff"] == pytest.approx(unit_hd)
    assert result["competition"]["score"] == pytest.approx(0.6 * (1 - unit_hd))
    # MLE-bench: the empty slice is skipped; 1 pred voxel vs 1 truth voxel, no shortcut. The
    # slices are 4 x 5, so the column-major scrambling moves both voxels: pixel 0 stays at
    # (0, 0); row-major pixel 3 * 5 + 4 = 19 lands at (19 % 4, 19 // 4) = (3, 4).
    assert result["mlebench"]["dice"] == 0.0
    assert result["mlebench"]["num_dice_rows"] == 2
    assert result["mlebench"]["num_dice_rows_skipped"] == 1
    assert result["mlebench"]["hausdorff"] == pytest.approx(unit_hd)
    assert result["mlebench"]["num_hausdorff_shortcut"] == 0


def test_empty_volume_rules() -> None:
    empty = np.zeros((2, 3, 4), dtype=bool)
    some = empty.copy()
    some[1, 2, 3] = True
    for reading in (PROJECT, COMPETITION, MLEBENCH):
        assert reading.hausdorff(some, empty) == 1.0
        assert reading.hausdorff(empty, some) == 1.0
        assert reading.hausdorff(some, some.copy()) == 0.0
    assert PROJECT.hausdorff(empty, empty) == 0.0
    assert COMPETITION.hausdorff(empty, empty) == 0.0
    assert math.isnan(MLEBENCH.hausdorff(empty, empty))
    assert PROJECT.slice_dice(empty, empty).tolist() == [1.0, 1.0]
    assert COMPETITION.slice_dice(empty, empty).tolist() == [0.0, 0.0]
    assert np.isnan(MLEBENCH.slice_dice(empty, empty)).all()


def test_mlebench_overprediction_shortcut() -> None:
    truth = np.zeros((2, 6, 6), dtype=bool)
    truth[0, 2, 2] = True  # 1 voxel
    pred = truth.copy()
    pred[0, 0, :] = True  # 7 voxels: not more than 10x, a real distance
    assert MLEBENCH.hausdorff(pred, truth) == pytest.approx(reference_term("mlebench", pred, truth))
    assert MLEBENCH.hausdorff(pred, truth) < 1.0
    pred[1, :2, :2] = True  # 11 voxels > 10 x 1: scored 1 without a distance
    assert MLEBENCH.hausdorff(pred, truth) == 1.0
    assert COMPETITION.hausdorff(pred, truth) < 1.0  # no shortcut in the other readings
    volumes = {("case1_day0", "stomach"): (pred, truth)}
    summary = score_readings(volumes, "mlebench")["readings"]["mlebench"]
    assert summary["num_hausdorff_shortcut"] == 1 and summary["hausdorff"] == 1.0


# ---------------------------------------------------------------- random volumes, brute force


@pytest.mark.parametrize("shape", [(4, 7, 9), (5, 10, 6)])
def test_readings_match_brute_force_on_random_volumes(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    volumes = _random_volumes(rng, shape)
    # Corner cases among the random ones: an empty prediction, an empty truth, an empty pair,
    # an identical pair, a 10x over-prediction of a whole case-day.
    keys = list(volumes)
    volumes[keys[0]] = (np.zeros(shape, dtype=bool), volumes[keys[0]][1])
    volumes[keys[1]] = (volumes[keys[1]][0], np.zeros(shape, dtype=bool))
    volumes[keys[2]] = (np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool))
    volumes[keys[4]] = (volumes[keys[4]][1].copy(), volumes[keys[4]][1])
    for key in keys[6:9]:  # the third case-day, every class
        truth = np.zeros(shape, dtype=bool)
        truth[1, 1, 1] = True
        volumes[key] = (rng.random(shape) < 0.3, truth)
    result = score_readings(volumes, "all")
    for name in READINGS:
        expected = reference_scores(volumes, name)
        for key in ("score", "dice", "hausdorff"):
            assert result["readings"][name][key] == pytest.approx(expected[key], abs=1e-9)
    assert result["readings"]["mlebench"]["num_hausdorff_shortcut"] == 1
    assert result["num_case_days"] == 3
    assert result["num_slices"] == 3 * shape[0]


def test_per_class_figures_and_schema() -> None:
    rng = np.random.default_rng(3)
    volumes = _random_volumes(rng, (3, 8, 6))
    result = score_readings(volumes, ["project", "competition", "mlebench"], clinical=True)
    assert json.loads(json.dumps(result)) == result
    for name in ("project", "competition"):
        summary = result["readings"][name]
        assert list(summary["per_class"]) == ["large_bowel", "small_bowel", "stomach"]
        for class_name, values in summary["per_class"].items():
            subset = {key: pair for key, pair in volumes.items() if key[1] == class_name}
            expected = reference_scores(subset, name)
            for key in ("score", "dice", "hausdorff"):
                assert values[key] == pytest.approx(expected[key], abs=1e-9)
    for values in result["readings"]["mlebench"]["per_class"].values():
        assert values["hausdorff"] is None and values["score"] is None
        assert 0.0 <= values["dice"] <= 1.0
    assert set(result["clinical"]) == {"large_bowel", "small_bowel", "stomach"}
    assert "clinical" not in score_readings(volumes, "project")


def test_nothing_to_average_gives_none_for_mlebench_only() -> None:
    empty = np.zeros((2, 3, 3), dtype=bool)
    volumes = {("case1_day0", "stomach"): (empty, empty.copy())}
    result = score_readings(volumes, "all")["readings"]
    assert result["project"]["score"] == 1.0
    assert result["competition"]["score"] == pytest.approx(0.6)  # Dice 0, Hausdorff 0
    mlebench = result["mlebench"]
    assert mlebench["score"] is None and mlebench["dice"] is None and mlebench["hausdorff"] is None
    assert mlebench["num_dice_rows_skipped"] == 2 and mlebench["num_hausdorff_skipped"] == 1


def test_score_readings_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no volumes"):
        score_readings({}, "all")
    a = np.zeros((2, 4, 4), dtype=bool)
    b = np.zeros((2, 4, 5), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        score_readings({("c1_d1", "stomach"): (a, b)})
    with pytest.raises(ValueError, match="slices of"):
        score_readings({("c1_d1", "stomach"): (a, a), ("c1_d1", "large_bowel"): (b, b)})
    with pytest.raises(ValueError, match="unknown reading"):
        score_readings({("c1_d1", "stomach"): (a, a)}, "kaggle")


# ---------------------------------------------------------------- additive tallies


def _random_case_days(seed: int, count: int) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Case-days of three classes with blobs, empty classes and empty slices."""
    rng = np.random.default_rng(seed)
    case_days = {}
    for index in range(count):
        shape = (int(rng.integers(3, 7)), 9, 11 if index % 2 else 9)
        pairs = {}
        for class_index, name in enumerate(("large_bowel", "small_bowel", "stomach")):
            truth = ndimage.binary_dilation(rng.random(shape) < 0.03)
            pred = truth ^ (rng.random(shape) < 0.02)
            if (index + class_index) % 4 == 0:
                pred[:] = False  # a missed organ
            if (index + class_index) % 5 == 0:
                truth[:] = False
            pairs[name] = (pred, truth)
        case_days[f"case{index}_day0"] = pairs
    return case_days


@pytest.mark.parametrize("reading", list(READINGS))
def test_tallies_of_case_days_add_up_to_the_whole_score(reading: str) -> None:
    case_days = _random_case_days(seed=3, count=6)
    volumes = {
        (case_day, name): pair
        for case_day, pairs in case_days.items()
        for name, pair in pairs.items()
    }
    whole = score_readings(volumes, reading)["readings"][reading]
    tallies = [tally_case_day(reading, pairs, case_day) for case_day, pairs in case_days.items()]
    summed = sum(tallies).summary()
    assert summed.keys() == whole.keys()
    for key, value in whole.items():
        if isinstance(value, float):
            assert summed[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        elif key != "per_class":
            assert summed[key] == value, key
    for name, values in whole["per_class"].items():
        for key, value in values.items():
            assert summed["per_class"][name][key] == pytest.approx(value, abs=1e-12)
    # Any split into two groups adds to the same score (the bootstrap and per-fold sums).
    first = sum(tallies[:2])
    second = sum(tallies[2:])
    assert (first + second).summary()["score"] == pytest.approx(whole["score"], abs=1e-12)


def test_a_tally_scores_one_case_day_as_the_whole_scorer_does() -> None:
    pairs = _random_case_days(seed=5, count=1)["case0_day0"]
    volumes = {("case0_day0", name): pair for name, pair in pairs.items()}
    for reading in READINGS:
        expected = score_readings(volumes, reading)["readings"][reading]["score"]
        assert tally_case_day(reading, pairs).summary()["score"] == pytest.approx(expected)


def test_tallies_refuse_to_mix_readings_and_empty_input() -> None:
    pairs = _random_case_days(seed=1, count=1)["case0_day0"]
    with pytest.raises(ValueError, match="cannot add a mlebench tally to a project tally"):
        _ = tally_case_day("project", pairs) + tally_case_day("mlebench", pairs)
    with pytest.raises(ValueError, match="no classes"):
        tally_case_day("project", {})
    with pytest.raises(ValueError, match="unknown reading"):
        tally_case_day("kaggle", pairs)
    assert ReadingTally(PROJECT).summary()["score"] is None


def test_slice_dice_empty_rule_is_the_readings() -> None:
    pred = np.zeros((3, 2, 2), dtype=bool)
    truth = np.zeros((3, 2, 2), dtype=bool)
    pred[0, 0, :] = truth[0, 0, 0] = True  # Dice 2/3
    truth[1, 1, 1] = True  # Dice 0; slice 2 empty on both sides
    assert PROJECT.slice_dice(pred, truth).tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    assert COMPETITION.slice_dice(pred, truth)[2] == 0.0
    assert math.isnan(MLEBENCH.slice_dice(pred, truth)[2])
