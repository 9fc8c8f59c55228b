"""Scoring a submission CSV: perfect is 1.0, empty is what the definition says, rows are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.layout import index_scans, read_label_csv
from uwm_d2.evaluation.csv_scoring import score_rules, score_submission, summary_lines
from uwm_d2.evaluation.mlebench import answers_from_data_root, score_mlebench


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


def test_a_submission_lacking_truth_rows_is_refused_under_every_reading(
    phantom_root: Path, tmp_path: Path
) -> None:
    """Read as empty, blank rows can raise a score; the competition and MLE-bench refuse them."""
    truth = read_label_csv(phantom_root / "test_truth.csv")
    pred = truth.rename(columns={"segmentation": "predicted"})
    drop = np.arange(len(pred)) % 4 == 1  # includes non-empty rows
    assert (pred.loc[drop, "predicted"] != "").any()
    lacking = _write(pred[~drop], tmp_path / "lacking.csv")
    first = pred[drop].iloc[0]
    for rules in ("project", "competition", "mlebench", "all"):
        with pytest.raises(UWMInputError) as raised:
            score_rules(
                lacking, rules, data_root=phantom_root, truth_csv=phantom_root / "test_truth.csv"
            )
        message = str(raised.value)
        assert f"lacks {int(drop.sum())} of the {len(truth)} rows" in message, message
        assert f"first missing: {first['id']} {first['class']}" in message


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


# ------------------------------------------------------------------ readings of the metric


def _imperfect(root: Path, path: Path) -> Path:
    """The truth with a third of its organs missed and a false positive in every 7th empty row:
    a submission on which the readings disagree (valid for the project and for MLE-bench)."""
    frame = read_label_csv(root / "test_truth.csv").rename(columns={"segmentation": "predicted"})
    filled = np.flatnonzero(frame["predicted"] != "")
    empty = np.flatnonzero(frame["predicted"] == "")
    frame.loc[filled[::3], "predicted"] = ""
    frame.loc[empty[::7], "predicted"] = "200 30"
    return _write(frame, path)


def test_readings_and_clinical_pass_through(phantom_root: Path, tmp_path: Path) -> None:
    truth = phantom_root / "test_truth.csv"
    pred = _imperfect(phantom_root, tmp_path / "pred.csv")
    plain = score_submission(phantom_root, truth, pred)
    both = score_submission(phantom_root, truth, pred, readings="all", clinical=False)
    assert "clinical" in plain and "readings" not in plain
    assert "clinical" not in both
    assert list(both["readings"]) == ["project", "competition", "mlebench"]
    for key in ("score", "dice", "hausdorff", "per_class", "num_slices", "num_case_days"):
        assert both[key] == plain[key]
    assert both["readings"]["project"]["score"] == pytest.approx(plain["score"])
    # The volume-level MLE-bench reading agrees with the grader on the files themselves (this
    # submission is in the answers' order and valid for both).
    grader = score_mlebench(answers_from_data_root(phantom_root, truth), pred)
    for key in ("score", "dice", "hausdorff", "num_dice_rows", "num_hausdorff_volumes"):
        assert both["readings"]["mlebench"][key] == pytest.approx(grader[key]), key
    scores = {name: summary["score"] for name, summary in both["readings"].items()}
    assert len({round(score, 9) for score in scores.values()}) == 3, scores


def test_score_rules_under_each_reading(phantom_root: Path, tmp_path: Path) -> None:
    truth = phantom_root / "test_truth.csv"
    pred = _imperfect(phantom_root, tmp_path / "pred.csv")
    source = {"data_root": phantom_root, "truth_csv": truth}
    project = score_rules(pred, "project", **source)
    assert project == score_submission(phantom_root, truth, pred)
    competition = score_rules(pred, "competition", **source)
    direct = score_submission(phantom_root, truth, pred, readings="competition", clinical=False)
    assert competition["reading"] == "competition"
    assert competition["score"] == direct["readings"]["competition"]["score"]
    assert competition["num_slices"] == direct["num_slices"] and "clinical" not in competition
    mlebench = score_rules(pred, "mlebench", **source)
    assert mlebench == score_mlebench(answers_from_data_root(phantom_root, truth), pred)
    every = score_rules(pred, "all", **source)
    assert {key: every[key] for key in project} == project
    assert every["readings"]["competition"] == {
        key: value
        for key, value in competition.items()
        if key not in ("num_slices", "num_case_days")
    }
    assert every["readings"]["mlebench"] == mlebench
    lines = summary_lines(every, "all")
    assert len(lines) == 3
    for line, name in zip(lines, ("project", "competition", "mlebench"), strict=True):
        summary = every["readings"][name]
        assert line.startswith(f"score {summary['score']:.4f} (dice {summary['dice']:.3f}, ")
        assert f"on {every['num_slices']} slices" in line and f"[{name}" in line


def test_an_answers_file_scores_as_the_data_root(phantom_root: Path, tmp_path: Path) -> None:
    truth = phantom_root / "test_truth.csv"
    pred = _imperfect(phantom_root, tmp_path / "pred.csv")
    answers = tmp_path / "answers.csv"
    answers_from_data_root(phantom_root, truth).to_csv(answers, index=False)
    from_file = score_rules(pred, "mlebench", answers_csv=answers)
    assert from_file == score_rules(pred, "mlebench", data_root=phantom_root, truth_csv=truth)
    with pytest.raises(UWMInputError, match="scored under 'mlebench' only"):
        score_rules(pred, "all", answers_csv=answers)
    with pytest.raises(UWMInputError, match="replaces the data root"):
        score_rules(pred, "mlebench", answers_csv=answers, data_root=phantom_root)
    with pytest.raises(UWMInputError, match="unknown rules 'kaggle'"):
        score_rules(pred, "kaggle", data_root=phantom_root, truth_csv=truth)


def test_a_file_mlebench_rejects_is_refused_under_its_rules(
    phantom_root: Path, tmp_path: Path
) -> None:
    truth = phantom_root / "test_truth.csv"
    frame = read_label_csv(truth).rename(columns={"segmentation": "predicted"})
    # Reordered rows: the project matches by (id, class) and scores them, MLE-bench refuses.
    swapped = frame.iloc[[1, 0, *range(2, len(frame))]]
    path = _write(swapped, tmp_path / "swapped.csv")
    assert score_rules(path, "project", data_root=phantom_root, truth_csv=truth)["score"] == 1.0
    for rules in ("mlebench", "all"):
        with pytest.raises(
            UWMInputError, match=r"swapped\.csv: MLE-bench would reject this file: row 1 "
        ):
            score_rules(path, rules, data_root=phantom_root, truth_csv=truth)
