"""Where the maps of a search come from: one probability folder, or several averaged by weight.

An :class:`OofSource` is picklable (folder paths and weights only), so worker processes open the
folders themselves and read one case-day at a time. Several folders (say, the out-of-fold maps of
a semantic and of a Mask R-CNN cross-validation) must hold the same case-days, of the same scans,
predicted by the same folds; their 8-bit maps are averaged with the member weights and rounded
back to the grid (the submission averages float maps before the grid: the two differ by at most
one grid level).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.probability_files import ProbabilityFolder


@dataclass(frozen=True)
class OofSource:
    """Probability folders and their weights (normalized to sum 1).

    Use :meth:`open`, which checks that the folders agree.
    """

    folders: tuple[str, ...]
    weights: tuple[float, ...]
    _opened: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def open(
        cls, folders: Sequence[str | os.PathLike], weights: Sequence[float] | None = None
    ) -> OofSource:
        """Check the folders against the first one and return the source.

        Raises:
            UWMInputError: no folder, weights that are not positive or not one per folder, or
                folders with other case-days, scans or folds than the first (one line each).
        """
        paths = tuple(str(folder) for folder in folders)
        if not paths:
            raise UWMInputError("no probability folder given")
        weights = tuple(float(w) for w in (weights if weights is not None else [1.0] * len(paths)))
        if len(weights) != len(paths) or not all(w >= 0 for w in weights) or sum(weights) <= 0:
            raise UWMInputError(
                f"need one weight >= 0 per probability folder (not all 0), got {list(weights)}"
            )
        total = sum(weights)
        source = cls(paths, tuple(w / total for w in weights))
        first = source.folder(0)
        for index in range(1, len(paths)):
            other = source.folder(index)
            if other.entries.keys() != first.entries.keys():
                missing = sorted(set(first.entries) ^ set(other.entries))[0]
                raise UWMInputError(
                    f"probability folders {paths[0]!r} and {paths[index]!r} hold other "
                    f"case-days ({missing} is in one only)"
                )
            for case_day, entry in first.entries.items():
                theirs = other.entries[case_day]
                if theirs["slice_ids"] != entry["slice_ids"] or theirs["fold"] != entry["fold"]:
                    what = "scans" if theirs["slice_ids"] != entry["slice_ids"] else "folds"
                    raise UWMInputError(
                        f"probability folders {paths[0]!r} and {paths[index]!r} differ in the "
                        f"{what} of {case_day}"
                    )
        return source

    def folder(self, index: int) -> ProbabilityFolder:
        """The ``index``-th folder, opened once per process."""
        if index not in self._opened:
            self._opened[index] = ProbabilityFolder(self.folders[index])
        return self._opened[index]

    @cached_property
    def case_days(self) -> list[str]:
        return self.folder(0).case_days

    def fold_of(self, case_day: str) -> int | None:
        return self.folder(0).fold_of(case_day)

    def slice_ids(self, case_day: str) -> tuple[str, ...]:
        """The case-day's slice ids (read from the first folder's file)."""
        return self.folder(0).read(case_day).slice_ids

    def read(self, case_day: str) -> tuple[tuple[str, ...], np.ndarray]:
        """``(slice_ids, maps)``: the weighted average, ``uint8`` ``(D, C, H, W)`` on the grid."""
        active = [(index, w) for index, w in enumerate(self.weights) if w > 0]
        if len(active) == 1:
            item = self.folder(active[0][0]).read(case_day)
            return item.slice_ids, item.probabilities
        total: np.ndarray | None = None
        slice_ids: tuple[str, ...] = ()
        for index, weight in active:
            item = self.folder(index).read(case_day)
            slice_ids = item.slice_ids
            part = item.probabilities.astype(np.float32) * np.float32(weight)
            total = part if total is None else total + part
        return slice_ids, np.rint(total).astype(np.uint8)

    def __getstate__(self) -> dict:
        return {"folders": self.folders, "weights": self.weights}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "folders", state["folders"])
        object.__setattr__(self, "weights", state["weights"])
        object.__setattr__(self, "_opened", {})
