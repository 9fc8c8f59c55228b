"""tools/cross_validate.py end to end: a 3-fold cross-validation of the instant semantic config on
the tiny phantom, interrupted in its first fold, refused without --resume, continued, and rerun."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("detectron2")

from uwm_d2.core.merge import MergeRule
from uwm_d2.core.probability_files import ProbabilityFolder
from uwm_d2.crossval.plan import case_days_by_fold
from uwm_d2.data.splits import fold_assignment
from uwm_d2.evaluation.csv_scoring import score_csv
from uwm_d2.inference.ensemble import override_rule, read_ensemble

from ..conftest import INSTANT_CONFIGS, REPO_ROOT, tool_env

CONFIG = str(REPO_ROOT / INSTANT_CONFIGS["semantic"])
#: Small and quick: a checkpoint every 2 iterations (one to interrupt at), evaluations at 3 and 6.
FAST = [
    "UWM.NUM_FOLDS", "3", "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2",
    "TEST.EVAL_PERIOD", "3", "UWM.VAL_LOSS_PERIOD", "0",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
]  # fmt: skip


def _command(data: Path, out: Path, *flags: str, opts: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable, str(REPO_ROOT / "tools" / "cross_validate.py"), "--config-file", CONFIG,
        "--out", str(out), "--workers", "1", *flags, "UWM.DATA_ROOT", str(data), *FAST, *opts,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**tool_env(), "OMP_NUM_THREADS": "1"}


def _run(data: Path, out: Path, *flags: str, opts: tuple[str, ...] = ()) -> Any:
    return subprocess.run(
        _command(data, out, *flags, opts=opts),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
        cwd=REPO_ROOT,
    )


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _error(run: Any) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    return lines[0]


class Runs:
    """The module's one cross-validation and what each step of it printed."""

    def __init__(self, data: Path, out: Path) -> None:
        self.data, self.out = data, out
        self.refused: Any = None
        self.snapshot_after_kill: dict[str, str] = {}
        self.snapshot_after_refusal: dict[str, str] = {}
        self.resumed: Any = None


@pytest.fixture(scope="module")
def runs(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    out = tmp_path_factory.mktemp("cross_validate") / "cv"
    result = Runs(phantom_root, out)
    # 1. Interrupted during fold 0, right after its first checkpoint.
    process = subprocess.Popen(
        _command(phantom_root, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        cwd=REPO_ROOT,
        start_new_session=True,  # the tool and its train_net child, killed together
    )
    deadline = time.monotonic() + 600
    try:
        while not (out / "fold0" / "model_0000001.pth").exists():
            assert process.poll() is None, "the cross-validation ended before it was interrupted"
            assert time.monotonic() < deadline, "no checkpoint of fold 0 in time"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    result.snapshot_after_kill = _snapshot(out)
    # 2. Without --resume: refused, nothing written. 3. With --resume: continued to the end.
    result.refused = _run(phantom_root, out)
    result.snapshot_after_refusal = _snapshot(out)
    result.resumed = _run(phantom_root, out, "--resume")
    assert result.resumed.returncode == 0, result.resumed.stderr[-3000:]
    return result


@pytest.mark.slow
def test_an_interrupted_fold_is_refused_without_resume_then_continues(runs: Runs) -> None:
    line = _error(runs.refused)
    assert "fold 0 stopped at iteration 2 of 6" in line and "--resume" in line
    assert runs.snapshot_after_refusal == runs.snapshot_after_kill
    assert "fold 0: continued from iteration 2" in runs.resumed.stdout
    assert "Starting training from iteration 2" in (runs.out / "fold0" / "log.txt").read_text()
    for fold in (1, 2):
        assert f"fold {fold}: training into" in runs.resumed.stdout


@pytest.mark.slow
def test_out_of_fold_maps_cover_every_training_case_day_once(runs: Runs) -> None:
    coco = runs.out / "coco"
    by_fold = case_days_by_fold(runs.data, fold_assignment(coco), exclude_bad=True)
    folds = {day: fold for fold, days in by_fold.items() for day in days}
    oof = ProbabilityFolder(runs.out / "oof")
    oof.check_coverage(folds, folds)  # each once, each by its own fold's model
    oof.check(scans={day: ids for days in by_fold.values() for day, ids in days.items()})
    assert oof.tta


@pytest.mark.slow
def test_the_summary_is_the_score_of_the_files_it_writes(runs: Runs) -> None:
    summary = json.loads((runs.out / "cv_summary.json").read_text())
    scores = summary["scores"]
    for label, name in (("default", "oof_default.csv"), ("chosen", "oof_tuned.csv")):
        for reading in ("project", "competition", "mlebench"):
            scored = score_csv(
                runs.out / name,
                reading,
                data_root=runs.data,
                truth_csv=runs.out / "oof_truth.csv",
            )
            assert scores[label][reading]["all"]["score"] == pytest.approx(
                scored["score"], abs=1e-9
            ), (label, reading)
    project = {label: scores[label]["project"]["all"]["score"] for label in scores}
    assert project["chosen"] >= project["default"]  # the config's rule is among the candidates
    assert set(scores["default"]["project"]["folds"]) == {"0", "1", "2"}
    interval = scores["chosen"]["project"]["all"]
    assert interval["low"] <= interval["score"] <= interval["high"]


@pytest.mark.slow
def test_the_chosen_rule_written_and_read_back_is_the_same_rule(runs: Runs) -> None:
    summary = json.loads((runs.out / "cv_summary.json").read_text())
    chosen = MergeRule.from_dict(summary["rules"]["chosen"])
    members, merge = read_ensemble(runs.out / "ensemble.yaml")
    assert override_rule(MergeRule(), merge) == chosen
    assert MergeRule.from_dict(chosen.as_dict()) == chosen
    (member,) = members
    assert member["weights"] == [str(runs.out / f"fold{k}" / "model_best.pth") for k in range(3)]
    assert yaml.safe_load((runs.out / "ensemble.yaml").read_text())["members"][0]["config"] == (
        str(runs.out / "config.yaml")
    )


@pytest.mark.slow
def test_a_rerun_skips_the_finished_folds_and_keeps_their_files(runs: Runs) -> None:
    before = {k: _snapshot(runs.out / f"fold{k}") for k in range(3)}
    oof = _snapshot(runs.out / "oof")
    again = _run(runs.data, runs.out)
    assert again.returncode == 0, again.stderr[-3000:]
    for fold in range(3):
        assert f"fold {fold}: finished (iteration 6), skipped" in again.stdout
        assert _snapshot(runs.out / f"fold{fold}") == before[fold]
    assert _snapshot(runs.out / "oof") == oof


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "opts", "expected"),
    [
        pytest.param(("--folds", "3"), (), "fold 3 is out of range", id="fold-out-of-range"),
        pytest.param(("--folds", "0,0"), (), "fold 0 is given twice", id="fold-twice"),
        pytest.param((), ("SOLVER.BASE_LR", "0.001"), "another config", id="other-config"),
        pytest.param(("--no-tta",), (), "flip TTA set otherwise", id="other-tta"),
        pytest.param((), ("UWM.NUM_FOLDS", "2"), "holds 3 folds", id="other-num-folds"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    runs: Runs, flags: tuple[str, ...], opts: tuple[str, ...], expected: str
) -> None:
    before = _snapshot(runs.out)
    assert expected in _error(_run(runs.data, runs.out, *flags, opts=opts))
    assert _snapshot(runs.out) == before


@pytest.mark.slow
def test_a_bad_fold_list_for_a_new_folder_leaves_no_folder(phantom_root: Path, tmp_path: Path):
    out = tmp_path / "new" / "cv"
    assert "fold 7 is out of range" in _error(_run(phantom_root, out, "--folds", "0,7"))
    assert not (tmp_path / "new").exists()
