"""The one rule that turns instance predictions into per-class masks, and a 3D clean-up.

Detectron2 predicts instances (mask, score, class); the competition wants one binary mask per
(slice, class). The evaluator and the submission writer both call :func:`merge_instances`, so the
score measured on validation is the score of the file that gets submitted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def merge_instances(
    masks: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    score_thresholds: Sequence[float],
    mask_threshold: float = 0.5,
    min_area: int = 0,
    num_classes: int = 3,
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Merge one image's instances into a ``(num_classes, H, W)`` bool mask per class.

    Rule: an instance is kept when ``score >= score_thresholds[its class]`` **and** its binarized
    area (pixels) is ``>= min_area``; the mask of a class is the union of its kept instances (an
    organ may be several instances, e.g. loops of bowel; overlaps are simply OR-ed). Binarization:
    floating-point masks (probabilities) become ``mask >= mask_threshold``; bool or integer masks
    are used as they are (nonzero = foreground). A class with no kept instance is all False.

    Args:
        masks: ``(N, H, W)`` probabilities or binary masks, already at image resolution.
        scores: ``(N,)`` instance confidences.
        classes: ``(N,)`` class indices in ``0 .. num_classes - 1`` (model order, see ``CLASSES``).
        score_thresholds: one threshold per class.
        mask_threshold: probability cut for floating-point masks.
        min_area: smallest binarized area, in pixels, an instance needs to count.
        num_classes: number of output channels.
        image_shape: ``(H, W)``; needed only when ``N == 0`` and ``masks`` carries no ``H, W``
            (a ``(0, H, W)`` array carries them).

    Returns:
        ``(num_classes, H, W)`` bool array; all False when ``N == 0``.

    Raises:
        ValueError: inconsistent lengths or shapes, a class index out of range, a wrong number of
            thresholds, or ``N == 0`` with no way to know ``(H, W)``.
    """
    masks, classes, binary, keep, shape = _select(
        masks, scores, classes, score_thresholds, mask_threshold, min_area, num_classes, image_shape
    )
    merged = np.zeros((num_classes, *shape), dtype=bool)
    for class_index in np.unique(classes[keep]):
        np.any(binary[keep & (classes == class_index)], axis=0, out=merged[class_index])
    return merged


def _select(
    masks: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    score_thresholds: Sequence[float],
    mask_threshold: float,
    min_area: int,
    num_classes: int,
    image_shape: tuple[int, int] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Validate the inputs and apply the selection part of the rule.

    Returns ``(masks, classes, binary masks, kept flags, (H, W))``.
    """
    masks = np.asarray(masks)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    thresholds = np.asarray(score_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.shape != (num_classes,):
        raise ValueError(f"need {num_classes} score thresholds, got {thresholds.size}")
    count = scores.size
    if masks.ndim == 3:
        height, width = masks.shape[1:]
        if image_shape is not None and tuple(image_shape) != (height, width):
            raise ValueError(f"masks are {height}x{width} (H x W) but image_shape is {image_shape}")
    elif count == 0 and image_shape is not None:
        height, width = (int(side) for side in image_shape)
    else:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if masks.shape[0] != count or classes.size != count:
        raise ValueError(
            f"{masks.shape[0]} masks, {count} scores and {classes.size} classes: lengths differ"
        )
    if count == 0:
        return (
            masks,
            classes,
            np.zeros((0, height, width), dtype=bool),
            np.zeros(0, bool),
            (
                height,
                width,
            ),
        )
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes must be integers, got dtype {classes.dtype}")
    if classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(f"class indices must be in 0..{num_classes - 1}, got {classes.tolist()}")

    if np.issubdtype(masks.dtype, np.floating):
        binary = masks >= mask_threshold
    else:
        binary = masks if masks.dtype == np.bool_ else masks != 0
    areas = np.count_nonzero(binary.reshape(count, -1), axis=1)
    keep = (scores >= thresholds[classes]) & (areas >= min_area)
    return masks, classes, binary, keep, (height, width)


def class_probability_maps(
    masks: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    score_thresholds: Sequence[float],
    mask_threshold: float = 0.5,
    min_area: int = 0,
    num_classes: int = 3,
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """The soft form of :func:`merge_instances`, for averaging over TTA passes and checkpoints.

    Same selection (score threshold per class, minimum binarized area); the map of a class is the
    pixelwise **maximum** probability of its kept instances (0 where none). Because
    ``max(p_i) >= t`` exactly when some ``p_i >= t`` (for ``t > 0``), cutting one pass's maps at
    ``mask_threshold`` gives :func:`merge_instances`' masks; averaging several passes' maps before
    the cut is the ensemble. Bool or integer masks count as probability 1 inside, 0 outside.

    Returns:
        ``(num_classes, H, W)`` float32 in ``[0, 1]``.

    Raises:
        ValueError: as :func:`merge_instances`.
    """
    masks, classes, binary, keep, shape = _select(
        masks, scores, classes, score_thresholds, mask_threshold, min_area, num_classes, image_shape
    )
    maps = np.zeros((num_classes, *shape), dtype=np.float32)
    soft = masks if np.issubdtype(masks.dtype, np.floating) else binary
    for class_index in np.unique(classes[keep]):
        maps[class_index] = np.max(soft[keep & (classes == class_index)], axis=0)
    return maps


def remove_single_slice_components(volume: np.ndarray) -> np.ndarray:
    """Drop 3D connected components that occupy only one slice in z.

    Real organs span several 3 mm slices; a blob found on one slice only, with nothing touching it
    on the slices above or below, is almost always a false positive, and one stray voxel costs the
    Hausdorff term of its whole volume. Components are 26-connected (face, edge or corner
    neighbours count). Note that every component of a single-slice volume (``D == 1``) occupies
    one slice, so such a volume comes back empty.

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
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return np.zeros(volume.shape, dtype=bool)
    # find_objects gives each label's bounding box; its z extent says how many slices it spans.
    boxes = ndimage.find_objects(labels)
    keep = np.zeros(count + 1, dtype=bool)  # index 0 is the background, never kept
    keep[1:] = [box[0].stop - box[0].start > 1 for box in boxes]
    return keep[labels]
