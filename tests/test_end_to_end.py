"""End to end on a tiny phantom: train a few iterations → infer_submit → evaluate, via the tools.

The model is barely trained, so the score itself says little; what is checked is that every stage
runs as a user runs it and hands the next stage a valid file: a checkpoint the inference tool
accepts, a submission with exactly the sample submission's rows, a score JSON evaluate can make.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("detectron2")

REPO = Path(__file__).resolve().parents[1]
INSTANT = "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_test.yaml"


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / name), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_train_infer_evaluate(phantom_root: Path, tmp_path: Path) -> None:
    coco, out = tmp_path / "coco", tmp_path / "train"
    _tool("make_coco.py", "--data-root", str(phantom_root), "--out", str(coco), "--folds", "2")
    _tool(
        "train_net.py", "--config-file", INSTANT,
        "UWM.DATA_ROOT", str(phantom_root), "UWM.COCO_DIR", str(coco), "UWM.NUM_FOLDS", "2",
        "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "3",
        "TEST.EVAL_PERIOD", "0", "UWM.VAL_LOSS_PERIOD", "0",
    )  # fmt: skip
    checkpoint = out / "model_final.pth"
    assert checkpoint.is_file()

    submission = tmp_path / "submission.csv"
    _tool(
        "infer_submit.py", "--config-file", INSTANT, "--data-root", str(phantom_root),
        "--out", str(submission), "--batch-size", "4", "--tta",
        "MODEL.WEIGHTS", f"{checkpoint},{checkpoint}", "MODEL.DEVICE", "cpu",
    )  # fmt: skip
    rows = pd.read_csv(submission, keep_default_na=False)
    sample = pd.read_csv(phantom_root / "sample_submission.csv", keep_default_na=False)
    assert list(rows.columns) == ["id", "class", "predicted"]
    assert rows[["id", "class"]].equals(sample[["id", "class"]])

    score_json = tmp_path / "score.json"
    printed = _tool(
        "evaluate.py", "--data-root", str(phantom_root),
        "--truth", str(phantom_root / "test_truth.csv"), "--pred", str(submission),
        "--json", str(score_json),
    )  # fmt: skip
    result = json.loads(score_json.read_text())
    assert json.loads(printed.stdout) == result
    assert 0.0 <= result["score"] <= 1.0
    assert result["num_slices"] == len(sample) // 3
    assert set(result["per_class"]) == {"large_bowel", "small_bowel", "stomach"}
