"""One probability path for every model kind: soft outputs → per-class probability maps.

:func:`class_probabilities` is the only place where a model's output becomes the ``(C, H, W)``
maps that the merge rule cuts (:class:`uwm_d2.core.merge.MergeRule`); the evaluator, the
submission predictor and the NIfTI predictor all call it, then average maps over flip TTA,
checkpoints and model kinds before the one cut. :class:`SoftOutputs` makes any model of
:mod:`uwm_d2.modeling` answer ``model(inputs)`` with its soft outputs, so detectron2's
``inference_on_dataset`` can drive it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule


def class_probabilities(output: dict[str, Any], rule: MergeRule) -> np.ndarray:
    """One image's soft output → ``(C, H, W)`` ``float32`` per-class probabilities.

    Args:
        output: a dict of :meth:`soft_outputs` (or detectron2's standard outputs): ``"instances"``
            with ``pred_masks`` (probabilities, or bool masks = 1 inside), ``scores`` and
            ``pred_classes`` at the scan's size; and/or ``"sem_seg"``, ``(C, H, W)``
            probabilities.
        rule: selects instances (score thresholds, minimum area) and weighs the kinds when both
            are present (:meth:`MergeRule.combine`).

    Raises:
        ValueError: the output holds neither key.
    """
    kinds: dict[str, np.ndarray] = {}
    if "instances" in output:
        instances = output["instances"].to("cpu")
        if instances.has("pred_masks"):
            kinds["instances"] = rule.instance_maps(
                instances.pred_masks.numpy(),
                instances.scores.numpy(),
                instances.pred_classes.numpy(),
                image_shape=instances.image_size,
            )
        else:
            kinds["instances"] = np.zeros((rule.num_classes, *instances.image_size), np.float32)
    if "sem_seg" in output:
        kinds["semantic"] = output["sem_seg"].detach().to("cpu", torch.float32).numpy()
    if not kinds:
        raise ValueError(f"a model output needs 'instances' or 'sem_seg', got {sorted(output)}")
    return rule.combine(**kinds)


def check_soft_model(model: torch.nn.Module, meta_architecture: str = "") -> None:
    """Raise a one-line ``UWMInputError`` when ``model`` cannot give soft outputs."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    if not callable(getattr(inner, "soft_outputs", None)):
        name = meta_architecture or type(inner).__name__
        raise UWMInputError(
            f"MODEL.META_ARCHITECTURE {name!r} has no soft outputs; use one of uwm_d2's: "
            "UWMRCNN (Mask R-CNN), UWMSemanticSegmentor, UWMPanopticFPN"
        )


class SoftOutputs(torch.nn.Module):
    """``SoftOutputs(model)(inputs) == model.soft_outputs(inputs)``, for inference loops.

    Inference only; a ``DistributedDataParallel`` wrapper is looked through (no gradients, so
    nothing to synchronise).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        check_soft_model(model)
        self.model = model

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return getattr(self.model, "module", self.model).soft_outputs(batched_inputs)
