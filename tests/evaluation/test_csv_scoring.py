"""Scoring a submission CSV: perfect is 1.0, empty is what the definition says, rows are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.layout import index_scans, read_label_csv
from uwm_d2.evaluation.csv_scoring import score_submission


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_a_perfect_prediction_scores_one(phantom_root: Path, tmp_path: Path) -> None:
    truth = read_label_csv(phantom_root / "test_truth.csv")
    pred = _write(truth.rename(columns={"segmentation": "predicted"}), tmp_path / "pred.csv")
    result = score_submission(phantom_root, phantom_root / "test_truth.csv", pred)
    assert result["score"] == pytest.approx(1.0)
    assert result["dice"] == pytest.approx(1.0) and result["hausdorff"] == pytest.approx(0.0)
    assert result["num_slices"] == len(index_scans(phantom_root, "test"))
    # The truth file itself (column "segmentation") is accepted as a prediction too.
    same = score_submission(
        phantom_root, phantom_root / "test_truth.csv", phantom_root / "test_truth.csv"
    )
    assert same["score"] == pytest.approx(1.0)


def test_an_empty_prediction_scores_as_defined(phantom_root: Path) -> None:
    truth = read_label_csv(phantom_root / "test_truth.csv")
    result = score_submission(
        phantom_root, phantom_root / "test_truth.csv", phantom_root / "sample_submission.csv"
    )
    # Dice is 1 exactly on the rows whose truth is empty, 0 elsewhere.
    dice = float((truth["segmentation"] == "").mean())
    # Hausdorff is 0 for a (case_day, class) with an empty truth volume, 1 otherwise.
    truth["case_day"] = truth["id"].str.extract(r"^(case\d+_day\d+)_", expand=False)
    volume_empty = truth.groupby(["case_day", "class"])["segmentation"].apply(
        lambda s: (s == "").all()
    )
    hausdorff = float(1.0 - volume_empty.mean())
    assert result["dice"] == pytest.approx(dice)
    assert result["hausdorff"] == pytest.approx(hausdorff)
    assert result["score"] == pytest.approx(0.4 * dice + 0.6 * (1.0 - hausdorff))
    assert 0.0 < result["score"] < 1.0


def test_missing_rows_count_as_empty(phantom_root: Path, tmp_path: Path) -> None:
    truth = read_label_csv(phantom_root / "test_truth.csv")
    pred = truth.rename(columns={"segmentation": "predicted"})
    drop = np.arange(len(pred)) % 4 == 0  # includes non-empty rows
    assert (pred.loc[drop, "predicted"] != "").any()
    blanked = pred.copy()
    blanked.loc[drop, "predicted"] = ""
    missing = score_submission(
        phantom_root, phantom_root / "test_truth.csv", _write(pred[~drop], tmp_path / "a.csv")
    )
    empty = score_submission(
        phantom_root, phantom_root / "test_truth.csv", _write(blanked, tmp_path / "b.csv")
    )
    assert missing == empty
    assert missing["score"] < 1.0


def test_a_prediction_row_not_in_the_truth_is_an_error(phantom_root: Path, tmp_path: Path) -> None:
    pred = pd.read_csv(phantom_root / "sample_submission.csv", dtype=str, keep_default_na=False)
    extra = pd.DataFrame(
        {"id": ["case9999_day0_slice_0001"], "class": ["stomach"], "predicted": [""]}
    )
    path = _write(pd.concat([pred, extra]), tmp_path / "pred.csv")
    with pytest.raises(UWMInputError, match="case9999_day0_slice_0001 stomach is not in the truth"):
        score_submission(phantom_root, phantom_root / "test_truth.csv", path)


def test_a_truth_id_without_a_scan_is_an_error(phantom_root: Path, tmp_path: Path) -> None:
    truth = read_label_csv(phantom_root / "test_truth.csv")
    ghost = pd.DataFrame(
        {
            "id": ["case9999_day0_slice_0001"] * 3,
            "class": ["large_bowel", "small_bowel", "stomach"],
            "segmentation": [""] * 3,
        }
    )
    path = _write(pd.concat([truth, ghost]), tmp_path / "truth.csv")
    with pytest.raises(UWMInputError, match="case9999_day0_slice_0001 has no scan"):
        score_submission(phantom_root, path, phantom_root / "sample_submission.csv")


def test_a_bad_prediction_rle_names_its_row(phantom_root: Path, tmp_path: Path) -> None:
    pred = pd.read_csv(phantom_root / "sample_submission.csv", dtype=str, keep_default_na=False)
    pred.loc[4, "predicted"] = "1 99999999"
    path = _write(pred, tmp_path / "pred.csv")
    with pytest.raises(
        UWMInputError, match=f"pred.csv: row {pred.loc[4, 'id']} {pred.loc[4, 'class']}"
    ):
        score_submission(phantom_root, phantom_root / "test_truth.csv", path)
