"""The merge rule's steps on one class's volume: 8-bit grid, z-smoothing, cut, gate, components.

:meth:`uwm_d2.core.merge.MergeRule.volume_masks` runs them per class, in this fixed order, on one
case-day's ``(D, H, W)`` map of that class (slices in slice-number order):

1. **8-bit grid** (:func:`quantize`): probabilities become ``round(p * 255)`` as ``uint8``. Maps
   that are stored (the evaluator's per-slice maps, out-of-fold files) are kept on this grid and
   maps in memory (submission, NIfTI) are put on it first, so every path cuts the very same
   values. At the cut 0.5 the grid changes nothing (``p >= 0.5`` exactly when
   ``round(255 p) >= 128``); at another cut ``t`` a float map could differ for ``p`` within
   ``1/510`` of ``t``.
2. **z-smoothing** (:func:`smooth_z`, weight ``w``): each slice's values averaged with its two
   neighbours' of the same case-day, ``(q_z + w q_{z-1} + w q_{z+1}) / (1 + w n)`` with ``n`` the
   neighbours that exist (1 on the first and last slice, 0 for a one-slice volume), rounded back
   to the 8-bit grid (half to even). ``w = 0`` leaves the map as it is.
3. **cut** (:func:`cut_level`): a pixel is foreground when its value ``q`` has ``q / 255 >= t``.
4. **slice presence gate** (:func:`gate_slices`): the class is kept on a slice only if at least
   ``slice_min_pixels`` pixels passed the cut and the slice's largest value reaches
   ``slice_min_peak`` (each condition off at 0; both must hold when both are set).
5. **2D components** (:func:`remove_small_components_2d`): 8-connected components of a slice
   with fewer than ``min_component_2d`` pixels are removed (OpenCV).
6. **3D components** (:func:`filter_components_3d`): 26-connected components spanning fewer than
   ``min_slices_3d`` slices are removed, then, if ``keep_largest_3d``, only the largest remaining
   component (most voxels; the first in scan order on a tie) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

#: Levels of the 8-bit grid: a stored value ``q`` stands for the probability ``q / 255``.
GRID_MAX = 255
_GRID = np.arange(GRID_MAX + 1, dtype=np.float64) / GRID_MAX
_CUBE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class ClassRule:
    """The settings of the merge rule for one class (see the module docstring for each step)."""

    mask_threshold: float = 0.5
    z_smoothing: float = 0.0
    slice_min_pixels: int = 0
    slice_min_peak: float = 0.0
    min_component_2d: int = 0
    min_slices_3d: int = 1
    keep_largest_3d: bool = False

    def masks(self, grid_volume: np.ndarray) -> np.ndarray:
        """Steps 2-6 on one class's ``(D, H, W)`` ``uint8`` volume → ``(D, H, W)`` bool."""
        smoothed = smooth_z(grid_volume, self.z_smoothing)
        mask = smoothed >= cut_level(self.mask_threshold)
        mask = gate_slices(mask, smoothed, self.slice_min_pixels, self.slice_min_peak)
        mask = remove_small_components_2d(mask, self.min_component_2d)
        return filter_components_3d(mask, self.min_slices_3d, self.keep_largest_3d)


def quantize(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities (any shape) on the 8-bit grid: ``round(clip(p, 0, 1) * 255)`` as ``uint8``.

    ``uint8`` input is taken to be on the grid already and comes back as it is.

    Raises:
        ValueError: a dtype that is neither floating point nor ``uint8``.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.dtype == np.uint8:
        return probabilities
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise ValueError(
            f"probabilities must be floats or uint8 (the 8-bit grid), got {probabilities.dtype}"
        )
    # float16 would round 255 * p coarsely; float32 keeps p < 0.5 below 127.5 (ties go to 128).
    scaled = np.clip(probabilities.astype(np.float32, copy=False), 0.0, 1.0) * np.float32(GRID_MAX)
    return np.rint(scaled).astype(np.uint8)


def cut_level(threshold: float) -> int:
    """The smallest grid value ``q`` with ``q / 255 >= threshold`` (256 when none is)."""
    return int(np.searchsorted(_GRID, float(threshold), side="left"))


def smooth_z(grid_volume: np.ndarray, weight: float) -> np.ndarray:
    """Step 2 on a ``(D, H, W)`` ``uint8`` volume (a new array unless ``weight == 0``)."""
    if weight == 0 or grid_volume.shape[0] < 2:
        return grid_volume
    # (q_z + w (q_{z-1} + q_{z+1})) / (1 + w n): the neighbours' sum is exact in uint16.
    neighbours_sum = np.zeros(grid_volume.shape, dtype=np.uint16)
    neighbours_sum[1:] += grid_volume[:-1]
    neighbours_sum[:-1] += grid_volume[1:]
    w = np.float32(weight)
    total = neighbours_sum.astype(np.float32)
    total *= w
    total += grid_volume
    count = np.full(grid_volume.shape[0], 2.0, dtype=np.float32)
    count[0] = count[-1] = 1.0
    total /= (1 + w * count)[:, None, None]
    return np.rint(total, out=total).astype(np.uint8)


def gate_slices(
    mask: np.ndarray, grid_volume: np.ndarray, min_pixels: int, min_peak: float
) -> np.ndarray:
    """Step 4: ``mask`` with the slices that fail the presence gate emptied (a copy if any)."""
    if min_pixels <= 0 and min_peak <= 0:
        return mask
    keep = np.ones(mask.shape[0], dtype=bool)
    if min_pixels > 0:
        keep &= np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1) >= min_pixels
    if min_peak > 0:
        keep &= grid_volume.reshape(mask.shape[0], -1).max(axis=1) >= cut_level(min_peak)
    if keep.all():
        return mask
    return mask & keep[:, None, None]


def remove_small_components_2d(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Step 5: per slice, drop 8-connected components of fewer than ``min_pixels`` pixels."""
    if min_pixels <= 1:
        return mask
    cleaned = mask.copy()
    for index in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(
            mask[index].view(np.uint8), connectivity=8
        )
        small = stats[:, cv2.CC_STAT_AREA] < min_pixels
        small[0] = False  # the background
        if small.any():
            cleaned[index] = ~small[labels] & mask[index]
    return cleaned


class Components3D:
    """The 26-connected components of a ``(D, H, W)`` bool volume, labelled once.

    :meth:`filtered` applies step 6 for any ``(min_slices, keep_largest)``, so several settings
    of the step share one labelling.
    """

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        # Labelled inside the mask's bounding box only: the work follows the foreground's extent.
        self.box = tuple(
            slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0)
            for hits in (
                np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                for axis in range(3)
            )
        )
        if self.box[0].stop == 0:  # no foreground: a 1-voxel background box
            self.box = (slice(0, 1),) * 3
        self.labels, self.count = ndimage.label(mask[self.box], structure=_CUBE)
        boxes = ndimage.find_objects(self.labels)
        self.spans = np.array([box[0].stop - box[0].start for box in boxes], dtype=np.int64)
        self.sizes = np.bincount(self.labels.reshape(-1), minlength=self.count + 1)[1:]

    def filtered(self, min_slices: int, keep_largest: bool) -> np.ndarray:
        """Step 6 (the mask itself when nothing is removed)."""
        keep = self.spans >= min_slices
        if keep_largest and keep.any():
            sizes = np.where(keep, self.sizes, -1)
            keep = np.zeros_like(keep)
            keep[int(np.argmax(sizes))] = True  # argmax: the first of equal sizes (scan order)
        if keep.all():
            return self.mask
        table = np.concatenate([[False], keep])  # label 0 is the background, never kept
        filtered = np.zeros_like(self.mask, dtype=bool)
        filtered[self.box] = table[self.labels]
        return filtered


def filter_components_3d(mask: np.ndarray, min_slices: int, keep_largest: bool) -> np.ndarray:
    """Step 6 on a ``(D, H, W)`` bool volume (the same array when nothing is removed)."""
    if min_slices <= 1 and not keep_largest:
        return mask
    return Components3D(mask).filtered(min_slices, keep_largest)


def remove_single_slice_components(volume: np.ndarray) -> np.ndarray:
    """Drop 3D connected components that occupy only one slice in z (``min_slices_3d = 2``).

    Real organs span several 3 mm slices; a blob found on one slice only, with nothing touching it
    on the slices above or below, is almost always a false positive, and one stray voxel costs the
    Hausdorff term of its whole volume. Components are 26-connected (face, edge or corner
    neighbours count). Every component of a single-slice volume (``D == 1``) occupies one slice,
    so such a volume comes back empty.

    Args:
        volume: ``(D, H, W)`` mask (bool or numeric, nonzero = foreground), slices in slice order.

    Returns:
        A new ``(D, H, W)`` bool array without the single-slice components.

    Raises:
        ValueError: ``volume`` is not 3D.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {volume.shape}")
    foreground = volume if volume.dtype == np.bool_ else volume != 0
    cleaned = filter_components_3d(foreground, 2, False)
    return cleaned.copy() if cleaned is volume else cleaned
