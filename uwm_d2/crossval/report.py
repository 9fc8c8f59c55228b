"""From a cross-validation's out-of-fold maps to its summary, its submission files and its ensemble.

:func:`report_cross_validation` runs once every fold has predicted its validation case-days:

* chooses the merge rule on the out-of-fold maps (:func:`~uwm_d2.crossval.search.search_rule`,
  under the reading asked) and scores the config's rule, the chosen rule and the
  cross-validated estimate (the rule chosen without each fold, applied to it) under every
  reading, per organ and per fold, with bootstrap intervals over cases;
* writes ``oof_truth.csv`` (the label rows of the out-of-fold case-days), ``oof_default.csv`` and
  ``oof_tuned.csv`` (the out-of-fold predictions under the config's and the chosen rule, rows in
  the truth's order), so that ``tools/evaluate.py --truth DIR/oof_truth.csv --pred
  DIR/oof_default.csv`` gives the summary's score;
* writes ``cv_summary.json`` and ``ensemble.yaml`` (the fold checkpoints as one member, the chosen
  rule as its ``merge:`` section: ready for ``infer_submit --ensemble``);
* returns the table the tool prints.

A summary made from the same inputs (:func:`inputs_digest`: the out-of-fold files' bytes, the
labels' bytes, the rule, reading, checkpoints and fold facts, the project version) is kept, not
searched again: rerunning a finished cross-validation is instant.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from uwm_d2 import __version__
from uwm_d2.core.atomic import atomic_write_text
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import MergeRule, merge_section
from uwm_d2.core.readings import READINGS
from uwm_d2.crossval.passes import encode_rule
from uwm_d2.crossval.plan import truth_rows
from uwm_d2.crossval.search import SearchResult, search_rule
from uwm_d2.crossval.sources import OofSource
from uwm_d2.crossval.uncertainty import oof_report

#: The rules reported, by their key in a search's tallies, and how the table names them.
RULE_LABELS = {
    "default": "config's rule",
    "chosen": "chosen rule",
    "cross_validated": "chosen, cross-validated",
}


def write_submission_rows(
    truth: Any, encoded: Mapping[tuple[str, str], str], path: Path, column: str = "predicted"
) -> None:
    """``id,class,<column>`` rows in the truth's order from ``{(id, class): rle}``."""
    frame = truth[["id", "class"]].copy()
    frame[column] = [encoded[(i, c)] for i, c in zip(frame["id"], frame["class"], strict=True)]
    atomic_write_text(path, frame.to_csv(index=False))


def _interval(entry: Mapping[str, Any]) -> str:
    value, low, high = entry.get("score"), entry.get("low"), entry.get("high")
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.3f}, {high:.3f}]"


def table_lines(report: Mapping[str, Any], reading: str, folds: Sequence[int]) -> list[str]:
    """The summary table: every rule under every reading, per organ and per fold."""
    readings = [name for name in READINGS if name in report["default"]]
    lines = [f"{'':26}" + "".join(f"{name:>26}" for name in readings)]
    for label, title in RULE_LABELS.items():
        cells = "".join(f"{_interval(report[label][r]['all']):>26}" for r in readings)
        lines.append(f"{title:26}{cells}")
    lines.append(f"per organ ({reading} reading): config's rule -> chosen -> cross-validated")
    for name in CLASSES:
        values = [report[label][reading]["all"]["per_class"].get(name, {}) for label in RULE_LABELS]
        lines.append(f"  {name:12} " + " -> ".join(_interval(v) for v in values))
    lines.append(f"per fold ({reading} reading): config's rule -> chosen -> cross-validated")
    for fold in folds:
        values = [report[label][reading]["folds"].get(str(fold), {}) for label in RULE_LABELS]
        lines.append(f"  fold {fold:<7} " + " -> ".join(_interval(v) for v in values))
    return lines


#: Everything a summary is made from, beside the out-of-fold maps and the labels: a summary
#: whose inputs are unchanged is kept (a rerun of a finished cross-validation is instant).
_OUTPUTS = ("cv_summary.json", "oof_truth.csv", "oof_default.csv", "oof_tuned.csv", "ensemble.yaml")


def inputs_digest(
    oof_dir: str | os.PathLike, labels: str | os.PathLike, settings: Mapping[str, Any]
) -> str:
    """A hash of what a summary is computed from: the bytes of every out-of-fold file, the
    labels' bytes and ``settings`` (rule, reading, checkpoints, folds; JSON-serializable)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    oof_dir = Path(oof_dir)
    files = [(str(p.relative_to(oof_dir)), p) for p in sorted(oof_dir.rglob("*")) if p.is_file()]
    for name, path in [*files, ("labels", Path(labels))]:
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _kept_table(out: Path, digest: str, reading: str) -> list[str] | None:
    """The table of the summary in ``out`` if it was made from the same inputs, else None."""
    if not all((out / name).is_file() for name in _OUTPUTS):
        return None
    try:
        summary = json.loads((out / "cv_summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("inputs_digest") != digest:
        return None
    folds = sorted(int(k) for k in summary["scores"]["default"][reading]["folds"])
    return [
        "nothing changed since the summary was written (same out-of-fold maps, labels and "
        "settings): kept it (delete cv_summary.json to search again)",
        *table_lines(summary["scores"], reading, folds),
    ]


def report_cross_validation(
    out: str | os.PathLike,
    oof_dir: str | os.PathLike,
    labels: str | os.PathLike,
    default: MergeRule,
    reading: str,
    config_file: str,
    checkpoints: Mapping[int, str],
    extra: Mapping[str, Any],
    workers: int = 1,
) -> list[str]:
    """Search, score and write everything of the module docstring into ``out``; the table.

    Args:
        out: the cross-validation folder.
        oof_dir: its out-of-fold probability folder.
        labels: the label CSV (the data root's ``train.csv``).
        default: the config's merge rule.
        reading: the reading the rule is chosen on.
        config_file: the config file ``ensemble.yaml`` names (the run's full ``config.yaml``).
        checkpoints: the checkpoint of each fold, the ensemble's models.
        extra: more of ``cv_summary.json`` (the folds' runs, the command).
        workers: processes for the passes over the case-days.
    """
    out = Path(out)
    settings = {
        "default": default.as_dict(),
        "reading": reading,
        "config_file": str(config_file),
        "checkpoints": {str(k): str(v) for k, v in checkpoints.items()},
        "extra": extra,
        "version": __version__,
    }
    digest = inputs_digest(oof_dir, labels, settings)
    kept = _kept_table(out, digest, reading)
    if kept is not None:
        return kept
    result: SearchResult = search_rule([str(oof_dir)], str(labels), default, reading, None, workers)
    report = oof_report(result.tallies, result.folds)
    source = OofSource.open([str(oof_dir)])
    truth = truth_rows(labels, source.case_days)
    atomic_write_text(out / "oof_truth.csv", truth.to_csv(index=False))
    for name, rule in (("oof_default.csv", result.default), ("oof_tuned.csv", result.chosen)):
        write_submission_rows(truth, encode_rule(source, rule, workers), out / name)
    folds = sorted(k for k in set(result.folds.values()) if k is not None)
    summary = {
        **extra,
        "inputs_digest": digest,
        "reading_searched": reading,
        "case_days": len(result.folds),
        "slices": len(truth) // len(CLASSES),
        "scores": report,
        "rules": {
            "default": result.default.as_dict(),
            "chosen": result.chosen.as_dict(),
            "chosen_without_fold": {str(k): r.as_dict() for k, r in result.fold_rules.items()},
        },
        "search": result.history,
        "files": {
            name: str(out / name)
            for name in ("oof_truth.csv", "oof_default.csv", "oof_tuned.csv", "ensemble.yaml")
        },
    }
    atomic_write_text(out / "cv_summary.json", json.dumps(summary, indent=2) + "\n")
    ensemble = {
        "members": [
            {
                "config": str(config_file),
                "weights": [str(checkpoints[k]) for k in sorted(checkpoints)],
            }
        ],
        "merge": merge_section(result.chosen),
    }
    atomic_write_text(out / "ensemble.yaml", yaml.safe_dump(ensemble, sort_keys=False))
    return table_lines(report, reading, folds)
