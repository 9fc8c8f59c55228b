"""The truth of out-of-fold case-days, from the data root's label CSV, one case-day at a time.

:class:`TruthTable` reads the label CSV once (through :mod:`uwm_d2.core.layout_reader`'s readers)
and hands out, per case-day, the RLE strings of the slices a probability file holds
(:meth:`TruthTable.rows`, small enough to send to a worker process); :func:`truth_volume` decodes
them into the ``(D, C, H, W)`` bool truth there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.layout_reader import decode_row, label_table, read_label_csv

#: One slice's truth as the CSV spells it: ``(slice_id, (rle per class in CLASSES order))``.
TruthRow = tuple[str, tuple[str, ...]]


class TruthTable:
    """The label CSV of a data root (``train.csv``), pivoted to one row per slice.

    Args:
        labels: the label CSV, or a data root holding ``train.csv``.

    Raises:
        UWMInputError: as :func:`uwm_d2.core.layout_reader.read_label_csv` and
            :func:`~uwm_d2.core.layout_reader.label_table` (one line naming the file or row).
    """

    def __init__(self, labels: str | os.PathLike) -> None:
        path = Path(labels)
        if path.is_dir():
            path = path / "train.csv"
        self.csv_name = path.name
        frame = read_label_csv(path)
        self._table = label_table(frame, "segmentation", self.csv_name)

    def rows(self, case_day: str, slice_ids: Sequence[str]) -> list[TruthRow]:
        """The truth rows of these slices, in their order.

        Raises:
            UWMInputError: a slice without rows in the CSV (named, with the case-day).
        """
        missing = [slice_id for slice_id in slice_ids if slice_id not in self._table.index]
        if missing:
            raise UWMInputError(
                f"{self.csv_name} has no rows for slice {missing[0]} of {case_day} "
                f"({len(missing)} of its slices lack them)"
            )
        cells = self._table.loc[list(slice_ids), list(CLASSES)].to_numpy()
        return [(slice_id, tuple(row)) for slice_id, row in zip(slice_ids, cells, strict=True)]


def truth_volume(rows: Sequence[TruthRow], shape: tuple[int, int], csv_name: str) -> np.ndarray:
    """:meth:`TruthTable.rows` decoded: ``(D, C, H, W)`` bool at the scans' ``(H, W)``."""
    truth = np.zeros((len(rows), len(CLASSES), *shape), dtype=bool)
    for depth, (slice_id, rles) in enumerate(rows):
        for class_index, (name, rle) in enumerate(zip(CLASSES, rles, strict=True)):
            if rle:
                truth[depth, class_index] = decode_row(rle, shape, csv_name, slice_id, name)
    return truth
