"""The competition metric, exactly as docs and ``competition.md`` define it, plus clinical figures.

``score = 0.4 * mean Dice + 0.6 * (1 - mean normalized Hausdorff)`` where

* Dice is one value per (slice, class) row, ``2|P∩G| / (|P|+|G|)``, and **1 when both are empty**;
* the Hausdorff term is one value per (case_day, class) volume ``(D, H, W)`` (slices in slice-number
  order, unit spacing on every axis, slice depth 1): the symmetric Hausdorff distance over **all**
  foreground voxels (not just surfaces), divided by the volume diagonal ``sqrt(D² + H² + W²)`` and
  clipped to 1; **0 when both are empty, 1 when exactly one is empty**.

The clinical figures reported beside it are per-organ 3D Dice and the 95th-percentile surface
Hausdorff distance in millimetres (MONAI's definition) using the real spacing ``(3 mm, PY, PX)``.

Everything here is a pure function of numpy arrays; masks may be ``bool`` or any numeric dtype
(nonzero = foreground). Exact Hausdorff distances come from Euclidean distance transforms on the
bounding box of ``P ∪ G``, never from all-pairs distances, so a full 144 x 266 x 266 case-day takes
a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from uwm_d2.core.ids import CLASSES, SLICE_THICKNESS_MM

#: Weights of the two terms of the competition score.
DICE_WEIGHT = 0.4
HAUSDORFF_WEIGHT = 0.6

#: ``(z, y, x)`` spacing in mm assumed for a case-day whose spacing is not given.
DEFAULT_SPACING_MM: tuple[float, float, float] = (SLICE_THICKNESS_MM, 1.5, 1.5)


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


def _union_bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    """Bounding box of the nonzero voxels of ``mask`` (not empty), grown by ``pad``, clamped."""
    box = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other_axes))
        box.append(slice(max(hits[0] - pad, 0), min(hits[-1] + 1 + pad, mask.shape[axis])))
    return tuple(box)


def _directed_max(source: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> float:
    """``max over source voxels of the distance to the nearest target voxel`` (both non-empty)."""
    outside = source & ~target
    if not outside.any():
        return 0.0  # source ⊆ target: every source voxel is its own nearest target voxel
    # EDT of ~target is, at every voxel, the exact Euclidean distance to the nearest target voxel.
    distance = ndimage.distance_transform_edt(~target, sampling=spacing)
    return float(distance[outside].max())


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


def hausdorff_distance(
    pred_vol: np.ndarray, truth_vol: np.ndarray, spacing: Sequence[float] | None = (1.0, 1.0, 1.0)
) -> float:
    """Symmetric Hausdorff distance between all foreground voxels of two masks.

    ``max(max_p min_g |p - g|, max_g min_p |g - p|)`` over every foreground voxel (not just the
    surfaces), Euclidean, with voxel coordinates scaled by ``spacing`` (so the result is in the
    units of ``spacing``; voxels for the default unit spacing). Exact: both volumes are cropped to
    the bounding box of ``P ∪ G`` (every voxel's nearest voxel of the other set lies inside it)
    and the distances are read from Euclidean distance transforms there.

    Args:
        pred_vol, truth_vol: masks of the same shape, usually ``(D, H, W)``.
        spacing: one positive step per axis, or ``None`` for unit spacing.

    Raises:
        ValueError: the shapes differ, ``spacing`` does not fit, or either mask is empty (the
            distance is undefined; :func:`normalized_hausdorff` applies the competition's rule).
    """
    pred, truth = _check_pair(pred_vol, truth_vol)
    steps = _spacing_for(pred.ndim, spacing)
    if not pred.any() or not truth.any():
        raise ValueError("the Hausdorff distance is undefined when a mask is empty")
    box = _union_bbox(pred | truth)
    pred, truth = pred[box], truth[box]
    return max(_directed_max(pred, truth, steps), _directed_max(truth, pred, steps))


def normalized_hausdorff(pred_vol: np.ndarray, truth_vol: np.ndarray) -> float:
    """The competition's Hausdorff term of one (case_day, class) volume, in ``[0, 1]``.

    :func:`hausdorff_distance` with unit spacing on every axis (slice depth 1), divided by the
    diagonal ``sqrt(D² + H² + W²)`` of the volume's shape and clipped to 1. Empty-mask rules:
    **0.0 when both are empty, 1.0 when exactly one is empty.**

    Raises:
        ValueError: the shapes differ.
    """
    pred, truth = _check_pair(pred_vol, truth_vol)
    pred_any, truth_any = bool(pred.any()), bool(truth.any())
    if not pred_any and not truth_any:
        return 0.0
    if pred_any != truth_any:
        return 1.0
    diagonal = math.sqrt(sum(side * side for side in pred.shape))
    return min(hausdorff_distance(pred, truth, spacing=None) / diagonal, 1.0)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background 6-neighbour (or on the array border), MONAI-style."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(
    pred_vol: np.ndarray,
    truth_vol: np.ndarray,
    spacing_mm: Sequence[float] = DEFAULT_SPACING_MM,
) -> float:
    """95th-percentile Hausdorff distance between the surfaces of two volumes, in millimetres.

    MONAI's ``compute_hausdorff_distance(percentile=95)``: surface voxels are foreground voxels
    with a 6-connected background neighbour; for each surface voxel of one set, take the distance
    to the nearest surface voxel of the other; the result is the larger of the two directed 95th
    percentiles (linear interpolation, ``np.percentile``'s default).

    Args:
        pred_vol, truth_vol: ``(D, H, W)`` masks of the same shape, slices in slice-number order.
        spacing_mm: ``(z, y, x)`` voxel size in mm: ``(3.0, PY, PX)`` for this data.

    Returns:
        The distance in mm; **NaN when either volume is empty** (undefined; averages must skip it).

    Raises:
        ValueError: the shapes differ or ``spacing_mm`` does not fit.
    """
    pred, truth = _check_pair(pred_vol, truth_vol)
    steps = _spacing_for(pred.ndim, spacing_mm)
    if not pred.any() or not truth.any():
        return math.nan
    # One voxel of margin so that erosion sees the background around objects at the crop edge;
    # at the volume's own edge border_value=0 makes edge voxels surface voxels, as in MONAI.
    box = _union_bbox(pred | truth, pad=1)
    pred_surface, truth_surface = _surface(pred[box]), _surface(truth[box])
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=steps)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=steps)[truth_surface]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def _slice_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of every slice of two ``(D, H, W)`` volumes, as a ``(D,)`` array (1 for empty pairs)."""
    flat_pred = pred.reshape(pred.shape[0], -1)
    flat_truth = truth.reshape(truth.shape[0], -1)
    intersection = np.count_nonzero(flat_pred & flat_truth, axis=1)
    total = np.count_nonzero(flat_pred, axis=1) + np.count_nonzero(flat_truth, axis=1)
    dice = np.ones(pred.shape[0], dtype=np.float64)
    nonempty = total > 0
    dice[nonempty] = 2.0 * intersection[nonempty] / total[nonempty]
    return dice


def _combine(dice: float, hausdorff: float) -> float:
    return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff)


def _class_order(name: str) -> tuple[int, str]:
    return (CLASSES.index(name) if name in CLASSES else len(CLASSES), name)


def score_volumes(
    volumes: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    spacings: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Score predicted volumes against the truth with the competition metric and clinical figures.

    Args:
        volumes: ``{(case_day, class_name): (pred_vol, truth_vol)}``; each volume is ``(D, H, W)``
            (bool or numeric, nonzero = foreground) with slices in slice-number order, holding
            every slice of that case-day (a missing prediction must be passed as an empty volume:
            the truth decides which rows are scored).
        spacings: ``{case_day: (z, y, x)}`` voxel size in mm for the clinical HD95;
            :data:`DEFAULT_SPACING_MM` for a case-day not listed. The competition score itself
            always uses unit spacing.

    Returns:
        A JSON-serializable dict (plain ``float``/``int``/``None``)::

            {"score", "dice", "hausdorff",
             "per_class": {cls: {"score", "dice", "hausdorff"}},
             "clinical": {cls: {"dice_3d", "hd95_mm"}},
             "num_slices", "num_case_days"}

        ``dice`` is the mean over every (slice, class) row (each slice of each volume is one row,
        empty pairs count 1); ``hausdorff`` the mean over every (case_day, class) volume of
        :func:`normalized_hausdorff`; ``score = 0.4 * dice + 0.6 * (1 - hausdorff)``. ``per_class``
        repeats them restricted to one class. ``clinical.dice_3d`` is the mean over case-days of
        :func:`dice_3d` (1 for an empty pair); ``clinical.hd95_mm`` the mean of :func:`hd95_mm`
        over the case-days where both volumes are non-empty, ``None`` when there is none.
        ``num_slices`` counts distinct (case_day, slice) pairs. Only classes present in
        ``volumes`` appear, in :data:`CLASSES` order.

    Raises:
        ValueError: ``volumes`` is empty, a pair's shapes differ or are not 3D, or two classes of
            one case-day have different numbers of slices.
    """
    if not volumes:
        raise ValueError("score_volumes got no volumes to score")
    spacings = spacings or {}
    slice_dice: dict[str, list[np.ndarray]] = {}
    hausdorff: dict[str, list[float]] = {}
    volume_dice: dict[str, list[float]] = {}
    hd95: dict[str, list[float]] = {}
    depth_of: dict[str, int] = {}
    for (case_day, class_name), (pred_vol, truth_vol) in volumes.items():
        pred, truth = _check_pair(pred_vol, truth_vol)
        if pred.ndim != 3:
            raise ValueError(f"{case_day} {class_name}: expected (D, H, W), got {pred.shape}")
        depth = depth_of.setdefault(case_day, pred.shape[0])
        if depth != pred.shape[0]:
            raise ValueError(
                f"{case_day}: class {class_name} has {pred.shape[0]} slices, another has {depth}"
            )
        slice_dice.setdefault(class_name, []).append(_slice_dice(pred, truth))
        hausdorff.setdefault(class_name, []).append(normalized_hausdorff(pred, truth))
        volume_dice.setdefault(class_name, []).append(dice_3d(pred, truth))
        spacing = spacings.get(case_day, DEFAULT_SPACING_MM)
        hd95.setdefault(class_name, []).append(hd95_mm(pred, truth, spacing))

    per_class: dict[str, dict[str, float]] = {}
    clinical: dict[str, dict[str, float | None]] = {}
    for class_name in sorted(slice_dice, key=_class_order):
        dice = float(np.concatenate(slice_dice[class_name]).mean())
        distance = float(np.mean(hausdorff[class_name]))
        per_class[class_name] = {
            "score": _combine(dice, distance),
            "dice": dice,
            "hausdorff": distance,
        }
        defined = [value for value in hd95[class_name] if not math.isnan(value)]
        clinical[class_name] = {
            "dice_3d": float(np.mean(volume_dice[class_name])),
            "hd95_mm": float(np.mean(defined)) if defined else None,
        }
    all_dice = float(np.concatenate([d for rows in slice_dice.values() for d in rows]).mean())
    all_hausdorff = float(np.mean([h for values in hausdorff.values() for h in values]))
    return {
        "score": _combine(all_dice, all_hausdorff),
        "dice": all_dice,
        "hausdorff": all_hausdorff,
        "per_class": per_class,
        "clinical": clinical,
        "num_slices": int(sum(depth_of.values())),
        "num_case_days": len(depth_of),
    }


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
