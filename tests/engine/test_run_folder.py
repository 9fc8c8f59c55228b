"""A run folder a user can trust: resume keeps what a finished run measured, splits cannot change
under a run, a failed or refused command leaves a finished run's files byte for byte, --eval-only
writes results but not the training config, and the same command trains the same model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("detectron2")

import torch

from uwm_d2.config import build_cfg
from uwm_d2.data.coco import make_coco
from uwm_d2.data.splits import SPLITS_FILE, RunSplits
from uwm_d2.engine.prepare import interrupted_message

REPO = Path(__file__).resolve().parents[2]
INSTANT = REPO / "configs" / "quick_schedules" / "mask_rcnn_R_18_FPN_instant_test.yaml"

#: A 4-iteration run: a checkpoint at iteration 1 and the final one, an evaluation after
#: iteration 1 and the final one (logged at iteration 4), no validation loss.
SHORT = [
    "MODEL.DEVICE", "cpu", "UWM.NUM_FOLDS", "2", "SOLVER.MAX_ITER", "4",
    "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2", "UWM.VAL_LOSS_PERIOD", "0",
    "UWM.EVAL.SCORE_THRESHOLDS", "(0.0, 0.0, 0.0)",
]  # fmt: skip


def _train_net(
    data: tuple[Path, Path], out: Path, *flags: str, opts: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    data_root, coco = data
    command = [
        sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(INSTANT),
        *flags, *SHORT, "UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(coco),
        "OUTPUT_DIR", str(out), *opts,
    ]  # fmt: skip
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        timeout=600,
        cwd=REPO,
    )


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: its relative path and the sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


def _one_error_line(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished(instant_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-iteration run (read-only: tests work on copies)."""
    out = tmp_path_factory.mktemp("run_folder") / "finished"
    run = _train_net(instant_data, out)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


@pytest.fixture(scope="module")
def three_folds(instant_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same scans, split into 3 folds instead of the 2 the run trained on."""
    coco = tmp_path_factory.mktemp("run_folder") / "coco3"
    make_coco(instant_data[0], coco, num_folds=3, workers=1, progress=False)
    return coco


@pytest.mark.slow
def test_a_run_records_its_splits(finished: Path, instant_data: tuple[Path, Path]) -> None:
    recorded = RunSplits.read(finished)
    assert recorded == RunSplits.of(instant_data[1], 0)
    assert recorded.num_folds == 2 and set(recorded.train_cases).isdisjoint(recorded.val_cases)


@pytest.mark.slow
def test_resuming_a_finished_run_keeps_its_final_evaluation_and_best(
    run_copy: Path, instant_data: tuple[Path, Path]
) -> None:
    before = _rows(run_copy)
    final = [row for row in before if row["iteration"] == 4]
    assert final and "uwm/score" in final[0]  # detectron2 logs the final evaluation at MAX_ITER
    best = max((row["uwm/score"], row["iteration"]) for row in before if "uwm/score" in row)
    best_bytes = (run_copy / "model_best.pth").read_bytes()

    run = _train_net(instant_data, run_copy, "--resume", opts=("SOLVER.MAX_ITER", "6"))
    assert run.returncode == 0, run.stderr[-3000:]
    log = (run_copy / "log.txt").read_text()
    assert f"resumed run's best uwm/score: {best[0]:.5f} @ iteration {best[1]}" in log
    after = _rows(run_copy)
    assert [row for row in after if row["iteration"] == 4] == final  # kept, once
    iterations = [row["iteration"] for row in after]
    assert len(iterations) == len(set(iterations))
    new_final = [row["uwm/score"] for row in after if row["iteration"] == 6 and "uwm/score" in row]
    assert len(new_final) == 1
    if new_final[0] <= best[0]:  # model_best.pth is only ever replaced by a better score
        assert (run_copy / "model_best.pth").read_bytes() == best_bytes


@pytest.mark.slow
def test_resuming_a_finished_run_without_more_iterations_changes_nothing(
    run_copy: Path, instant_data: tuple[Path, Path]
) -> None:
    before = _snapshot(run_copy)
    run = _train_net(instant_data, run_copy, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "already trained to iteration 4 (SOLVER.MAX_ITER 4): nothing to resume" in run.stdout
    assert _snapshot(run_copy) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "opts", "expected"),
    [
        pytest.param((), (), "already holds a run", id="train-over-a-run"),
        pytest.param(("--resume",), ("UWM.FOLD", "7"), "UWM.FOLD 7 is not a fold", id="bad-fold"),
        pytest.param(
            ("--eval-only",), ("UWM.FOLD", "7"), "UWM.FOLD 7 is not a fold", id="eval-bad-fold"
        ),
    ],
)
def test_a_refused_command_leaves_a_finished_run_byte_for_byte(
    run_copy: Path,
    instant_data: tuple[Path, Path],
    flags: tuple[str, ...],
    opts: tuple[str, ...],
    expected: str,
) -> None:
    before = _snapshot(run_copy)
    if "--eval-only" in flags:
        opts = (*opts, "MODEL.WEIGHTS", str(run_copy / "model_final.pth"))
    assert expected in _one_error_line(_train_net(instant_data, run_copy, *flags, opts=opts))
    assert _snapshot(run_copy) == before


@pytest.mark.slow
def test_a_refused_run_into_a_new_folder_leaves_no_folder(
    instant_data: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "new" / "run"
    run = _train_net(instant_data, out, opts=("UWM.FOLD", "7"))
    assert "UWM.FOLD 7 is not a fold" in _one_error_line(run)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_eval_only_writes_its_results_not_the_training_config(
    run_copy: Path, instant_data: tuple[Path, Path]
) -> None:
    config = (run_copy / "config.yaml").read_bytes()
    results = run_copy / "inference" / "uwm_results_uwm_val.json"
    results.unlink()
    weights = ("MODEL.WEIGHTS", str(run_copy / "model_best.pth"), "SOLVER.MAX_ITER", "99")
    run = _train_net(instant_data, run_copy, "--eval-only", opts=weights)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (run_copy / "config.yaml").read_bytes() == config
    assert json.loads(results.read_text())["num_slices"] > 0


@pytest.mark.slow
def test_resume_and_evaluation_on_other_folds_are_refused(
    run_copy: Path, instant_data: tuple[Path, Path], three_folds: Path
) -> None:
    before = _snapshot(run_copy)
    data = (instant_data[0], three_folds)
    # UWM.NUM_FOLDS must say what the COCO folder holds.
    line = _one_error_line(_train_net(data, run_copy, "--resume", opts=("SOLVER.MAX_ITER", "6")))
    assert "UWM.NUM_FOLDS is 2 but the COCO folder" in line and "holds 3 folds" in line
    # The right count, but not the folds the run started with.
    three = ("UWM.NUM_FOLDS", "3", "SOLVER.MAX_ITER", "6")
    line = _one_error_line(_train_net(data, run_copy, "--resume", opts=three))
    assert "was trained on fold 0 of 2" in line and "gives fold 0 of 3" in line
    # Scoring the checkpoint on a fold holding a case it trained on.
    trained = RunSplits.read(run_copy)
    fold = next(
        k
        for k in range(3)
        if set(RunSplits.of(three_folds, k).val_cases) & set(trained.train_cases)
    )
    weights = ("MODEL.WEIGHTS", str(run_copy / "model_final.pth"))
    opts = ("UWM.NUM_FOLDS", "3", "UWM.FOLD", str(fold), *weights)
    line = _one_error_line(_train_net(data, run_copy, "--eval-only", opts=opts))
    assert f"{run_copy / 'model_final.pth'}" in line and "was trained on 1 of the 1 cases" in line
    assert _snapshot(run_copy) == before


@pytest.mark.slow
def test_the_same_command_trains_the_same_model(
    finished: Path, instant_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """A fixed default SEED: a second run of the same command gives the same weights."""
    assert build_cfg(INSTANT, []).SEED >= 0
    again = tmp_path / "again"
    run = _train_net(instant_data, again)
    assert run.returncode == 0, run.stderr[-3000:]
    first = torch.load(finished / "model_final.pth", weights_only=True)["model"]
    second = torch.load(again / "model_final.pth", weights_only=True)["model"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.slow
def test_resume_without_a_checkpoint_starts_over_with_one_row_per_iteration(
    instant_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """A run stopped before its first checkpoint left rows; --resume starts from 0 without
    them (it says so), so every iteration is logged once."""
    out = tmp_path / "out"
    out.mkdir()
    stale = [{"iteration": i, "total_loss": 9.0, "stale": True} for i in range(3)]
    (out / "metrics.json").write_text("".join(json.dumps(row) + "\n" for row in stale))
    run = _train_net(instant_data, out, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no checkpoint in" in (out / "log.txt").read_text()
    rows = _rows(out)
    assert not any(row.get("stale") for row in rows)
    iterations = [row["iteration"] for row in rows]
    assert len(iterations) == len(set(iterations))
    assert (out / SPLITS_FILE).is_file()


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(
    tmp_path: Path,
) -> None:
    cfg = build_cfg(INSTANT, ["OUTPUT_DIR", str(tmp_path), "SOLVER.CHECKPOINT_PERIOD", "150"])
    message = interrupted_message(cfg, eval_only=False)
    assert "before the first checkpoint" in message and "nothing to resume" in message
    assert "SOLVER.CHECKPOINT_PERIOD = 150" in message and "--resume" not in message
    (tmp_path / "last_checkpoint").write_text("model_0000149.pth")
    assert "rerun the same command with --resume" in interrupted_message(cfg, eval_only=False)
    assert interrupted_message(cfg, eval_only=True) == "interrupted"
