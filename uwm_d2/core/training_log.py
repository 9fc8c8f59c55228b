"""detectron2's ``metrics.json`` (one JSON object per line): the one reader every stage uses.

A training run appends a row per logging period; a run killed mid-write leaves a cut-off last
line, and a resumed run may repeat iterations. The trainer (resume: trim, best score), the
pictures (training curves) and the tools all read the file through :func:`read_metrics_rows`,
which skips lines that are not whole JSON objects instead of failing on them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _parse(line: str) -> dict[str, Any] | None:
    """A row, or ``None`` for a blank, cut-off or non-object line."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def read_metrics_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every whole row of a ``metrics.json``, in file order (unreadable lines skipped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        row = _parse(line)
        if row is not None:
            rows.append(row)
    return rows


def metrics_by_iteration(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows merged per ``iteration`` (a later row's keys win), sorted by iteration.

    detectron2 writes an evaluation's results and the training losses of the same iteration as
    separate rows; the curves want one row per iteration. Rows without an iteration are skipped.
    """
    merged: dict[int, dict[str, Any]] = {}
    for row in read_metrics_rows(path):
        try:
            iteration = int(row["iteration"])
        except (KeyError, TypeError, ValueError):
            continue
        merged.setdefault(iteration, {}).update(row)
    return [merged[iteration] for iteration in sorted(merged)]


def best_metric(path: str | os.PathLike, key: str) -> tuple[float, int] | None:
    """``(value, iteration)`` of the largest finite ``key`` in a ``metrics.json``, or ``None``."""
    if not Path(path).is_file():
        return None
    best = None
    for row in read_metrics_rows(path):
        try:
            value, iteration = float(row[key]), int(row["iteration"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value) and (best is None or value > best[0]):
            best = (value, iteration)
    return best


def trim_metrics_json(path: str | os.PathLike, start_iter: int) -> int:
    """Drop the rows with ``iteration >= start_iter`` (and unreadable lines), in place.

    In place (not replaced) because the run's ``JSONWriter`` already holds the file open in
    append mode. Returns the number of lines dropped.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open("r+") as handle:
        lines = handle.read().splitlines()
        kept = [
            line
            for line in lines
            if (row := _parse(line)) is not None and _iteration(row) < start_iter
        ]
        if len(kept) != len(lines):
            handle.seek(0)
            handle.write("".join(line + "\n" for line in kept))
            handle.truncate()
    return len(lines) - len(kept)


def _iteration(row: dict[str, Any]) -> float:
    try:
        return int(row["iteration"])
    except (KeyError, TypeError, ValueError):
        return -1
