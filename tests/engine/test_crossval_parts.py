"""The parts of tools/cross_validate.py that need no training: --folds, a fold that fails, and
--init-from's refusal of a model that saw a fold's validation cases."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

from uwm_d2.core.errors import UWMInputError, UWMRunError
from uwm_d2.crossval.plan import RECORD, init_checkpoints, parse_folds
from uwm_d2.data.coco import make_coco
from uwm_d2.data.splits import RunSplits
from uwm_d2.engine.crossval import _run_fold


def test_fold_lists() -> None:
    assert parse_folds("all", 4) == [0, 1, 2, 3]
    assert parse_folds("2, 0", 4) == [0, 2]
    for text, message in (("4", "fold 4 is out of range"), ("1,1", "fold 1 is given twice"),
                          ("one", "'one' is not a fold number")):  # fmt: skip
        with pytest.raises(UWMInputError, match=message):
            parse_folds(text, 4)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (1, UWMRunError, "fold 3 failed (exit 1: training diverged at iteration 7)"),
        (2, UWMInputError, "fold 3: UWM.FOO is not a key"),
    ],
)
def test_a_failing_fold_is_one_line_naming_it_and_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], status: int, error: type, expected: str
) -> None:
    message = "training diverged at iteration 7" if status == 1 else "UWM.FOO is not a key"
    script = f"print('iteration 1'); print('error: {message}'); raise SystemExit({status})"
    with pytest.raises(error) as raised:
        _run_fold([sys.executable, "-c", script], 3, tmp_path / "fold3", {})
    assert expected in str(raised.value)
    if status == 1:
        assert f"its log: {tmp_path / 'fold3' / 'log.txt'}" in str(raised.value)
        assert "rerun with --resume" in str(raised.value)
    assert "[fold 3] iteration 1" in capsys.readouterr().out  # its progress was shown


def test_init_from_refuses_a_model_that_trained_on_the_folds_validation_cases(
    phantom_root: Path, tmp_path: Path
) -> None:
    ours, theirs = tmp_path / "coco2", tmp_path / "coco3"
    make_coco(phantom_root, ours, num_folds=2, workers=1, progress=False)
    make_coco(phantom_root, theirs, num_folds=3, workers=1, progress=False)
    other = tmp_path / "other_cv"
    for fold in (0, 1):
        (other / f"fold{fold}").mkdir(parents=True)
        (other / f"fold{fold}" / "model_best.pth").write_bytes(b"weights")
    with pytest.raises(UWMInputError, match="is not a cross-validation folder"):
        init_checkpoints(other, [0, 1], ours)
    (other / RECORD).write_text("{}")
    # Same folds: fold k of the other run trained on none of our fold k's validation cases.
    for fold in (0, 1):
        RunSplits.of(ours, fold).write(other / f"fold{fold}")
    found = init_checkpoints(other, [0, 1], ours)
    assert found == {k: other / f"fold{k}" / "model_best.pth" for k in (0, 1)}
    # Other folds: some fold's model trained on a validation case of ours.
    for fold in (0, 1):
        RunSplits.of(theirs, fold).write(other / f"fold{fold}")
    with pytest.raises(UWMInputError, match="a validation case of fold"):
        init_checkpoints(other, [0, 1], ours)
