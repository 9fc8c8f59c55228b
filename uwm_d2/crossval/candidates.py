"""Many candidate merge rules scored on one loaded case-day (the worker side of the search).

:func:`evaluate_case_day` loads one case-day's maps and truth, builds the masks of every
candidate, and returns one additive tally per candidate (:class:`uwm_d2.core.readings.
ReadingTally`), so a search sums them over any set of case-days without loading them again.

* A **class item** ``(class_index, ClassRule)`` is scored on that class alone: for the readings
  whose Hausdorff term is per class (``project``, ``competition``) the score of a class depends
  on that class's settings only. Candidates are built in the order of the rule's steps and share
  every prefix (one smoothing per weight, one cut per level, one 3D labelling per 2D mask).
  Where a candidate is the cut alone, its Dice rows come from per-slice histograms of the
  smoothed map over truth and non-truth pixels (:func:`dice_counts_at_every_cut`: exact at every
  cut); the Hausdorff term needs the mask. Candidates that give the same mask share one tally.
* A **joint item** (one ``ClassRule`` per class) is scored on all classes together, for
  ``mlebench``, whose Hausdorff term ORs the classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge_steps import (
    GRID_MAX,
    ClassRule,
    Components3D,
    cut_level,
    gate_slices,
    remove_small_components_2d,
    smooth_z,
)
from uwm_d2.core.metrics import HausdorffPair
from uwm_d2.core.readings import READINGS, Reading, ReadingTally, tally_case_day
from uwm_d2.crossval.sources import OofSource
from uwm_d2.crossval.truth import TruthRow, truth_volume

JointRule = tuple[ClassRule, ...]


@dataclass(frozen=True)
class CaseDayJob:
    """What one worker scores on one case-day (picklable)."""

    source: OofSource
    case_day: str
    truth_rows: tuple[TruthRow, ...]
    csv_name: str
    reading: str
    class_items: tuple[tuple[int, ClassRule], ...] = ()
    joint_items: tuple[JointRule, ...] = ()
    readings: tuple[str, ...] = ()  # joint items scored under these readings (default: reading)


@dataclass(frozen=True)
class CaseDayResult:
    """The tallies of one case-day: ``class_tallies[(class_index, rule)]`` under the job's
    reading, ``joint_tallies[(reading, joint_rule)]`` under each reading asked."""

    case_day: str
    slices: int
    class_tallies: dict[tuple[int, ClassRule], ReadingTally]
    joint_tallies: dict[tuple[str, JointRule], ReadingTally]

    def __getstate__(self) -> dict:
        # A ReadingTally holds read-only mapping proxies, which do not pickle: plain dicts
        # travel back from the worker instead (an equal tally).
        state = dict(self.__dict__)
        for name in ("class_tallies", "joint_tallies"):
            state[name] = {key: _portable(tally) for key, tally in state[name].items()}
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ("class_tallies", "joint_tallies"):
            state[name] = {key: _restored(tally) for key, tally in state[name].items()}
        self.__dict__.update(state)


def _portable(tally: ReadingTally) -> ReadingTally:
    return ReadingTally(tally.reading, dict(tally.dice), dict(tally.hausdorff), tally.shortcuts)


def _restored(tally: ReadingTally) -> ReadingTally:
    # An unpickled Reading with NaN fields (mlebench) is not equal to the registered one
    # (NaN != NaN), and tallies add only under equal readings: take the registered one back.
    reading = READINGS.get(tally.reading.name, tally.reading)
    return ReadingTally(reading, tally.dice, tally.hausdorff, tally.shortcuts)


def dice_counts_at_every_cut(
    grid_volume: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per slice ``|P∩G|`` and ``|P|+|G|`` for ``P = grid_volume >= T``, every level ``T``.

    Args:
        grid_volume: ``(D, H, W)`` ``uint8`` map on the 8-bit grid.
        truth: ``(D, H, W)`` bool.

    Returns:
        Two ``(D, 257)`` int64 arrays; column ``T`` (0..256) is the cut at level ``T``
        (256: nothing passes). One histogram of the values over truth and one over the other
        pixels per slice, summed from the top.
    """
    depth = grid_volume.shape[0]
    levels = GRID_MAX + 1
    flat = grid_volume.reshape(-1)
    inside = truth.reshape(-1)
    # Only nonzero values can pass a cut above 0; the zeros of a slice are what is left over.
    index = np.flatnonzero(flat)
    pixels = flat.size // max(depth, 1)
    keys = (index // pixels) * levels + flat[index]
    everything = np.bincount(keys, minlength=depth * levels).reshape(depth, levels)
    on_truth = np.bincount(keys[inside[index]], minlength=depth * levels).reshape(depth, levels)
    truth_count = truth.reshape(depth, -1).sum(axis=1, dtype=np.int64)
    everything[:, 0] = pixels - everything[:, 1:].sum(axis=1)
    on_truth[:, 0] = truth_count - on_truth[:, 1:].sum(axis=1)

    def from_the_top(histogram: np.ndarray) -> np.ndarray:
        counts = np.zeros((depth, levels + 1), dtype=np.int64)
        counts[:, :levels] = np.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]
        return counts

    intersection = from_the_top(on_truth)
    return intersection, from_the_top(everything) + truth_count[:, None]


def _prefix(rule: ClassRule) -> tuple:
    """The settings in step order, as integers where the grid makes them so (the sort key)."""
    return (
        rule.z_smoothing,
        cut_level(rule.mask_threshold),
        rule.slice_min_pixels,
        cut_level(rule.slice_min_peak) if rule.slice_min_peak > 0 else 0,
        rule.min_component_2d if rule.min_component_2d > 1 else 0,
        rule.min_slices_3d,
        rule.keep_largest_3d,
    )


def class_masks(grid_volume: np.ndarray, rules: Sequence[ClassRule]) -> Iterator[tuple]:
    """``(rule, mask, cut_only, smoothed)`` for each rule, as :meth:`ClassRule.masks` makes it.

    Rules are visited in step order, and each step's result is kept only while the rules that
    share it are visited (a handful of volumes at a time). ``cut_only``: no step after the cut
    changed anything (the histogram Dice applies).
    """
    keys: list[tuple | None] = [None] * 5  # the settings each kept step result was made with
    smoothed = cut = gated = flat = components = None
    for rule in sorted(set(rules), key=_prefix):
        key = _prefix(rule)
        # A step is redone only when its settings or an earlier step's changed.
        if keys[0] != key[:1]:
            smoothed, keys = (
                smooth_z(grid_volume, rule.z_smoothing),
                [key[:1], None, None, None, None],
            )
        if keys[1] != key[:2]:
            cut, keys[1:] = smoothed >= key[1], [key[:2], None, None, None]
        if keys[2] != key[:4]:
            gated = gate_slices(cut, smoothed, rule.slice_min_pixels, rule.slice_min_peak)
            keys[2:] = [key[:4], None, None]
        if keys[3] != key[:5]:
            flat = remove_small_components_2d(gated, rule.min_component_2d)
            keys[3:] = [key[:5], None]
        if rule.min_slices_3d <= 1 and not rule.keep_largest_3d:
            mask = flat
        else:
            if keys[4] != key[:5]:
                components, keys[4] = Components3D(flat), key[:5]
            mask = components.filtered(rule.min_slices_3d, rule.keep_largest_3d)
        yield rule, mask, mask is cut, smoothed


def _digest(mask: np.ndarray) -> bytes:
    return hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest()


def _class_tally(
    reading: str,
    class_name: str,
    pred: np.ndarray,
    truth: np.ndarray,
    counts: tuple[np.ndarray, np.ndarray] | None,
) -> ReadingTally:
    """The tally of one class of one case-day; Dice counts from the histogram when given."""
    if counts is None:
        return tally_case_day(reading, {class_name: (pred, truth)})
    chosen = READINGS[reading]
    pair = HausdorffPair(chosen.layout(pred), chosen.layout(truth))
    return tally_from_counts(chosen, class_name, *counts, pair)


def tally_from_counts(
    reading: Reading,
    class_name: str,
    intersection: np.ndarray,
    total: np.ndarray,
    pair: HausdorffPair,
) -> ReadingTally:
    """The tally of one class of one case-day from its per-slice Dice counts and its pair.

    What :func:`~uwm_d2.core.readings.tally_case_day` computes for a per-class reading, with
    the Dice counts given (the reading's own Dice rule and Hausdorff term).
    """
    term, shortcut = reading.hausdorff_of_pair(pair)
    return ReadingTally.of_values(
        reading,
        {class_name: reading.dice_from_counts(intersection, total)},
        {class_name: [term]},
        int(shortcut),
    )


def evaluate_case_day(job: CaseDayJob) -> CaseDayResult:
    """Score every item of ``job`` on its case-day (run in a worker process)."""
    slice_ids, grid = job.source.read(job.case_day)
    if tuple(slice_ids) != tuple(row[0] for row in job.truth_rows):
        raise ValueError(f"{job.case_day}: the truth rows are not the slices of the maps")
    truth = truth_volume(job.truth_rows, grid.shape[2:], job.csv_name)
    return evaluate_maps(job, grid, truth)


def evaluate_maps(job: CaseDayJob, grid: np.ndarray, truth: np.ndarray) -> CaseDayResult:
    """Score every item of ``job`` on loaded ``(D, C, H, W)`` maps (``uint8``) and truth."""
    per_class = READINGS[job.reading].hausdorff_per_class
    class_items = set(job.class_items)
    class_tallies: dict[tuple[int, ClassRule], ReadingTally] = {}
    packed: dict[tuple[int, ClassRule], bytes] = {}
    joint_rules = {(c, rules[c]) for rules in job.joint_items for c in range(len(CLASSES))}
    for class_index, name in enumerate(CLASSES):
        wanted = [rule for c, rule in job.class_items if c == class_index]
        wanted += [rule for c, rule in joint_rules if c == class_index]
        histograms: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        memo: dict[bytes, ReadingTally] = {}
        truth_c = truth[:, class_index]
        for rule, mask, cut_only, smoothed in class_masks(grid[:, class_index], wanted):
            if (class_index, rule) in joint_rules:
                packed[(class_index, rule)] = np.packbits(mask)
            if (class_index, rule) not in class_items or not per_class:
                continue
            digest = _digest(mask)
            if digest not in memo:
                counts = None
                if cut_only:
                    if rule.z_smoothing not in histograms:
                        histograms[rule.z_smoothing] = dice_counts_at_every_cut(smoothed, truth_c)
                    level = cut_level(rule.mask_threshold)
                    counts = tuple(part[:, level] for part in histograms[rule.z_smoothing])
                memo[digest] = _class_tally(job.reading, name, mask, truth_c, counts)
            class_tallies[(class_index, rule)] = memo[digest]
    joint_tallies: dict[tuple[str, JointRule], ReadingTally] = {}
    shape = truth[:, 0].shape
    for rules in job.joint_items:
        pairs = {
            name: (
                np.unpackbits(packed[(c, rules[c])], count=truth[:, c].size).reshape(shape) != 0,
                truth[:, c],
            )
            for c, name in enumerate(CLASSES)
        }
        for reading in job.readings or (job.reading,):
            joint_tallies[(reading, rules)] = tally_case_day(reading, pairs, job.case_day)
    return CaseDayResult(job.case_day, grid.shape[0], class_tallies, joint_tallies)
