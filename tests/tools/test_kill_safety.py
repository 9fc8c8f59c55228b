"""SIGKILL ``make_coco``, ``evaluate --json`` and ``infer_submit`` at many moments: every output
file is whole or absent, never truncated, and a re-run just works (and sweeps the killed runs' temp
files away).

Three kinds of moments, run in sequence in one output folder per tool (the tools side by side):

* at fixed times after the start (during imports, while reading, while predicting);
* as soon as a new temp file (``.<name>.tmp-*``) appears in the output folder: mid-write;
* deterministically *between* writing a temp file and renaming it onto the output, the one moment
  where a truncated output could appear if the write were not atomic. A test-only
  ``sitecustomize`` on ``PYTHONPATH`` wraps ``os.replace``: for the named output it leaves a
  marker file and sleeps, and the test kills the tool then. The tool itself is unchanged.

After every kill, each output that exists must parse and be complete; at the end a normal run must
succeed, write valid outputs, and leave no temp file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from ..conftest import FAST_INFERENCE_OPTS, INSTANT_CONFIG, REPO_ROOT, tool_command, tool_env
from .conftest import CheckpointBuild

_SITECUSTOMIZE = '''
"""Test hook (tests/tools/test_kill_safety.py): pause before renaming a temp file onto a target."""
import os
import time

_TARGET = os.environ.get("UWM_TEST_PAUSE_BEFORE_REPLACE")
if _TARGET:
    _replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == _TARGET:
            marker = os.environ["UWM_TEST_PAUSE_MARKER"]
            with open(marker + ".part", "w") as handle:
                handle.write(os.fspath(src))
            _replace(marker + ".part", marker)  # the test reads it whole
            time.sleep(600)
        return _replace(src, dst, *args, **kwargs)

    os.replace = replace
'''


@dataclass(frozen=True)
class Kill:
    """When to kill: ``after`` seconds, at a new temp file, or paused before renaming a file."""

    after: float | None = None
    at_new_temp_file: bool = False
    before_renaming: str | None = None

    def __str__(self) -> str:
        if self.after is not None:
            return f"after {self.after:g} s"
        if self.at_new_temp_file:
            return "at a new temp file"
        return f"before renaming {self.before_renaming}"


@dataclass(frozen=True)
class Tool:
    """A tool, its command, its outputs and how to check that one is complete."""

    name: str
    args: list[str]
    out_dir: Path
    outputs: tuple[str, ...]
    check_complete: Callable[[Path], None]
    kills: tuple[Kill, ...]


def _temp_files(folder: Path) -> set[str]:
    return {path.name for path in folder.glob(".*.tmp-*")} if folder.is_dir() else set()


def _run_and_kill(tool: Tool, kill: Kill, scratch: Path) -> str:
    """Start the tool, SIGKILL it at ``kill``; returns what happened, for the failure message."""
    env = tool_env()
    marker = scratch / "paused"
    marker.unlink(missing_ok=True)
    if kill.before_renaming:
        env["PYTHONPATH"] = f"{scratch / 'hook'}{os.pathsep}{env['PYTHONPATH']}"
        env["UWM_TEST_PAUSE_BEFORE_REPLACE"] = kill.before_renaming
        env["UWM_TEST_PAUSE_MARKER"] = str(marker)
    temps_before = _temp_files(tool.out_dir)
    process = subprocess.Popen(
        tool_command(tool.name, tool.args),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    start = time.monotonic()
    try:
        while process.poll() is None and time.monotonic() - start < 180:
            if kill.after is not None and time.monotonic() - start >= kill.after:
                break
            if kill.at_new_temp_file and _temp_files(tool.out_dir) - temps_before:
                break
            if kill.before_renaming and marker.exists():
                break
            time.sleep(0.002)
        finished = process.poll() is not None
        if not finished:
            os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    if kill.before_renaming:
        # The hook must really have paused the tool with a whole temp file on disk.
        assert marker.exists() and not finished, f"{tool.name} never reached {kill}"
        paused_on = Path(marker.read_text())
        assert paused_on.exists() and paused_on.name.startswith(f".{kill.before_renaming}.tmp-")
    return f"{tool.name} killed {kill}" if not finished else f"{tool.name} finished before {kill}"


def _check_outputs(tool: Tool, what: str) -> None:
    for name in tool.outputs:
        path = tool.out_dir / name
        if path.exists():
            try:
                tool.check_complete(path)
            except Exception as error:
                raise AssertionError(f"{what}: {name} is not whole: {error}") from error
    if tool.out_dir.is_dir():
        visible = {path.name for path in tool.out_dir.iterdir() if not path.name.startswith(".")}
        assert visible <= set(tool.outputs), f"{what}: unexpected files {visible}"


def _kill_then_rerun(tool: Tool, scratch: Path) -> list[str]:
    (scratch / "hook").mkdir(parents=True)
    (scratch / "hook" / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    log = []
    for kill in tool.kills:
        what = _run_and_kill(tool, kill, scratch)
        _check_outputs(tool, what)
        log.append(what)
    # A normal run over whatever the killed runs left behind.
    result = subprocess.run(
        tool_command(tool.name, tool.args),
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in tool.outputs:
        tool.check_complete(tool.out_dir / name)
    assert _temp_files(tool.out_dir) == set(), "the re-run left temp files behind"
    return log


# ---------------------------------------------------------------------------------------------


def _check_coco(path: Path) -> None:
    data = json.loads(path.read_text())
    if path.name == "manifest.json":
        # The manifest is written last: when it exists, every file it lists is whole.
        assert set(data["files"]) == {"all.json", "train_fold0.json", "val_fold0.json"} | {
            "train_fold1.json",
            "val_fold1.json",
        }
        for name, size in data["files"].items():
            assert (path.parent / name).stat().st_size == size, name
            json.loads((path.parent / name).read_text())
        return
    assert {"images", "annotations", "categories"} <= set(data)
    assert data["images"], "no images"


def _check_scores(path: Path) -> None:
    scores = json.loads(path.read_text())
    assert 0.0 <= scores["score"] <= 1.0


def _submission_checker(sample: Path) -> Callable[[Path], None]:
    expected = pd.read_csv(sample, dtype=str, keep_default_na=False)[["id", "class"]]

    def check(path: Path) -> None:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert list(frame.columns) == ["id", "class", "predicted"]
        pd.testing.assert_frame_equal(frame[["id", "class"]], expected)

    return check


def _tools(root: Path, tmp: Path, weights: Path) -> list[Tool]:
    coco_outputs = ("all.json", "train_fold0.json", "val_fold0.json")
    coco_outputs += ("train_fold1.json", "val_fold1.json", "manifest.json")
    return [
        Tool(
            "infer_submit",
            [
                "--config-file",
                str(INSTANT_CONFIG),
                "--data-root",
                str(root),
                "--out",
                str(tmp / "infer" / "submission.csv"),
                *FAST_INFERENCE_OPTS,
                "MODEL.WEIGHTS",
                str(weights),
            ],
            tmp / "infer",
            ("submission.csv",),
            _submission_checker(root / "sample_submission.csv"),
            (Kill(after=1.0), Kill(before_renaming="submission.csv"), Kill(after=8.0)),
        ),
        Tool(
            "make_coco",
            [
                *("--data-root", str(root), "--out", str(tmp / "coco")),
                *("--folds", "2", "--workers", "1"),
            ],
            tmp / "coco",
            coco_outputs,
            _check_coco,
            (
                Kill(after=0.2),
                Kill(before_renaming="train_fold0.json"),
                Kill(before_renaming="all.json"),
                Kill(before_renaming="manifest.json"),
                Kill(at_new_temp_file=True),
                Kill(after=0.8),
                Kill(after=1.1),
                Kill(after=1.4),
            ),
        ),
        Tool(
            "evaluate",
            [
                "--data-root",
                str(root),
                "--truth",
                str(root / "test_truth.csv"),
                "--pred",
                str(root / "test_truth.csv"),
                "--json",
                str(tmp / "scores" / "scores.json"),
            ],
            tmp / "scores",
            ("scores.json",),
            _check_scores,
            (
                Kill(after=0.2),
                Kill(before_renaming="scores.json"),
                Kill(at_new_temp_file=True),
                Kill(after=0.7),
                Kill(after=1.0),
                Kill(after=1.3),
            ),
        ),
    ]


@pytest.mark.slow
def test_killed_tools_leave_whole_outputs_and_rerun_cleanly(
    phantom_root: Path, tmp_path: Path, instant_checkpoints: CheckpointBuild
) -> None:
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    for folder in ("infer", "scores"):  # tools that write a file into an existing folder
        (tmp_path / folder).mkdir()
    tools = _tools(root, tmp_path, instant_checkpoints.wait()["model_final"])
    with ThreadPoolExecutor(max_workers=len(tools)) as pool:
        futures = [
            pool.submit(_kill_then_rerun, tool, tmp_path / "scratch" / tool.name) for tool in tools
        ]
        logs = [future.result() for future in futures]
    # The sequence must really have interrupted each tool, not only watched it finish.
    for log in logs:
        killed = [line for line in log if " killed " in line]
        assert len(killed) >= 2, log
