"""MLE-bench's grader for this competition, reproduced from the CSV files (pandas/numpy, no torch).

MLE-bench (openai/mle-bench, ``mlebench/competitions/uw-madison-gi-tract-image-segmentation``)
grades a submission ``id,class,predicted`` against a private answers file
``id,class,predicted,image_width,image_height`` (the truth rows of ``train.csv``, row-major
strings, in the sample submission's order). :func:`score_mlebench` gives the same numbers
(to float rounding) for every submission that grader accepts, quirks included:

=====================  ===========================================================================
decoding               RLE read **column-major**: the 1-based flat runs fill a ``width x height``
                       array that is then transposed to ``(height, width)``. The strings are
                       row-major, so truth and prediction are scrambled alike on non-square scans
                       (Dice is unchanged, the Hausdorff geometry is not).
Dice                   one value per answers row, ``2|P∩G| / (|P|+|G|)``; a row where both masks
                       are empty is skipped (NaN, then ``nanmean``).
Hausdorff              one value per case-day, class-agnostic: the masks of every row of a slice
                       id are OR-ed, the slices stacked in sorted id order (ids are zero-padded,
                       so string order is slice order); coordinates divided by the volume's shape
                       per axis (a unit cube), the symmetric Hausdorff distance divided by
                       ``sqrt(3)``. Both empty: skipped (NaN); identical: 0; exactly one empty:
                       1; a prediction with more than 10x the truth's voxels: 1.
score                  ``0.4 * nanmean(Dice) + 0.6 * (1 - nanmean(Hausdorff))``; MLE-bench's
                       ``Grader`` reports it rounded to 5 decimals (``score_rounded`` here).
row matching           by position. MLE-bench itself never compares the ids: a shorter, longer
                       or reordered file is mis-scored (its ``zip`` truncates, masks are decoded
                       with another row's size) or fails, depending on where rows move. Here
                       such a file is refused instead.
rejected strings       MLE-bench's decoder asserts: starts sorted (ties allowed), every start and
                       length positive, runs not overlapping an earlier run *inside the image*.
                       Tokens go through Python's ``int`` (so ``+5`` or ``1_0`` pass, ``1.5``
                       fails). A run past the image is clipped, not refused. An odd token count is
                       paired by numpy broadcasting: 1 token is an empty mask, 3 tokens are two
                       runs of the one length, 5 or more are refused. Empty cells (and the
                       strings pandas reads as NaN: ``NA``, ``nan``, ``null``...) are empty masks.
=====================  ===========================================================================

"Refused" means MLE-bench's grade is ``None`` (an invalid submission); here it is a
:class:`~uwm_d2.core.errors.UWMInputError` whose one-line message says so and names the row.
The Hausdorff term uses :data:`uwm_d2.core.readings.MLEBENCH` (exact distances, milliseconds per
case-day) on volumes decoded here, so this module and the volume-level ``mlebench`` reading agree
on any valid submission in the answers' order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uwm_d2.core.errors import UWMInputError, one_line
from uwm_d2.core.ids import CLASSES, case_day_of, check_class, parse_slice_id
from uwm_d2.core.layout import (
    index_data_root,
    read_csv_cells,
    read_label_csv,
    read_prediction_csv,
    require_columns,
)
from uwm_d2.core.metrics import DICE_WEIGHT, HAUSDORFF_WEIGHT, HausdorffPair
from uwm_d2.core.readings import MLEBENCH

#: Columns of an answers file (MLE-bench's private ``test.csv``), in its order.
ANSWERS_COLUMNS: tuple[str, ...] = ("id", "class", "predicted", "image_width", "image_height")
#: Columns a submission must have (others are ignored).
SUBMISSION_COLUMNS: tuple[str, ...] = ("id", "class", "predicted")
#: Decimals of the score MLE-bench's ``Grader`` reports.
REPORTED_DECIMALS = 5

_REJECT = "MLE-bench would reject this file"
# numpy turns the parsed tokens into int64 arrays; beyond that MLE-bench fails (or wraps).
_INT64_MAX = 2**63 - 1


def _source(data: pd.DataFrame | str | os.PathLike, default: str) -> str:
    return Path(data).name if isinstance(data, str | os.PathLike) else default


# ------------------------------------------------------------------------------------ decoding


def mlebench_runs(rle: str, num_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs MLE-bench's decoder sets for one RLE string, or why it refuses the string.

    Args:
        rle: the cell as MLE-bench sees it (empty and whitespace-only strings are empty masks).
        num_pixels: ``width * height`` of the image.

    Returns:
        ``(low, high)``: int64 arrays of 0-based half-open runs of the flat array, clipped to
        ``num_pixels`` and without overlaps (empty runs, wholly past the image, dropped).

    Raises:
        UWMInputError: a string MLE-bench's decoder fails on (the message gives the reason only;
            :func:`score_mlebench` adds the file and row).
    """
    if not isinstance(rle, str):
        raise UWMInputError(f"value {rle!r} is not a string (MLE-bench's decoder asserts one)")
    tokens = rle.split()
    empty = np.zeros(0, dtype=np.int64)
    if not tokens:
        return empty, empty.copy()
    values = []
    for token in tokens:
        try:
            values.append(int(token))  # Python's int, exactly as the grader parses tokens
        except ValueError:
            raise UWMInputError(f"token {token!r} is not an integer") from None
    starts, lengths = values[0::2], values[1::2]
    if starts != sorted(starts):
        raise UWMInputError("run starts are not sorted")
    if min(starts) <= 0 or (lengths and min(lengths) <= 0):
        raise UWMInputError("a start or length is not a positive integer")
    if (
        max(values) > _INT64_MAX
        or max((s + n for s, n in zip(starts, lengths, strict=False)), default=0) > _INT64_MAX
    ):
        raise UWMInputError("a value does not fit numpy's int64")
    if len(lengths) < len(starts):
        # ``starts + lengths`` is a numpy array plus a list: one length broadcasts to every start,
        # none leaves no runs at all, more than one cannot broadcast and raises.
        if len(lengths) > 1:
            raise UWMInputError(f"odd number of tokens ({len(values)})")
        if not lengths:
            return empty, empty.copy()
        lengths = lengths * len(starts)
    low = np.asarray(starts, dtype=np.int64) - 1
    high = low + np.asarray(lengths, dtype=np.int64)
    # Slicing a numpy array clips at its end, so runs past the image are cut, not refused.
    np.minimum(low, num_pixels, out=low)
    np.minimum(high, num_pixels, out=high)
    if low.size > 1:
        # The grader refuses a run if any pixel it covers inside the image is already set.
        # Starts are sorted, so that is exactly: a non-empty run beginning before the farthest
        # end reached by the runs before it.
        reached = np.maximum.accumulate(high)[:-1]
        if ((low[1:] < reached) & (low[1:] < high[1:])).any():
            raise UWMInputError("runs overlap")
    keep = low < high
    return low[keep], high[keep]


def mlebench_rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode one RLE string as MLE-bench does: runs fill ``(width, height)``, then transposed.

    Args:
        rle: the string (see :func:`mlebench_runs` for what is refused).
        height, width: the image size in pixels (``image_height``, ``image_width``).

    Returns:
        ``(height, width)`` bool mask. For a row-major string of a non-square image the result is
        *not* the image's mask: that is the grader's quirk, reproduced.

    Raises:
        UWMInputError: a string MLE-bench refuses.
    """
    low, high = mlebench_runs(rle, height * width)
    return _fill(low, high, height, width)


def _fill(low: np.ndarray, high: np.ndarray, height: int, width: int) -> np.ndarray:
    flat = np.zeros(height * width, dtype=bool)
    if low.size:
        lengths = high - low
        # Every covered pixel at once: run k covers low[k] .. high[k] - 1 (runs are disjoint).
        offsets = np.repeat(low - (np.cumsum(lengths) - lengths), lengths)
        flat[np.arange(offsets.size) + offsets] = True
    return flat.reshape(width, height).T


# ------------------------------------------------------------------------------------ files


def _positive_int(value: Any) -> int | None:
    """An ``image_width``/``image_height`` cell as an int (``266`` or ``266.0``), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number != int(number) or number <= 0:
        return None
    return int(number)


def read_answers(path: str | os.PathLike) -> pd.DataFrame:
    """Read an answers file ``id,class,predicted,image_width,image_height`` (MLE-bench's private
    ``test.csv``; ``predicted`` holds the truth as train.csv-style row-major strings).

    Returns:
        Columns :data:`ANSWERS_COLUMNS` in file order: ``id``, ``class``, ``predicted`` (``str``,
        ``""`` for an empty mask), ``image_width``, ``image_height`` (``int``; MLE-bench writes
        them as ``266.0``, which is accepted).

    Raises:
        UWMInputError: the file is missing, empty or unparseable; a column is missing; an id, a
            class or a size is malformed (named with its row); the sizes of one case-day differ.
    """
    path = Path(path)
    return _check_answers(read_csv_cells(path, "answers file"), path.name)


def _check_answers(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    require_columns(frame, ANSWERS_COLUMNS, name, f"answers need {', '.join(ANSWERS_COLUMNS)}")
    frame = frame[list(ANSWERS_COLUMNS)].reset_index(drop=True).copy()
    if frame.empty:
        raise UWMInputError(f"{name}: the answers have no rows")
    frame["predicted"] = frame["predicted"].fillna("")
    for row, (slice_id, class_name) in enumerate(zip(frame["id"], frame["class"], strict=True)):
        try:
            parse_slice_id(slice_id)
            check_class(class_name)
        except UWMInputError as error:
            raise UWMInputError(f"{name}: row {row + 1}: {error}") from None
    for column in ("image_width", "image_height"):
        sizes = [_positive_int(value) for value in frame[column]]
        if None in sizes:
            row = sizes.index(None)
            raise UWMInputError(
                f"{name}: row {row + 1} ({frame.at[row, 'id']}): {column} "
                f"{frame.at[row, column]!r} is not a positive integer"
            )
        frame[column] = np.asarray(sizes, dtype=np.int64)
    case_days = frame["id"].map(case_day_of)
    shapes = frame.groupby(case_days)[["image_width", "image_height"]].nunique()
    mixed = (shapes > 1).any(axis=1)
    if mixed.any():
        raise UWMInputError(
            f"{name}: the slices of {mixed.idxmax()} have different sizes (one case-day must "
            f"stack into one volume)"
        )
    return frame


def answers_from_truth(
    truth: pd.DataFrame | str | os.PathLike,
    shapes: Mapping[str, tuple[int, int]],
    order: pd.DataFrame | str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Build an answers frame from a truth CSV and the scan sizes.

    Args:
        truth: ``id,class,segmentation`` (a path, or a frame as :func:`read_label_csv` returns).
        shapes: ``{case_day: (height, width)}`` of every case-day in ``truth``.
        order: a sample submission (``id,class,...``, path or frame) whose row order the answers
            take, as MLE-bench's do; ``None`` keeps the truth's order.

    Returns:
        Columns :data:`ANSWERS_COLUMNS`; ``predicted`` holds the truth strings as they are.

    Raises:
        UWMInputError: a truth id whose case-day has no shape; ``order`` does not hold exactly
            the truth's ``(id, class)`` pairs; as :func:`read_label_csv`.
    """
    name = _source(truth, "truth")
    if not isinstance(truth, pd.DataFrame):
        truth = read_label_csv(truth)
    frame = truth[["id", "class", "segmentation"]].rename(columns={"segmentation": "predicted"})
    frame = frame.reset_index(drop=True).copy()
    case_days = frame["id"].map(case_day_of)
    unknown = ~case_days.isin(list(shapes))
    if unknown.any():
        raise UWMInputError(
            f"{name}: row {frame.at[unknown.idxmax(), 'id']} has no scan size "
            f"(case-day {case_days[unknown.idxmax()]} unknown)"
        )
    frame["image_width"] = [int(shapes[case_day][1]) for case_day in case_days]
    frame["image_height"] = [int(shapes[case_day][0]) for case_day in case_days]
    if order is not None:
        frame = _reorder(frame, order, name)
    return _check_answers(frame, name)


def _reorder(
    frame: pd.DataFrame, order: pd.DataFrame | str | os.PathLike, name: str
) -> pd.DataFrame:
    order_name = _source(order, "sample submission")
    if not isinstance(order, pd.DataFrame):
        order = read_prediction_csv(order)
    keys = pd.MultiIndex.from_frame(frame[["id", "class"]])
    wanted = pd.MultiIndex.from_frame(order[["id", "class"]].astype(str))
    if len(wanted) != len(keys) or not wanted.isin(keys).all() or wanted.duplicated().any():
        raise UWMInputError(
            f"{order_name} does not list exactly the (id, class) rows of {name} "
            f"({len(wanted)} rows against {len(keys)})"
        )
    return frame.set_index(["id", "class"]).loc[wanted].reset_index()


def answers_from_data_root(
    data_root: str | os.PathLike,
    truth_csv: str | os.PathLike,
    sample_csv: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """:func:`answers_from_truth` with the sizes read from the scan names under ``data_root``.

    Args:
        data_root: holds ``train/`` and/or ``test/`` (only the file names are read).
        truth_csv: ``id,class,segmentation``.
        sample_csv: optional row order (see :func:`answers_from_truth`).

    Raises:
        UWMInputError: no scan folder, or as :func:`answers_from_truth`.
    """
    scans = index_data_root(data_root).drop_duplicates("case_day")
    shapes = {
        case_day: (int(height), int(width))
        for case_day, height, width in zip(
            scans["case_day"], scans["height"], scans["width"], strict=True
        )
    }
    return answers_from_truth(truth_csv, shapes, order=sample_csv)


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission as MLE-bench does (``pd.read_csv`` with its defaults).

    Cells pandas reads as NaN (empty, ``NA``, ``nan``, ``null``, ...) become ``""`` (an empty
    mask), as the grader's ``fillna("")`` makes them; every other cell keeps its type, so a
    ``predicted`` column pandas parsed as numbers is refused later, as by the grader.

    Returns:
        Columns :data:`SUBMISSION_COLUMNS` in file order.

    Raises:
        UWMInputError: the file is missing, or has no columns ``id``, ``class``, ``predicted``
            (MLE-bench rejects it).
    """
    path = Path(path)
    if not path.is_file():
        raise UWMInputError(f"submission {str(path)!r} does not exist")
    try:
        # MLE-bench passes float_precision="round_trip" (deprecated in pandas 3); it changes how
        # float cells parse, and no cell that matters here is a float.
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UWMInputError(
            f"{path.name}: {_REJECT}: it cannot be parsed: {one_line(error)}"
        ) from None
    return _check_submission_columns(frame, path.name)


def _check_submission_columns(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    needs = f"a submission needs {', '.join(SUBMISSION_COLUMNS)}"
    require_columns(frame, SUBMISSION_COLUMNS, f"{name}: {_REJECT}", needs)
    frame = frame[list(SUBMISSION_COLUMNS)].reset_index(drop=True).copy()
    frame["predicted"] = frame["predicted"].astype(object).where(frame["predicted"].notna(), "")
    return frame


# ------------------------------------------------------------------------------------ scoring


def _line_up(answers: pd.DataFrame, submission: pd.DataFrame, name: str) -> None:
    """Refuse a submission whose rows do not match the answers' by position."""
    if len(submission) != len(answers):
        raise UWMInputError(
            f"{name}: {_REJECT}: it has {len(submission)} rows, the answers {len(answers)} "
            f"(rows are matched by position)"
        )
    ids = submission["id"].astype(str).to_numpy()
    classes = submission["class"].astype(str).to_numpy()
    wrong = (ids != answers["id"].to_numpy()) | (classes != answers["class"].to_numpy())
    if wrong.any():
        row = int(np.argmax(wrong))
        raise UWMInputError(
            f"{name}: {_REJECT}: row {row + 1} is {ids[row]} {classes[row]}, the answers' row "
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
    answers_name = _source(answers, "answers")
    name = _source(submission, "submission")
    answers = (
        read_answers(answers)
        if not isinstance(answers, pd.DataFrame)
        else _check_answers(answers, answers_name)
    )
    submission = (
        read_submission(submission)
        if not isinstance(submission, pd.DataFrame)
        else _check_submission_columns(submission, name)
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
            prefix = f"{table_name}: {_REJECT}" if table is submission else table_name
            raise UWMInputError(
                f"{prefix}: row {row + 1} ({ids[row]} {classes[row]}): {error}"
            ) from None
        return _fill(low, high, int(heights[row]), int(widths[row]))

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
