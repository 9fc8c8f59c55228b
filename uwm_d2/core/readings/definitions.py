"""What each public reading of the competition metric decides, and the three readings.

A :class:`Reading` is a small record of the corners the public texts and code disagree on (see
the table of :mod:`uwm_d2.core.readings`); it turns a volume pair into its per-row Dice and its
Hausdorff term, on the exact distances of :class:`uwm_d2.core.metrics.HausdorffPair`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from uwm_d2.core.metrics import HausdorffPair, dice_counts

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
        return self.dice_from_counts(*dice_counts(pred_vol, truth_vol))

    def dice_from_counts(self, intersection: np.ndarray, total: np.ndarray) -> np.ndarray:
        """Per-row Dice from :func:`~uwm_d2.core.metrics.dice_counts` (NaN = skipped)."""
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
