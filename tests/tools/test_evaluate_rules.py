"""``tools/evaluate.py --rules``: every reading of the metric, from a data root or an answers file.

The scores are checked against the library functions called directly (``score_submission``,
``score_mlebench``), never against numbers written here. The tool's ``main`` runs in-process for
the scores (fast); the error cases and one ``> scores.json`` run go through the real tool as a
subprocess, side by side in a thread pool, and assert what ``test_cli_errors`` asserts: exit
status 2, exactly one stderr line ``error: ...`` naming the culprit, nothing written.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from uwm_d2.core.layout import read_label_csv
from uwm_d2.evaluation.csv_scoring import RULES, score_submission
from uwm_d2.evaluation.mlebench import answers_from_data_root, score_mlebench

from .conftest import REPO_ROOT, run_tool

READING_NAMES = ("project", "competition", "mlebench")


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO_ROOT / "tools/evaluate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An imperfect submission (the readings disagree on it) and the answers file of the truth."""
    folder = tmp_path_factory.mktemp("rules")
    frame = read_label_csv(phantom_root / "test_truth.csv")
    frame = frame.rename(columns={"segmentation": "predicted"})
    filled = np.flatnonzero(frame["predicted"] != "")
    empty = np.flatnonzero(frame["predicted"] == "")
    frame.loc[filled[::3], "predicted"] = ""  # missed organs
    frame.loc[empty[::7], "predicted"] = "200 30"  # false positives on empty rows
    frame.to_csv(folder / "pred.csv", index=False)
    answers = answers_from_data_root(phantom_root, phantom_root / "test_truth.csv")
    answers.to_csv(folder / "answers.csv", index=False)
    return {"pred": folder / "pred.csv", "answers": folder / "answers.csv"}


def _evaluate(
    tool: ModuleType, capsys: pytest.CaptureFixture[str], args: list[str]
) -> tuple[dict, list[str]]:
    """Run the tool's main in-process: (the JSON on stdout, the lines on stderr)."""
    tool.main(args)
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err.splitlines()


def _root_args(root: Path, pred: Path) -> list[str]:
    return ["--data-root", str(root), "--truth", str(root / "test_truth.csv"), "--pred", str(pred)]


def test_each_reading_matches_the_library(
    tool: ModuleType,
    capsys: pytest.CaptureFixture[str],
    phantom_root: Path,
    files: dict[str, Path],
) -> None:
    truth, pred = phantom_root / "test_truth.csv", files["pred"]
    args = _root_args(phantom_root, pred)

    project, lines = _evaluate(tool, capsys, args)  # no --rules: the project reading, as before
    assert project == score_submission(phantom_root, truth, pred)
    assert "clinical" in project and "readings" not in project
    assert lines == [
        f"score {project['score']:.4f} (dice {project['dice']:.3f}, hausdorff "
        f"{project['hausdorff']:.3f}) on {project['num_slices']} slices, "
        f"{project['num_case_days']} case-days [project]"
    ]
    assert _evaluate(tool, capsys, [*args, "--rules", "project"])[0] == project

    competition, lines = _evaluate(tool, capsys, [*args, "--rules", "competition"])
    direct = score_submission(phantom_root, truth, pred, readings="competition", clinical=False)
    summary = direct["readings"]["competition"]
    assert competition["reading"] == "competition" and "clinical" not in competition
    for key in ("score", "dice", "hausdorff", "per_class", "num_dice_rows"):
        assert competition[key] == summary[key], key
    assert len(lines) == 1 and lines[0].startswith(f"score {summary['score']:.4f} ")
    assert lines[0].endswith("[competition]")

    mlebench, lines = _evaluate(tool, capsys, [*args, "--rules", "mlebench"])
    assert mlebench == score_mlebench(answers_from_data_root(phantom_root, truth), pred)
    assert len(lines) == 1 and "[mlebench; skipped as empty on both sides: " in lines[0]
    assert lines[0].startswith(f"score {mlebench['score']:.4f} ")

    scores = {project["score"], competition["score"], mlebench["score"]}
    assert len(scores) == 3  # the submission really separates the readings


def test_all_reports_every_reading(
    tool: ModuleType,
    capsys: pytest.CaptureFixture[str],
    phantom_root: Path,
    files: dict[str, Path],
) -> None:
    truth, pred = phantom_root / "test_truth.csv", files["pred"]
    every, lines = _evaluate(tool, capsys, [*_root_args(phantom_root, pred), "--rules", "all"])
    project = score_submission(phantom_root, truth, pred)
    assert {key: every[key] for key in project} == project  # the project's JSON, clinical too
    assert tuple(every["readings"]) == READING_NAMES
    volumes = score_submission(phantom_root, truth, pred, readings="all", clinical=False)
    for name in ("project", "competition"):
        assert every["readings"][name] == volumes["readings"][name]
    grader = score_mlebench(answers_from_data_root(phantom_root, truth), pred)
    assert every["readings"]["mlebench"] == grader
    assert len(lines) == 3
    for line, name in zip(lines, READING_NAMES, strict=True):
        assert line.startswith(f"score {every['readings'][name]['score']:.4f} ")
        assert f"[{name}" in line


def test_the_all_empty_submission(
    tool: ModuleType, capsys: pytest.CaptureFixture[str], phantom_root: Path
) -> None:
    truth, sample = phantom_root / "test_truth.csv", phantom_root / "sample_submission.csv"
    every, _ = _evaluate(tool, capsys, [*_root_args(phantom_root, sample), "--rules", "all"])
    baseline = score_submission(phantom_root, truth, sample)["score"]
    assert every["score"] == baseline and 0.0 < baseline < 1.0  # the project's baseline
    assert every["readings"]["mlebench"]["score"] == 0.0
    mlebench, _ = _evaluate(
        tool, capsys, [*_root_args(phantom_root, sample), "--rules", "mlebench"]
    )
    assert mlebench["score"] == 0.0 and mlebench["score_rounded"] == 0.0


def test_an_answers_file_gives_the_data_roots_score(
    tool: ModuleType,
    capsys: pytest.CaptureFixture[str],
    phantom_root: Path,
    files: dict[str, Path],
) -> None:
    pred = files["pred"]
    from_root, _ = _evaluate(tool, capsys, [*_root_args(phantom_root, pred), "--rules", "mlebench"])
    answers = ["--answers", str(files["answers"]), "--pred", str(pred)]
    from_answers, lines = _evaluate(tool, capsys, [*answers, "--rules", "mlebench"])
    assert from_answers == from_root
    assert _evaluate(tool, capsys, answers)[0] == from_root  # --answers implies mlebench
    assert len(lines) == 1 and "[mlebench" in lines[0]


def test_help_lists_every_reading_with_examples(
    tool: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tool.RULES == RULES  # the tool lists them without importing pandas
    with pytest.raises(SystemExit) as exit_info:
        tool.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("Examples:\n", 1)[1]
    for name in RULES:
        assert f"--rules {name}" in examples
    assert "--answers" in examples
    assert "clinical" in text


# ----------------------------------------------------------------- through the real tool


@dataclass(frozen=True)
class Case:
    """A way to break the input (returns the culprit the error must name) and the arguments."""

    breaks: Callable[[Path], str]
    args: Callable[[Path], list[str]]


def _root(rules: str, pred: str = "sample_submission.csv") -> Callable[[Path], list[str]]:
    def args(tmp: Path) -> list[str]:
        root = tmp / "data"
        return [
            *_root_args(root, root / pred),
            *["--rules", rules, "--json", str(tmp / "scores.json")],
        ]

    return args


def _answers(*extra: str) -> Callable[[Path], list[str]]:
    def args(tmp: Path) -> list[str]:
        root = tmp / "data"
        return [
            *["--answers", str(tmp / "answers.csv"), "--pred", str(root / "sample_submission.csv")],
            *extra,
            *["--json", str(tmp / "scores.json")],
        ]

    return args


def _overlapping_runs(tmp: Path) -> str:
    """Overlapping runs in the first filled row of the sample submission (1-based data row)."""
    path = tmp / "data" / "sample_submission.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[4, "predicted"] = "1 5 3 2"
    frame.to_csv(path, index=False)
    return f"MLE-bench would reject this file: row 5 ({frame.loc[4, 'id']} {frame.loc[4, 'class']})"


def _unsorted_runs(tmp: Path) -> str:
    path = tmp / "data" / "sample_submission.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[7, "predicted"] = "50 2 10 2"  # runs not sorted by start
    frame.to_csv(path, index=False)
    return "MLE-bench would reject this file: row 8 "


def _swapped_rows(tmp: Path) -> str:
    path = tmp / "data" / "sample_submission.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.iloc[[0, 1]] = frame.iloc[[1, 0]].to_numpy()
    frame.to_csv(path, index=False)
    return "MLE-bench would reject this file: row 1 "


def _culprit(text: str) -> Callable[[Path], str]:
    return lambda _: text


CASES: dict[str, Case] = {
    "mlebench-overlapping-runs": Case(_overlapping_runs, _root("mlebench")),
    "all-overlapping-runs": Case(_overlapping_runs, _root("all")),
    "answers-overlapping-runs": Case(_overlapping_runs, _answers("--rules", "mlebench")),
    "mlebench-unsorted-runs": Case(_unsorted_runs, _root("mlebench")),
    "mlebench-rows-out-of-order": Case(_swapped_rows, _root("mlebench")),
    "answers-with-project-rules": Case(
        _culprit("--rules project needs the scans' geometry from a data root"),
        _answers("--rules", "project"),
    ),
    "answers-with-all-rules": Case(
        _culprit("--rules all needs the scans' geometry"), _answers("--rules", "all")
    ),
    "answers-and-data-root": Case(
        _culprit("--answers replaces --data-root and --truth"),
        lambda tmp: [*_answers()(tmp), "--data-root", str(tmp / "data")],
    ),
    "no-truth": Case(
        _culprit("missing --truth"),
        lambda tmp: [
            *["--data-root", str(tmp / "data"), "--pred", str(tmp / "data/sample_submission.csv")],
            *["--json", str(tmp / "scores.json")],
        ],
    ),
}


def _snapshot(folder: Path) -> dict[str, tuple]:
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


@pytest.fixture(scope="module")
def outcomes(
    phantom_root: Path, files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple]:
    """Every case's (culprit, completed process, files before, files after), run side by side."""
    jobs = {}
    for name, case in CASES.items():
        tmp = tmp_path_factory.mktemp(name)
        shutil.copytree(phantom_root, tmp / "data")
        shutil.copy(files["answers"], tmp / "answers.csv")
        jobs[name] = (tmp, case.breaks(tmp))

    def run(name: str) -> tuple:
        tmp, culprit = jobs[name]
        before = _snapshot(tmp)
        result = run_tool("evaluate", CASES[name].args(tmp), timeout=120)
        return culprit, result, before, _snapshot(tmp)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(CASES, pool.map(run, CASES), strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_and_writes_nothing(name: str, outcomes: dict) -> None:
    culprit, result, before, after = outcomes[name]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0]
    assert result.stdout == ""
    assert after == before  # no --json file, no temp file, nothing changed


def test_stdout_stays_pure_json(phantom_root: Path, tmp_path: Path) -> None:
    """``evaluate --rules all > scores.json``: the summary goes to stderr, the JSON to stdout;
    with ``--json FILE`` the JSON goes to the file and stdout gets the summary lines only."""
    args = [*_root_args(phantom_root, phantom_root / "sample_submission.csv"), "--rules", "all"]
    piped = run_tool("evaluate", args, timeout=120)
    assert piped.returncode == 0, piped.stderr
    summary = piped.stderr.splitlines()
    readings = [line.split("[")[1].split(";")[0].rstrip("]") for line in summary]
    assert readings == list(READING_NAMES)
    target = tmp_path / "scores.json"
    result = run_tool("evaluate", [*args, "--json", str(target)], timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(piped.stdout) == json.loads(target.read_text())
    assert result.stdout.splitlines() == summary and result.stderr == ""
