"""Saved probability maps, one compressed file per case-day: out-of-fold and test predictions.

A probability folder holds one file per case-day and a manifest that says what made them::

    <folder>/manifest.json
    <folder>/<case_day>.npz          e.g. case123_day20.npz

Each ``.npz`` (numpy's zip archive, deflate-compressed: the maps are mostly zeros) holds

* ``probabilities``: ``uint8`` ``(D, C, H, W)``, the per-class maps on the merge rule's 8-bit
  grid (``round(p * 255)``, :func:`uwm_d2.core.merge_steps.quantize`), slices in slice-number
  order, classes in ``CLASSES`` order, at the scan's own ``H x W``;
* ``slice_ids``: ``(D,)`` strings, the competition ids of those slices.

``manifest.json`` (rewritten atomically after each file, so it lists exactly the files that are
complete)::

    {"format": "uwm_d2 probabilities", "version": 1,
     "classes": ["large_bowel", "small_bowel", "stomach"], "grid": 255,
     "config_hash": "...", "tta": true, "source": {...},
     "case_days": {"case123_day20": {"fold": 0, "slices": 144, "height": 266, "width": 266,
                                     "slice_ids": "<digest of the slice ids>"}, ...}}

``config_hash`` identifies the config that made the maps (opaque here; the caller decides what
it covers), ``fold`` the fold whose model predicted the case-day (``null`` for test scans),
``source`` anything else worth keeping (free JSON). A folder made by another config, with or
without TTA, or for other scans is refused in one line (:meth:`ProbabilityFolder.check`), and so
is a second file for a case-day already there: every case-day appears exactly once
(:meth:`ProbabilityFolder.check_coverage`). Readers hold one case-day at a time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uwm_d2.core.atomic import atomic_path, atomic_write_text
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, parse_case_day, parse_slice_id
from uwm_d2.core.merge_steps import GRID_MAX, quantize

FORMAT = "uwm_d2 probabilities"
VERSION = 1
MANIFEST = "manifest.json"


def scan_digest(slice_ids: Sequence[str]) -> str:
    """A short digest of a case-day's slice ids, in order: the scans' identity in a manifest."""
    return hashlib.sha256("\n".join(slice_ids).encode()).hexdigest()[:16]


def config_digest(text: str) -> str:
    """A short digest of a config's text (say, ``cfg.dump()`` of the keys that shape the maps)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _case_day_key(case_day: str) -> tuple[int, int]:
    return parse_case_day(case_day)


def _check_slice_ids(case_day: str, slice_ids: Sequence[str]) -> list[str]:
    """The ids as strings; each must be a slice of ``case_day``, in increasing slice order."""
    ids = [str(slice_id) for slice_id in slice_ids]
    numbers = []
    for slice_id in ids:
        parsed = parse_slice_id(slice_id)
        if parsed.case_day != case_day:
            raise UWMInputError(f"slice {slice_id} is not a slice of {case_day}")
        numbers.append(parsed.slice)
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise UWMInputError(f"the slices of {case_day} are not in increasing slice order")
    return ids


@dataclass(frozen=True)
class CaseDayProbabilities:
    """One case-day's saved maps: ``probabilities`` ``uint8`` ``(D, C, H, W)``."""

    case_day: str
    slice_ids: tuple[str, ...]
    probabilities: np.ndarray
    fold: int | None


class ProbabilityFolder:
    """A probability folder, read one case-day at a time (see the module docstring).

    Args:
        folder: the folder holding ``manifest.json``.

    Raises:
        UWMInputError: no folder or manifest, a manifest that is not JSON, of another format or
            version, or for other classes.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise UWMInputError(f"{str(self.folder)!r} is not a probability folder (no {MANIFEST})")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            detail = " ".join(str(error).split())
            raise UWMInputError(f"{str(path)!r} cannot be read as JSON: {detail}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UWMInputError(f"{str(path)!r} is not a manifest of {FORMAT!r} files")
        if manifest.get("version") != VERSION or manifest.get("grid") != GRID_MAX:
            raise UWMInputError(
                f"{str(path)!r} is version {manifest.get('version')!r}; this code reads {VERSION}"
            )
        if manifest.get("classes") != list(CLASSES):
            raise UWMInputError(
                f"{str(path)!r} holds classes {manifest.get('classes')}, not {list(CLASSES)}"
            )
        self.manifest: dict[str, Any] = manifest

    @property
    def config_hash(self) -> str:
        return str(self.manifest["config_hash"])

    @property
    def tta(self) -> bool:
        return bool(self.manifest["tta"])

    @property
    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        """``{case_day: {"fold", "slices", "height", "width", "slice_ids"}}``."""
        return self.manifest["case_days"]

    @property
    def case_days(self) -> list[str]:
        """The case-days held, in case then day order."""
        return sorted(self.entries, key=_case_day_key)

    def fold_of(self, case_day: str) -> int | None:
        return self.entries[case_day]["fold"]

    def path_of(self, case_day: str) -> Path:
        return self.folder / f"{case_day}.npz"

    def read(self, case_day: str) -> CaseDayProbabilities:
        """One case-day's maps, checked against the manifest.

        Raises:
            UWMInputError: the case-day is not in the folder, or its file is missing, unreadable
                or does not match the manifest (shape, slices).
        """
        if case_day not in self.entries:
            raise UWMInputError(f"{str(self.folder)!r} holds no probabilities of {case_day}")
        entry, path = self.entries[case_day], self.path_of(case_day)
        try:
            with np.load(path, allow_pickle=False) as archive:
                probabilities = archive["probabilities"]
                slice_ids = tuple(str(item) for item in archive["slice_ids"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            detail = " ".join(str(error).split())
            raise UWMInputError(
                f"probability file {str(path)!r} cannot be read: {detail}"
            ) from None
        expected = (entry["slices"], len(CLASSES), entry["height"], entry["width"])
        if probabilities.dtype != np.uint8 or probabilities.shape != expected:
            raise UWMInputError(
                f"probability file {str(path)!r} holds {probabilities.dtype} "
                f"{probabilities.shape}, its manifest says uint8 {expected}"
            )
        if scan_digest(slice_ids) != entry["slice_ids"]:
            raise UWMInputError(
                f"probability file {str(path)!r} holds other slices than its manifest lists"
            )
        return CaseDayProbabilities(case_day, slice_ids, probabilities, entry["fold"])

    def __iter__(self) -> Iterator[CaseDayProbabilities]:
        """Every case-day, one at a time, in :attr:`case_days` order."""
        for case_day in self.case_days:
            yield self.read(case_day)

    def check(
        self,
        config_hash: str | None = None,
        tta: bool | None = None,
        scans: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Refuse the folder, in one line, unless it was made by this config for these scans.

        Args:
            config_hash: the config the maps must come from (``None``: not checked).
            tta: whether the maps must have been made with flip TTA (``None``: not checked).
            scans: ``{case_day: slice ids}`` of the scans; every case-day held must be one of
                them with exactly those slices (coverage is :meth:`check_coverage`).

        Raises:
            UWMInputError: naming the folder and the first difference.
        """
        where = f"probability folder {str(self.folder)!r}"
        if config_hash is not None and config_hash != self.config_hash:
            raise UWMInputError(
                f"{where} was made by another config (hash {self.config_hash}, not {config_hash})"
            )
        if tta is not None and bool(tta) != self.tta:
            made = "with" if self.tta else "without"
            raise UWMInputError(f"{where} was made {made} flip TTA")
        for case_day in self.case_days if scans is not None else ():
            if case_day not in scans:
                raise UWMInputError(f"{where} holds {case_day}, which is not among the scans")
            if scan_digest(list(scans[case_day])) != self.entries[case_day]["slice_ids"]:
                raise UWMInputError(f"{where} was made for other scans of {case_day}")

    def check_coverage(
        self, case_days: Iterable[str], folds: Mapping[str, int | None] | None = None
    ) -> None:
        """Every case-day of ``case_days`` held exactly once, and no other one.

        Args:
            case_days: the case-days that must be there (say, every training case-day).
            folds: when given, the fold each case-day must have been predicted by.

        Raises:
            UWMInputError: the missing (or extra) case-days named, with their number.
        """
        wanted = list(case_days)
        repeated = sorted({day for day in wanted if wanted.count(day) > 1}, key=_case_day_key)
        if repeated:
            raise UWMInputError(f"case-day {repeated[0]} is listed twice")
        held = set(self.entries)
        where = f"probability folder {str(self.folder)!r}"
        for problem, days in (
            ("lacks", sorted(set(wanted) - held, key=_case_day_key)),
            ("holds case-days not asked for:", sorted(held - set(wanted), key=_case_day_key)),
        ):
            if days:
                more = f" and {len(days) - 3} more" if len(days) > 3 else ""
                raise UWMInputError(f"{where} {problem} {', '.join(days[:3])}{more}")
        for case_day, fold in (folds or {}).items():
            if self.fold_of(case_day) != fold:
                raise UWMInputError(
                    f"{where}: {case_day} was predicted by fold {self.fold_of(case_day)}, "
                    f"not fold {fold}"
                )


class ProbabilityWriter:
    """Writes a probability folder one case-day at a time; a rerun continues the same folder.

    Args:
        folder: created if missing. A folder that already has a manifest continues it (a resumed
            run) when it was made by the same config with the same TTA; anything else there is
            refused.
        config_hash: see :func:`config_digest`.
        tta: whether flip TTA made the maps.
        source: anything else worth keeping in the manifest (JSON-able).

    Raises:
        UWMInputError: the folder holds a manifest of another config, TTA or format.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        config_hash: str,
        tta: bool,
        source: Mapping[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        if (self.folder / MANIFEST).is_file():
            existing = ProbabilityFolder(self.folder)
            existing.check(config_hash=config_hash, tta=tta)
            self.manifest = existing.manifest
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format": FORMAT,
                "version": VERSION,
                "classes": list(CLASSES),
                "grid": GRID_MAX,
                "config_hash": str(config_hash),
                "tta": bool(tta),
                "source": dict(source or {}),
                "case_days": {},
            }
            self._write_manifest()

    @property
    def written(self) -> set[str]:
        """The case-days already in the folder (a resumed run skips them)."""
        return set(self.manifest["case_days"])

    def write(
        self,
        case_day: str,
        slice_ids: Sequence[str],
        probabilities: np.ndarray,
        fold: int | None = None,
    ) -> Path:
        """Save one case-day's ``(D, C, H, W)`` maps (float, or ``uint8`` on the grid).

        Raises:
            UWMInputError: the case-day is already there, or the ids or shape do not fit.
        """
        if case_day in self.manifest["case_days"]:
            held = self.manifest["case_days"][case_day]["fold"]
            raise UWMInputError(
                f"probability folder {str(self.folder)!r} already holds {case_day} (fold {held})"
            )
        ids = _check_slice_ids(case_day, slice_ids)
        grid = np.ascontiguousarray(quantize(probabilities))
        if grid.ndim != 4 or grid.shape[:2] != (len(ids), len(CLASSES)):
            raise UWMInputError(
                f"{case_day}: expected ({len(ids)}, {len(CLASSES)}, H, W) maps, got {grid.shape}"
            )
        path = self.folder / f"{case_day}.npz"
        with atomic_path(path) as tmp_path, open(tmp_path, "wb") as stream:
            np.savez_compressed(stream, probabilities=grid, slice_ids=np.array(ids))
        self.manifest["case_days"][case_day] = {
            "fold": None if fold is None else int(fold),
            "slices": len(ids),
            "height": int(grid.shape[2]),
            "width": int(grid.shape[3]),
            "slice_ids": scan_digest(ids),
        }
        self._write_manifest()
        return path

    def _write_manifest(self) -> None:
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
