"""One ensemble from several cross-validations of the same folds (``tools/choose_ensemble.py``).

Each cross-validation folder (``tools/cross_validate.py --out DIR``) brings its out-of-fold maps
(``DIR/oof``), its fold checkpoints and its full config. :func:`combine_cross_validations` checks
that they split the same cases the same way, chooses the member weights and one merge rule on
their weighted out-of-fold maps (:func:`~uwm_d2.crossval.members.search_members`), and writes an
ensemble file (every member with weight above 0: its config, its fold checkpoints, its weight;
the chosen rule as ``merge:``) and beside it a JSON summary (``<file>.json``: the weights tried,
every rule's scores under every reading with intervals, the rules).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from uwm_d2.core.atomic import atomic_write_text, check_writable_target
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule, merge_section
from uwm_d2.crossval.members import search_members
from uwm_d2.crossval.plan import CrossValRecord
from uwm_d2.crossval.report import table_lines
from uwm_d2.crossval.uncertainty import oof_report


def _summary(folder: Path) -> dict[str, Any]:
    path = folder / "cv_summary.json"
    if CrossValRecord.read(folder) is None or not path.is_file():
        raise UWMInputError(
            f"{str(folder)!r} is not a finished cross-validation (no cv.json and cv_summary.json)"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UWMInputError(f"{str(path)!r} cannot be read ({error})") from None


def check_same_folds(folders: Sequence[Path]) -> None:
    """The cross-validations split the same cases into the same folds.

    Raises:
        UWMInputError: fewer than two folders, or one whose fold assignment differs (named).
    """
    if len(folders) < 2:
        raise UWMInputError("an ensemble of cross-validations needs at least two --cv folders")
    records = [CrossValRecord.read(folder) for folder in folders]
    for folder, record in zip(folders[1:], records[1:], strict=True):
        if record.assignment_digest != records[0].assignment_digest:
            raise UWMInputError(
                f"{str(folder)!r} split the cases into other folds than {str(folders[0])!r} "
                f"(assignment {record.assignment_digest}, not {records[0].assignment_digest}): "
                "its out-of-fold maps cannot be averaged with the others"
            )


def combine_cross_validations(
    folders: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    reading: str = "project",
    step: float = 0.25,
    workers: int = 1,
) -> list[str]:
    """Choose weights and a rule, write the ensemble file and its summary; the table's lines.

    Raises:
        UWMInputError: a folder that is not a finished cross-validation, other folds, maps of
            other case-days, an output that cannot be written.
    """
    folders = [Path(folder) for folder in folders]
    out = Path(out)
    check_writable_target(out)
    summaries = [_summary(folder) for folder in folders]
    check_same_folds(folders)
    default = MergeRule.from_dict(summaries[0]["rules"]["default"])
    labels = summaries[0]["labels"]
    found = search_members(
        [str(folder / "oof") for folder in folders], labels, default, reading, step, None, workers
    )
    members = []
    for folder, summary, weight in zip(folders, summaries, found.weights, strict=True):
        if weight > 0:
            checkpoints = [fold["checkpoint"] for _, fold in sorted(summary["folds"].items())]
            config = str(folder / "config.yaml")
            members.append({"config": config, "weights": checkpoints, "weight": float(weight)})
    search = found.search
    report = oof_report(search.tallies, search.folds)
    document = {
        "cross_validations": [str(folder) for folder in folders],
        "reading_searched": reading,
        "weights": {str(f): w for f, w in zip(folders, found.weights, strict=True)},
        "weights_tried": found.candidates,
        "scores": report,
        "rules": {"default": search.default.as_dict(), "chosen": search.chosen.as_dict()},
    }
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(document, indent=2) + "\n")
    ensemble = {"members": members, "merge": merge_section(search.chosen)}
    atomic_write_text(out, yaml.safe_dump(ensemble, sort_keys=False))
    weights = ", ".join(f"{f.name} {w:.2f}" for f, w in zip(folders, found.weights, strict=True))
    folds = sorted(k for k in set(search.folds.values()) if k is not None)
    return [f"member weights: {weights}", *table_lines(report, reading, folds)]
