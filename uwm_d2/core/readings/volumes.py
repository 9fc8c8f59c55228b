"""Scoring a whole mapping of volumes under any readings, with the clinical figures beside.

:func:`score_readings` sums one :class:`~uwm_d2.core.readings.tally.ReadingTally` per case-day
and reading; :func:`score_volumes` is its report in this project's reading (the JSON of
``tools/evaluate.py``); :class:`LazyVolumes` builds the volume pairs one case-day at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from uwm_d2.core.ids import CLASSES, class_order
from uwm_d2.core.metrics import DEFAULT_SPACING_MM, dice_3d, hd95_mm
from uwm_d2.core.readings.definitions import Reading, resolve_readings
from uwm_d2.core.readings.tally import ReadingTally, load_case_day, tallies_of_case_day


def score_readings(
    volumes: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    readings: str | Reading | Sequence[str | Reading] = "all",
    *,
    spacings: Mapping[str, Sequence[float]] | None = None,
    clinical: bool = False,
) -> dict[str, Any]:
    """Score the same volumes under one or several readings, reading each pair once.

    Args:
        volumes: ``{(case_day, class_name): (pred_vol, truth_vol)}`` as for
            :func:`score_volumes`: ``(D, H, W)`` masks, row-major decoded,
            slices in slice-number order, every slice of the case-day, all classes of a case-day
            the same shape. A class-agnostic reading ORs the classes present in the mapping.
        readings: ``"all"``, a name of :data:`READINGS`, a :class:`Reading`, or a sequence.
        spacings: ``{case_day: (z, y, x)}`` in mm for the clinical HD95
            (:data:`~uwm_d2.core.metrics.DEFAULT_SPACING_MM` when missing).
        clinical: also compute the clinical figures (3D Dice, HD95 in mm) per class.

    Returns:
        A JSON-serializable dict::

            {"readings": {name: {"reading", "score", "dice", "hausdorff",
                                 "per_class": {cls: {"score", "dice", "hausdorff"}},
                                 "num_dice_rows", "num_dice_rows_skipped",
                                 "num_hausdorff_volumes", "num_hausdorff_skipped",
                                 "num_hausdorff_shortcut"}},
             "clinical": {cls: {"dice_3d", "hd95_mm"}},     # only when clinical=True
             "num_slices", "num_case_days"}

        ``dice`` is the mean over the (slice, class) rows that count, ``hausdorff`` the mean over
        the Hausdorff volumes that count (skipped ones are counted in ``*_skipped``),
        ``score = 0.4 * dice + 0.6 * (1 - hausdorff)``. A mean with nothing to average (MLE-bench
        when every row and volume is empty on both sides, where the grader itself gets NaN) is
        ``None``, and so is the score built on it. ``per_class.hausdorff`` and ``.score`` are
        ``None`` for a class-agnostic reading (its volumes hold every class).
        ``num_hausdorff_shortcut`` counts volumes set to 1 by the over-prediction shortcut.

    Raises:
        ValueError: ``volumes`` is empty, a pair's shapes differ or are not 3D, the classes of
            one case-day differ in shape, or a reading is unknown.
    """
    chosen = resolve_readings(readings)
    if not volumes:
        raise ValueError("score_readings got no volumes to score")
    spacings = spacings or {}
    classes_of: dict[str, list[str]] = {}
    for case_day, class_name in volumes:
        classes_of.setdefault(case_day, []).append(class_name)
    tallies = [ReadingTally(reading) for reading in chosen]
    volume_dice: dict[str, list[float]] = {}
    hd95: dict[str, list[float]] = {}
    num_slices = 0
    for case_day, class_names in classes_of.items():
        pairs = load_case_day(volumes, case_day, class_names)
        num_slices += next(iter(pairs.values()))[0].shape[0]
        case_day_tallies = tallies_of_case_day(chosen, pairs)
        tallies = [total + one for total, one in zip(tallies, case_day_tallies, strict=True)]
        if clinical:
            spacing = spacings.get(case_day, DEFAULT_SPACING_MM)
            for class_name, (pred, truth) in pairs.items():
                volume_dice.setdefault(class_name, []).append(dice_3d(pred, truth))
                hd95.setdefault(class_name, []).append(hd95_mm(pred, truth, spacing))

    result: dict[str, Any] = {
        "readings": {tally.reading.name: tally.summary() for tally in tallies}
    }
    if clinical:
        result["clinical"] = {}
        for class_name in sorted(volume_dice, key=class_order):
            defined = [value for value in hd95[class_name] if not math.isnan(value)]
            result["clinical"][class_name] = {
                "dice_3d": float(np.mean(volume_dice[class_name])),
                "hd95_mm": float(np.mean(defined)) if defined else None,
            }
    result["num_slices"] = int(num_slices)
    result["num_case_days"] = len(classes_of)
    return result


def score_volumes(
    volumes: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    spacings: Mapping[str, Sequence[float]] | None = None,
    *,
    clinical: bool = True,
    readings: str | Sequence[str | Reading] = (),
) -> dict[str, Any]:
    """Score predicted volumes against the truth with the competition metric and clinical figures.

    Args:
        volumes: ``{(case_day, class_name): (pred_vol, truth_vol)}``; each volume is ``(D, H, W)``
            (bool or numeric, nonzero = foreground) with slices in slice-number order, holding
            every slice of that case-day (a missing prediction must be passed as an empty volume:
            the truth decides which rows are scored). Each pair is read once, the classes of one
            case-day together (a lazy mapping keeps one case-day in memory).
        spacings: ``{case_day: (z, y, x)}`` voxel size in mm for the clinical HD95;
            :data:`DEFAULT_SPACING_MM` for a case-day not listed. The competition score itself
            always uses unit spacing.
        clinical: compute the clinical figures (3D Dice, HD95 in mm). ``False`` skips them (HD95
            is the slowest part) and leaves the ``clinical`` key out.
        readings: other readings of the metric to compute in the same pass over ``volumes``
            (names of :data:`~uwm_d2.core.readings.READINGS`, or ``"all"``); see
            :func:`score_readings` for what each returns.

    Returns:
        A JSON-serializable dict (plain ``float``/``int``/``None``)::

            {"score", "dice", "hausdorff",
             "per_class": {cls: {"score", "dice", "hausdorff"}},
             "clinical": {cls: {"dice_3d", "hd95_mm"}},          # unless clinical=False
             "num_slices", "num_case_days",
             "readings": {name: summary}}                         # only when readings are asked

        The top level is this project's reading: ``dice`` is the mean over every (slice, class)
        row (each slice of each volume is one row, empty pairs count 1); ``hausdorff`` the mean
        over every (case_day, class) volume of :func:`normalized_hausdorff`;
        ``score = 0.4 * dice + 0.6 * (1 - hausdorff)``. ``per_class`` repeats them restricted to
        one class. ``clinical.dice_3d`` is the mean over case-days of :func:`dice_3d` (1 for an
        empty pair); ``clinical.hd95_mm`` the mean of :func:`hd95_mm` over the case-days where
        both volumes are non-empty, ``None`` when there is none. ``num_slices`` counts distinct
        (case_day, slice) pairs. Only classes present in ``volumes`` appear, in :data:`CLASSES`
        order.

    Raises:
        ValueError: ``volumes`` is empty, a pair's shapes differ or are not 3D, two classes of
            one case-day have different shapes (slice counts), or a reading name is unknown.
    """
    asked = resolve_readings(readings) if readings else ()
    others = [reading for reading in asked if reading.name != "project"]
    passed = score_readings(volumes, ["project", *others], spacings=spacings, clinical=clinical)
    project = passed["readings"]["project"]
    result: dict[str, Any] = {
        "score": project["score"],
        "dice": project["dice"],
        "hausdorff": project["hausdorff"],
        "per_class": {
            name: {key: values[key] for key in ("score", "dice", "hausdorff")}
            for name, values in project["per_class"].items()
        },
    }
    if clinical:
        result["clinical"] = passed["clinical"]
    result["num_slices"] = passed["num_slices"]
    result["num_case_days"] = passed["num_case_days"]
    if asked:
        result["readings"] = {reading.name: passed["readings"][reading.name] for reading in asked}
    return result


class LazyVolumes(Mapping):
    """Base of ``{(case_day, class): (pred_vol, truth_vol)}`` mappings built on access.

    :func:`score_volumes` reads each pair once; building them on demand keeps one case-day in
    memory instead of a whole test set's volumes (gigabytes on real data). Subclasses implement
    :meth:`_load`, the pair of one key; the keys are every class of every given case-day.
    """

    def __init__(self, case_days: Sequence[str]) -> None:
        self._case_days = frozenset(case_days)
        self._keys = [(case_day, name) for case_day in case_days for name in CLASSES]

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._keys)

    def __getitem__(self, key: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        case_day, name = key
        if case_day not in self._case_days or name not in CLASSES:
            raise KeyError(key)
        return self._load(case_day, name)

    def _load(self, case_day: str, class_name: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError
