"""scripts/demo.sh (``make demo``): it only ever replaces a folder an earlier demo made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _demo(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), sys.executable, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_a_folder_the_demo_did_not_make_is_never_removed(tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("months of work")
    run = _demo(out)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: DEMO_DIR={out} exists and was not made by make demo; choose another DEMO_DIR"
    ]
    assert (out / "thesis.tex").read_text() == "months of work"
