"""MLE-bench's grade of a submission against its answers, row by row and case-day by case-day.

See :mod:`uwm_d2.evaluation.mlebench` for the rules reproduced. The Hausdorff term uses
:data:`uwm_d2.core.readings.MLEBENCH` on volumes decoded here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, case_day_of
from uwm_d2.core.metrics import DICE_WEIGHT, HAUSDORFF_WEIGHT, HausdorffPair
from uwm_d2.core.readings import MLEBENCH
from uwm_d2.evaluation.mlebench.decoding import fill_runs, mlebench_runs
from uwm_d2.evaluation.mlebench.files import (
    REJECT,
    check_answers,
    check_submission_columns,
    read_answers,
    read_submission,
    source_name,
)

#: Decimals of the score MLE-bench's ``Grader`` reports.
REPORTED_DECIMALS = 5


def _line_up(answers: pd.DataFrame, submission: pd.DataFrame, name: str) -> None:
    """Refuse a submission whose rows do not match the answers' by position."""
    if len(submission) != len(answers):
        raise UWMInputError(
            f"{name}: {REJECT}: it has {len(submission)} rows, the answers {len(answers)} "
            f"(rows are matched by position)"
        )
    ids = submission["id"].astype(str).to_numpy()
    classes = submission["class"].astype(str).to_numpy()
    wrong = (ids != answers["id"].to_numpy()) | (classes != answers["class"].to_numpy())
    if wrong.any():
        row = int(np.argmax(wrong))
        raise UWMInputError(
            f"{name}: {REJECT}: row {row + 1} is {ids[row]} {classes[row]}, the answers' row "
            f"{row + 1} is {answers.at[row, 'id']} {answers.at[row, 'class']} (rows are matched "
            f"by position, in the sample submission's order)"
        )


def _mean(values: Sequence[float] | np.ndarray) -> tuple[float | None, int, int]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    counted = ~np.isnan(values)
    used = int(counted.sum())
    return (float(values[counted].mean()) if used else None), used, int(values.size - used)


def score_mlebench(
    answers: pd.DataFrame | str | os.PathLike,
    submission: pd.DataFrame | str | os.PathLike,
) -> dict[str, Any]:
    """Score a submission exactly as MLE-bench's grader for this competition does.

    Args:
        answers: the answers (a path for :func:`read_answers`, or a frame with
            :data:`ANSWERS_COLUMNS`, e.g. from :func:`answers_from_truth`).
        submission: ``id,class,predicted`` (a path for :func:`read_submission`, or a frame),
            row for row in the answers' order.

    Returns:
        A JSON-serializable dict::

            {"reading": "mlebench", "score", "score_rounded", "dice", "hausdorff",
             "per_class": {cls: {"score": None, "dice", "hausdorff": None}},
             "num_dice_rows", "num_dice_rows_skipped",
             "num_hausdorff_volumes", "num_hausdorff_skipped", "num_hausdorff_shortcut",
             "num_rows", "num_slices", "num_case_days"}

        ``dice`` and ``hausdorff`` are the grader's two ``nanmean`` terms and ``score`` its
        result; ``score_rounded`` is what its ``Grader`` reports (5 decimals). Where the grader
        gets NaN (every row and every case-day empty on both sides, so nothing is averaged), the
        value here is ``None``. ``per_class.dice`` is the mean Dice of one class's rows (not part
        of the grader; its Hausdorff term has no classes). ``num_hausdorff_shortcut`` counts
        case-days set to 1 because the prediction has more than 10x the truth's voxels.

    Raises:
        UWMInputError: the submission is one MLE-bench would refuse or mis-score (missing
            columns, rows not lining up with the answers by position, a string its decoder
            fails on), naming the row; or the answers are malformed.
    """
    answers_name = source_name(answers, "answers")
    name = source_name(submission, "submission")
    answers = (
        read_answers(answers)
        if not isinstance(answers, pd.DataFrame)
        else check_answers(answers, answers_name)
    )
    submission = (
        read_submission(submission)
        if not isinstance(submission, pd.DataFrame)
        else check_submission_columns(submission, name)
    )
    _line_up(answers, submission, name)

    ids = answers["id"].tolist()
    row_case_days = answers["id"].map(case_day_of).tolist()
    classes = answers["class"].tolist()
    heights = answers["image_height"].to_numpy()
    widths = answers["image_width"].to_numpy()

    def decode(table: pd.DataFrame, table_name: str, row: int) -> np.ndarray:
        try:
            low, high = mlebench_runs(table.at[row, "predicted"], int(heights[row] * widths[row]))
        except UWMInputError as error:
            prefix = f"{table_name}: {REJECT}" if table is submission else table_name
            raise UWMInputError(
                f"{prefix}: row {row + 1} ({ids[row]} {classes[row]}): {error}"
            ) from None
        return fill_runs(low, high, int(heights[row]), int(widths[row]))

    # Sorted as the grader sorts the ids (Python string order, stable); zero-padded slice numbers
    # make that slice order within a case-day, and every case-day's ids contiguous.
    order = sorted(range(len(ids)), key=ids.__getitem__)
    dice = np.full(len(ids), np.nan)
    terms: list[float] = []
    shortcuts = 0
    case_days: list[str] = []
    num_slices = 0
    start = 0
    while start < len(order):
        case_day = row_case_days[order[start]]
        stop = start
        while stop < len(order) and row_case_days[order[stop]] == case_day:
            stop += 1
        rows = order[start:stop]
        slice_ids = list(dict.fromkeys(ids[row] for row in rows))
        depth = {slice_id: index for index, slice_id in enumerate(slice_ids)}
        shape = (len(slice_ids), int(heights[rows[0]]), int(widths[rows[0]]))
        pred_vol = np.zeros(shape, dtype=bool)
        truth_vol = np.zeros(shape, dtype=bool)
        for row in rows:
            pred = decode(submission, name, row)
            truth = decode(answers, answers_name, row)
            total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
            if total:
                dice[row] = 2.0 * int(np.count_nonzero(pred & truth)) / total
            pred_vol[depth[ids[row]]] |= pred
            truth_vol[depth[ids[row]]] |= truth
        term, shortcut = MLEBENCH.hausdorff_of_pair(HausdorffPair(pred_vol, truth_vol))
        terms.append(term)
        shortcuts += shortcut
        case_days.append(case_day)
        num_slices += len(slice_ids)
        start = stop

    mean_dice, dice_used, dice_skipped = _mean(dice)
    mean_hausdorff, volumes_used, volumes_skipped = _mean(terms)
    score = (
        None
        if mean_dice is None or mean_hausdorff is None
        else DICE_WEIGHT * mean_dice + HAUSDORFF_WEIGHT * (1.0 - mean_hausdorff)
    )
    class_array = np.asarray(classes)
    per_class = {
        class_name: {
            "score": None,
            "dice": _mean(dice[class_array == class_name])[0],
            "hausdorff": None,
        }
        for class_name in CLASSES
        if (class_array == class_name).any()
    }
    return {
        "reading": MLEBENCH.name,
        "score": score,
        "score_rounded": None if score is None else round(score, REPORTED_DECIMALS),
        "dice": mean_dice,
        "hausdorff": mean_hausdorff,
        "per_class": per_class,
        "num_dice_rows": dice_used,
        "num_dice_rows_skipped": dice_skipped,
        "num_hausdorff_volumes": volumes_used,
        "num_hausdorff_skipped": volumes_skipped,
        "num_hausdorff_shortcut": shortcuts,
        "num_rows": len(ids),
        "num_slices": num_slices,
        "num_case_days": len(case_days),
    }
