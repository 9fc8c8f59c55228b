"""The public readings of the competition metric, scored over the same volumes side by side.

The competition's score is ``0.4 * mean Dice + 0.6 * (1 - mean normalized Hausdorff)``, but the
public texts and code that compute it disagree on the corners (the table below; the README's
"The score, under every public reading" says which to pick for what). Each reading here is a
:class:`Reading`, a small record of those choices, and :func:`score_readings` scores any of
them, or all, in one pass over one ``{(case_day, class): (pred_vol, truth_vol)}`` mapping (each
pair is read once).

============  =================  =======================  ========================  ===========
reading       Dice, both empty   Hausdorff volume         normalization             Hausdorff,
                                                                                    both / one
                                                                                    empty
============  =================  =======================  ========================  ===========
project       1                  per (case_day, class)    unit spacing,             0 / 1
                                                          / sqrt(D²+H²+W²), clip 1
competition   0                  per (case_day, class)    coordinates / (D, H, W),  0 / 1 (*)
                                                          / sqrt(3)
mlebench      row skipped (NaN)  per case_day, the class  coordinates / (D, H, W),  skipped / 1
                                 masks OR-ed              / sqrt(3)
============  =================  =======================  ========================  ===========

* ``project`` (the default): this project's reading (the community's CV code), the one
  :mod:`uwm_d2.core.metrics` implements.
* ``competition``: the competition page's text. It says Dice is "defined to be 0" for an empty
  pair and that pixel locations are "normalized by image size"; it does not say what the
  Hausdorff term of an empty volume is, so (*) follows the project's reading (0 both empty, 1 one
  empty). Its "top to bottom, then left to right" pixel order is not applied: the data's own
  strings are row-major (in a 360 x 310 scan, successive run starts of one object step by 360,
  the row stride), and this reading keeps them as they are.
* ``mlebench``: MLE-bench's grader (openai/mle-bench). Every skipped value is left out of its mean
  (``nanmean``); a volume whose prediction has more than 10x the truth's voxels scores 1 without
  computing a distance; identical volumes score 0. Its decoder reads the row-major strings
  column-major (the flat runs fill a ``(W, H)`` array that is then transposed), scrambling the
  truth and the prediction alike: Dice does not change, the Hausdorff term is computed on the
  scrambled geometry of non-square scans. This reading applies the same scrambling to the
  volumes it is given (:func:`column_major_layout`), so over volumes decoded from valid CSVs it
  equals the grader; :mod:`uwm_d2.evaluation.mlebench` reproduces it from the CSV files
  themselves (row matching by position, which strings it rejects).

All three combine as ``0.4 * dice + 0.6 * (1 - hausdorff)`` and compute exact distances with
:class:`uwm_d2.core.metrics.HausdorffPair` (pure numpy/scipy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.metrics import (
    DEFAULT_SPACING_MM,
    DICE_WEIGHT,
    HAUSDORFF_WEIGHT,
    HausdorffPair,
    dice_3d,
    hd95_mm,
)

_UNIT_CUBE_DIAGONAL = math.sqrt(3.0)


def column_major_layout(volume: np.ndarray) -> np.ndarray:
    """The slices of a ``(D, H, W)`` volume as a column-major decoder of its RLE sees them.

    Each slice's row-major pixel sequence (what the competition's strings number) is poured into
    a ``(W, H)`` array and transposed back to ``(H, W)``: MLE-bench's decoder. For a square slice
    this is a transpose; otherwise the geometry is scrambled.

    Returns:
        A C-contiguous ``(D, H, W)`` array of the same dtype.
    """
    volume = np.ascontiguousarray(volume)
    depth, height, width = volume.shape
    return np.ascontiguousarray(volume.reshape(depth, width, height).transpose(0, 2, 1))


@dataclass(frozen=True)
class Reading:
    """One reading of the competition metric: how its corners are decided.

    Attributes:
        name: registry key (``project``, ``competition``, ``mlebench``).
        description: one line saying whose reading it is.
        dice_both_empty: Dice of a (slice, class) row whose masks are both empty; NaN means the
            row is skipped (left out of the mean).
        hausdorff_per_class: one Hausdorff volume per (case_day, class) if true; otherwise one per
            case_day, the class masks OR-ed.
        unit_cube: voxel coordinates divided by the volume's shape per axis and the distance by
            ``sqrt(3)`` if true; otherwise unit spacing, divided by the diagonal
            ``sqrt(D² + H² + W²)`` and clipped to 1.
        hausdorff_both_empty: Hausdorff term of a volume whose masks are both empty; NaN means
            skipped. A volume with exactly one side empty always scores 1.
        overprediction_factor: a volume whose prediction has more than this many times the
            truth's voxels scores 1 without a distance (``None``: no shortcut).
        column_major: the slices are scrambled as by a column-major decoder of row-major strings
            before the Hausdorff term (:func:`column_major_layout`).
    """

    name: str
    description: str
    dice_both_empty: float
    hausdorff_per_class: bool
    unit_cube: bool
    hausdorff_both_empty: float
    overprediction_factor: float | None = None
    column_major: bool = False

    def layout(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` (row-major decoded, ``(D, H, W)``) as this reading's decoder sees it."""
        return column_major_layout(volume) if self.column_major else volume

    def slice_dice(self, pred_vol: np.ndarray, truth_vol: np.ndarray) -> np.ndarray:
        """Per-row Dice of every slice of two ``(D, H, W)`` masks: ``(D,)``, NaN = skipped."""
        intersection, total = _dice_counts(_as_bool(pred_vol), _as_bool(truth_vol))
        return self._dice_from_counts(intersection, total)

    def _dice_from_counts(self, intersection: np.ndarray, total: np.ndarray) -> np.ndarray:
        dice = np.full(total.shape, self.dice_both_empty, dtype=np.float64)
        nonempty = total > 0
        dice[nonempty] = 2.0 * intersection[nonempty] / total[nonempty]
        return dice

    def hausdorff(self, pred_vol: np.ndarray, truth_vol: np.ndarray) -> float:
        """The Hausdorff term of one volume as this reading lays it out (NaN = skipped).

        The volumes are taken as they are: already OR-ed over the classes for a class-agnostic
        reading, already in this reading's pixel layout (:meth:`layout`). In ``[0, 1]``.

        Raises:
            ValueError: the shapes differ or are not 3D.
        """
        if np.ndim(pred_vol) != 3:
            raise ValueError(f"expected (D, H, W) volumes, got shape {np.shape(pred_vol)}")
        return self.hausdorff_of_pair(HausdorffPair(pred_vol, truth_vol))[0]

    def hausdorff_of_pair(self, pair: HausdorffPair) -> tuple[float, bool]:
        """``(term, shortcut)``: :meth:`hausdorff` of a prepared pair, and whether the
        over-prediction shortcut decided it (the pair is taken as laid out, see :meth:`hausdorff`).
        """
        if pair.pred_count == 0 and pair.truth_count == 0:
            return self.hausdorff_both_empty, False
        if pair.pred_count == 0 or pair.truth_count == 0:
            return 1.0, False
        if pair.identical:
            return 0.0, False  # as computed, but MLE-bench checks this before its shortcut
        factor = self.overprediction_factor
        if factor is not None and pair.pred_count > factor * pair.truth_count:
            return 1.0, True
        if self.unit_cube:
            distance = pair.distance([1.0 / side for side in pair.shape])
            return distance / _UNIT_CUBE_DIAGONAL, False
        diagonal = math.sqrt(sum(side * side for side in pair.shape))
        return min(pair.distance(None) / diagonal, 1.0), False


PROJECT = Reading(
    name="project",
    description="this project's reading (community CV code)",
    dice_both_empty=1.0,
    hausdorff_per_class=True,
    unit_cube=False,
    hausdorff_both_empty=0.0,
)
COMPETITION = Reading(
    name="competition",
    description="the competition page's text (empty-volume Hausdorff as the project's)",
    dice_both_empty=0.0,
    hausdorff_per_class=True,
    unit_cube=True,
    hausdorff_both_empty=0.0,
)
MLEBENCH = Reading(
    name="mlebench",
    description="MLE-bench's grader (openai/mle-bench)",
    dice_both_empty=math.nan,
    hausdorff_per_class=False,
    unit_cube=True,
    hausdorff_both_empty=math.nan,
    overprediction_factor=10.0,
    column_major=True,
)

#: Every reading by name, in report order; ``project`` is the default.
READINGS: Mapping[str, Reading] = MappingProxyType(
    {reading.name: reading for reading in (PROJECT, COMPETITION, MLEBENCH)}
)
DEFAULT_READING = "project"


def resolve_readings(readings: str | Reading | Sequence[str | Reading]) -> tuple[Reading, ...]:
    """Turn ``"all"``, a name, a :class:`Reading` or a sequence of them into readings.

    Returns:
        The readings in the order given (``"all"``: :data:`READINGS` order), without repeats.

    Raises:
        ValueError: an unknown name, or nothing asked for.
    """
    if isinstance(readings, str | Reading):
        readings = [readings]
    resolved: dict[str, Reading] = {}
    for item in readings:
        if isinstance(item, Reading):
            resolved.setdefault(item.name, item)
        elif item == "all":
            for reading in READINGS.values():
                resolved.setdefault(reading.name, reading)
        elif item in READINGS:
            resolved.setdefault(item, READINGS[item])
        else:
            known = ", ".join([*READINGS, "all"])
            raise ValueError(f"unknown reading {item!r} (known: {known})")
    if not resolved:
        raise ValueError("no reading asked for")
    return tuple(resolved.values())


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask != 0


def _dice_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice ``|P∩G|`` and ``|P|+|G|`` of two ``(D, ...)`` masks of the same shape."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    flat_pred = pred.reshape(pred.shape[0], -1)
    flat_truth = truth.reshape(truth.shape[0], -1)
    intersection = np.count_nonzero(flat_pred & flat_truth, axis=1)
    total = np.count_nonzero(flat_pred, axis=1) + np.count_nonzero(flat_truth, axis=1)
    return intersection, total


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


def _combine(dice: float | None, hausdorff: float | None) -> float | None:
    """The one score formula: ``0.4 * dice + 0.6 * (1 - hausdorff)``, ``None`` if either is."""
    if dice is None or hausdorff is None:
        return None
    return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff)


def _class_order(name: str) -> tuple[int, str]:
    return (CLASSES.index(name) if name in CLASSES else len(CLASSES), name)


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

    def __radd__(self, other: object) -> ReadingTally:
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    def summary(self) -> dict[str, Any]:
        """The reading's summary, as :func:`score_readings` reports it under ``readings``."""
        dice = sum(self.dice.values(), _Sums())
        hausdorff = sum(self.hausdorff.values(), _Sums())
        per_class: dict[str, dict[str, float | None]] = {}
        for class_name in sorted(self.dice, key=_class_order):
            class_dice = self.dice[class_name].mean
            class_hausdorff = (
                self.hausdorff.get(class_name, _Sums()).mean
                if self.reading.hausdorff_per_class
                else None
            )
            per_class[class_name] = {
                "score": _combine(class_dice, class_hausdorff),
                "dice": class_dice,
                "hausdorff": class_hausdorff,
            }
        return {
            "reading": self.reading.name,
            "score": _combine(dice.mean, hausdorff.mean),
            "dice": dice.mean,
            "hausdorff": hausdorff.mean,
            "per_class": per_class,
            "num_dice_rows": dice.used,
            "num_dice_rows_skipped": dice.skipped,
            "num_hausdorff_volumes": hausdorff.used,
            "num_hausdorff_skipped": hausdorff.skipped,
            "num_hausdorff_shortcut": self.shortcuts,
        }


def _tallies_of_case_day(
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
        counts = _dice_counts(pred, truth)
        prepared: dict[bool, HausdorffPair] = {}
        for index, reading in enumerate(readings):
            dice[index][class_name] = _Sums.of(reading._dice_from_counts(*counts))
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
    return _tallies_of_case_day([chosen], _load_case_day(volumes, case_day, list(pairs)))[0]


def _load_case_day(
    volumes: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    case_day: str,
    class_names: Sequence[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The validated bool pairs of one case-day, each read once from ``volumes``."""
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shape: tuple[int, ...] | None = None
    for class_name in class_names:
        pred_vol, truth_vol = volumes[(case_day, class_name)]
        pred, truth = _as_bool(pred_vol), _as_bool(truth_vol)
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
            :func:`uwm_d2.core.metrics.score_volumes`: ``(D, H, W)`` masks, row-major decoded,
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
        pairs = _load_case_day(volumes, case_day, class_names)
        num_slices += next(iter(pairs.values()))[0].shape[0]
        case_day_tallies = _tallies_of_case_day(chosen, pairs)
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
        for class_name in sorted(volume_dice, key=_class_order):
            defined = [value for value in hd95[class_name] if not math.isnan(value)]
            result["clinical"][class_name] = {
                "dice_3d": float(np.mean(volume_dice[class_name])),
                "hd95_mm": float(np.mean(defined)) if defined else None,
            }
    result["num_slices"] = int(num_slices)
    result["num_case_days"] = len(classes_of)
    return result
