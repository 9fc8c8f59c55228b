"""One probability path for every model kind: soft outputs → per-class probability maps.

:func:`class_probabilities` is the only place where a PyTorch model's output becomes the
``(C, H, W)`` maps that the merge rule (:class:`uwm_d2.core.merge.MergeRule`) cuts; it hands
the arrays to the torch-free :func:`~uwm_d2.inference.soft_maps.class_maps`, which the
exported-model predictor calls too. The evaluator, the submission predictor and the NIfTI
predictor all call it, then average maps over flip TTA, checkpoints and model kinds before the
one cut. :class:`SoftOutputs` makes any model of
:mod:`uwm_d2.modeling` answer ``model(inputs)`` with its soft outputs, so detectron2's
``inference_on_dataset`` can drive it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule
from uwm_d2.inference.soft_maps import class_maps


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
    if "instances" not in output and "sem_seg" not in output:
        raise ValueError(f"a model output needs 'instances' or 'sem_seg', got {sorted(output)}")
    instances, shape = None, None
    if "instances" in output:
        found = output["instances"].to("cpu")
        shape = tuple(int(size) for size in found.image_size)
        if found.has("pred_masks"):
            instances = (found.pred_masks.numpy(), found.scores.numpy(), found.pred_classes.numpy())
        else:  # boxes only: no mask, so no pixel of any class
            instances = (np.zeros((0, *shape), np.float32), np.zeros(0), np.zeros(0, np.int64))
    semantic = None
    if "sem_seg" in output:
        semantic = output["sem_seg"].detach().to("cpu", torch.float32).numpy()
    return class_maps(rule, instances, semantic, image_shape=shape)


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
