"""Score a submission CSV against a truth CSV with the competition metric (no torch needed).

The truth decides what is scored: every truth row counts, and the prediction must hold exactly the
truth's ``(id, class)`` rows: a missing row is an error (the competition and MLE-bench refuse such a
file; read as empty, blank rows could even raise a score), and so is a row that is not in the truth
(it usually means the two files describe different data). Each (case_day, class) volume stacks
the truth slices of that case-day in slice-number order; scan shapes and spacings come from the
scan file names under ``data_root/train`` and ``data_root/test``. The math is
:func:`uwm_d2.core.metrics.score_volumes`.

:func:`score_rules` scores one submission under a named reading of the metric, or all of them
(:mod:`uwm_d2.core.readings`): ``project`` and ``competition`` from the truth and the scans,
``mlebench`` with MLE-bench's own grader (:mod:`uwm_d2.evaluation.mlebench`: rows matched by
position, the files it would reject refused), from an answers file or from the truth and the scans.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import SLICE_THICKNESS_MM
from uwm_d2.core.layout import (
    check_data_root,
    check_row,
    decode_row,
    index_scans,
    label_table,
    read_label_csv,
    read_prediction_csv,
    row_context,
)
from uwm_d2.core.metrics import LazyVolumes, score_volumes
from uwm_d2.core.readings import READINGS
from uwm_d2.evaluation.mlebench import answers_from_data_root, score_mlebench

#: What :func:`score_rules` (``tools/evaluate.py --rules``) accepts: a reading, or ``all``.
RULES: tuple[str, ...] = (*READINGS, "all")
#: The readings that need the scans' geometry (sizes, spacings) from a data root and a truth CSV;
#: ``mlebench`` can also be scored from an answers file, which carries the sizes itself.
NEEDS_DATA_ROOT: tuple[str, ...] = ("project", "competition", "all")


def _index_data_root(root: Path) -> pd.DataFrame:
    """All scans of ``train/`` and ``test/`` (whichever exist), one row per slice id."""
    check_data_root(root)
    frames = [index_scans(root, split) for split in ("train", "test") if (root / split).is_dir()]
    if not frames:
        raise UWMInputError(f"data root {str(root)!r} has neither a train/ nor a test/ folder")
    scans = pd.concat(frames, ignore_index=True)
    repeated = scans["id"].duplicated()
    if repeated.any():
        slice_id = scans.loc[repeated.idxmax(), "id"]
        raise UWMInputError(f"scan {slice_id} is in both train/ and test/ of {str(root)!r}")
    return scans.set_index("id")


class CsvVolumes(LazyVolumes):
    """``{(case_day, class): (pred_vol, truth_vol)}`` decoded on access, one volume pair at a time.

    A real test set holds ~150 case-days of up to 144 x 360 x 310 voxels per class; decoding all of
    them up front would need gigabytes, while :func:`score_volumes` looks at one pair at a time.
    """

    def __init__(
        self,
        slices: dict[str, list[str]],
        shapes: dict[str, tuple[int, int]],
        truth: dict[tuple[str, str], str],
        pred: dict[tuple[str, str], str],
        truth_name: str,
        pred_name: str,
    ) -> None:
        self._slices, self._shapes = slices, shapes
        self._truth, self._pred = truth, pred
        self._names = (truth_name, pred_name)
        super().__init__(list(slices))

    def _load(self, case_day: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        ids = self._slices[case_day]
        height, width = self._shapes[case_day]
        pred = np.zeros((len(ids), height, width), dtype=bool)
        truth = np.zeros((len(ids), height, width), dtype=bool)
        for depth, slice_id in enumerate(ids):
            for volume, table, file_name in (
                (truth, self._truth, self._names[0]),
                (pred, self._pred, self._names[1]),
            ):
                rle = table.get((slice_id, name), "")
                if rle:
                    volume[depth] = decode_row(rle, (height, width), file_name, slice_id, name)
        return pred, truth


def score_submission(
    data_root: str | os.PathLike,
    truth_csv: str | os.PathLike,
    pred_csv: str | os.PathLike,
    *,
    readings: str | Sequence[str] = (),
    clinical: bool = True,
) -> dict[str, Any]:
    """Score ``pred_csv`` against ``truth_csv``; see :func:`uwm_d2.core.metrics.score_volumes`.

    Args:
        data_root: holds ``train/`` and/or ``test/`` with the scans the CSVs describe (only the
            file names are read, for the shapes and spacings).
        truth_csv: ``id,class,segmentation``.
        pred_csv: ``id,class,predicted`` (or ``segmentation``).
        readings: other readings of the metric to score in the same pass (names of
            :data:`uwm_d2.core.readings.READINGS` or ``"all"``); each is scored from the volumes
            these CSVs decode to (matched by ``(id, class)``, missing rows empty), so this
            ``mlebench`` entry is the volume-level reading, not the file-level grader of
            :func:`score_rules`.
        clinical: also compute the clinical block (HD95 is the slowest part of the scoring).

    Returns:
        The dict of :func:`score_volumes`: ``score``, ``dice``, ``hausdorff``, ``per_class``,
        ``clinical`` (3D Dice and HD95 in mm with spacing ``(3.0, PY, PX)``; absent when
        ``clinical`` is false), ``num_slices``, ``num_case_days``, and ``readings`` when any
        were asked.

    Raises:
        UWMInputError: a malformed CSV, row, id, class or RLE (named with its row); a truth id
            without a row for every class; a prediction row that is not in the truth; a truth id
            with no scan on disk.
        ValueError: an unknown reading name.
    """
    volumes, spacings = load_volumes(data_root, truth_csv, pred_csv)
    return score_volumes(volumes, spacings, clinical=clinical, readings=readings)


def check_same_rows(
    truth: pd.DataFrame, pred: pd.DataFrame, truth_name: str, pred_name: str
) -> None:
    """The prediction holds exactly the truth's ``(id, class)`` rows (in any order).

    Raises:
        UWMInputError: a prediction row that is not in the truth, or truth rows the prediction
            lacks (their count and the first one named). Every public reading scores the whole
            truth: a missing row is not an empty one (the competition and MLE-bench refuse such
            a file, and read as empty, blank rows can raise a score).
    """
    truth_keys = pd.MultiIndex.from_frame(truth[["id", "class"]])
    pred_keys = pd.MultiIndex.from_frame(pred[["id", "class"]])
    extra = ~pred_keys.isin(truth_keys)
    if extra.any():
        row = pred.loc[extra.argmax()]
        raise UWMInputError(
            f"{row_context(pred_name, row['id'], row['class'])} is not in the truth {truth_name}"
        )
    lacking = ~truth_keys.isin(pred_keys)
    if lacking.any():
        row = truth.loc[lacking.argmax()]
        raise UWMInputError(
            f"{pred_name} lacks {int(lacking.sum())} of the {len(truth)} rows of the truth "
            f"{truth_name} (first missing: {row['id']} {row['class']}); a submission needs every "
            "(id, class) row"
        )


def load_volumes(
    data_root: str | os.PathLike, truth_csv: str | os.PathLike, pred_csv: str | os.PathLike
) -> tuple[CsvVolumes, dict[str, tuple[float, float, float]]]:
    """The checked volume pairs of :func:`score_submission` and each case-day's ``(z, y, x)`` mm.

    Raises:
        UWMInputError: as :func:`score_submission`.
    """
    truth_path, pred_path = Path(truth_csv), Path(pred_csv)
    truth = read_label_csv(truth_path)
    pred = read_prediction_csv(pred_path)
    if truth.empty:
        raise UWMInputError(f"truth CSV {str(truth_path)!r} has no rows")
    scans = _index_data_root(Path(data_root))

    label_table(truth, "segmentation", truth_path.name, scans.index, str(data_root))
    check_same_rows(truth, pred, truth_path.name, pred_path.name)
    truth_rles = dict(
        zip(zip(truth["id"], truth["class"], strict=True), truth["segmentation"], strict=True)
    )
    pred_rles = dict(
        zip(zip(pred["id"], pred["class"], strict=True), pred["predicted"], strict=True)
    )
    ordered = scans.loc[pd.unique(truth["id"])].sort_values(["case", "day", "slice"])
    slices = {
        case_day: group.index.tolist()
        for case_day, group in ordered.groupby("case_day", sort=False)
    }
    first = ordered.groupby("case_day", sort=False).first()
    shapes = {cd: (int(r.height), int(r.width)) for cd, r in first.iterrows()}
    spacings = {
        cd: (SLICE_THICKNESS_MM, float(r.spacing_y), float(r.spacing_x))
        for cd, r in first.iterrows()
    }
    # Validate every RLE before the (slow) metric, so a bad row fails in seconds, not minutes.
    for table, file_name in ((truth_rles, truth_path.name), (pred_rles, pred_path.name)):
        for (slice_id, name), rle in table.items():
            if rle:
                height, width = shapes[scans.at[slice_id, "case_day"]]
                check_row(rle, height * width, file_name, slice_id, name)
    volumes = CsvVolumes(slices, shapes, truth_rles, pred_rles, truth_path.name, pred_path.name)
    return volumes, spacings


#: Columns of :func:`volume_comparison` (``tools/evaluate.py --volumes``), in this order.
COMPARISON_COLUMNS: tuple[str, ...] = (
    "case_day",
    "class",
    "truth_voxels",
    "pred_voxels",
    "truth_ml",
    "pred_ml",
    "diff_ml",
    "diff_percent",
    "dice_3d",
    "hd95_mm",
)


def volume_comparison(
    data_root: str | os.PathLike, truth_csv: str | os.PathLike, pred_csv: str | os.PathLike
) -> list[dict[str, Any]]:
    """One row per (case_day, class) of the truth: organ volumes, their difference, 3D figures.

    ``*_ml`` is ``voxels * PX * PY * 3.0 / 1000``; ``diff_ml = pred_ml - truth_ml`` and
    ``diff_percent = 100 * diff_ml / truth_ml`` (NaN when the truth is empty); ``dice_3d`` is
    :func:`~uwm_d2.core.metrics.dice_3d` (1 when both are empty) and ``hd95_mm``
    :func:`~uwm_d2.core.metrics.hd95_mm` with spacing ``(3.0, PY, PX)`` (NaN when either is
    empty). Rows in case-day order (case, day), classes in ``CLASSES`` order.

    Raises:
        UWMInputError: as :func:`score_submission`.
    """
    from uwm_d2.core.metrics import dice_3d, hd95_mm
    from uwm_d2.core.nifti import volume_ml

    volumes, spacings = load_volumes(data_root, truth_csv, pred_csv)
    rows = []
    for case_day, name in volumes:
        pred, truth = volumes[case_day, name]
        thickness, spacing_y, spacing_x = spacings[case_day]
        truth_voxels, pred_voxels = int(np.count_nonzero(truth)), int(np.count_nonzero(pred))
        truth_ml = volume_ml(truth_voxels, spacing_x, spacing_y)
        pred_ml = volume_ml(pred_voxels, spacing_x, spacing_y)
        rows.append(
            {
                "case_day": case_day,
                "class": name,
                "truth_voxels": truth_voxels,
                "pred_voxels": pred_voxels,
                "truth_ml": truth_ml,
                "pred_ml": pred_ml,
                "diff_ml": pred_ml - truth_ml,
                "diff_percent": 100.0 * (pred_ml - truth_ml) / truth_ml
                if truth_voxels
                else math.nan,
                "dice_3d": dice_3d(pred, truth),
                "hd95_mm": hd95_mm(pred, truth, (thickness, spacing_y, spacing_x)),
            }
        )
    return rows


def score_rules(
    pred_csv: str | os.PathLike,
    rules: str = "project",
    *,
    data_root: str | os.PathLike | None = None,
    truth_csv: str | os.PathLike | None = None,
    answers_csv: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a submission under one reading of the metric, or under all of them side by side.

    The truth comes either from ``data_root`` + ``truth_csv`` (every reading) or from an
    MLE-bench answers file ``answers_csv`` (``id,class,predicted,image_width,image_height``,
    which carries the scan sizes but no spacings: ``mlebench`` only).

    ``mlebench`` is always MLE-bench's grader on files (:func:`score_mlebench`): rows are matched
    by position, so with a data root the truth CSV plays the answers, its rows in its own order
    (:func:`answers_from_data_root`); a submission the grader would reject is refused, under
    ``all`` too, since one of its numbers would not exist.

    Args:
        pred_csv: the submission, ``id,class,predicted``.
        rules: a name of :data:`RULES`.
        data_root, truth_csv: the scans (only their names are read) and ``id,class,segmentation``.
        answers_csv: MLE-bench's answers file, instead of the two above.

    Returns:
        A JSON-serializable dict, by ``rules``:

        * ``project``: :func:`score_submission`'s result, unchanged (with ``clinical``);
        * ``competition``: that reading's summary (``reading``, ``score``, ``dice``,
          ``hausdorff``, ``per_class``, the ``num_*`` counts of
          :func:`uwm_d2.core.readings.score_readings`) plus ``num_slices``, ``num_case_days``;
          no clinical block;
        * ``mlebench``: :func:`score_mlebench`'s result (``score`` is ``None`` where the grader
          gets NaN: everything empty on both sides);
        * ``all``: the ``project`` result plus ``readings``: ``{project, competition,
          mlebench}`` summaries, the last from :func:`score_mlebench`.

    Raises:
        UWMInputError: bad input (named with its row), a submission MLE-bench would reject, a
            reading that needs a data root asked for with an answers file only, or neither (or
            both) sources of truth given.
    """
    if rules not in RULES:
        raise UWMInputError(f"unknown rules {rules!r} (known: {', '.join(RULES)})")
    if answers_csv is not None:
        if data_root is not None or truth_csv is not None:
            raise UWMInputError("an answers file replaces the data root and truth CSV: give one")
        if rules != "mlebench":
            raise UWMInputError(
                f"rules {rules!r} need the scans' geometry from a data root and a truth CSV; "
                f"an answers file alone is scored under 'mlebench' only"
            )
        return score_mlebench(answers_csv, pred_csv)
    if data_root is None or truth_csv is None:
        raise UWMInputError("scoring needs a data root and a truth CSV, or an answers file")

    # Before any reading (MLE-bench's grader would refuse a short file in its own words, by
    # row count only): which rows are missing or extra, named.
    truth_path, pred_path = Path(truth_csv), Path(pred_csv)
    check_same_rows(
        read_label_csv(truth_path), read_prediction_csv(pred_path), truth_path.name, pred_path.name
    )
    mlebench = None
    if rules in ("mlebench", "all"):
        # First: it is quick, and a file MLE-bench refuses fails before the slow part.
        answers = answers_from_data_root(data_root, truth_csv)
        mlebench = score_mlebench(answers, pred_csv)
        if rules == "mlebench":
            return mlebench
    if rules == "project":
        return score_submission(data_root, truth_csv, pred_csv)
    if rules == "competition":
        scored = score_submission(
            data_root, truth_csv, pred_csv, readings="competition", clinical=False
        )
        return {
            **scored["readings"]["competition"],
            "num_slices": scored["num_slices"],
            "num_case_days": scored["num_case_days"],
        }
    scored = score_submission(data_root, truth_csv, pred_csv, readings=("project", "competition"))
    scored["readings"]["mlebench"] = mlebench
    return scored


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _summary_line(
    summary: Mapping[str, Any], name: str, num_slices: int, num_case_days: int
) -> str:
    """``score S (dice D, hausdorff H) on N slices, M case-days [name]`` (+ what was skipped)."""
    line = (
        f"score {_number(summary['score'], 4)} (dice {_number(summary['dice'], 3)}, "
        f"hausdorff {_number(summary['hausdorff'], 3)}) on {num_slices} slices, "
        f"{num_case_days} case-days [{name}"
    )
    skipped_rows = summary.get("num_dice_rows_skipped", 0)
    skipped_volumes = summary.get("num_hausdorff_skipped", 0)
    if skipped_rows or skipped_volumes:
        # The readings that skip empty pairs average over fewer values; say how many were left.
        line += (
            f"; skipped as empty on both sides: {skipped_rows} rows, "
            f"{skipped_volumes} Hausdorff volumes"
        )
    return line + "]"


def summary_lines(result: Mapping[str, Any], rules: str) -> list[str]:
    """One human line per reading of a :func:`score_rules` result (``all``: one per reading)."""
    counts = (result["num_slices"], result["num_case_days"])
    if rules == "all":
        return [
            _summary_line(summary, name, *counts) for name, summary in result["readings"].items()
        ]
    return [_summary_line(result, rules, *counts)]
