"""Every tool's ``--help`` works without a traceback and shows how to call it (``Examples:``)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..conftest import REPO_ROOT, run_tool

TOOLS = sorted(path.stem for path in (REPO_ROOT / "tools").glob("*.py"))


@pytest.fixture(scope="module")
def helps() -> dict:
    """Every tool's ``--help``, run side by side (mostly interpreter and import start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda tool: run_tool(tool, ["--help"], timeout=120), TOOLS)
        return dict(zip(TOOLS, results, strict=True))


@pytest.mark.parametrize("tool", TOOLS)
def test_help_works_and_has_examples(tool: str, helps: dict) -> None:
    result = helps[tool]
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr
    assert result.stderr == ""
    assert "Examples:\n" in result.stdout
    examples = result.stdout.split("Examples:\n", 1)[1]
    # A command continued on the next line ends with a backslash: "\\" in a docstring, since a
    # lone one joins the two lines into one with a run of spaces in it.
    assert not re.search(r"\S {4,}--", examples), examples
