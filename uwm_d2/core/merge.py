"""The one rule that turns a model's output into one mask per (slice, class).

Every model kind ends in per-class probability maps ``(C, H, W)`` at the scan's own size:

* instance models (Mask R-CNN): :meth:`MergeRule.instance_maps` keeps the instances whose score
  reaches their class's threshold and whose binarized area reaches ``min_area``; the map of a
  class is the pixelwise maximum probability of its kept instances (an organ may be several
  instances, e.g. loops of bowel; 0 where none);
* semantic models: their sigmoid maps are already per-class probabilities;
* a model with both heads: :meth:`MergeRule.combine` averages its two kinds of maps, the semantic
  ones weighted ``semantic_weight``.

Maps are averaged over flip TTA, checkpoints and model kinds; then
:meth:`MergeRule.volume_masks` turns a whole case-day's maps into masks, per class, in the fixed
order of :mod:`uwm_d2.core.merge_steps`: the 8-bit grid, z-smoothing, the cut, the slice presence
gate, small 2D components, short 3D components and keep-the-largest. It is the one entry point
from maps to masks: the evaluator, the submission writer and the NIfTI predictor all call it with
one :class:`MergeRule` built by :meth:`MergeRule.from_cfg`, so the score measured on validation
is the score of the file that gets written. The defaults (no smoothing, cut 0.5, everything else
off) are the plain 0.5 cut.

Per-class settings (:data:`PER_CLASS_SETTINGS`) take one value for every class or one per class
(``CLASSES`` order); a rule keeps a single value when all classes share it, so the two spellings
of the same rule are equal and :meth:`MergeRule.as_dict` writes the short one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from uwm_d2.core.merge_steps import (
    ClassRule,
    cut_level,
    quantize,
    remove_single_slice_components,
)

__all__ = [
    "CFG_KEYS",
    "PER_CLASS_SETTINGS",
    "ClassRule",
    "MergeRule",
    "MergeRuleError",
    "merge_section",
    "quantize",
    "remove_single_slice_components",
]

#: The rule's settings that may differ between classes (fields of :class:`ClassRule` too).
PER_CLASS_SETTINGS: tuple[str, ...] = (
    "mask_threshold",
    "z_smoothing",
    "slice_min_pixels",
    "slice_min_peak",
    "min_component_2d",
    "min_slices_3d",
    "keep_largest_3d",
)

#: Each :class:`MergeRule` field and its key under ``UWM.EVAL`` (and in an ensemble file's
#: ``merge:`` section). ``UWM.EVAL.MASK_THRESHOLDS``, when not empty, sets per-class cuts
#: instead of ``MASK_THRESHOLD`` (a yacs key keeps one type, and ``MASK_THRESHOLD`` is a float).
CFG_KEYS: Mapping[str, str] = {
    "score_thresholds": "SCORE_THRESHOLDS",
    "mask_threshold": "MASK_THRESHOLD",
    "min_area": "MIN_AREA",
    "cleanup_3d": "CLEANUP_3D",
    "semantic_weight": "SEMANTIC_WEIGHT",
    "z_smoothing": "Z_SMOOTHING",
    "slice_min_pixels": "SLICE_MIN_PIXELS",
    "slice_min_peak": "SLICE_MIN_PEAK",
    "min_component_2d": "MIN_COMPONENT_2D",
    "min_slices_3d": "MIN_SLICES_3D",
    "keep_largest_3d": "KEEP_LARGEST_3D",
}


class MergeRuleError(ValueError):
    """A setting the rule refuses: ``"<setting> <problem>"`` (callers rename the setting)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting} {problem}")
        self.setting, self.problem = setting, problem


def _number(kind: type, low: float, high: float, closed_low: bool = True) -> Callable:
    """A converter to ``kind`` that refuses values outside the range (and non-integral ints)."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise TypeError
        if not math.isfinite(float(value)) or (kind is int and float(value) != int(value)):
            raise TypeError
        converted = kind(value)
        if converted < low or converted > high or (not closed_low and converted == low):
            raise TypeError
        return converted

    convert.what = (  # type: ignore[attr-defined]
        f"an integer >= {low}"
        if kind is int
        else f"a number in {'[' if closed_low else '('}{low:g}, {high:g}]"
    )
    return convert


def _flag(value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError
    return bool(value)


_flag.what = "true or false"  # type: ignore[attr-defined]

#: How each per-class setting is checked and converted.
_CONVERTERS: Mapping[str, Callable] = {
    "mask_threshold": _number(float, 0.0, 1.0, closed_low=False),  # 0 would keep every pixel
    "z_smoothing": _number(float, 0.0, 1.0),
    "slice_min_pixels": _number(int, 0, math.inf),
    "slice_min_peak": _number(float, 0.0, 1.0),
    "min_component_2d": _number(int, 0, math.inf),
    "min_slices_3d": _number(int, 1, math.inf),
    "keep_largest_3d": _flag,
}


def _per_class(name: str, value: Any, count: int) -> Any:
    """One value, or ``count`` values per class: converted, and a single one if all are equal."""
    values = list(value) if isinstance(value, list | tuple | np.ndarray) else [value]
    if len(values) not in (1, count):
        raise MergeRuleError(name, f"needs 1 value or {count} (one per class), got {len(values)}")
    convert = _CONVERTERS[name]
    try:
        converted = [convert(item) for item in values]
    except (TypeError, ValueError):
        raise MergeRuleError(name, f"must be {convert.what}, got {value!r}") from None
    return converted[0] if len(set(converted)) == 1 else tuple(converted)


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
        mask_threshold: probability cut, in ``(0, 1]``, of the class maps (and of instance masks
            for ``min_area``). Per class.
        min_area: smallest binarized instance area, in pixels, that counts.
        cleanup_3d: remove 3D components that occupy a single slice: ``min_slices_3d`` at least 2
            for every class (kept so that older configs and ensemble files still work).
        semantic_weight: weight of a model's semantic maps against its instance maps, in
            ``[0, 1]``, when it has both heads.
        z_smoothing: weight ``w`` in ``[0, 1]`` of the two neighbouring slices. Per class.
        slice_min_pixels: presence gate, pixels that must pass the cut on a slice (0: off).
            Per class.
        slice_min_peak: presence gate, value the slice's largest probability must reach
            (0: off). Per class.
        min_component_2d: smallest 8-connected component kept on a slice, in pixels (0 or 1:
            off). Per class.
        min_slices_3d: smallest number of slices a 26-connected 3D component must span (1: off).
            Per class.
        keep_largest_3d: keep only the largest 3D component. Per class.

    Raises:
        MergeRuleError: (a ``ValueError``) naming the first setting with a bad value.
    """

    score_thresholds: tuple[float, ...] = (0.5, 0.5, 0.5)
    mask_threshold: float | tuple[float, ...] = 0.5
    min_area: int = 0
    cleanup_3d: bool = False
    semantic_weight: float = 0.5
    z_smoothing: float | tuple[float, ...] = 0.0
    slice_min_pixels: int | tuple[int, ...] = 0
    slice_min_peak: float | tuple[float, ...] = 0.0
    min_component_2d: int | tuple[int, ...] = 0
    min_slices_3d: int | tuple[int, ...] = 1
    keep_largest_3d: bool | tuple[bool, ...] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "score_thresholds", tuple(float(v) for v in self.score_thresholds))
        if not self.score_thresholds:
            raise MergeRuleError("score_thresholds", "needs one score threshold per class")
        object.__setattr__(self, "min_area", int(self.min_area))
        object.__setattr__(self, "cleanup_3d", bool(self.cleanup_3d))
        object.__setattr__(self, "semantic_weight", float(self.semantic_weight))
        if self.min_area < 0:
            raise MergeRuleError("min_area", f"must be >= 0, got {self.min_area}")
        if not 0.0 <= self.semantic_weight <= 1.0:
            raise MergeRuleError(
                "semantic_weight", f"must be in [0, 1], got {self.semantic_weight}"
            )
        for name in PER_CLASS_SETTINGS:
            value = _per_class(name, getattr(self, name), self.num_classes)
            object.__setattr__(self, name, value)

    @classmethod
    def from_cfg(cls, cfg: Any) -> MergeRule:
        """The rule of ``cfg.UWM.EVAL`` (any object with those attributes; no detectron2 here).

        Keys a config lacks take the rule's defaults.

        Raises:
            ValueError: one line naming the ``UWM.EVAL`` key with a bad value.
        """
        settings = cfg.UWM.EVAL
        values = {
            name: getattr(settings, key) for name, key in CFG_KEYS.items() if hasattr(settings, key)
        }
        per_class_cut = tuple(getattr(settings, "MASK_THRESHOLDS", ()) or ())
        if per_class_cut:
            values["mask_threshold"] = per_class_cut
        try:
            return cls(**values)
        except MergeRuleError as error:
            key = CFG_KEYS[error.setting]
            if error.setting == "mask_threshold" and per_class_cut:
                key = "MASK_THRESHOLDS"
            raise ValueError(f"UWM.EVAL.{key} {error.problem}") from None

    @property
    def num_classes(self) -> int:
        return len(self.score_thresholds)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (result files, ensemble files, export metadata);
        :meth:`from_dict` reads them back into an equal rule."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in asdict(self).items()
        }

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
        return cls(**dict(settings))

    def class_rule(self, class_index: int) -> ClassRule:
        """The settings that apply to one class (``cleanup_3d`` folded into ``min_slices_3d``)."""
        values = {name: self.per_class(name)[class_index] for name in PER_CLASS_SETTINGS}
        if self.cleanup_3d:
            values["min_slices_3d"] = max(values["min_slices_3d"], 2)
        return ClassRule(**values)

    def per_class(self, name: str) -> tuple[Any, ...]:
        """A per-class setting as one value per class."""
        value = getattr(self, name)
        return value if isinstance(value, tuple) else (value,) * self.num_classes

    def with_class(self, class_index: int, **changes: Any) -> MergeRule:
        """This rule with some per-class settings changed for one class only."""
        updates = {}
        for name, value in changes.items():
            values = list(self.per_class(name))
            values[class_index] = value
            updates[name] = tuple(values)
        return replace(self, **updates)

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
        # The area on the 8-bit grid, as the maps will be cut: the union of the kept instances'
        # binarized masks stays exactly the cut of their maximum.
        levels = np.array([cut_level(cut) for cut in self.per_class("mask_threshold")])[classes]
        binary = quantize(soft) >= levels[:, None, None].astype(np.int16)
        areas = np.count_nonzero(binary.reshape(count, -1), axis=1)
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
        """The cut alone (no smoothing, gate or components), on the 8-bit grid, as bool.

        For a single slice's ``(C, H, W)`` maps (or ``(..., C, H, W)``), where no volume exists;
        with one cut for every class any shape is accepted.
        """
        grid = quantize(probabilities)
        cuts = self.per_class("mask_threshold")
        if not isinstance(self.mask_threshold, tuple):
            return grid >= cut_level(cuts[0])
        if grid.ndim < 3 or grid.shape[-3] != self.num_classes:
            raise ValueError(
                f"per-class cuts need (..., {self.num_classes}, H, W) maps, got {grid.shape}"
            )
        levels = np.array([cut_level(cut) for cut in cuts], dtype=np.int16)
        return grid >= levels[:, None, None]

    def volume_masks(self, probabilities: np.ndarray) -> np.ndarray:
        """A whole case-day's maps → its masks: every step of the rule, per class.

        Args:
            probabilities: ``(D, C, H, W)`` float probabilities, or ``uint8`` values already on
                the 8-bit grid (:func:`~uwm_d2.core.merge_steps.quantize`); both give the same
                masks for the same grid values.

        Returns:
            ``(D, C, H, W)`` bool.

        Raises:
            ValueError: not 4D, or not ``num_classes`` maps per slice.
        """
        grid = quantize(probabilities)
        if grid.ndim != 4 or grid.shape[1] != self.num_classes:
            raise ValueError(
                f"expected (D, {self.num_classes}, H, W) maps of one case-day, got {grid.shape}"
            )
        masks = np.empty(grid.shape, dtype=bool)
        for class_index in range(self.num_classes):
            masks[:, class_index] = self.class_rule(class_index).masks(grid[:, class_index])
        return masks


def merge_section(rule: MergeRule) -> dict[str, Any]:
    """The ``merge:`` section of an ensemble file (``UWM.EVAL`` keys, plain YAML values) that
    sets every setting of ``rule``; reading it back over any rule gives ``rule``."""
    return {CFG_KEYS[name]: value for name, value in rule.as_dict().items()}
