"""Write output files whole or not at all: a temp file beside the target, then ``os.replace``.

A run killed at any moment leaves either the previous file or the new one, never a truncated file.
A killed run can leave its temp file behind: ``.<name>.tmp-<host>-<pid>-<random>``. It is hidden
and ignored by everything that reads outputs, and the next successful write of the same target
deletes it, but only once it is certain to be stale: it names this host and a process that no
longer exists. Temp files of other hosts (a shared file system) or of live processes are never
touched, so concurrent writers cannot break each other.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from uwm_d2.core.errors import UWMInputError


def check_writable_target(path: str | os.PathLike) -> Path:
    """Fail early, naming ``path``, if its folder does not exist or cannot be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UWMInputError(f"output folder {str(folder)!r} {what} (for {str(target)!r})")
    if not os.access(folder, os.W_OK):
        raise UWMInputError(f"output folder {str(folder)!r} is not writable (for {str(target)!r})")
    if target.is_dir():
        raise UWMInputError(f"output path {str(target)!r} is a folder, not a file")
    return target


def check_output_folder(out: str | os.PathLike, must_be_empty: bool = False) -> Path:
    """Fail early, naming the culprit, unless ``out`` can be (or is) a writable output folder.

    ``out`` may exist (as a folder; empty if ``must_be_empty``) or be created along with missing
    parents: the nearest existing ancestor must be a writable folder. Nothing is created here.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise UWMInputError(f"output path {str(out)!r} is a file, not a folder")
        if must_be_empty and any(out.iterdir()):
            raise UWMInputError(f"output folder {str(out)!r} is not empty")
        if not os.access(out, os.W_OK):
            raise UWMInputError(f"output folder {str(out)!r} is not writable")
        return out
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UWMInputError(
            f"output folder {str(out)!r} cannot be created: {str(ancestor)!r} is a file"
        )
    if not os.access(ancestor, os.W_OK):
        raise UWMInputError(f"output folder {str(out)!r} cannot be created in {str(ancestor)!r}")
    return out


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, must_be_empty: bool = False) -> Iterator[Path]:
    """Create ``out`` (and missing parents) for a run; if the run fails, remove what it created.

    The one output-folder rule of every tool: checked by :func:`check_output_folder` first; on
    an exception, the folders this call created are deleted with everything in them (they did
    not exist before, so only this run wrote there), and an existing folder is left as it was.
    """
    out = check_output_folder(out, must_be_empty)
    created = []
    folder = out
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)  # the outermost folder created
        raise


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``out``; on success it becomes ``out``, on error it goes.

    For outputs that are a whole folder (an exported model): ``out`` must be new or an empty
    folder, so a failed or killed run never leaves a partial ``out`` (at most a hidden temp
    folder, ``.<name>.tmp-...``). Missing parents are created, and removed again on failure.
    """
    out = check_output_folder(out, must_be_empty=True)
    with output_folder(out.parent) as parent:
        tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(out)}{os.getpid()}-", dir=parent))
        try:
            yield tmp
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)  # replaces an empty folder too (POSIX rename)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _host_tag() -> str:
    """This machine's name as it appears in temp names: no ``-`` (the field separator), short."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{_host_tag()}-"


def _process_exists(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a zombie counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True  # cannot tell: assume it is alive
    return True


def stale_temp_files(target: str | os.PathLike) -> list[Path]:
    """Temp files of ``target`` left by dead writers on this host (see the module docstring)."""
    target = Path(target)
    prefix = _temp_prefix(target)
    stale = []
    try:
        entries = list(os.scandir(target.parent if str(target.parent) else "."))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        match = re.fullmatch(r"([0-9]+)-[^/]+", entry.name[len(prefix) :])
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _process_exists(pid):
            stale.append(Path(entry.path))
    return sorted(stale)


def remove_stale_temp_files(target: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_temp_files` of ``target``; never raises. Returns what was deleted."""
    removed = []
    for path in stale_temp_files(target):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write to; on success rename it onto ``path``, on error delete it.

    After a successful rename, temp files of the same target left by killed runs on this host are
    deleted (see the module docstring).
    """
    target = check_writable_target(path)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{_temp_prefix(target)}{os.getpid()}-", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    remove_stale_temp_files(target)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(text)
