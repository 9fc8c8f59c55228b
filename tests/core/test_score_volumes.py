"""``score_volumes``: the project's report of a mapping of volumes, with the clinical figures
and any other readings from the same pass (uwm_d2.core.readings.volumes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

from uwm_d2.core.metrics import DEFAULT_SPACING_MM, hd95_mm
from uwm_d2.core.readings import score_volumes


def brute_force_hausdorff(pred: np.ndarray, truth: np.ndarray) -> float:
    """Reference: symmetric Hausdorff over all foreground voxel coordinates, both directions."""
    p = np.argwhere(pred).astype(np.float64)
    g = np.argwhere(truth).astype(np.float64)
    return max(directed_hausdorff(p, g)[0], directed_hausdorff(g, p)[0])


def _case(depth: int = 4, size: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((depth, size, size), dtype=bool), np.zeros((depth, size, size), dtype=bool)


def test_score_volumes_hand_computed() -> None:
    # case1_day0, large_bowel: slice 0 perfect, slice 1 Dice 2/3 (pred 2, truth 1), slices 2-3
    # empty (Dice 1). Hausdorff: the extra pred voxel is 1 from the truth.
    pred_a, truth_a = _case()
    truth_a[0, 2, 2] = pred_a[0, 2, 2] = True
    truth_a[1, 5, 5] = pred_a[1, 5, 5] = pred_a[1, 5, 6] = True
    # case1_day0, stomach: truth only -> every non-empty slice Dice 0, Hausdorff 1.
    pred_b, truth_b = _case()
    truth_b[3, 1, 1] = True
    # case2_day1, stomach (3 slices): both empty -> Dice 1 per slice, Hausdorff 0.
    pred_c, truth_c = _case(depth=3)
    volumes = {
        ("case1_day0", "large_bowel"): (pred_a, truth_a),
        ("case1_day0", "stomach"): (pred_b, truth_b),
        ("case2_day1", "stomach"): (pred_c, truth_c),
    }
    result = score_volumes(volumes)

    diagonal = math.sqrt(4**2 + 10**2 + 10**2)
    large_dice = (1 + 2 / 3 + 1 + 1) / 4
    large_hd = 1 / diagonal
    stomach_dice = (1 + 1 + 1 + 0 + 1 + 1 + 1) / 7
    stomach_hd = (1.0 + 0.0) / 2
    dice = (4 * large_dice + 7 * stomach_dice) / 11  # mean over all 11 (slice, class) rows
    hausdorff = (large_hd + 1.0 + 0.0) / 3  # mean over the 3 (case_day, class) volumes

    assert result["dice"] == pytest.approx(dice)
    assert result["hausdorff"] == pytest.approx(hausdorff)
    assert result["score"] == pytest.approx(0.4 * dice + 0.6 * (1 - hausdorff))
    assert result["num_slices"] == 4 + 3
    assert result["num_case_days"] == 2

    assert list(result["per_class"]) == ["large_bowel", "stomach"]
    large = result["per_class"]["large_bowel"]
    assert large["dice"] == pytest.approx(large_dice)
    assert large["hausdorff"] == pytest.approx(large_hd)
    assert large["score"] == pytest.approx(0.4 * large_dice + 0.6 * (1 - large_hd))
    stomach = result["per_class"]["stomach"]
    assert stomach["dice"] == pytest.approx(stomach_dice)
    assert stomach["hausdorff"] == pytest.approx(stomach_hd)

    assert list(result["clinical"]) == ["large_bowel", "stomach"]
    assert result["clinical"]["large_bowel"]["dice_3d"] == pytest.approx(2 * 2 / (3 + 2))
    assert result["clinical"]["large_bowel"]["hd95_mm"] == pytest.approx(
        hd95_mm(pred_a, truth_a, DEFAULT_SPACING_MM)
    )
    # Stomach: case1 has one empty side (3D Dice 0, no HD95), case2 both empty (3D Dice 1).
    assert result["clinical"]["stomach"]["dice_3d"] == pytest.approx(0.5)
    assert result["clinical"]["stomach"]["hd95_mm"] is None


def test_score_volumes_schema_is_plain_json() -> None:
    pred, truth = _case()
    truth[1, 1:4, 1:4] = True
    pred[1, 2:5, 1:4] = True
    result = score_volumes(
        {("case3_day2", "small_bowel"): (pred.astype(np.uint8), truth)},
        spacings={"case3_day2": (3.0, 1.63, 1.63)},
    )
    assert set(result) == {
        "score",
        "dice",
        "hausdorff",
        "per_class",
        "clinical",
        "num_slices",
        "num_case_days",
    }
    assert set(result["per_class"]["small_bowel"]) == {"score", "dice", "hausdorff"}
    assert set(result["clinical"]["small_bowel"]) == {"dice_3d", "hd95_mm"}
    assert json.loads(json.dumps(result)) == result  # plain floats and ints only
    for value in (result["score"], result["dice"], result["hausdorff"]):
        assert type(value) is float
    assert type(result["num_slices"]) is int
    # The given spacing is used: a one-row shift is 1.63 mm.
    assert result["clinical"]["small_bowel"]["hd95_mm"] == pytest.approx(1.63)


def test_score_volumes_perfect_and_worst() -> None:
    _, truth = _case()
    truth[0:3, 2:6, 2:6] = True
    perfect = score_volumes({("case1_day1", "stomach"): (truth.copy(), truth)})
    assert perfect["score"] == 1.0
    worst = score_volumes({("case1_day1", "stomach"): (np.zeros_like(truth), truth)})
    # Dice 0 on the 3 labelled slices, 1 on the empty one; Hausdorff 1.
    assert worst["dice"] == pytest.approx(1 / 4)
    assert worst["score"] == pytest.approx(0.4 * 0.25)


def test_score_volumes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no volumes"):
        score_volumes({})
    pred, truth = _case()
    with pytest.raises(ValueError, match="shape"):
        score_volumes({("c1_d1", "stomach"): (pred, truth[:, :5])})
    short_pred, short_truth = _case(depth=3)
    with pytest.raises(ValueError, match="slices"):
        score_volumes(
            {
                ("c1_d1", "stomach"): (pred, truth),
                ("c1_d1", "large_bowel"): (short_pred, short_truth),
            }
        )
    with pytest.raises(ValueError, match="D, H, W"):
        score_volumes({("c1_d1", "stomach"): (pred[0], truth[0])})


def test_score_volumes_agrees_with_brute_force_on_random_cases() -> None:
    rng = np.random.default_rng(11)
    volumes = {}
    for case in range(3):
        for class_name in ("large_bowel", "small_bowel", "stomach"):
            truth = ndimage.binary_dilation(rng.random((6, 16, 16)) < 0.02)
            pred = ndimage.binary_dilation(rng.random((6, 16, 16)) < 0.02)
            volumes[(f"case{case}_day0", class_name)] = (pred, truth)
    result = score_volumes(volumes)
    expected = []
    for pred, truth in volumes.values():
        if pred.any() and truth.any():
            value = brute_force_hausdorff(pred, truth) / math.sqrt(6**2 + 16**2 + 16**2)
            expected.append(min(value, 1.0))
        else:
            expected.append(float(pred.any() != truth.any()))
    assert result["hausdorff"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_score_volumes_can_skip_the_clinical_figures() -> None:
    pred, truth = _case()
    truth[1, 1:4, 1:4] = True
    pred[1, 2:5, 1:4] = True
    volumes = {("case3_day2", "small_bowel"): (pred, truth)}
    full = score_volumes(volumes)
    lean = score_volumes(volumes, clinical=False)
    assert "clinical" in full and "clinical" not in lean
    assert {key: value for key, value in full.items() if key != "clinical"} == lean
    assert "readings" not in lean


def test_score_volumes_adds_other_readings_from_the_same_pass() -> None:
    rng = np.random.default_rng(4)
    volumes = {
        (f"case{case}_day0", name): (
            ndimage.binary_dilation(rng.random((5, 9, 7)) < 0.03),
            ndimage.binary_dilation(rng.random((5, 9, 7)) < 0.03),
        )
        for case in range(2)
        for name in ("large_bowel", "stomach")
    }
    plain = score_volumes(volumes)
    result = score_volumes(volumes, readings="all")
    assert list(result["readings"]) == ["project", "competition", "mlebench"]
    project = result["readings"]["project"]
    assert {key: result[key] for key in ("score", "dice", "hausdorff")} == {
        key: project[key] for key in ("score", "dice", "hausdorff")
    }
    assert {key: value for key, value in result.items() if key != "readings"} == plain
    only = score_volumes(volumes, clinical=False, readings=["mlebench"])
    assert list(only["readings"]) == ["mlebench"]
    assert only["readings"]["mlebench"] == result["readings"]["mlebench"]
    assert json.loads(json.dumps(result)) == result
    with pytest.raises(ValueError, match="unknown reading"):
        score_volumes(volumes, readings="kaggle")
