"""Raw model outputs → soft outputs at the scan's own size (probabilities, never yet cut).

* :func:`postprocess_soft` is ``detector_postprocess`` with instance masks pasted as
  probabilities: detectron2 0.6's own ``detector_postprocess(..., mask_threshold=-1)`` wraps the
  pasted uint8 masks in ``BitMasks``, which turns them into bool (every pixel with probability
  >= 1/255 comes back True), so the mask threshold of the merge rule could never apply;
* :func:`semantic_probabilities` resizes per-class logits to the scan (``sem_seg_postprocess``:
  crop the padding, bilinear resize) and only then applies the sigmoid, so the resize
  interpolates logits, not probabilities.
"""

from __future__ import annotations

import torch
from detectron2.layers import paste_masks_in_image
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Instances


def postprocess_soft(result: Instances, height: int, width: int) -> Instances:
    """``detector_postprocess`` with ``pred_masks`` pasted as probabilities.

    Boxes are scaled to ``height`` x ``width`` and clipped, empty boxes dropped, exactly as
    detectron2 does; ``pred_masks`` becomes ``(N, height, width)`` ``float32`` in ``[0, 1]``
    (steps of 1/255, from ``paste_masks_in_image(threshold=-1)``).

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


def semantic_probabilities(
    logits: torch.Tensor, image_size: tuple[int, int], height: int, width: int
) -> torch.Tensor:
    """``(C, H', W')`` logits of the padded network input → ``(C, height, width)`` probabilities.

    Args:
        logits: one image's head output at the (padded) input resolution.
        image_size: the input's size before padding, ``(H, W)``.
        height, width: the scan's own size.
    """
    return torch.sigmoid(sem_seg_postprocess(logits.float(), image_size, height, width))
