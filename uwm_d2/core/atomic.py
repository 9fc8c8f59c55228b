"""Write output files whole or not at all: a temp file beside the target, then ``os.replace``.

A run killed at any moment leaves either the previous file or the new one, never a truncated file;
a leftover temp file (``.<name>.tmp-*``) is harmless and ignored by everything that reads outputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from uwm_d2.core.errors import UWMInputError


def check_writable_target(path: str | os.PathLike) -> Path:
    """Fail early, naming ``path``, if its folder does not exist or cannot be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UWMInputError(f"output folder {str(folder)!r} does not exist (for {str(target)!r})")
    if not os.access(folder, os.W_OK):
        raise UWMInputError(f"output folder {str(folder)!r} is not writable (for {str(target)!r})")
    if target.is_dir():
        raise UWMInputError(f"output path {str(target)!r} is a folder, not a file")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write to; on success rename it onto ``path``, on error delete it."""
    target = check_writable_target(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(text)
