"""Every tool meets bad input the same way: exit 2, one stderr line naming the culprit.

No traceback and no output written either. One table row per (tool, bad input).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    """A tool, a way to break its input (returns the culprit to look for) and its arguments."""

    tool: str
    breaks: Callable[[Path], str]
    args: Callable[[Path, Path], list[str]]


def _edit_csv(path: Path, edit: Callable[[pd.DataFrame], str]) -> str:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    culprit = edit(frame)
    frame.to_csv(path, index=False)
    return culprit


def _first_labelled(frame: pd.DataFrame, column: str) -> int:
    return int(np.flatnonzero(frame[column] != "")[0])


def bad_rle(csv: str, column: str) -> Callable[[Path], str]:
    def edit(frame: pd.DataFrame) -> str:
        row = _first_labelled(frame, column) if (frame[column] != "").any() else 0
        frame.loc[row, column] = "7 3 1 2"  # unsorted runs
        return f"row {frame.loc[row, 'id']} {frame.loc[row, 'class']}"

    return lambda root: _edit_csv(root / csv, edit)


def unknown_class(csv: str) -> Callable[[Path], str]:
    def edit(frame: pd.DataFrame) -> str:
        frame.loc[2, "class"] = "liver"
        return f"row {frame.loc[2, 'id']}"

    return lambda root: _edit_csv(root / csv, edit)


def malformed_id(csv: str) -> Callable[[Path], str]:
    def edit(frame: pd.DataFrame) -> str:
        frame.loc[1, "id"] = "case1_dayX_slice_0001"
        return "case1_dayX_slice_0001"

    return lambda root: _edit_csv(root / csv, edit)


def missing_column(csv: str, column: str) -> Callable[[Path], str]:
    def edit(frame: pd.DataFrame) -> str:
        frame.columns = ["rle" if name == column else name for name in frame.columns]
        return csv

    return lambda root: _edit_csv(root / csv, edit)


def empty_csv(csv: str) -> Callable[[Path], str]:
    def breaks(root: Path) -> str:
        (root / csv).write_text("")
        return csv

    return breaks


def _scan(root: Path, split: str, position: int = 3) -> Path:
    return sorted((root / split).rglob("*.png"))[position]


def missing_scan(split: str) -> Callable[[Path], str]:
    def breaks(root: Path) -> str:
        path = _scan(root, split)
        path.unlink()
        case_day = path.parent.parent.name
        return f"{case_day}_slice_{path.name.split('_')[1]}"

    return breaks


def corrupt_png(root: Path) -> str:
    path = _scan(root, "train")
    path.write_bytes(path.read_bytes()[:500])  # truncated
    return path.name


def wrong_size_png(root: Path) -> str:
    path = _scan(root, "train")
    ok, encoded = cv2.imencode(".png", np.full((20, 30), 1000, np.uint16))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path.name


def nothing(root: Path) -> str:
    return "missing_parent"


def coco_args(root: Path, tmp: Path, workers: str = "1") -> list[str]:
    return [
        "--data-root",
        str(root),
        "--out",
        str(tmp / "coco"),
        "--folds",
        "2",
        "--workers",
        workers,
    ]


def coco_args_parallel(root: Path, tmp: Path) -> list[str]:
    return coco_args(root, tmp, workers="2")


def coco_args_no_parent(root: Path, tmp: Path) -> list[str]:
    return ["--data-root", str(root), "--out", str(tmp / "missing_parent" / "coco"), "--folds", "2"]


def eval_args(root: Path, tmp: Path, json_path: Path | None = None) -> list[str]:
    json_path = json_path or tmp / "scores.json"
    return [
        "--data-root",
        str(root),
        "--truth",
        str(root / "test_truth.csv"),
        "--pred",
        str(root / "sample_submission.csv"),
        "--json",
        str(json_path),
    ]


def eval_args_no_parent(root: Path, tmp: Path) -> list[str]:
    return eval_args(root, tmp, tmp / "missing_parent" / "scores.json")


def phantom_args_no_parent(root: Path, tmp: Path) -> list[str]:
    return ["--out", str(tmp / "missing_parent" / "data"), "--max-slices", "2"]


CASES = {
    "coco-bad-rle": Case("make_coco", bad_rle("train.csv", "segmentation"), coco_args),
    "coco-unknown-class": Case("make_coco", unknown_class("train.csv"), coco_args),
    "coco-malformed-id": Case("make_coco", malformed_id("train.csv"), coco_args),
    "coco-missing-column": Case(
        "make_coco", missing_column("train.csv", "segmentation"), coco_args
    ),
    "coco-missing-scan": Case("make_coco", missing_scan("train"), coco_args),
    "coco-corrupt-png": Case("make_coco", corrupt_png, coco_args),
    "coco-corrupt-png-in-worker": Case("make_coco", corrupt_png, coco_args_parallel),
    "coco-wrong-size-png": Case("make_coco", wrong_size_png, coco_args),
    "coco-empty-csv": Case("make_coco", empty_csv("train.csv"), coco_args),
    "coco-no-output-parent": Case("make_coco", nothing, coco_args_no_parent),
    "eval-bad-rle": Case("evaluate", bad_rle("sample_submission.csv", "predicted"), eval_args),
    "eval-bad-truth-rle": Case("evaluate", bad_rle("test_truth.csv", "segmentation"), eval_args),
    "eval-unknown-class": Case("evaluate", unknown_class("sample_submission.csv"), eval_args),
    "eval-malformed-id": Case("evaluate", malformed_id("test_truth.csv"), eval_args),
    "eval-missing-column": Case(
        "evaluate", missing_column("sample_submission.csv", "predicted"), eval_args
    ),
    "eval-missing-scan": Case("evaluate", missing_scan("test"), eval_args),
    "eval-empty-csv": Case("evaluate", empty_csv("sample_submission.csv"), eval_args),
    "eval-no-output-parent": Case("evaluate", nothing, eval_args_no_parent),
    "phantom-no-output-parent": Case("make_phantom", nothing, phantom_args_no_parent),
}


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(path): path.stat().st_mtime_ns for path in folder.rglob("*")}


@dataclass(frozen=True)
class Outcome:
    culprit: str
    result: subprocess.CompletedProcess
    written: bool


def _run(case: Case, root: Path, tmp: Path) -> Outcome:
    culprit = case.breaks(root)
    before = _snapshot(tmp)
    result = subprocess.run(
        [sys.executable, f"tools/{case.tool}.py", *case.args(root, tmp)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Outcome(culprit, result, _snapshot(tmp) != before)


@pytest.fixture(scope="module")
def outcomes(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Run every case at once: each run is mostly interpreter start-up and imports, so running
    them side by side keeps this table fast."""
    jobs = {}
    for name in CASES:
        tmp = tmp_path_factory.mktemp(name)
        root = tmp / "data"
        shutil.copytree(phantom_root, root)
        jobs[name] = (CASES[name], root, tmp)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(_run, *job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_and_writes_nothing(
    name: str, outcomes: dict[str, Outcome]
) -> None:
    outcome = outcomes[name]
    result = outcome.result
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert outcome.culprit in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not outcome.written


@pytest.mark.parametrize("tool", ["make_phantom", "make_coco", "evaluate"])
def test_help_works(tool: str) -> None:
    result = subprocess.run(
        [sys.executable, f"tools/{tool}.py", "--help"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "usage:" in result.stdout
