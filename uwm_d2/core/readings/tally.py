"""What one reading has seen of some case-days, as sums that add up, and the score made from them.

The one score formula (:func:`combine_score`) and the one mean (a :class:`ReadingTally`'s sums)
of every reading, at the volume level here and at the file level in
:mod:`uwm_d2.evaluation.mlebench`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from uwm_d2.core.ids import class_order
from uwm_d2.core.metrics import HausdorffPair, as_mask, dice_counts
from uwm_d2.core.readings.definitions import Reading, resolve_readings

#: Weights of the two terms of the competition score.
DICE_WEIGHT = 0.4
HAUSDORFF_WEIGHT = 0.6


@dataclass(frozen=True)
class _Sums:
    """A mean in the making: the sum of the values that count, their number, and how many were
    skipped (NaN). Sums of disjoint sets of values add up."""

    total: float = 0.0
    used: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> _Sums:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        counted = ~np.isnan(values)
        used = int(counted.sum())
        return cls(float(values[counted].sum()), used, int(values.size - used))

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(self.total + other.total, self.used + other.used, self.skipped + other.skipped)

    @property
    def mean(self) -> float | None:
        """The mean of the values that count, ``None`` when none does."""
        return self.total / self.used if self.used else None


def _add_maps(
    first: Mapping[Any, _Sums], second: Mapping[Any, _Sums]
) -> MappingProxyType[Any, _Sums]:
    keys = list(first) + [key for key in second if key not in first]
    return MappingProxyType(
        {key: first.get(key, _Sums()) + second.get(key, _Sums()) for key in keys}
    )


def combine_score(dice: float | None, hausdorff: float | None) -> float | None:
    """The one score formula: ``0.4 * dice + 0.6 * (1 - hausdorff)``, ``None`` if either is."""
    if dice is None or hausdorff is None:
        return None
    return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff)


@dataclass(frozen=True)
class ReadingTally:
    """What one reading has seen of some case-days, as sums that add up.

    Tallies of disjoint case-days add with ``+``, so a score over any set of case-days (a fold,
    the whole out-of-fold set, a bootstrap sample of cases) is the :meth:`summary` of the sum of
    their per-case-day tallies (:func:`tally_case_day`), with no volume scored twice.

    Attributes:
        reading: the reading counted.
        dice: per class, the Dice rows (one per slice) that count and those skipped.
        hausdorff: per class (``None``: the classes OR-ed, a class-agnostic reading), the
            Hausdorff terms of the volumes.
        shortcuts: volumes set to 1 by the reading's over-prediction shortcut.
    """

    reading: Reading
    dice: Mapping[str, _Sums] = field(default_factory=lambda: MappingProxyType({}))
    hausdorff: Mapping[str | None, _Sums] = field(default_factory=lambda: MappingProxyType({}))
    shortcuts: int = 0

    def __add__(self, other: ReadingTally) -> ReadingTally:
        if other.reading != self.reading:
            raise ValueError(
                f"cannot add a {other.reading.name} tally to a {self.reading.name} tally"
            )
        return ReadingTally(
            self.reading,
            _add_maps(self.dice, other.dice),
            _add_maps(self.hausdorff, other.hausdorff),
            self.shortcuts + other.shortcuts,
        )

    @classmethod
    def of_values(
        cls,
        reading: Reading,
        dice: Mapping[str, Sequence[float] | np.ndarray],
        hausdorff: Mapping[str | None, Sequence[float] | np.ndarray],
        shortcuts: int = 0,
    ) -> ReadingTally:
        """The tally of values computed elsewhere (MLE-bench's grader on files does).

        Args:
            reading: the reading they were computed under.
            dice: per class, the Dice of each row (NaN: skipped).
            hausdorff: per class (``None``: class-agnostic), the Hausdorff term of each volume.
            shortcuts: volumes set to 1 by the over-prediction shortcut.
        """
        return cls(
            reading,
            MappingProxyType({key: _Sums.of(values) for key, values in dice.items()}),
            MappingProxyType({key: _Sums.of(values) for key, values in hausdorff.items()}),
            shortcuts,
        )

    def __radd__(self, other: object) -> ReadingTally:
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    def summary(self) -> dict[str, Any]:
        """The reading's summary, as :func:`score_readings` reports it under ``readings``."""
        dice = sum(self.dice.values(), _Sums())
        hausdorff = sum(self.hausdorff.values(), _Sums())
        per_class: dict[str, dict[str, float | None]] = {}
        for class_name in sorted(self.dice, key=class_order):
            class_dice = self.dice[class_name].mean
            class_hausdorff = (
                self.hausdorff.get(class_name, _Sums()).mean
                if self.reading.hausdorff_per_class
                else None
            )
            per_class[class_name] = {
                "score": combine_score(class_dice, class_hausdorff),
                "dice": class_dice,
                "hausdorff": class_hausdorff,
            }
        return {
            "reading": self.reading.name,
            "score": combine_score(dice.mean, hausdorff.mean),
            "dice": dice.mean,
            "hausdorff": hausdorff.mean,
            "per_class": per_class,
            "num_dice_rows": dice.used,
            "num_dice_rows_skipped": dice.skipped,
            "num_hausdorff_volumes": hausdorff.used,
            "num_hausdorff_skipped": hausdorff.skipped,
            "num_hausdorff_shortcut": self.shortcuts,
        }


def tallies_of_case_day(
    readings: Sequence[Reading], pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> list[ReadingTally]:
    """One case-day's validated bool pairs under several readings; each distance is computed
    once per pixel layout and shared between the readings that use it."""
    dice: list[dict[str, _Sums]] = [{} for _ in readings]
    hausdorff: list[dict[str | None, _Sums]] = [{} for _ in readings]
    shortcuts = [0] * len(readings)

    def add_hausdorff(
        index: int, key: str | None, prepared: dict[bool, HausdorffPair], pred, truth
    ) -> None:
        reading = readings[index]
        if reading.column_major not in prepared:
            prepared[reading.column_major] = HausdorffPair(
                reading.layout(pred), reading.layout(truth)
            )
        term, shortcut = reading.hausdorff_of_pair(prepared[reading.column_major])
        hausdorff[index][key] = _Sums.of([term])
        shortcuts[index] += shortcut

    for class_name, (pred, truth) in pairs.items():
        counts = dice_counts(pred, truth)
        prepared: dict[bool, HausdorffPair] = {}
        for index, reading in enumerate(readings):
            dice[index][class_name] = _Sums.of(reading.dice_from_counts(*counts))
            if reading.hausdorff_per_class:
                add_hausdorff(index, class_name, prepared, pred, truth)
    agnostic = [index for index, reading in enumerate(readings) if not reading.hausdorff_per_class]
    if agnostic:
        pred_union = np.logical_or.reduce([pred for pred, _ in pairs.values()])
        truth_union = np.logical_or.reduce([truth for _, truth in pairs.values()])
        prepared = {}
        for index in agnostic:
            add_hausdorff(index, None, prepared, pred_union, truth_union)
    return [
        ReadingTally(
            reading, MappingProxyType(dice[i]), MappingProxyType(hausdorff[i]), shortcuts[i]
        )
        for i, reading in enumerate(readings)
    ]


def tally_case_day(
    reading: str | Reading,
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    case_day: str = "case-day",
) -> ReadingTally:
    """The tally of one case-day under one reading.

    Args:
        reading: a name of :data:`READINGS` or a :class:`Reading`.
        pairs: ``{class_name: (pred_vol, truth_vol)}``: the ``(D, H, W)`` masks of every class
            of one case-day (row-major decoded, slices in slice-number order, all the same
            shape). A class-agnostic reading ORs the classes given.
        case_day: named in error messages.

    Raises:
        ValueError: no pairs, an unknown reading, or shapes that differ or are not 3D.
    """
    if not pairs:
        raise ValueError(f"{case_day}: no classes to tally")
    (chosen,) = resolve_readings(reading)
    volumes = {(case_day, name): pair for name, pair in pairs.items()}
    return tallies_of_case_day([chosen], load_case_day(volumes, case_day, list(pairs)))[0]


def load_case_day(
    volumes: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    case_day: str,
    class_names: Sequence[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The validated bool pairs of one case-day, each read once from ``volumes``."""
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shape: tuple[int, ...] | None = None
    for class_name in class_names:
        pred_vol, truth_vol = volumes[(case_day, class_name)]
        pred, truth = as_mask(pred_vol), as_mask(truth_vol)
        if pred.shape != truth.shape:
            raise ValueError(
                f"{case_day} {class_name}: prediction shape {pred.shape} differs from truth "
                f"shape {truth.shape}"
            )
        if pred.ndim != 3:
            raise ValueError(f"{case_day} {class_name}: expected (D, H, W), got {pred.shape}")
        if shape is None:
            shape = pred.shape
        elif pred.shape[0] != shape[0]:
            raise ValueError(
                f"{case_day}: class {class_name} has {pred.shape[0]} slices, another has {shape[0]}"
            )
        elif pred.shape != shape:
            raise ValueError(
                f"{case_day}: class {class_name} has slices of {pred.shape[1:]}, another has "
                f"{shape[1:]}"
            )
        pairs[class_name] = (pred, truth)
    return pairs
