"""From a data root and trained models to ``submission.csv``: what ``tools/infer_submit.py`` runs.

No torch here: the predictor may be PyTorch models or exported ones (:mod:`uwm_d2.deploy`).
Offline by design: only local checkpoints are read, nothing is downloaded. Inputs are checked
before any model runs (output folder writable, every sample-submission id has its scan on disk),
and the submission is written atomically, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from uwm_d2.core.atomic import check_writable_target
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.layout_reader import index_scans
from uwm_d2.core.probability_files import ProbabilityFolder, ProbabilityWriter, config_digest
from uwm_d2.core.progress import Progress
from uwm_d2.inference.submission import (
    build_submission,
    encode_class_masks,
    read_sample_submission,
    write_submission,
)
from uwm_d2.inference.volume import EnsemblePredictor, scan_records

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmissionSummary:
    """What a run wrote, for the tool to print."""

    path: Path
    rows: int
    slices: int
    case_days: int
    non_empty_rows: int


def resolve_sample_submission(
    data_root: Path, sample_submission: str | os.PathLike | None
) -> pd.DataFrame | None:
    """The sample rows to follow: the given file, else ``ROOT/sample_submission.csv`` if present."""
    if sample_submission is not None:
        return read_sample_submission(sample_submission)
    default = data_root / "sample_submission.csv"
    return read_sample_submission(default) if default.is_file() else None


def predictor_digest(predictor: EnsemblePredictor) -> str:
    """A digest of what a predictor runs: each member's config (or export) and weight, and the
    rule; probability folders of different predictors are told apart by it (TTA is checked on
    its own, with its own message)."""
    members = [
        {
            "name": str(getattr(member, "name", "")),
            "weight": float(getattr(member, "weight", 1.0)),
            # A PyTorch member's whole config (its checkpoints too); an exported one's inputs.
            "config": member.cfg.dump() if hasattr(member, "cfg") else repr(member.inputs),
        }
        for member in predictor.members
    ]
    text = json.dumps(
        {
            "members": members,
            "exports": repr(getattr(predictor, "exports", "")),  # networks' checksums
            "rule": predictor.rule.as_dict(),
        },
        sort_keys=True,
        default=str,
    )
    return config_digest(text)


def predict_submission(
    predictor: EnsemblePredictor,
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
    sample_submission: str | os.PathLike | None = None,
    progress: bool = True,
    probabilities: str | os.PathLike | None = None,
) -> SubmissionSummary:
    """Predict every needed scan of ``data_root/split`` and write the submission to ``out``.

    ``predictor`` holds the models (one config or an ensemble, with or without flip TTA; see
    :func:`uwm_d2.inference.ensemble.build_predictor`, or exported models:
    :func:`uwm_d2.deploy.load_exported`).

    Rows follow the sample submission exactly when there is one (a sample with no rows gives a
    header-only file); without one, every scan found gets its three class rows, sorted.

    With ``probabilities``, each case-day's maps are also saved there, in the format of the
    out-of-fold maps (:mod:`uwm_d2.core.probability_files`, ``fold`` null): the maps the
    submission's masks were cut from, for ensembling or choosing a rule later. A folder made by
    other models, or with TTA set otherwise, is refused; case-days already there are predicted
    again only for the submission.

    Raises:
        UWMInputError: ``out`` cannot be written; a sample-submission id has no scan on disk;
            a checkpoint is missing or does not fit the config; a scan is unreadable.
    """
    root = Path(data_root)
    check_writable_target(out)
    sample = resolve_sample_submission(root, sample_submission)
    if sample is not None and sample.empty:
        # The public Kaggle sample has no rows: the valid answer is a header-only file.
        write_submission(build_submission({}, sample), out)
        return SubmissionSummary(Path(out), 0, 0, 0, 0)

    scans = index_scans(root, split)
    if sample is not None:
        wanted = pd.unique(sample["id"])
        missing = sorted(set(wanted) - set(scans["id"]))
        if missing:
            raise UWMInputError(
                f"scan for {missing[0]} (listed in the sample submission) not found under "
                f"{str(root / split)!r}"
                + (f" ({len(missing)} missing)" if len(missing) > 1 else "")
            )
        # Whole case-days are predicted: 2.5D neighbours and the 3D clean-up need them.
        needed_case_days = set(scans.loc[scans["id"].isin(wanted), "case_day"])
        scans = scans[scans["case_day"].isin(needed_case_days)]
    if scans.empty:
        raise UWMInputError(f"no scans found under {str(root / split)!r}")

    groups = scan_records(root, scans)
    writer = None
    if probabilities is not None:
        writer = ProbabilityWriter(
            probabilities, predictor_digest(predictor), predictor.tta, source={"split": split}
        )
        ProbabilityFolder(probabilities).check(
            scans={day: [r["slice_id"] for r in records] for day, records in groups.items()}
        )
    encoded: dict[tuple[str, str], str] = {}
    with Progress(
        len(scans),
        "infer",
        "slice",
        enabled=progress,
        group_unit="case-day",
        group_total=len(groups),
    ) as bar:
        for records in groups.values():
            maps = predictor.predict_probabilities(records)
            case_day = records[0]["case_day"]
            if writer is not None and case_day not in writer.written:
                writer.write(case_day, [record["slice_id"] for record in records], maps)
            masks = predictor.rule.volume_masks(maps)
            encoded.update(
                encode_class_masks(
                    {record["slice_id"]: mask for record, mask in zip(records, masks, strict=True)}
                )
            )
            bar.update(len(records))
    frame = build_submission(encoded, sample)
    write_submission(frame, out)
    return SubmissionSummary(
        Path(out),
        rows=len(frame),
        slices=len(scans),
        case_days=len(groups),
        non_empty_rows=int((frame["predicted"] != "").sum()),
    )
