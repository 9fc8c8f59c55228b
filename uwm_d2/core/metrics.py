"""The metric's primitives: masks, exact Hausdorff distances, Dice, and the clinical figures.

Everything the readings of the competition metric are built from (:mod:`uwm_d2.core.readings`
decides their corners and scores volumes with them): :func:`as_mask`, per-slice
:func:`dice_counts`, :func:`dice_coefficient`, exact symmetric Hausdorff distances between all
foreground voxels (:class:`HausdorffPair`, :func:`hausdorff_distance`), and the clinical figures
reported beside the score: per-organ :func:`dice_3d` and :func:`hd95_mm`, the 95th-percentile
surface distance in millimetres (MONAI's definition) at the real spacing ``(3 mm, PY, PX)``.

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
from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from uwm_d2.core.ids import SLICE_THICKNESS_MM

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


def as_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` as a bool array (nonzero = foreground), without a copy when it already is one."""
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask != 0


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = as_mask(pred), as_mask(truth)
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


def dice_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice of two ``(D, ...)`` masks: ``(|P∩G|, |P|+|G|)``, two ``(D,)`` int arrays.

    What every reading's per-row Dice is made of (each decides the both-empty rows itself).

    Raises:
        ValueError: the shapes differ.
    """
    pred, truth = _check_pair(pred, truth)
    flat_pred = pred.reshape(pred.shape[0], -1)
    flat_truth = truth.reshape(truth.shape[0], -1)
    intersection = np.count_nonzero(flat_pred & flat_truth, axis=1)
    total = np.count_nonzero(flat_pred, axis=1) + np.count_nonzero(flat_truth, axis=1)
    return intersection, total


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
            distance is undefined; each reading of :mod:`uwm_d2.core.readings` has its rule).
    """
    pair = HausdorffPair(pred_vol, truth_vol)
    return pair.distance(_spacing_for(len(pair.shape), spacing))


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
