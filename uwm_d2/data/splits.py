"""What a training run trained and validated on, kept in its ``OUTPUT_DIR`` and checked later.

A COCO folder's fold assignment (``{case: fold}``, in its ``manifest.json``) can change under a run:
``make_coco --folds 2`` into the folder of a 4-fold build replaces it. A run that then resumed
would train on other cases than before and validate on cases it had trained on, and still replace
``model_best.pth``. So a training run writes :data:`SPLITS_FILE` next to its checkpoints (the COCO
folder, the fold, the number of folds, a digest of the whole assignment and the cases on each
side), and :func:`check_resume` / :func:`check_evaluation` refuse, in one line, to resume on other
splits or to score a checkpoint on cases it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from uwm_d2.core.atomic import atomic_write_text
from uwm_d2.core.errors import UWMInputError

#: Written by a training run into its ``OUTPUT_DIR``.
SPLITS_FILE = "splits.json"
#: The COCO folder's manifest (:data:`uwm_d2.data.coco.MANIFEST`; not imported: that module
#: loads pycocotools and OpenCV).
_MANIFEST = "manifest.json"


def fold_assignment(coco_dir: str | os.PathLike) -> dict[int, int]:
    """``{case: fold}`` of the build in ``coco_dir``.

    From the manifest's ``folds``; builds made before the manifest carried it are read from their
    ``val_fold{k}.json`` files (the cases of fold ``k``'s validation images).

    Raises:
        UWMInputError: no readable manifest, or a listed fold file that cannot be read.
    """
    coco_dir = Path(coco_dir)
    try:
        manifest = json.loads((coco_dir / _MANIFEST).read_text())
        num_folds = int(manifest["num_folds"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UWMInputError(
            f"COCO folder {str(coco_dir)!r} has no readable {_MANIFEST} ({error}); rebuild it "
            "with tools/make_coco.py"
        ) from None
    if isinstance(manifest.get("folds"), dict):
        return {int(case): int(fold) for case, fold in manifest["folds"].items()}
    assignment: dict[int, int] = {}
    for fold in range(num_folds):
        path = coco_dir / f"val_fold{fold}.json"
        try:
            images = json.loads(path.read_text())["images"]
        except (OSError, ValueError, KeyError) as error:
            raise UWMInputError(f"COCO file {str(path)!r} cannot be read ({error})") from None
        assignment.update({int(image["case"]): fold for image in images})
    return assignment


def assignment_digest(assignment: Mapping[int, int]) -> str:
    """A short digest of ``{case: fold}``: equal exactly when the assignments are equal."""
    text = json.dumps(sorted((int(case), int(fold)) for case, fold in assignment.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSplits:
    """The cases one run trains and validates on (see the module docstring)."""

    coco_dir: str
    num_folds: int
    fold: int
    digest: str
    train_cases: tuple[int, ...]
    val_cases: tuple[int, ...]

    @classmethod
    def of(cls, coco_dir: str | os.PathLike, fold: int) -> RunSplits:
        """The splits of fold ``fold`` of the build in ``coco_dir``."""
        assignment = fold_assignment(coco_dir)
        return cls(
            coco_dir=str(Path(coco_dir).resolve()),
            num_folds=len(set(assignment.values())),
            fold=int(fold),
            digest=assignment_digest(assignment),
            train_cases=tuple(sorted(c for c, f in assignment.items() if f != fold)),
            val_cases=tuple(sorted(c for c, f in assignment.items() if f == fold)),
        )

    def describe(self) -> str:
        return f"fold {self.fold} of {self.num_folds} (fold assignment {self.digest})"

    def write(self, out_dir: str | os.PathLike) -> Path:
        path = Path(out_dir) / SPLITS_FILE
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, out_dir: str | os.PathLike) -> RunSplits | None:
        """The splits a run in ``out_dir`` recorded; ``None`` if it recorded none (older runs).

        Raises:
            UWMInputError: the file is there but unreadable.
        """
        path = Path(out_dir) / SPLITS_FILE
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
            values["train_cases"] = tuple(values["train_cases"])
            values["val_cases"] = tuple(values["val_cases"])
            return cls(**values)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UWMInputError(f"{str(path)!r} cannot be read ({error})") from None


def check_resume(recorded: RunSplits | None, current: RunSplits, out_dir: str) -> None:
    """Refuse to resume a run on other splits than it started with.

    Raises:
        UWMInputError: the fold, the number of folds or the fold assignment differ.
    """
    if recorded is None:
        return
    if (recorded.fold, recorded.num_folds, recorded.digest) != (
        current.fold,
        current.num_folds,
        current.digest,
    ):
        raise UWMInputError(
            f"OUTPUT_DIR {out_dir!r} was trained on {recorded.describe()}, but the COCO folder now "
            f"gives {current.describe()}: resuming would train and validate on other cases; "
            "resume with the splits it started with, or train anew into another OUTPUT_DIR"
        )


def check_evaluation(trained: RunSplits | None, current: RunSplits, weights: str) -> None:
    """Refuse to score a checkpoint on validation cases it was trained on.

    Raises:
        UWMInputError: some of ``current``'s validation cases are among ``trained``'s training
            cases.
    """
    if trained is None:
        return
    seen = sorted(set(trained.train_cases) & set(current.val_cases))
    if seen:
        raise UWMInputError(
            f"{weights!r} was trained on {len(seen)} of the {len(current.val_cases)} cases of "
            f"the validation fold it would be scored on (case {seen[0]} first; it trained on "
            f"{trained.describe()}, the COCO folder gives {current.describe()}); score it with "
            "the splits it was trained on"
        )
