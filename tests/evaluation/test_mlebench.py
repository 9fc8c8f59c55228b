"""MLE-bench's grader (uwm_d2.evaluation.mlebench) against a slow reference written here.

The reference implements the grader's published facts one by one, with Python loops and
``directed_hausdorff``: column-major decoding (runs fill ``width x height``, then transposed),
Dice per row with both-empty rows skipped, class-agnostic Hausdorff per case-day over slices in
sorted id order with coordinates / shape and / sqrt(3) (both empty skipped, identical 0, one empty
1, more than 10x the truth's voxels 1), ``0.4 nanmean(Dice) + 0.6 (1 - nanmean(Hausdorff))``,
rows matched by position, malformed strings refused. Scans are non-square (9 wide x 7 high, as
360 x 310 scaled down) so the column-major scrambling matters.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.layout_reader import read_label_csv
from uwm_d2.core.readings import score_readings
from uwm_d2.core.rle import rle_decode, rle_encode
from uwm_d2.evaluation.mlebench import (
    ANSWERS_COLUMNS,
    answers_from_data_root,
    answers_from_truth,
    mlebench_rle_decode,
    read_answers,
    read_submission,
    score_mlebench,
)

CLASSES = ("large_bowel", "small_bowel", "stomach")


class RefusedError(Exception):
    """The reference grader would not produce a score."""


def reference_decode(rle: object, height: int, width: int) -> np.ndarray:
    if not isinstance(rle, str):
        raise RefusedError("not a string")
    mask = np.zeros((height, width), dtype=bool)
    tokens = rle.split()
    if not tokens:
        return mask
    try:
        values = [int(token) for token in tokens]
    except ValueError:
        raise RefusedError("token") from None
    starts, lengths = values[0::2], values[1::2]
    if starts != sorted(starts) or min(values) <= 0:
        raise RefusedError("unsorted or non-positive")
    if len(lengths) < len(starts):  # numpy adds the lengths list to the starts array
        if len(lengths) > 1:
            raise RefusedError("odd count that does not broadcast")
        lengths = lengths * len(starts)  # one length broadcasts; none gives no runs
    set_pixels: set[int] = set()
    for start, length in zip(starts, lengths):  # noqa: B905 (none left when lengths is empty)
        pixels = [p for p in range(start - 1, start - 1 + length) if p < height * width]
        if set_pixels.intersection(pixels):
            raise RefusedError("overlap")
        for pixel in pixels:
            set_pixels.add(pixel)
            # The (width, height) array filled in C order holds pixel p at [p // height,
            # p % height]; transposed, that is row p % height, column p // height.
            mask[pixel % height, pixel // height] = True
    return mask


def reference_grade(answers: pd.DataFrame, submission: pd.DataFrame) -> tuple[float, float, float]:
    """``(score, mean Dice, mean Hausdorff)``, NaN where the grader gets NaN."""
    if len(answers) != len(submission):
        raise RefusedError("length")
    dice_values = []
    pred_slices: dict[str, np.ndarray] = {}
    truth_slices: dict[str, np.ndarray] = {}
    for index in range(len(answers)):
        answer, row = answers.iloc[index], submission.iloc[index]
        if (answer["id"], answer["class"]) != (row["id"], row["class"]):
            raise RefusedError("rows do not line up")
        height, width = int(answer["image_height"]), int(answer["image_width"])
        pred = reference_decode(row["predicted"], height, width)
        truth = reference_decode(answer["predicted"], height, width)
        total = int(pred.sum()) + int(truth.sum())
        dice_values.append(math.nan if total == 0 else 2.0 * int((pred & truth).sum()) / total)
        slice_id = answer["id"]
        pred_slices[slice_id] = pred_slices.get(slice_id, np.zeros_like(pred)) | pred
        truth_slices[slice_id] = truth_slices.get(slice_id, np.zeros_like(truth)) | truth
    hausdorff_values = []
    for case_day in sorted({slice_id.split("_slice_")[0] for slice_id in pred_slices}):
        ids = sorted(i for i in pred_slices if i.split("_slice_")[0] == case_day)
        pred = np.stack([pred_slices[i] for i in ids])
        truth = np.stack([truth_slices[i] for i in ids])
        if pred.sum() == 0 and truth.sum() == 0:
            hausdorff_values.append(math.nan)
        elif np.array_equal(pred, truth):
            hausdorff_values.append(0.0)
        elif pred.sum() == 0 or truth.sum() == 0 or pred.sum() > 10 * truth.sum():
            hausdorff_values.append(1.0)  # exactly one empty, or more than 10x over-predicted
        else:
            shape = np.array(pred.shape, dtype=np.float64)
            p, g = np.argwhere(pred) / shape, np.argwhere(truth) / shape
            distance = max(directed_hausdorff(p, g)[0], directed_hausdorff(g, p)[0])
            hausdorff_values.append(distance / math.sqrt(3))
    dice = np.nanmean(dice_values) if not np.isnan(dice_values).all() else math.nan
    hausdorff = np.nanmean(hausdorff_values) if not np.isnan(hausdorff_values).all() else math.nan
    return 0.4 * dice + 0.6 * (1 - hausdorff), float(dice), float(hausdorff)


# ---------------------------------------------------------------- synthetic data

#: case-day -> (slice numbers, height, width); slices 9 and 10 check that ids sort in slice order.
CASE_DAYS = {
    "case1_day0": ((8, 9, 10, 11), 7, 9),
    "case12_day3": ((1, 2, 3), 9, 7),
    "case2_day10": ((4, 5, 6), 8, 8),
}


def _truth_volumes(rng: np.random.Generator) -> dict[tuple[str, str], np.ndarray]:
    volumes = {}
    for case_day, (slices, height, width) in CASE_DAYS.items():
        for class_name in CLASSES:
            seeds = rng.random((len(slices), height, width)) < 0.05
            volume = ndimage.binary_dilation(seeds, structure=np.ones((1, 2, 2), dtype=bool))
            volume[0] = False  # an empty first slice: both-empty rows for good predictions
            volumes[(case_day, class_name)] = volume
    return volumes


def _frames(
    truth: dict[tuple[str, str], np.ndarray],
    pred: dict[tuple[str, str], np.ndarray],
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Answers and a submission in one shuffled slice order (as train.csv's is not id order)."""
    rows = []
    for case_day, (slices, height, width) in CASE_DAYS.items():
        for depth, number in enumerate(slices):
            for class_name in CLASSES:
                rows.append(
                    (
                        f"{case_day}_slice_{number:04d}",
                        class_name,
                        rle_encode(truth[(case_day, class_name)][depth]),
                        rle_encode(pred[(case_day, class_name)][depth]),
                        width,
                        height,
                    )
                )
    slice_order = rng.permutation(len(rows) // 3)
    rows = [rows[3 * s + c] for s in slice_order for c in range(3)]
    answers = pd.DataFrame(
        [(i, c, t, w, h) for i, c, t, _, w, h in rows], columns=list(ANSWERS_COLUMNS)
    )
    submission = pd.DataFrame(
        [(i, c, p) for i, c, _, p, _, _ in rows], columns=["id", "class", "predicted"]
    )
    return answers, submission


def _noisy(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pred = np.roll(truth, tuple(rng.integers(-1, 2, size=3)), axis=(0, 1, 2))
    return pred | (rng.random(truth.shape) < 0.01)


def _check(answers: pd.DataFrame, submission: pd.DataFrame) -> dict:
    result = score_mlebench(answers, submission)
    score, dice, hausdorff = reference_grade(answers, submission)
    if math.isnan(score):
        assert result["score"] is None and result["score_rounded"] is None
    else:
        assert result["score"] == pytest.approx(score, abs=1e-9)
        assert result["dice"] == pytest.approx(dice, abs=1e-9)
        assert result["hausdorff"] == pytest.approx(hausdorff, abs=1e-9)
        assert result["score_rounded"] == round(result["score"], 5)
    return result


# ---------------------------------------------------------------- scores


def test_decoding_is_column_major_and_scrambles_non_square_scans() -> None:
    mask = np.zeros((7, 9), dtype=bool)  # 9 wide, 7 high
    mask[1, 2:5] = True
    rle = rle_encode(mask)  # row-major, as train.csv: "12 3"
    assert rle == "12 3"
    decoded = mlebench_rle_decode(rle, 7, 9)
    assert decoded.shape == (7, 9)
    # Pixels 11, 12, 13 (0-based) land at row p % 7, column p // 7.
    assert sorted(map(tuple, np.argwhere(decoded))) == [(4, 1), (5, 1), (6, 1)]
    assert not np.array_equal(decoded, mask)
    square = np.zeros((8, 8), dtype=bool)
    square[1, 2:5] = True
    assert np.array_equal(mlebench_rle_decode(rle_encode(square), 8, 8), square.T)


def test_scores_match_the_reference_on_noisy_predictions() -> None:
    rng = np.random.default_rng(0)
    truth = _truth_volumes(rng)
    pred = {key: _noisy(volume, rng) for key, volume in truth.items()}
    answers, submission = _frames(truth, pred, rng)
    result = _check(answers, submission)
    assert result["num_rows"] == len(answers) == 3 * 10
    assert result["num_case_days"] == 3 and result["num_slices"] == 10
    assert result["num_dice_rows_skipped"] > 0  # the empty first slices
    assert result["num_dice_rows"] + result["num_dice_rows_skipped"] == len(answers)
    assert result["num_hausdorff_volumes"] == 3 and result["num_hausdorff_shortcut"] == 0
    assert set(result["per_class"]) == set(CLASSES)


def test_corner_cases_match_the_reference() -> None:
    rng = np.random.default_rng(1)
    truth = _truth_volumes(rng)
    pred = {key: volume.copy() for key, volume in truth.items()}  # case2_day10 identical: 0
    for class_name in CLASSES:
        # case1_day0: a prediction with more than 10x the truth's voxels (3 voxels).
        truth[("case1_day0", class_name)][:] = False
        truth[("case1_day0", class_name)][2, 3, CLASSES.index(class_name)] = True
        pred[("case1_day0", class_name)] = rng.random((4, 7, 9)) < 0.2
        # case12_day3: the prediction is empty (one side empty: 1).
        pred[("case12_day3", class_name)][:] = False
    answers, submission = _frames(truth, pred, rng)
    result = _check(answers, submission)
    assert result["num_hausdorff_shortcut"] == 1
    assert result["hausdorff"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)

    # The truth of a case-day empty while the prediction is not: 1; another empty on both
    # sides: skipped.
    for class_name in CLASSES:
        truth[("case1_day0", class_name)][:] = False
        pred[("case1_day0", class_name)] = rng.random((4, 7, 9)) < 0.05
        truth[("case12_day3", class_name)][:] = False
    answers, submission = _frames(truth, pred, rng)
    result = _check(answers, submission)
    assert result["num_hausdorff_skipped"] == 1 and result["num_hausdorff_volumes"] == 2


def test_everything_empty_is_none_where_the_grader_gets_nan() -> None:
    rng = np.random.default_rng(2)
    truth = {key: np.zeros_like(volume) for key, volume in _truth_volumes(rng).items()}
    answers, submission = _frames(truth, truth, rng)
    result = _check(answers, submission)
    assert result["dice"] is None and result["hausdorff"] is None and result["score"] is None
    assert result["num_dice_rows"] == 0 and result["num_hausdorff_skipped"] == 3


def test_an_empty_submission_scores_zero() -> None:
    rng = np.random.default_rng(3)
    truth = _truth_volumes(rng)
    empty = {key: np.zeros_like(volume) for key, volume in truth.items()}
    answers, submission = _frames(truth, empty, rng)
    result = _check(answers, submission)
    assert result["score"] == 0.0 and result["dice"] == 0.0 and result["hausdorff"] == 1.0


def test_odd_token_counts_and_runs_past_the_image_follow_numpy() -> None:
    rng = np.random.default_rng(4)
    truth = _truth_volumes(rng)
    answers, submission = _frames(truth, truth, rng)
    nonempty = [i for i in range(len(answers)) if answers.at[i, "predicted"]]
    # 1 token: no runs; 3 tokens: two runs of the one length; a run past the 63-pixel image is
    # clipped; Python's int reads "+5"; runs may touch.
    for row, rle in zip(nonempty, ("7", "1 2 10", "60 10", "+5 2", "3 1 4 2"), strict=False):
        submission.at[row, "predicted"] = rle
    _check(answers, submission)
    assert mlebench_rle_decode("7", 7, 9).sum() == 0
    assert mlebench_rle_decode("1 2 10", 7, 9).sum() == 4
    assert mlebench_rle_decode("60 10", 7, 9).sum() == 4


@pytest.mark.parametrize(
    "rle",
    [
        "10 2 1 2",  # unsorted starts
        "1 5 3 2",  # overlapping runs
        "1 2 1 2",  # tied starts overlap
        "0 3",  # non-positive start
        "3 0",  # non-positive length
        "-1 2",
        "1.5 2",  # not an integer
        "a 2",
        "1 2 5 2 9",  # odd count that numpy cannot broadcast
    ],
)
def test_malformed_strings_are_refused_naming_the_row(rle: str) -> None:
    rng = np.random.default_rng(5)
    truth = _truth_volumes(rng)
    answers, submission = _frames(truth, truth, rng)
    submission.at[4, "predicted"] = rle
    with pytest.raises(RefusedError):
        reference_grade(answers, submission)
    row = f"row 5 ({answers.at[4, 'id']} {answers.at[4, 'class']})"
    with pytest.raises(UWMInputError, match="MLE-bench would reject") as caught:
        score_mlebench(answers, submission)
    assert row in str(caught.value) and "\n" not in str(caught.value)


def test_rows_must_line_up_with_the_answers() -> None:
    rng = np.random.default_rng(6)
    truth = _truth_volumes(rng)
    answers, submission = _frames(truth, truth, rng)
    for broken, pattern in (
        (submission.iloc[:-1], "29 rows, the answers 30"),
        (pd.concat([submission, submission.iloc[:1]]), "31 rows"),
        (submission.iloc[[1, 0, *range(2, len(submission))]], "row 1 is"),
        (submission.assign(**{"class": submission["class"].replace("stomach", "x")}), "row 3"),
    ):
        with pytest.raises(RefusedError):
            reference_grade(answers, broken.reset_index(drop=True))
        with pytest.raises(UWMInputError, match=f"MLE-bench would reject.*{pattern}"):
            score_mlebench(answers, broken.reset_index(drop=True))
    with pytest.raises(UWMInputError, match="no column 'predicted'"):
        score_mlebench(answers, submission.drop(columns="predicted"))


def test_the_volume_level_reading_agrees_with_the_csv_level() -> None:
    rng = np.random.default_rng(7)
    truth = _truth_volumes(rng)
    pred = {key: _noisy(volume, rng) for key, volume in truth.items()}
    pred[("case2_day10", "stomach")] = rng.random(pred[("case2_day10", "stomach")].shape) < 0.9
    answers, submission = _frames(truth, pred, rng)
    csv_level = score_mlebench(answers, submission)
    # Decode the same strings row-major (the project's reading of them) into volumes.
    volumes = {}
    for case_day, (slices, height, width) in CASE_DAYS.items():
        for class_name in CLASSES:
            stacks = []
            for frame in (submission, answers):
                rows = frame.set_index(["id", "class"])["predicted"]
                stacks.append(
                    np.stack(
                        [
                            rle_decode(
                                rows[(f"{case_day}_slice_{n:04d}", class_name)], (height, width)
                            )
                            for n in slices
                        ]
                    )
                )
            volumes[(case_day, class_name)] = tuple(stacks)
    volume_level = score_readings(volumes, "mlebench")["readings"]["mlebench"]
    for key in ("score", "dice", "hausdorff", "num_hausdorff_shortcut", "num_dice_rows"):
        assert volume_level[key] == pytest.approx(csv_level[key], abs=1e-9)


# ---------------------------------------------------------------- files


def test_files_are_read_as_the_grader_reads_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    truth = _truth_volumes(rng)
    pred = {key: _noisy(volume, rng) for key, volume in truth.items()}
    answers, submission = _frames(truth, pred, rng)
    # MLE-bench writes the sizes as floats ("7.0"); pandas reads "NA" and empty cells as NaN.
    answers.astype({"image_width": float, "image_height": float}).to_csv(
        tmp_path / "test.csv", index=False
    )
    empty_rows = submission.index[submission["predicted"] == ""]
    submission.loc[empty_rows[:2], "predicted"] = "NA"
    submission.to_csv(tmp_path / "submission.csv", index=False)
    read = read_answers(tmp_path / "test.csv")
    assert read["image_width"].dtype == np.int64 and read.equals(answers)
    assert read_submission(tmp_path / "submission.csv")["predicted"].tolist().count("") == len(
        empty_rows
    )
    from_files = score_mlebench(tmp_path / "test.csv", tmp_path / "submission.csv")
    assert from_files == score_mlebench(answers, submission.replace("NA", ""))

    # A predicted column pandas reads as numbers is refused, as by the grader's decoder.
    numbers = submission.assign(predicted=[str(5 + i) for i in range(len(submission))])
    numbers.to_csv(tmp_path / "numbers.csv", index=False)
    with pytest.raises(UWMInputError, match=r"MLE-bench would reject.*not a string"):
        score_mlebench(tmp_path / "test.csv", tmp_path / "numbers.csv")
    submission.drop(columns="class").to_csv(tmp_path / "no_class.csv", index=False)
    with pytest.raises(UWMInputError, match=r"no_class\.csv: MLE-bench would reject.*'class'"):
        score_mlebench(tmp_path / "test.csv", tmp_path / "no_class.csv")
    answers.drop(columns="image_height").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UWMInputError, match=r"bad\.csv: no column 'image_height'"):
        read_answers(tmp_path / "bad.csv")


def test_answers_from_a_truth_csv_and_the_scans(phantom_root: Path, tmp_path: Path) -> None:
    answers = answers_from_data_root(
        phantom_root, phantom_root / "test_truth.csv", phantom_root / "sample_submission.csv"
    )
    sample = pd.read_csv(phantom_root / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(answers.columns) == list(ANSWERS_COLUMNS)
    assert answers[["id", "class"]].equals(sample[["id", "class"]])
    truth = read_label_csv(phantom_root / "test_truth.csv").set_index(["id", "class"])
    assert answers["predicted"].tolist() == [
        truth.at[(i, c), "segmentation"]
        for i, c in zip(answers["id"], answers["class"], strict=True)
    ]
    assert (answers["image_width"] == 360).any()  # the phantom's first test case is 360 x 310
    perfect = answers[["id", "class", "predicted"]]
    assert score_mlebench(answers, perfect)["score"] == pytest.approx(1.0)
    empty = _check(answers, sample.assign(predicted=""))
    assert empty["score"] == 0.0
    # Without an order, the truth's own order; the sizes may come from a mapping.
    shapes = {
        case_day: (int(h), int(w))
        for case_day, h, w in zip(
            answers["id"].str.split("_slice_").str[0],
            answers["image_height"],
            answers["image_width"],
            strict=True,
        )
    }
    direct = answers_from_truth(phantom_root / "test_truth.csv", shapes)
    assert (
        direct.sort_values(["id", "class"])
        .reset_index(drop=True)
        .equals(answers.sort_values(["id", "class"]).reset_index(drop=True))
    )
    with pytest.raises(UWMInputError, match="no scan size"):
        answers_from_truth(phantom_root / "test_truth.csv", {})
    with pytest.raises(UWMInputError, match="does not list exactly"):
        answers_from_truth(phantom_root / "test_truth.csv", shapes, order=sample.iloc[1:])
