"""The competition metric under this project's reading (see the README), plus clinical figures.

``score = 0.4 * mean Dice + 0.6 * (1 - mean normalized Hausdorff)`` where

* Dice is one value per (slice, class) row, ``2|P∩G| / (|P|+|G|)``, and **1 when both are empty**;
* the Hausdorff term is one value per (case_day, class) volume ``(D, H, W)`` (slices in slice-number
  order, unit spacing on every axis, slice depth 1): the symmetric Hausdorff distance over **all**
  foreground voxels (not just surfaces), divided by the volume diagonal ``sqrt(D² + H² + W²)`` and
  clipped to 1; **0 when both are empty, 1 when exactly one is empty**.

That is this project's reading of the metric (the default); the other public readings (the
competition page's text, MLE-bench's grader) live in :mod:`uwm_d2.core.readings`, which builds on
the exact distances computed here. The clinical figures reported beside the score are per-organ 3D
Dice and the 95th-percentile surface Hausdorff distance in millimetres (MONAI's definition) using
the real spacing ``(3 mm, PY, PX)``.

Everything here is a pure function of numpy arrays; masks may be ``bool`` or any numeric dtype
(nonzero = foreground). Exact Hausdorff distances never look at all pairs of voxels, nor at the
dense bounding box of ``P ∪ G`` (one stray false-positive voxel far from the organ makes that box
the whole scan). They rest on three facts:

* a source voxel inside the target is at distance 0, so only source voxels *outside* the target
  count;
* the nearest target voxel to a point outside the target lies on the target's boundary (a target
  voxel with a 6-neighbour outside it: stepping from any other target voxel towards the point
  stays inside the target and gets closer), so a k-d tree over the boundary answers each query
  exactly;
* the distance to a set is 1-Lipschitz, so a whole block of source voxels whose bound
  ``d(representative) + |voxel - representative|`` stays below the best distance found so far
  cannot hold the maximum and is never queried; nor is a source voxel with a 6-neighbour in the
  target (at most one step away). The source side itself cannot be cut down to its boundary: a
  disc inside a ring has its farthest voxel at the disc's centre.

The work is a few passes over the voxels of each mask plus k-d tree queries for the few source
voxels that could hold the maximum: tens of milliseconds for a full 144 x 266 x 266 organ volume,
stray blobs or not (``benchmarks/bench_metric.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree

from uwm_d2.core.ids import CLASSES, SLICE_THICKNESS_MM

if TYPE_CHECKING:
    from uwm_d2.core.readings import Reading

#: Weights of the two terms of the competition score.
DICE_WEIGHT = 0.4
HAUSDORFF_WEIGHT = 0.6

#: ``(z, y, x)`` spacing in mm assumed for a case-day whose spacing is not given.
DEFAULT_SPACING_MM: tuple[float, float, float] = (SLICE_THICKNESS_MM, 1.5, 1.5)

# Coarse-to-fine block sides (voxels) of the pruning in _max_nearest. Coarse blocks settle sources
# far below the maximum with one query per block; finer ones catch what is left near it.
_BLOCK_SIDES = (8, 4, 2)
# Below this many candidate sources, one query for all of them is cheaper than another level.
_DIRECT_QUERY = 512
# Relative slack of the pruning test, so that float rounding of the bound can never drop a voxel
# whose distance equals the maximum.
_PRUNE_SLACK = 1e-12


def _as_bool(mask: np.ndarray) -> np.ndarray:
    """``mask`` as a bool array (nonzero = foreground), without a copy when it already is one."""
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask != 0


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_bool(pred), _as_bool(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return pred, truth


def _spacing_for(ndim: int, spacing: Sequence[float] | None) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(step) for step in spacing)
    if len(spacing) != ndim or not all(step > 0 for step in spacing):
        raise ValueError(f"need {ndim} positive spacings, got {spacing}")
    return spacing


class _SparseMask:
    """One mask as the sorted flat (C-order) indices of its voxels, plus the dense flat array.

    The dense array answers "is voxel ``i`` foreground?" by one gather, so neighbour tests cost
    work proportional to the foreground, not to the volume or to a bounding box.
    """

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.ascontiguousarray(mask, dtype=bool)  # no copy for the usual C-ordered bool mask
        self.shape: tuple[int, ...] = mask.shape
        self.flat = mask.reshape(-1)
        self.index = np.flatnonzero(self.flat)
        self._edges: dict[bool, np.ndarray] = {}

    @property
    def count(self) -> int:
        return int(self.index.size)

    def edge(self, outside_is_background: bool) -> np.ndarray:
        """Flat indices of the voxels with a 6-neighbour (2·ndim-neighbour) outside the mask.

        Args:
            outside_is_background: whether a neighbour beyond the array border counts as outside
                (MONAI's surfaces: erosion with ``border_value=0``) or is ignored (the boundary
                that nearest-voxel queries need; the array border is not a way out).
        """
        cached = self._edges.get(outside_is_background)
        if cached is not None:
            return cached
        index, flat = self.index, self.flat
        on_edge = np.zeros(index.size, dtype=bool)
        stride = 1
        for axis in reversed(range(len(self.shape))):
            side = self.shape[axis]
            position = (index // stride) % side
            for step, inside in ((-stride, position > 0), (stride, position < side - 1)):
                # Where the neighbour is beyond the border, look at the voxel itself (foreground),
                # so the gather never leaves the array; the border rule is applied afterwards.
                on_edge |= ~flat[index + step * inside]
                if outside_is_background:
                    on_edge |= ~inside
            stride *= side
        edges = index[on_edge]
        self._edges[outside_is_background] = edges
        return edges

    def touching(self, index: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Upper bounds of the distance from voxels outside the mask to the mask.

        A voxel with a 6-neighbour in the mask along ``axis`` is at most ``scale[axis]`` from it
        (a diagonal voxel may be nearer); ``inf`` where no 6-neighbour is in the mask. Most
        voxels of a prediction near the truth touch it, and this settles them without a query.

        Args:
            index: flat indices of voxels *outside* the mask.
            scale: per-axis spacing.
        """
        bound = np.full(index.size, np.inf)
        stride = 1
        for axis in reversed(range(len(self.shape))):
            side = self.shape[axis]
            position = (index // stride) % side
            for step, inside in ((-stride, position > 0), (stride, position < side - 1)):
                # Beyond the border, look at the voxel itself: outside the mask by assumption.
                touches = self.flat[index + step * inside]
                bound[touches] = np.minimum(bound[touches], scale[axis])
            stride *= side
        return bound


def _coordinates(index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(n, ndim)`` int64 voxel coordinates of flat C-order indices."""
    return np.stack(np.unravel_index(index, shape), axis=1)


def _tree(points: np.ndarray) -> cKDTree:
    # An unbalanced tree without compacted nodes builds twice as fast; queries barely differ.
    return cKDTree(points, balanced_tree=False, compact_nodes=False)


def _max_nearest(tree: cKDTree, coords: np.ndarray, scale: np.ndarray, upper: np.ndarray) -> float:
    """``max over the points of the distance to the nearest point of tree`` (exact).

    Args:
        tree: the target points, scaled.
        coords: ``(n, ndim)`` int64 voxel coordinates of the source points (``n > 0``), none of
            them a target voxel.
        scale: per-axis spacing applied to ``coords``.
        upper: ``(n,)`` known upper bounds of each point's distance (``inf`` where none), from
            :meth:`_SparseMask.touching`.

    Blocks of ``side`` voxels are queried through one representative each; every other member
    is bounded by ``d(rep) + |member - rep|`` (the distance to a set is 1-Lipschitz) and by
    ``upper``, and only the members whose bound exceeds the best exact distance so far go on to
    the next, finer level.
    """
    points = coords * scale
    # No source voxel is nearer to the target than the smallest step, and one that touches the
    # target along an axis of that step is exactly that far: a free exact distance to start from.
    floor = float(scale.min())
    best = floor if bool((upper <= floor).any()) else 0.0
    candidates = np.flatnonzero(upper > best * (1.0 + _PRUNE_SLACK))
    for side in _BLOCK_SIDES:
        if candidates.size <= _DIRECT_QUERY:
            break
        block = coords[candidates] // side
        block -= block.min(axis=0)
        key = np.ravel_multi_index(tuple(block.T), tuple(block.max(axis=0) + 1))
        # One member per block becomes its representative: whichever the scatter keeps.
        position = np.arange(candidates.size)
        cells = np.empty(int(key.max()) + 1, dtype=np.int64)
        cells[key] = position
        representative = cells[key]
        is_representative = representative == position
        distance = np.empty(candidates.size)
        distance[is_representative] = tree.query(points[candidates[is_representative]])[0]
        best = max(best, float(distance[is_representative].max()))
        offset = points[candidates] - points[candidates[representative]]
        bound = distance[representative] + np.sqrt(np.einsum("ij,ij->i", offset, offset))
        np.minimum(bound, upper[candidates], out=bound)
        keep = bound > best * (1.0 - _PRUNE_SLACK)
        keep &= ~is_representative  # already exact
        candidates = candidates[keep]
    if candidates.size:
        distance, _ = tree.query(points[candidates])
        best = max(best, float(distance.max()))
    return best


class HausdorffPair:
    """Exact Hausdorff distances between all foreground voxels of two masks, for any spacing.

    The sparse form of both masks (foreground indices, boundaries, the voxels of each outside the
    other) is built once, so several readings of the metric that only scale the axes differently
    share it. Masks may be any number of dimensions (usually ``(D, H, W)``), bool or numeric.

    Args:
        pred, truth: masks of the same shape.

    Raises:
        ValueError: the shapes differ.
    """

    def __init__(self, pred: np.ndarray, truth: np.ndarray) -> None:
        pred, truth = _check_pair(pred, truth)
        self.shape: tuple[int, ...] = pred.shape
        self._pred, self._truth = _SparseMask(pred), _SparseMask(truth)
        self._outside: dict[bool, np.ndarray] = {}

    @property
    def pred_count(self) -> int:
        """Number of foreground voxels of the prediction."""
        return self._pred.count

    @property
    def truth_count(self) -> int:
        """Number of foreground voxels of the truth."""
        return self._truth.count

    @property
    def identical(self) -> bool:
        """Whether both masks hold exactly the same voxels."""
        return bool(np.array_equal(self._pred.index, self._truth.index))

    def _source_outside(self, from_pred: bool) -> np.ndarray:
        cached = self._outside.get(from_pred)
        if cached is None:
            source, target = (self._pred, self._truth) if from_pred else (self._truth, self._pred)
            cached = source.index[~target.flat[source.index]]
            self._outside[from_pred] = cached
        return cached

    def _directed(self, from_pred: bool, scale: np.ndarray) -> float:
        outside = self._source_outside(from_pred)
        if outside.size == 0:
            return 0.0  # source ⊆ target: every source voxel is its own nearest target voxel
        target = self._truth if from_pred else self._pred
        boundary = target.edge(outside_is_background=False)
        tree = _tree(_coordinates(boundary, self.shape) * scale)
        return _max_nearest(
            tree, _coordinates(outside, self.shape), scale, target.touching(outside, scale)
        )

    def distance(self, spacing: Sequence[float] | None = None) -> float:
        """Symmetric Hausdorff distance, voxel coordinates scaled by ``spacing`` per axis.

        Args:
            spacing: one positive step per axis (``None``: unit spacing). The result is in its
                units; ``1 / shape`` per axis gives the distance in a unit cube.

        Raises:
            ValueError: ``spacing`` does not fit, or either mask is empty (undefined).
        """
        scale = np.asarray(_spacing_for(len(self.shape), spacing), dtype=np.float64)
        if self.pred_count == 0 or self.truth_count == 0:
            raise ValueError("the Hausdorff distance is undefined when a mask is empty")
        return max(self._directed(True, scale), self._directed(False, scale))


def dice_coefficient(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice ``2|P∩G| / (|P|+|G|)`` of two masks of the same shape (any number of dimensions).

    Empty-mask rule: **1.0 when both are empty** (a correct "nothing here"); 0.0 when exactly one
    is empty. Unitless, in ``[0, 1]``.

    Raises:
        ValueError: the shapes differ.
    """
    pred, truth = _check_pair(pred, truth)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def dice_3d(pred_vol: np.ndarray, truth_vol: np.ndarray) -> float:
    """Volumetric Dice of two ``(D, H, W)`` volumes; **1.0 when both are empty**, like Dice.

    Raises:
        ValueError: the shapes differ or are not 3D.
    """
    if np.ndim(pred_vol) != 3:
        raise ValueError(f"dice_3d expects (D, H, W) volumes, got shape {np.shape(pred_vol)}")
    return dice_coefficient(pred_vol, truth_vol)


def slice_dice(pred_vol: np.ndarray, truth_vol: np.ndarray, both_empty: float = 1.0) -> np.ndarray:
    """Dice of every slice of two ``(D, H, W)`` volumes: the per-row Dice of the competition.

    Args:
        pred_vol, truth_vol: masks of the same shape; slice ``k`` is ``volume[k]``.
        both_empty: the value of a slice where both masks are empty (this project: 1; the
            competition page: 0; MLE-bench: NaN, i.e. the row is skipped).

    Returns:
        ``(D,)`` float64 array.

    Raises:
        ValueError: the shapes differ.
    """
    pred, truth = _check_pair(pred_vol, truth_vol)
    flat_pred = pred.reshape(pred.shape[0], -1)
    flat_truth = truth.reshape(truth.shape[0], -1)
    intersection = np.count_nonzero(flat_pred & flat_truth, axis=1)
    total = np.count_nonzero(flat_pred, axis=1) + np.count_nonzero(flat_truth, axis=1)
    dice = np.full(pred.shape[0], both_empty, dtype=np.float64)
    nonempty = total > 0
    dice[nonempty] = 2.0 * intersection[nonempty] / total[nonempty]
    return dice


def hausdorff_distance(
    pred_vol: np.ndarray, truth_vol: np.ndarray, spacing: Sequence[float] | None = (1.0, 1.0, 1.0)
) -> float:
    """Symmetric Hausdorff distance between all foreground voxels of two masks.

    ``max(max_p min_g |p - g|, max_g min_p |g - p|)`` over every foreground voxel (not just the
    surfaces), Euclidean, with voxel coordinates scaled by ``spacing`` (so the result is in the
    units of ``spacing``; voxels for the default unit spacing). Exact (equal to the all-pairs
    value up to float rounding); see the module docstring for how it avoids all pairs.

    Args:
        pred_vol, truth_vol: masks of the same shape, usually ``(D, H, W)``.
        spacing: one positive step per axis, or ``None`` for unit spacing.

    Raises:
        ValueError: the shapes differ, ``spacing`` does not fit, or either mask is empty (the
            distance is undefined; :func:`normalized_hausdorff` applies the competition's rule).
    """
    pair = HausdorffPair(pred_vol, truth_vol)
    return pair.distance(_spacing_for(len(pair.shape), spacing))


def _diagonal(shape: Sequence[int]) -> float:
    return math.sqrt(sum(side * side for side in shape))


def normalized_hausdorff(pred_vol: np.ndarray, truth_vol: np.ndarray) -> float:
    """The competition's Hausdorff term of one (case_day, class) volume, in ``[0, 1]``.

    :func:`hausdorff_distance` with unit spacing on every axis (slice depth 1), divided by the
    diagonal ``sqrt(D² + H² + W²)`` of the volume's shape and clipped to 1. Empty-mask rules:
    **0.0 when both are empty, 1.0 when exactly one is empty.**

    Raises:
        ValueError: the shapes differ.
    """
    return _project_hausdorff(HausdorffPair(pred_vol, truth_vol))


def _project_hausdorff(pair: HausdorffPair) -> float:
    """:func:`normalized_hausdorff` of a prepared pair."""
    if pair.pred_count == 0 and pair.truth_count == 0:
        return 0.0
    if pair.pred_count == 0 or pair.truth_count == 0:
        return 1.0
    return min(pair.distance(None) / _diagonal(pair.shape), 1.0)


def hd95_mm(
    pred_vol: np.ndarray,
    truth_vol: np.ndarray,
    spacing_mm: Sequence[float] = DEFAULT_SPACING_MM,
) -> float:
    """95th-percentile Hausdorff distance between the surfaces of two volumes, in millimetres.

    MONAI's ``compute_hausdorff_distance(percentile=95)``: surface voxels are foreground voxels
    with a 6-connected background neighbour (the array border counts as background); for each
    surface voxel of one set, take the distance to the nearest surface voxel of the other; the
    result is the larger of the two directed 95th percentiles (linear interpolation,
    ``np.percentile``'s default). Distances come from k-d trees over the surfaces (exact).

    Args:
        pred_vol, truth_vol: ``(D, H, W)`` masks of the same shape, slices in slice-number order.
        spacing_mm: ``(z, y, x)`` voxel size in mm: ``(3.0, PY, PX)`` for this data.

    Returns:
        The distance in mm; **NaN when either volume is empty** (undefined; averages must skip it).

    Raises:
        ValueError: the shapes differ or ``spacing_mm`` does not fit.
    """
    pred, truth = _check_pair(pred_vol, truth_vol)
    scale = np.asarray(_spacing_for(pred.ndim, spacing_mm), dtype=np.float64)
    pred_mask, truth_mask = _SparseMask(pred), _SparseMask(truth)
    if pred_mask.count == 0 or truth_mask.count == 0:
        return math.nan
    pred_points = _coordinates(pred_mask.edge(outside_is_background=True), pred.shape) * scale
    truth_points = _coordinates(truth_mask.edge(outside_is_background=True), pred.shape) * scale
    to_truth, _ = _tree(truth_points).query(pred_points)
    to_pred, _ = _tree(pred_points).query(truth_points)
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def _combine(dice: float, hausdorff: float) -> float:
    return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff)


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
            (names of :data:`uwm_d2.core.readings.READINGS`, or ``"all"``); see
            :func:`uwm_d2.core.readings.score_readings` for what each returns.

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
    # readings builds on this module's distances, so it is imported here rather than at the top.
    from uwm_d2.core.readings import resolve_readings, score_readings

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
