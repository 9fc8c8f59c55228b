"""scripts/install.sh: honest, short output, and an "up to date" path that changes nothing.

* Its pip filter drops exactly one line, the warning this build machine's pip configuration
  prints for every package (``Location 'file:///opt/pypi/...' is ignored``); real warnings and
  errors pass.
* A step shows its label, progress while it runs, what it printed (filtered) and its duration;
  a failed step shows the command's whole output, unfiltered, and its exit status.
* Against the existing ``.venv`` it is only run when ``--check`` says it is up to date: it then
  prints one line, twice the same, and leaves every file and folder of ``.venv`` as it was.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

INSTALL = REPO_ROOT / "scripts" / "install.sh"
VENV = REPO_ROOT / ".venv"
NOISE = (
    "WARNING: Location 'file:///opt/pypi/simple/yacs/' is ignored: "
    "it is neither a file nor a directory."
)


def bash(script: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with install.sh's functions sourced (sourcing defines them, runs nothing)."""
    return subprocess.run(
        ["bash", "-c", f'source "{INSTALL}"\n{script}'],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
    )


def test_filter_drops_only_the_location_warning() -> None:
    kept = [
        "WARNING: The script tqdm is installed in '/x/bin' which is not on PATH.",
        "ERROR: Could not find a version that satisfies the requirement torch==9.9",
        "WARNING: Location 'file:///opt/pypi/simple/x/' is ignored: something else entirely.",
        "  " + NOISE,  # not pip's line as printed: kept
        "WARNING: Retrying (Retry(total=4)) after connection broken: /simple/yacs/",
        "error: subprocess-exited-with-error",
    ]
    noise = [NOISE, NOISE.replace("/opt/pypi/", "/opt/pypi-more/")]
    text = "\n".join([noise[0], kept[0], noise[1], *kept[1:], noise[0]]) + "\n"
    result = bash("filter_pip_noise", stdin=text)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == kept
    only_noise = bash("filter_pip_noise", stdin="\n".join(noise) + "\n")
    assert only_noise.returncode == 0 and only_noise.stdout == ""


def test_a_step_reports_progress_output_and_duration(tmp_path: Path) -> None:
    printed = tmp_path / "printed.txt"
    printed.write_text(f"{NOISE}\nWARNING: kept\n")
    script = f"""run_step "a slow step" bash -c 'cat "{printed}"; sleep 3'"""
    result = bash(script, UWM_INSTALL_HEARTBEAT_S="1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "install: a slow step ..."
    assert any(line.startswith("install:   ... ") for line in lines[1:-2])  # progress
    assert lines[-2] == "install:   WARNING: kept"
    assert lines[-1].startswith("install:   done in ")
    assert "Location" not in result.stdout


def test_a_failed_step_shows_the_whole_output_and_its_status(tmp_path: Path) -> None:
    printed = tmp_path / "printed.txt"
    printed.write_text(f"{NOISE}\nERROR: no\n")
    script = f"""run_step "a failing step" bash -c 'cat "{printed}"; exit 7' || echo "status=$?"
"""
    result = bash(script)
    assert "install: FAILED after " in result.stdout
    assert "a failing step (exit 7)" in result.stdout
    assert NOISE in result.stdout and "ERROR: no" in result.stdout  # unfiltered
    assert result.stdout.splitlines()[-1] == "status=7"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its modification time and size."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            info = os.lstat(path)
            state[path] = (info.st_mtime_ns, info.st_size)
    return state


@pytest.mark.slow
def test_up_to_date_venv_is_left_alone_and_output_is_one_line() -> None:
    check = subprocess.run(
        ["bash", str(INSTALL), "--check", ".venv"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check.returncode != 0:
        # Never install into the shared environment from a test.
        pytest.skip(f".venv is not up to date ({check.stdout.strip()}); run make install first")
    before = snapshot(VENV)
    outputs = []
    for _ in range(2):
        result = subprocess.run(
            ["bash", str(INSTALL), ".venv"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stderr == ""
        lines = result.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith("install: up to date (.venv/bin/python"), (
            lines
        )
        outputs.append(lines[0].split(";")[0])
    assert outputs[0] == outputs[1]
    assert snapshot(VENV) == before
