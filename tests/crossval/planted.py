"""Hand-made out-of-fold folders for the crossval tests: organs, strays and their truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.probability_files import ProbabilityWriter
from uwm_d2.core.rle import rle_encode

SHAPE = (10, 16, 14)  # D, H, W of every planted case-day


def organ_volume(first: int, span: int, top: int = 4, left: int = 3, size: int = 5) -> np.ndarray:
    """A box organ over ``span`` slices from ``first``: ``(D, H, W)`` bool."""
    volume = np.zeros(SHAPE, dtype=bool)
    volume[first : first + span, top : top + size, left : left + size] = True
    return volume


def stray_volume(first: int, span: int) -> np.ndarray:
    """A 2 x 2 stray blob over ``span`` slices in a corner far from the organs."""
    volume = np.zeros(SHAPE, dtype=bool)
    volume[first : first + span, 13:15, 11:13] = True
    return volume


def case_day(organ: np.ndarray | None, stray: np.ndarray | None, p: float = 0.9):
    """``(truth, maps)`` ``(D, 3, H, W)``: the same organ and stray in every class; the map is
    ``p`` on the organ and the stray, 0 elsewhere."""
    truth_one = organ if organ is not None else np.zeros(SHAPE, dtype=bool)
    seen = truth_one | (stray if stray is not None else False)
    truth = np.repeat(truth_one[:, None], len(CLASSES), axis=1)
    maps = np.repeat((seen * np.float32(p))[:, None], len(CLASSES), axis=1)
    return truth, maps.astype(np.float32)


def write_planted(
    out: Path, days: dict[str, tuple[np.ndarray, np.ndarray, int]], name: str = "oof"
) -> tuple[Path, Path]:
    """``days``: ``{case_day: (truth, maps, fold)}`` → ``(probability folder, train.csv)``."""
    writer = ProbabilityWriter(out / name, "planted", tta=False)
    lines = ["id,class,segmentation"]
    for case_day_name, (truth, maps, fold) in days.items():
        ids = [f"{case_day_name}_slice_{z + 1:04d}" for z in range(truth.shape[0])]
        writer.write(case_day_name, ids, maps, fold=fold)
        for depth, slice_id in enumerate(ids):
            for class_index, class_name in enumerate(CLASSES):
                lines.append(f"{slice_id},{class_name},{rle_encode(truth[depth, class_index])}")
    labels = out / "train.csv"
    if not labels.exists():
        labels.write_text("\n".join(lines) + "\n")
    return out / name, labels
