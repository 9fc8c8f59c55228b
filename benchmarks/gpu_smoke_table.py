"""The GPU smoke report: the results file's records and the one table made from them (no torch).

``benchmarks/gpu_smoke.py`` appends one JSON line per step to a results file as the step ends;
:func:`format_table` turns the last record of each step into a markdown table, on any machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: The rows of the table, in order: (step key, what it is). Steps with no record show "not run".
STEPS: tuple[tuple[str, str], ...] = (
    ("install", "install from the wheel folder"),
    ("data", "phantom data and COCO files"),
    ("instant-amp", "(a) instant R18-FPN, CUDA + AMP"),
    ("r50-gn-384", "(b) R50-FPN GN from scratch, 384 px, AMP"),
    ("infer", "(c) infer_submit predictor, R50 GN"),
    ("infer-tta", "(c) infer_submit predictor, flip TTA"),
    ("infer-cli", "(c) tools/infer_submit.py end to end"),
    ("semantic", "(d) semantic R18-FPN demo config, CUDA"),
)
LABELS = dict(STEPS)


def append_record(results: Path, record: dict[str, Any]) -> None:
    """One JSON line per finished step, flushed at once (a killed run keeps what it wrote)."""
    with results.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_records(results: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The environment record and the last record of each step (unreadable lines skipped)."""
    env: dict[str, Any] = {}
    steps: dict[str, dict[str, Any]] = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a kill
            if record.get("step") == "env":
                env = record
            elif "step" in record:
                steps[record["step"]] = record
    return env, steps


def _number(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}f}{unit}"


def duration(seconds: float | None) -> str:
    """``S s`` below a minute, ``M min S s`` above; empty when unknown."""
    if seconds is None:
        return ""
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def format_table(env: dict[str, Any], steps: dict[str, dict[str, Any]]) -> str:
    """The one table: a line about the machine, then a markdown table with one row per step."""
    header = (
        f"GPU smoke: {env.get('gpu', 'GPU unknown')}, torch {env.get('torch', '?')} "
        f"(CUDA {env.get('cuda', '?')}), Python {env.get('python', '?')}"
    )
    rows = [
        header,
        "",
        "| step | result | s/iter | throughput | peak GPU memory | wall | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in STEPS:
        record = steps.get(key)
        if record is None:
            rows.append(f"| {label} | not run (stopped or timed out before it) | | | | | |")
            continue
        if record.get("ok", False):
            result = "ok"
        else:
            error = " ".join(str(record.get("error") or "failed").split())
            result = "FAILED: " + (error if len(error) <= 120 else error[:117] + "...")
        rate = record.get("rate")
        throughput = f"{_number(rate)} {record.get('unit', '')}".strip() if rate else ""
        peak = record.get("peak_gib")
        cells = [
            label,
            result,
            _number(record.get("s_per_iter"), 3),
            throughput,
            _number(peak, 2, " GiB") if peak is not None else "",
            duration(record.get("wall_s")),
            str(record.get("note") or ""),
        ]
        # A "|" inside a cell (an error message) would split the row.
        rows.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(rows)
