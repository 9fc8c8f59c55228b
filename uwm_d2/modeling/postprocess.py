"""Raw model outputs → soft outputs at the scan's own size (probabilities, never yet cut).

* :func:`paste_soft_masks` scales one image's boxes to the scan, clips them, drops the empty ones
  and pastes their mask-head probabilities onto the whole scan (detectron2's ``_do_paste_mask``
  over the full image, no thresholding). It is written so that ``torch.jit.trace`` and the ONNX
  exporter follow it for any number of instances and any output size: the exported instance
  networks (:mod:`uwm_d2.export`) contain this very function, so PyTorch and exported models
  paste alike. detectron2 0.6's ``detector_postprocess(..., mask_threshold=-1)`` could not serve:
  it wraps the pasted masks in ``BitMasks``, which turns them into bool, and its CPU paste loops
  over instances (a loop that tracing freezes at the traced count);
* :func:`postprocess_soft` applies it to an ``Instances``;
* :func:`semantic_probabilities` turns per-class logits into probabilities at the scan's size
  through the torch-free :func:`uwm_d2.inference.soft_maps.semantic_probabilities` (crop the
  padding, bilinear resize, then the sigmoid), the function the exported-model predictor calls.
"""

from __future__ import annotations

import torch
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from uwm_d2.inference import soft_maps


def paste_soft_masks(
    boxes: torch.Tensor,
    masks: torch.Tensor,
    input_size: tuple[int, int] | torch.Tensor,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's detections at the network input → kept rows, boxes and masks at the scan.

    Args:
        boxes: ``(N, 4)`` XYXY boxes at the network input's scale.
        masks: ``(N, 1, M, M)`` mask-head probabilities.
        input_size: the network input's ``(H', W')`` (before padding).
        height, width: the scan's size (0-dim tensors while tracing, so they stay inputs).

    Returns:
        ``(keep, boxes, masks)``: ``keep`` the ``(K,)`` indices of the detections whose box is
        not empty once clipped to the scan, their ``(K, 4)`` boxes at the scan's scale and their
        ``(K, height, width)`` ``float32`` probabilities in ``[0, 1]``.
    """
    scale_x = torch.as_tensor(width, dtype=torch.float32) / torch.as_tensor(
        input_size[1], dtype=torch.float32
    )
    scale_y = torch.as_tensor(height, dtype=torch.float32) / torch.as_tensor(
        input_size[0], dtype=torch.float32
    )
    scaled = Boxes(boxes.to(torch.float32) * torch.stack([scale_x, scale_y, scale_x, scale_y]))
    scaled.clip((height, width))
    keep = torch.nonzero(scaled.nonempty()).flatten()
    kept_boxes = scaled.tensor[keep]
    pasted, _ = _do_paste_mask(
        masks[keep].to(torch.float32), kept_boxes, height, width, skip_empty=False
    )
    return keep, kept_boxes, pasted


def postprocess_soft(result: Instances, height: int, width: int) -> Instances:
    """One image's raw detections → ``Instances`` at ``height`` x ``width`` with soft masks.

    Boxes are scaled and clipped, empty boxes dropped, as detectron2's ``detector_postprocess``
    does; ``pred_masks`` becomes ``(N, height, width)`` ``float32`` probabilities
    (:func:`paste_soft_masks`).

    Args:
        result: one image's raw ``model.inference(..., do_postprocess=False)`` output, with
            ``pred_masks`` of shape ``(N, 1, M, M)`` (mask-head probabilities).
    """
    if not result.has("pred_masks"):
        return detector_postprocess(result, height, width)
    keep, boxes, masks = paste_soft_masks(
        result.pred_boxes.tensor, result.pred_masks, result.image_size, height, width
    )
    fields = {
        name: value[keep]
        for name, value in result.get_fields().items()
        if name not in ("pred_boxes", "pred_masks")
    }
    return Instances((height, width), pred_boxes=Boxes(boxes), pred_masks=masks, **fields)


def semantic_probabilities(
    logits: torch.Tensor, image_size: tuple[int, int], height: int, width: int
) -> torch.Tensor:
    """``(C, H', W')`` logits of the padded network input → ``(C, height, width)`` probabilities.

    Args:
        logits: one image's head output at the (padded) input resolution.
        image_size: the input's size before padding, ``(H, W)``.
        height, width: the scan's own size.

    Returns:
        A ``float32`` tensor on the logits' device.
    """
    probabilities = soft_maps.semantic_probabilities(
        logits.detach().to("cpu", torch.float32).numpy(), image_size, int(height), int(width)
    )
    return torch.from_numpy(probabilities).to(logits.device)
