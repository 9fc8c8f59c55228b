"""The one rule that turns a model's output into one mask per (slice, class), and a 3D clean-up.

Every model kind ends in per-class probability maps ``(C, H, W)`` at the scan's own size:

* instance models (Mask R-CNN): :meth:`MergeRule.instance_maps` keeps the instances whose score
  reaches their class's threshold and whose binarized area reaches ``min_area``; the map of a
  class is the pixelwise maximum probability of its kept instances (an organ may be several
  instances, e.g. loops of bowel; 0 where none);
* semantic models: their sigmoid maps are already per-class probabilities;
* a model with both heads: :meth:`MergeRule.combine` averages its two kinds of maps, the semantic
  ones weighted ``semantic_weight``.

Maps are averaged over flip TTA, checkpoints and model kinds; then :meth:`MergeRule.binarize` cuts
them at ``mask_threshold``, and :meth:`MergeRule.volume_masks` also removes 3D components seen on
one slice only (``cleanup_3d``). The evaluator and the submission writer both go through one
:class:`MergeRule` built by :meth:`MergeRule.from_cfg`, so the score measured on validation is the
score of the file that gets submitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class _KeptInstances:
    """Kept instances: ``masks`` ``(K, H, W)`` float32 in [0, 1], ``classes`` ``(K,)``."""

    masks: np.ndarray
    classes: np.ndarray
    shape: tuple[int, int]


@dataclass(frozen=True)
class MergeRule:
    """Instances or probability maps → one bool mask per class (see the module docstring).

    Args:
        score_thresholds: smallest instance score kept, one per class (``CLASSES`` order); their
            number is the number of classes.
        mask_threshold: probability cut, in ``(0, 1]``, for instance masks and class maps alike.
        min_area: smallest binarized instance area, in pixels, that counts.
        cleanup_3d: remove 3D components that occupy a single slice (whole volumes only).
        semantic_weight: weight of a model's semantic maps against its instance maps, in
            ``[0, 1]``, when it has both heads.
    """

    score_thresholds: tuple[float, ...] = (0.5, 0.5, 0.5)
    mask_threshold: float = 0.5
    min_area: int = 0
    cleanup_3d: bool = False
    semantic_weight: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "score_thresholds", tuple(float(v) for v in self.score_thresholds))
        object.__setattr__(self, "mask_threshold", float(self.mask_threshold))
        object.__setattr__(self, "min_area", int(self.min_area))
        object.__setattr__(self, "cleanup_3d", bool(self.cleanup_3d))
        object.__setattr__(self, "semantic_weight", float(self.semantic_weight))
        if not self.score_thresholds:
            raise ValueError("a merge rule needs one score threshold per class")
        # A cut at 0 would turn every pixel of every map into foreground.
        if not 0.0 < self.mask_threshold <= 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1], got {self.mask_threshold}")
        if self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area}")
        if not 0.0 <= self.semantic_weight <= 1.0:
            raise ValueError(f"semantic_weight must be in [0, 1], got {self.semantic_weight}")

    @classmethod
    def from_cfg(cls, cfg: Any) -> MergeRule:
        """The rule of ``cfg.UWM.EVAL`` (any object with those attributes; no detectron2 here)."""
        settings = cfg.UWM.EVAL
        return cls(
            score_thresholds=tuple(settings.SCORE_THRESHOLDS),
            mask_threshold=settings.MASK_THRESHOLD,
            min_area=settings.MIN_AREA,
            cleanup_3d=settings.CLEANUP_3D,
            semantic_weight=settings.SEMANTIC_WEIGHT,
        )

    @property
    def num_classes(self) -> int:
        return len(self.score_thresholds)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (result files, ensemble files, export metadata);
        :meth:`from_dict` reads them back into an equal rule."""
        return {**asdict(self), "score_thresholds": list(self.score_thresholds)}

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> MergeRule:
        """The rule :meth:`as_dict` wrote (missing keys take their defaults).

        Raises:
            ValueError: an unknown key (named), or a value the rule refuses.
        """
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown merge rule setting {unknown[0]!r} (known: {sorted(known)})")
        values = dict(settings)
        if "score_thresholds" in values:
            values["score_thresholds"] = tuple(values["score_thresholds"])
        return cls(**values)

    # -- instances ---------------------------------------------------------------------------

    def _kept(
        self,
        masks: np.ndarray,
        scores: Sequence[float] | np.ndarray,
        classes: Sequence[int] | np.ndarray,
        image_shape: tuple[int, int] | None,
    ) -> _KeptInstances:
        """Validate one image's instances and keep those that pass the score and area tests."""
        masks = np.asarray(masks)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        classes = np.asarray(classes).reshape(-1)
        count = scores.size
        if masks.ndim == 3:
            shape = (int(masks.shape[1]), int(masks.shape[2]))
            if image_shape is not None and tuple(image_shape) != shape:
                raise ValueError(
                    f"masks are {shape[0]}x{shape[1]} (H x W) but image_shape is {image_shape}"
                )
        elif count == 0 and image_shape is not None:
            shape = (int(image_shape[0]), int(image_shape[1]))
        else:
            raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
        if masks.shape[0] != count or classes.size != count:
            raise ValueError(
                f"{masks.shape[0]} masks, {count} scores and {classes.size} classes: lengths differ"
            )
        if count == 0:
            return _KeptInstances(np.zeros((0, *shape), np.float32), classes[:0], shape)
        if not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"classes must be integers, got dtype {classes.dtype}")
        if classes.min() < 0 or classes.max() >= self.num_classes:
            raise ValueError(
                f"class indices must be in 0..{self.num_classes - 1}, got {classes.tolist()}"
            )
        # Bool and integer masks are probability 1 inside, 0 outside.
        soft = masks if np.issubdtype(masks.dtype, np.floating) else masks != 0
        soft = soft.astype(np.float32, copy=False)
        areas = np.count_nonzero((soft >= self.mask_threshold).reshape(count, -1), axis=1)
        thresholds = np.asarray(self.score_thresholds)
        keep = (scores >= thresholds[classes]) & (areas >= self.min_area)
        return _KeptInstances(soft[keep], classes[keep], shape)

    def instance_maps(
        self,
        masks: np.ndarray,
        scores: Sequence[float] | np.ndarray,
        classes: Sequence[int] | np.ndarray,
        image_shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Per-class probability maps of one image's instances (the soft form of the rule).

        Args:
            masks: ``(N, H, W)`` probabilities, or bool / integer masks (nonzero = 1), at image
                resolution.
            scores: ``(N,)`` instance confidences.
            classes: ``(N,)`` class indices in ``0 .. num_classes - 1``.
            image_shape: ``(H, W)``; needed only when ``N == 0`` and ``masks`` carries no shape.

        Returns:
            ``(num_classes, H, W)`` float32 in ``[0, 1]``: per class, the pixelwise maximum of
            its kept instances, 0 where none. ``max(p_i) >= t`` exactly when some ``p_i >= t``,
            so cutting one pass's maps at ``mask_threshold`` is the union of the binarized kept
            instances; averaging several passes' maps before the cut is the ensemble.

        Raises:
            ValueError: inconsistent lengths or shapes, a class index out of range, or
                ``N == 0`` with no way to know ``(H, W)``.
        """
        kept = self._kept(masks, scores, classes, image_shape)
        maps = np.zeros((self.num_classes, *kept.shape), dtype=np.float32)
        for class_index in np.unique(kept.classes):
            np.max(kept.masks[kept.classes == class_index], axis=0, out=maps[class_index])
        return maps

    def merge_instances(
        self,
        masks: np.ndarray,
        scores: Sequence[float] | np.ndarray,
        classes: Sequence[int] | np.ndarray,
        image_shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """One image's instances → ``(num_classes, H, W)`` bool masks: the binarized maps."""
        return self.binarize(self.instance_maps(masks, scores, classes, image_shape))

    # -- probability maps --------------------------------------------------------------------

    def combine(
        self, instances: np.ndarray | None = None, semantic: np.ndarray | None = None
    ) -> np.ndarray:
        """One model's maps from its kinds: the one given, or their ``semantic_weight`` average.

        Args:
            instances: ``(C, H, W)`` maps of :meth:`instance_maps`, or ``None``.
            semantic: ``(C, H, W)`` sigmoid maps of a semantic head, or ``None``.

        Raises:
            ValueError: neither is given, or their shapes differ.
        """
        if instances is None and semantic is None:
            raise ValueError("combine needs instance maps, semantic maps or both")
        if semantic is None:
            return np.asarray(instances, dtype=np.float32)
        if instances is None:
            return np.asarray(semantic, dtype=np.float32)
        if np.shape(instances) != np.shape(semantic):
            raise ValueError(
                f"instance maps {np.shape(instances)} and semantic maps {np.shape(semantic)} differ"
            )
        weight = np.float32(self.semantic_weight)
        return ((1 - weight) * instances + weight * semantic).astype(np.float32, copy=False)

    def binarize(self, probabilities: np.ndarray) -> np.ndarray:
        """``probabilities >= mask_threshold`` (any shape), as bool."""
        return np.asarray(probabilities) >= self.mask_threshold

    def volume_masks(self, probabilities: np.ndarray) -> np.ndarray:
        """A whole case-day's ``(D, C, H, W)`` maps → bool masks, with the 3D clean-up if set."""
        return self.clean_volume(self.binarize(probabilities))

    def clean_volume(self, masks: np.ndarray) -> np.ndarray:
        """``(D, C, H, W)`` bool masks of one case-day after the 3D clean-up (when it is on)."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 4:
            raise ValueError(f"expected (D, C, H, W) masks, got shape {masks.shape}")
        if not self.cleanup_3d:
            return masks
        cleaned = np.empty_like(masks)
        for class_index in range(masks.shape[1]):
            cleaned[:, class_index] = remove_single_slice_components(masks[:, class_index])
        return cleaned


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
