"""``UWMEvaluator``: the competition metric and clinical figures as a detectron2 evaluator.

* ``process()`` turns each slice's model output (soft instances and/or semantic maps, see
  :mod:`uwm_d2.modeling`) into per-class probability maps through the one probability path
  (:func:`~uwm_d2.modeling.probabilities.class_probabilities`), puts them on the merge rule's
  8-bit grid (:func:`~uwm_d2.core.merge_steps.quantize`) and keeps them zlib-compressed (mostly
  zeros: a whole validation fold fits in memory);
* ``evaluate()`` gathers those from every rank (``comm.gather``), rebuilds each case-day's
  ``(D, C, H, W)`` maps (a slice with no prediction counts as empty, as in the competition),
  turns them into masks with the submission's rule (:meth:`~uwm_d2.core.merge.MergeRule.
  volume_masks`: z-smoothing and 3D steps need the whole case-day), and scores them against the
  truth of the dataset dicts with :func:`uwm_d2.core.readings.score_volumes`, one case-day at a
  time. The maps cut are the very values an out-of-fold file or a submission cuts, so a
  validation score is the score of the file that gets written.

The result is ``{"uwm": {...}}`` with flat float values (detectron2's ``EvalHook`` and
``BestCheckpointer`` read ``uwm/score``): ``score``, ``dice``, ``hausdorff``,
``{score,dice,hausdorff,dice_3d,hd95_mm}/<class>``, ``num_slices`` and ``num_case_days``, and for
every other reading of the metric scored in the same pass (:mod:`uwm_d2.core.readings`; all of
them by default) ``<reading>/{score,dice,hausdorff}``, e.g. ``uwm/competition/score`` and
``uwm/mlebench/score``. ``uwm/score`` stays this project's reading (the best checkpoint follows
it). The full nested result, with its ``readings`` block, is written to
``<output_dir>/uwm_results_<dataset>.json``.

:class:`ThresholdedCOCOEvaluator` is detectron2's ``COCOEvaluator`` (segm AP, ``UWM.EVAL.COCO_AP``)
fed the same soft instances cut at the rule's mask threshold.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.structures import Instances
from detectron2.utils import comm
from pycocotools import mask as mask_util

from uwm_d2.core.atomic import atomic_write_text
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.merge_steps import quantize
from uwm_d2.core.readings import DEFAULT_READING, LazyVolumes, resolve_readings, score_volumes
from uwm_d2.data.inputs import group_by_case_day
from uwm_d2.modeling.probabilities import class_probabilities

logger = logging.getLogger(__name__)


def _decode(rles: Sequence[dict[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """C COCO RLEs → ``(C, H, W)`` bool (a union for annotations is done by the caller)."""
    if not rles:
        return np.zeros((0, *shape), dtype=bool)
    return np.moveaxis(mask_util.decode(list(rles)), 2, 0).astype(bool)


def pack_maps(probabilities: np.ndarray) -> bytes:
    """One slice's ``(C, H, W)`` maps on the 8-bit grid, zlib-compressed (fast level)."""
    return zlib.compress(np.ascontiguousarray(quantize(probabilities)).tobytes(), 1)


def unpack_maps(packed: bytes, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """:func:`pack_maps` undone: ``(C, H, W)`` ``uint8``."""
    return np.frombuffer(zlib.decompress(packed), dtype=np.uint8).reshape(num_classes, *shape)


def truth_masks(record: Mapping[str, Any]) -> np.ndarray:
    """``(3, H, W)`` bool truth of one dataset dict: the union of its annotations per class."""
    shape = (int(record["height"]), int(record["width"]))
    truth = np.zeros((len(CLASSES), *shape), dtype=bool)
    annotations = [ann for ann in record.get("annotations", []) if not ann.get("iscrowd", 0)]
    if annotations:
        decoded = _decode([ann["segmentation"] for ann in annotations], shape)
        for ann, mask in zip(annotations, decoded, strict=True):
            truth[ann["category_id"]] |= mask
    return truth


class DatasetVolumes(LazyVolumes):
    """``{(case_day, class): (pred_vol, truth_vol)}`` of a registered dataset, built on access.

    Predictions are the rule's masks of the evaluator's per-slice packed maps; the truth comes
    from the dataset dicts. One case-day is held at a time (a real fold's volumes would take
    gigabytes).
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[Mapping[str, Any]]],
        predictions: Mapping[str, bytes],
        rule: MergeRule,
    ) -> None:
        self._groups = groups
        self._predictions = predictions
        self._rule = rule
        self._cache: tuple[str, np.ndarray, np.ndarray] | None = None
        super().__init__(list(groups))

    def _load(self, case_day: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != case_day:
            self._cache = (case_day, *self._build(case_day))
        class_index = CLASSES.index(name)
        return self._cache[1][:, class_index], self._cache[2][:, class_index]

    def _build(self, case_day: str) -> tuple[np.ndarray, np.ndarray]:
        """``(D, 3, H, W)`` predicted and true masks of one case-day."""
        records = self._groups[case_day]
        shape = (int(records[0]["height"]), int(records[0]["width"]))
        maps = np.zeros((len(records), len(CLASSES), *shape), dtype=np.uint8)
        truth = np.zeros(maps.shape, dtype=bool)
        for depth, record in enumerate(records):
            truth[depth] = truth_masks(record)
            packed = self._predictions.get(record["slice_id"])
            if packed is not None:
                maps[depth] = unpack_maps(packed, shape, len(CLASSES))
        return self._rule.volume_masks(maps), truth


def flatten_result(result: Mapping[str, Any]) -> dict[str, float]:
    """The flat float dict detectron2's ``EvalHook`` needs from :func:`score_volumes`' result.

    Undefined values (``hd95_mm`` of a class never present in both volumes, a reading's score
    with nothing to average: MLE-bench's when everything is empty) are left out rather than
    written as NaN. The default reading is the top level; every other one in ``readings`` adds
    ``<reading>/{score,dice,hausdorff}``. ``clinical`` may be absent (``clinical=False``).
    """
    flat = {key: float(result[key]) for key in ("score", "dice", "hausdorff")}
    for name, values in result["per_class"].items():
        for key, value in values.items():
            flat[f"{key}/{name}"] = float(value)
    for name, values in result.get("clinical", {}).items():
        for key, value in values.items():
            if value is not None:
                flat[f"{key}/{name}"] = float(value)
    for reading, summary in result.get("readings", {}).items():
        if reading == DEFAULT_READING:
            continue  # already the top level
        for key in ("score", "dice", "hausdorff"):
            if summary[key] is not None:
                flat[f"{reading}/{key}"] = float(summary[key])
    flat["num_slices"] = float(result["num_slices"])
    flat["num_case_days"] = float(result["num_case_days"])
    return flat


class UWMEvaluator(DatasetEvaluator):
    """Competition score of a detectron2 model on a registered ``uwm_*`` dataset.

    Args:
        dataset_name: a dataset of :mod:`uwm_d2.data.register` (its dicts are the truth).
        rule: the merge rule (``MergeRule.from_cfg(cfg)``: ``UWM.EVAL``).
        distributed: gather the predictions of every rank to the main one.
        output_dir: where the nested result JSON goes (``None``: not written).
        readings: the readings of the metric to report beside ``uwm/score`` (names of
            :data:`uwm_d2.core.readings.READINGS`, ``"all"``, or ``()`` for none), scored in the
            same pass over the volumes.
    """

    def __init__(
        self,
        dataset_name: str,
        rule: MergeRule | None = None,
        distributed: bool = True,
        output_dir: str | Path | None = None,
        readings: str | Sequence[str] = "all",
    ) -> None:
        self._dataset_name = dataset_name
        # Resolved now: an unknown name fails when the evaluator is built, not after a fold.
        self._readings = tuple(r.name for r in resolve_readings(readings)) if readings else ()
        self._rule = rule or MergeRule()
        self._distributed = distributed
        self._output_dir = Path(output_dir) if output_dir else None
        self._predictions: list[dict[str, Any]] = []

    @classmethod
    def from_config(
        cls, cfg: Any, dataset_name: str, output_dir: str | Path | None = None
    ) -> UWMEvaluator:
        """An evaluator with the merge rule of ``cfg``."""
        return cls(dataset_name, MergeRule.from_cfg(cfg), output_dir=output_dir)

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for item, output in zip(inputs, outputs, strict=True):
            maps = pack_maps(class_probabilities(output, self._rule))
            self._predictions.append({"slice_id": item["slice_id"], "maps": maps})

    def evaluate(self) -> dict[str, dict[str, float]]:
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return {}
            predictions = [p for rank_predictions in gathered for p in rank_predictions]
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning(f"[UWMEvaluator] no predictions for {self._dataset_name}")
            return {}
        by_slice = {p["slice_id"]: p["maps"] for p in predictions}
        records = DatasetCatalog.get(self._dataset_name)
        known = {record["slice_id"] for record in records}
        unknown = len(set(by_slice) - known)
        missing = len(known - set(by_slice))
        if unknown:
            logger.warning(f"[UWMEvaluator] {unknown} predicted slices are not in the dataset")
        if missing:
            logger.warning(f"[UWMEvaluator] {missing} slices have no prediction: scored as empty")
        groups = group_by_case_day(records)
        spacings = {case_day: tuple(group[0]["spacing"]) for case_day, group in groups.items()}
        result = score_volumes(
            DatasetVolumes(groups, by_slice, self._rule), spacings, readings=self._readings
        )
        self._write(result)
        flat = flatten_result(result)
        others = "".join(
            f", {name} {flat[f'{name}/score']:.4f}" if f"{name}/score" in flat else f", {name} n/a"
            for name in result.get("readings", {})
            if name != DEFAULT_READING
        )
        logger.info(
            f"[UWMEvaluator] {self._dataset_name}: score {flat['score']:.4f} "
            f"(dice {flat['dice']:.4f}, hausdorff {flat['hausdorff']:.4f}){others}"
        )
        return {"uwm": flat}

    def _write(self, result: dict[str, Any]) -> None:
        if self._output_dir is None:
            return
        self._output_dir.mkdir(parents=True, exist_ok=True)
        document = {
            "dataset": self._dataset_name,
            "merge": self._rule.as_dict(),
            **result,
        }
        path = self._output_dir / f"uwm_results_{self._dataset_name}.json"
        atomic_write_text(path, json.dumps(document, indent=2) + "\n")


class ThresholdedCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` (segm AP) over soft instances, their masks cut at the rule's threshold.

    ``use_fast_impl=False``: the fast COCOeval needs detectron2's compiled ``_C``. Outputs without
    instances (a semantic-only model) have nothing to rank and are skipped.
    """

    def __init__(self, dataset_name: str, mask_threshold: float, output_dir: str) -> None:
        super().__init__(dataset_name, tasks=("segm",), output_dir=output_dir, use_fast_impl=False)
        self._mask_threshold = float(mask_threshold)

    @classmethod
    def from_config(cls, cfg: Any, dataset_name: str, output_dir: str) -> ThresholdedCOCOEvaluator:
        return cls(dataset_name, cfg.UWM.EVAL.MASK_THRESHOLD, output_dir)

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        pairs = [(i, o) for i, o in zip(inputs, outputs, strict=True) if "instances" in o]
        cut = []
        for _, output in pairs:
            original = output["instances"]  # a new Instances: the output is not changed
            instances = Instances(original.image_size, **original.get_fields())
            if instances.has("pred_masks") and instances.pred_masks.is_floating_point():
                instances.pred_masks = instances.pred_masks >= self._mask_threshold
            cut.append({"instances": instances})
        if pairs:
            super().process([i for i, _ in pairs], cut)
