"""Score a submission CSV against a truth CSV with the competition metric (no torch needed).

The truth decides what is scored: every truth row counts, a truth row missing from the prediction
counts as an empty mask, and a prediction row that is not in the truth is an error (it usually means
the two files describe different data). Each (case_day, class) volume stacks the truth slices of
that case-day in slice-number order; scan shapes and spacings come from the scan file names under
``data_root/train`` and ``data_root/test``. The math is :func:`uwm_d2.core.metrics.score_volumes`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import SLICE_THICKNESS_MM
from uwm_d2.core.layout import (
    check_row,
    decode_row,
    index_scans,
    label_table,
    read_label_csv,
    read_prediction_csv,
    row_context,
)
from uwm_d2.core.metrics import LazyVolumes, score_volumes


def _index_data_root(root: Path) -> pd.DataFrame:
    """All scans of ``train/`` and ``test/`` (whichever exist), one row per slice id."""
    if not root.is_dir():
        raise UWMInputError(f"data root {str(root)!r} is not a folder")
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
    data_root: str | os.PathLike, truth_csv: str | os.PathLike, pred_csv: str | os.PathLike
) -> dict[str, Any]:
    """Score ``pred_csv`` against ``truth_csv``; see :func:`uwm_d2.core.metrics.score_volumes`.

    Args:
        data_root: holds ``train/`` and/or ``test/`` with the scans the CSVs describe (only the
            file names are read, for the shapes and spacings).
        truth_csv: ``id,class,segmentation``.
        pred_csv: ``id,class,predicted`` (or ``segmentation``).

    Returns:
        The dict of :func:`score_volumes`: ``score``, ``dice``, ``hausdorff``, ``per_class``,
        ``clinical`` (3D Dice and HD95 in mm with spacing ``(3.0, PY, PX)``), ``num_slices``,
        ``num_case_days``.

    Raises:
        UWMInputError: a malformed CSV, row, id, class or RLE (named with its row); a truth id
            without a row for every class; a prediction row that is not in the truth; a truth id
            with no scan on disk.
    """
    truth_path, pred_path = Path(truth_csv), Path(pred_csv)
    truth = read_label_csv(truth_path)
    pred = read_prediction_csv(pred_path)
    if truth.empty:
        raise UWMInputError(f"truth CSV {str(truth_path)!r} has no rows")
    scans = _index_data_root(Path(data_root))

    label_table(truth, "segmentation", truth_path.name, scans.index, str(data_root))
    truth_keys = pd.MultiIndex.from_frame(truth[["id", "class"]])
    extra = ~pd.MultiIndex.from_frame(pred[["id", "class"]]).isin(truth_keys)
    if extra.any():
        row = pred.loc[extra.argmax()]
        raise UWMInputError(
            f"{row_context(pred_path.name, row['id'], row['class'])} is not in the truth "
            f"{truth_path.name}"
        )

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
    return score_volumes(volumes, spacings)
