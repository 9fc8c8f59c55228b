"""From detectron2 ``Instances`` to one mask per class: the merge path of evaluation and submission.

* :func:`instances_to_class_masks` applies :func:`uwm_d2.core.merge.merge_instances` (score
  threshold per class, mask threshold, minimum area, union per class) to a slice's instances.
* :func:`postprocess_soft` is ``detector_postprocess`` with masks pasted as probabilities at the
  scan's size (detectron2 0.6's own soft mode returns bool masks, see there).
* :class:`ThresholdedMaskInference` wraps a detectron2 model so that ``model(inputs)`` cuts those
  probabilities at ``UWM.EVAL.MASK_THRESHOLD``, as the submission's predictor does. detectron2's
  own postprocess always cuts at 0.5, which would make ``MASK_THRESHOLD`` a dead key in validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.layers import paste_masks_in_image
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import merge_instances


def merge_kwargs_from_cfg(cfg: CfgNode) -> dict[str, Any]:
    """The keyword arguments of :func:`instances_to_class_masks` set by ``cfg.UWM.EVAL``."""
    return {
        "score_thresholds": tuple(float(value) for value in cfg.UWM.EVAL.SCORE_THRESHOLDS),
        "mask_threshold": float(cfg.UWM.EVAL.MASK_THRESHOLD),
        "min_area": int(cfg.UWM.EVAL.MIN_AREA),
    }


def instances_to_class_masks(
    instances: Instances,
    score_thresholds: Sequence[float],
    mask_threshold: float = 0.5,
    min_area: int = 0,
) -> np.ndarray:
    """One slice's predicted instances → ``(3, H, W)`` bool masks, one per class.

    Args:
        instances: detectron2 ``Instances`` at the scan's resolution with ``pred_masks``
            (``(N, H, W)`` bool, or float probabilities), ``scores`` and ``pred_classes``.
        score_thresholds: one per class, in :data:`uwm_d2.core.ids.CLASSES` order.
        mask_threshold: probability cut for float masks (bool masks are used as they are).
        min_area: smallest kept instance area in pixels.

    Returns:
        ``(len(CLASSES), H, W)`` bool numpy array (channel ``c`` is ``CLASSES[c]``).
    """
    instances = instances.to("cpu")
    height, width = instances.image_size
    if len(instances) == 0 or not instances.has("pred_masks"):
        return np.zeros((len(CLASSES), height, width), dtype=bool)
    return merge_instances(
        instances.pred_masks.numpy(),
        instances.scores.numpy(),
        instances.pred_classes.numpy(),
        score_thresholds,
        mask_threshold=mask_threshold,
        min_area=min_area,
        num_classes=len(CLASSES),
        image_shape=(height, width),
    )


def postprocess_soft(result: Instances, height: int, width: int) -> Instances:
    """``detector_postprocess`` with ``pred_masks`` pasted as probabilities.

    Boxes are scaled to ``height`` x ``width`` and clipped, empty boxes dropped, exactly as
    detectron2 does; ``pred_masks`` becomes ``(N, height, width)`` ``float32`` in ``[0, 1]`` (steps
    of 1/255, from ``paste_masks_in_image(threshold=-1)``). Needed because detectron2 0.6's own
    ``detector_postprocess(..., mask_threshold=-1)`` wraps the pasted uint8 masks in ``BitMasks``,
    which turns them into bool: every pixel with probability >= 1/255 comes back True.

    Args:
        result: one image's raw ``model.inference(..., do_postprocess=False)`` output, with
            ``pred_masks`` of shape ``(N, 1, M, M)`` (mask-head probabilities).
    """
    if not result.has("pred_masks"):
        return detector_postprocess(result, height, width)
    fields = {key: value for key, value in result.get_fields().items() if key != "pred_masks"}
    fields["uwm_row"] = torch.arange(len(result), device=result.pred_masks.device)
    processed = detector_postprocess(Instances(result.image_size, **fields), height, width)
    rows = processed.get("uwm_row")
    processed.remove("uwm_row")
    pasted = paste_masks_in_image(
        result.pred_masks[rows][:, 0], processed.pred_boxes, (height, width), threshold=-1.0
    )
    processed.pred_masks = pasted.to(torch.float32) / 255.0
    return processed


class ThresholdedMaskInference(torch.nn.Module):
    """``model(inputs)`` of a GeneralizedRCNN, with masks cut at ``mask_threshold``.

    The instances are pasted at the input's ``height`` x ``width`` as probabilities
    (:func:`postprocess_soft`) and ``pred_masks`` becomes ``probability >= mask_threshold``
    (bool). Everything else (boxes, scores, classes) is detectron2's standard output, so
    detectron2 evaluators work too. Inference only.
    """

    def __init__(self, model: torch.nn.Module, mask_threshold: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.mask_threshold = float(mask_threshold)

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Instances]]:
        # Unwrap DistributedDataParallel: inference needs no gradient synchronisation.
        model = getattr(self.model, "module", self.model)
        results = model.inference(batched_inputs, do_postprocess=False)
        outputs = []
        for result, item in zip(results, batched_inputs, strict=True):
            height = item.get("height", result.image_size[0])
            width = item.get("width", result.image_size[1])
            processed = postprocess_soft(result, height, width)
            if processed.has("pred_masks"):
                processed.pred_masks = processed.pred_masks >= self.mask_threshold
            outputs.append({"instances": processed})
        return outputs
