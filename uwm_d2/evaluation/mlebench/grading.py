"""MLE-bench's grade of a submission against its answers, row by row and case-day by case-day.

See :mod:`uwm_d2.evaluation.mlebench` for the rules reproduced. The rows' Dice, the Hausdorff
term and the score are :data:`uwm_d2.core.readings.MLEBENCH`'s, on masks decoded here: one
:class:`~uwm_d2.core.readings.ReadingTally`, so one mean and one score formula for every reading.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, case_day_of
from uwm_d2.core.metrics import HausdorffPair
from uwm_d2.core.readings import MLEBENCH, ReadingTally
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
    intersections = np.zeros(len(ids), dtype=np.int64)
    totals = np.zeros(len(ids), dtype=np.int64)
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
            intersections[row] = np.count_nonzero(pred & truth)
            totals[row] = np.count_nonzero(pred) + np.count_nonzero(truth)
            pred_vol[depth[ids[row]]] |= pred
            truth_vol[depth[ids[row]]] |= truth
        term, shortcut = MLEBENCH.hausdorff_of_pair(HausdorffPair(pred_vol, truth_vol))
        terms.append(term)
        shortcuts += shortcut
        case_days.append(case_day)
        num_slices += len(slice_ids)
        start = stop

    dice = MLEBENCH.dice_from_counts(intersections, totals)  # NaN where both are empty
    class_array = np.asarray(classes)
    by_class = {name: dice[class_array == name] for name in CLASSES if (class_array == name).any()}
    tally = ReadingTally.of_values(MLEBENCH, by_class, {None: terms}, shortcuts)
    summary = tally.summary()
    score = summary["score"]
    return {
        "reading": summary["reading"],
        "score": score,
        "score_rounded": None if score is None else round(score, REPORTED_DECIMALS),
        **{key: value for key, value in summary.items() if key not in ("reading", "score")},
        "num_rows": len(ids),
        "num_slices": num_slices,
        "num_case_days": len(case_days),
    }
