"""The files MLE-bench's grader reads: its answers (the truth with the scan sizes) and a submission.

Both are read as the grader reads them, and refused where it would refuse them (see
:mod:`uwm_d2.evaluation.mlebench`); an answers file can also be built from a truth CSV and a data
root's scans.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uwm_d2.core.errors import UWMInputError, one_line
from uwm_d2.core.ids import case_day_of, check_class, parse_slice_id
from uwm_d2.core.layout_reader import (
    index_data_root,
    read_csv_cells,
    read_label_csv,
    read_prediction_csv,
    require_columns,
)

#: Columns of an answers file (MLE-bench's private ``test.csv``), in its order.
ANSWERS_COLUMNS: tuple[str, ...] = ("id", "class", "predicted", "image_width", "image_height")
#: Columns a submission must have (others are ignored).
SUBMISSION_COLUMNS: tuple[str, ...] = ("id", "class", "predicted")
#: How every message about a file the grader would refuse says so.
REJECT = "MLE-bench would reject this file"


def source_name(data: pd.DataFrame | str | os.PathLike, default: str) -> str:
    return Path(data).name if isinstance(data, str | os.PathLike) else default


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
    return check_answers(read_csv_cells(path, "answers file"), path.name)


def check_answers(frame: pd.DataFrame, name: str) -> pd.DataFrame:
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
    name = source_name(truth, "truth")
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
    return check_answers(frame, name)


def _reorder(
    frame: pd.DataFrame, order: pd.DataFrame | str | os.PathLike, name: str
) -> pd.DataFrame:
    order_name = source_name(order, "sample submission")
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
            f"{path.name}: {REJECT}: it cannot be parsed: {one_line(error)}"
        ) from None
    return check_submission_columns(frame, path.name)


def check_submission_columns(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    needs = f"a submission needs {', '.join(SUBMISSION_COLUMNS)}"
    require_columns(frame, SUBMISSION_COLUMNS, f"{name}: {REJECT}", needs)
    frame = frame[list(SUBMISSION_COLUMNS)].reset_index(drop=True).copy()
    frame["predicted"] = frame["predicted"].astype(object).where(frame["predicted"].notna(), "")
    return frame
