"""Progress without a terminal (a line per tenth of the work) and the shared process-pool loop."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.progress import Progress, parallel_map

from ..conftest import REPO_ROOT, tool_env


def test_lines_without_a_terminal() -> None:
    stream = io.StringIO()  # not a TTY: a notebook cell, a log file, a pipe
    with Progress(40, "infer", "slice", group_unit="case-day", group_total=4, stream=stream) as bar:
        for _ in range(4):
            bar.update(10)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # every chunk crossed another tenth
    assert lines[0].startswith("infer: 10/40 slices (25%), 1/4 case-days, ")
    assert lines[-1].startswith("infer: 40/40 slices (100%), 4/4 case-days, ")


def test_a_line_per_tenth_not_per_update() -> None:
    stream = io.StringIO()
    with Progress(1000, "coco", stream=stream) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("coco: 1000/1000 slices (100%)")


def test_disabled_progress_prints_nothing() -> None:
    stream = io.StringIO()
    with Progress(10, "x", enabled=False, stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


def _square(value: int) -> int:
    if value == 3:
        raise UWMInputError("job 3 is bad")
    return value * value


def _slow_then_fail(value: int) -> int:
    import time

    if value == 0:
        time.sleep(0.5)
        raise UWMInputError("job 0 is bad")
    raise UWMInputError(f"job {value} is bad")


def test_parallel_map_keeps_job_order_and_reports_the_first_failing_job() -> None:
    assert parallel_map(_square, [0, 1, 2], workers=2) == [0, 1, 4]
    assert parallel_map(_square, [4, 5], workers=1) == [16, 25]
    with pytest.raises(UWMInputError, match="job 3"):
        parallel_map(_square, [1, 3, 2], workers=2)
    # The error of the first job in order, even when a later job failed first.
    with pytest.raises(UWMInputError, match="job 0"):
        parallel_map(_slow_then_fail, [0, 1], workers=2)


def test_tools_print_progress_lines_into_a_pipe(tmp_path: Path) -> None:
    out = tmp_path / "phantom"
    arguments = ["--out", str(out), "--cases", "2", "--test-cases", "1", "--max-slices", "6"]
    result = subprocess.run(
        [sys.executable, "tools/make_phantom.py", *arguments, "--workers", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=tool_env(PYTHONWARNINGS="ignore"),
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("phantom: ")]
    assert lines and lines[-1].startswith("phantom: ") and "(100%)" in lines[-1]
