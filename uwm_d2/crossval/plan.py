"""What a cross-validation run is made of, decided and checked before anything is written.

``tools/cross_validate.py --out DIR`` lays its run out as::

    DIR/cv.json            what the run is: the config's digest, the folds' assignment digest
    DIR/config.yaml        the full config of every fold (UWM.FOLD aside), for inference
    DIR/coco/              the COCO files (unless UWM.COCO_DIR names others), built once
    DIR/fold{k}/           fold k's training run (tools/train_net.py's OUTPUT_DIR)
    DIR/oof/               out-of-fold probabilities: every case-day once, by its fold's model
    DIR/oof_truth.csv, oof_default.csv, oof_tuned.csv, cv_summary.json, ensemble.yaml

This module holds the torch-free part of that: which folds (``--folds``), which case-days each
fold predicts (the COCO manifest's ``{case: fold}``), the config's digest, the record that ties a
folder to one config and one fold assignment (a rerun with another refuses in one line), and the
checkpoints ``--init-from`` starts each fold from (only a model that never saw that fold's
validation cases).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from uwm_d2.core.atomic import atomic_write_text
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.layout_reader import BAD_CASE_DAYS, index_scans
from uwm_d2.data.splits import RunSplits, assignment_digest

#: The record of a cross-validation folder.
RECORD = "cv.json"

#: Config keys that differ between the folds of one run, or only say where files go: left out
#: of the config's digest, so that every fold (and a rerun) shares it.
_RUN_KEYS = ("OUTPUT_DIR", "MODEL.WEIGHTS", "UWM.FOLD", "UWM.COCO_DIR")


def parse_folds(text: str, num_folds: int) -> list[int]:
    """``all`` or comma-separated fold numbers, each in ``0 .. num_folds - 1``, no repeats.

    Raises:
        UWMInputError: a fold that is not a number, is out of range or repeats (named).
    """
    if text.strip() == "all":
        return list(range(num_folds))
    folds: list[int] = []
    for item in text.split(","):
        try:
            fold = int(item.strip())
        except ValueError:
            raise UWMInputError(
                f"--folds {text!r}: {item.strip()!r} is not a fold number"
            ) from None
        if not 0 <= fold < num_folds:
            raise UWMInputError(
                f"--folds {text!r}: fold {fold} is out of range (UWM.NUM_FOLDS gives folds 0 to "
                f"{num_folds - 1})"
            )
        if fold in folds:
            raise UWMInputError(f"--folds {text!r}: fold {fold} is given twice")
        folds.append(fold)
    return sorted(folds)


def config_digest(cfg: Any) -> str:
    """A digest of everything in the config that shapes a fold's model and its maps."""
    settings = cfg.clone()
    settings.defrost()
    for key in _RUN_KEYS:
        node = settings
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = ""
    return hashlib.sha256(settings.dump().encode()).hexdigest()[:16]


def case_days_by_fold(
    data_root: str | os.PathLike, assignment: Mapping[int, int], exclude_bad: bool
) -> dict[int, dict[str, list[str]]]:
    """``{fold: {case_day: slice ids in slice order}}`` of the training scans.

    A case-day belongs to the fold of its case. With ``exclude_bad`` the case-days of
    :data:`~uwm_d2.core.layout_reader.BAD_CASE_DAYS` are left out (they are not trained on either).

    Raises:
        UWMInputError: a training case that the fold assignment does not know (the COCO files
            were built from other data).
    """
    scans = index_scans(data_root, "train").sort_values(["case", "day", "slice"])
    unknown = sorted(set(scans["case"]) - set(assignment))
    if unknown:
        raise UWMInputError(
            f"case {unknown[0]} of {str(Path(data_root) / 'train')!r} is in no fold of the COCO "
            "folder (built from other data?); rebuild it with tools/make_coco.py"
        )
    folds: dict[int, dict[str, list[str]]] = {fold: {} for fold in sorted(set(assignment.values()))}
    for case_day, group in scans.groupby("case_day", sort=False):
        if exclude_bad and case_day in BAD_CASE_DAYS:
            continue
        fold = assignment[int(group["case"].iloc[0])]
        folds[fold][str(case_day)] = group["id"].tolist()
    return folds


def truth_rows(labels: str | os.PathLike, case_days: Sequence[str]) -> pd.DataFrame:
    """The label CSV's rows of ``case_days`` (``id,class,segmentation``), in the file's order."""
    from uwm_d2.core.layout_reader import read_label_csv

    frame = read_label_csv(labels)
    wanted = set(case_days)
    keep = frame["id"].str.rsplit("_slice_", n=1).str[0].isin(wanted)
    return frame.loc[keep, ["id", "class", "segmentation"]].reset_index(drop=True)


@dataclass(frozen=True)
class CrossValRecord:
    """What a cross-validation folder was made by (``cv.json``)."""

    config_file: str
    config_digest: str
    num_folds: int
    assignment_digest: str
    coco_dir: str
    tta: bool

    def check(self, other: CrossValRecord, out: str | os.PathLike) -> None:
        """Refuse to continue a folder of another run, in one line."""
        for name, label in (
            ("config_digest", "another config (or other KEY VALUE overrides)"),
            ("assignment_digest", "other folds (the COCO folder's fold assignment differs)"),
            ("num_folds", "another number of folds"),
            ("tta", "flip TTA set otherwise (--no-tta)"),
        ):
            if getattr(self, name) != getattr(other, name):
                raise UWMInputError(
                    f"{str(out)!r} holds a cross-validation made with {label}; continue it with "
                    "the same command, or give another --out"
                )

    def write(self, out: str | os.PathLike) -> None:
        atomic_write_text(Path(out) / RECORD, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, out: str | os.PathLike) -> CrossValRecord | None:
        path = Path(out) / RECORD
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise UWMInputError(f"{str(path)!r} cannot be read ({error})") from None


def record_of(cfg: Any, config_file: str, assignment: Mapping[int, int], coco_dir: Path, tta: bool):
    """The :class:`CrossValRecord` of a run of ``cfg`` over ``assignment``."""
    return CrossValRecord(
        config_file=str(config_file),
        config_digest=config_digest(cfg),
        num_folds=len(set(assignment.values())),
        assignment_digest=assignment_digest(assignment),
        coco_dir=str(coco_dir),
        tta=bool(tta),
    )


def check_init_folder(init_dir: str | os.PathLike) -> Path:
    """``init_dir`` is a cross-validation folder (checked before anything is built or written).

    Raises:
        UWMInputError: it is not.
    """
    init_dir = Path(init_dir)
    if not (init_dir / RECORD).is_file():
        raise UWMInputError(f"--init-from {str(init_dir)!r} is not a cross-validation folder")
    return init_dir


def init_checkpoints(
    init_dir: str | os.PathLike, folds: Sequence[int], coco_dir: str | os.PathLike
) -> dict[int, Path]:
    """The checkpoint each fold of ``init_dir`` (another cross-validation) offers fold ``k`` here.

    Fold ``k`` starts from ``init_dir/fold{k}``'s best checkpoint (its final one when it never
    evaluated), and only when that run never trained on a case of this run's fold ``k``
    validation cases (its ``splits.json``).

    Raises:
        UWMInputError: ``init_dir`` is not a cross-validation folder, lacks a fold or its
            checkpoint, or its fold ``k`` trained on a case of this fold ``k``'s validation.
    """
    init_dir = check_init_folder(init_dir)
    found: dict[int, Path] = {}
    for fold in folds:
        folder = init_dir / f"fold{fold}"
        checkpoint = next(
            (folder / n for n in ("model_best.pth", "model_final.pth") if (folder / n).is_file()),
            None,
        )
        if checkpoint is None:
            raise UWMInputError(f"--init-from {str(init_dir)!r} has no checkpoint of fold {fold}")
        trained = RunSplits.read(folder)
        if trained is None:
            raise UWMInputError(f"--init-from: {str(folder)!r} does not say what it trained on")
        seen = sorted(set(trained.train_cases) & set(RunSplits.of(coco_dir, fold).val_cases))
        if seen:
            raise UWMInputError(
                f"--init-from: {str(checkpoint)!r} was trained on case {seen[0]}, a validation "
                f"case of fold {fold} here: its folds differ from this run's"
            )
        found[fold] = checkpoint
    return found
