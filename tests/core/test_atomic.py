"""``uwm_d2.core.atomic``: outputs appear whole or not at all, and killed runs' temp files go away.

The sweeping of stale temp files must be conservative: only temp files of the *same* target, on
*this* host, whose writing process no longer exists; a live writer's temp file is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from uwm_d2.core import atomic
from uwm_d2.core.atomic import (
    atomic_path,
    atomic_write_text,
    check_writable_target,
    remove_stale_temp_files,
    stale_temp_files,
)
from uwm_d2.core.errors import UWMInputError


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _temp_name(target: str, pid: int, host: str | None = None) -> str:
    return f".{target}.tmp-{host or atomic._host_tag()}-{pid}-abc123"


def test_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "scores.json"
    atomic_write_text(target, "old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scores.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "submission.csv"
    target.write_text("complete old file\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed halfway")
    assert target.read_text() == "complete old file\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["submission.csv"]


def test_temp_files_are_hidden_and_name_host_and_process(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "all.json") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".all.json.tmp-{atomic._host_tag()}-{os.getpid()}-")
    assert "-" not in atomic._host_tag()


def test_a_successful_write_sweeps_only_stale_temp_files_of_its_target(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / _temp_name("all.json", dead)
    keep = [
        tmp_path / _temp_name("all.json", alive),  # a live writer
        tmp_path / _temp_name("all.json", os.getpid()),  # this process (another thread)
        tmp_path / _temp_name("all.json", dead, host="otherhost"),  # another machine
        tmp_path / _temp_name("val_fold0.json", dead),  # another target
        tmp_path / ".all.json.tmp-k2j3h4",  # an older naming we cannot judge
    ]
    for path in [stale, *keep]:
        path.write_text("partial")

    assert stale_temp_files(tmp_path / "all.json") == [stale]
    atomic_write_text(tmp_path / "all.json", "{}")

    assert not stale.exists()
    assert all(path.exists() for path in keep)
    assert (tmp_path / "all.json").read_text() == "{}"


def test_a_failed_write_sweeps_nothing(tmp_path: Path) -> None:
    stale = tmp_path / _temp_name("scores.json", _dead_pid())
    stale.write_text("partial")
    with pytest.raises(ValueError), atomic_path(tmp_path / "scores.json"):
        raise ValueError("bad input")
    assert stale.exists()


def test_sweeping_never_raises(tmp_path: Path) -> None:
    assert remove_stale_temp_files(tmp_path / "missing_folder" / "x.json") == []


def test_check_writable_target_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(UWMInputError, match="does not exist"):
        check_writable_target(tmp_path / "missing" / "out.csv")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UWMInputError, match=r"'.*a_file' is not a folder"):
        check_writable_target(tmp_path / "a_file" / "out.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UWMInputError, match="is a folder, not a file"):
        check_writable_target(tmp_path / "folder")
    assert check_writable_target(tmp_path / "out.csv") == tmp_path / "out.csv"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a mode-555 folder")
def test_check_writable_target_refuses_a_read_only_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UWMInputError, match="is not writable"):
            check_writable_target(locked / "out.csv")
    finally:
        locked.chmod(0o755)
