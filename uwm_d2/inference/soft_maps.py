"""Network outputs → per-class probability maps, without torch: the rules both predictors share.

The PyTorch models (:mod:`uwm_d2.modeling`) and the exported networks (:mod:`uwm_d2.deploy`) end
in the same arrays, so they call the same functions here, and the maps they give the merge rule
agree by construction:

* :func:`semantic_probabilities`: a semantic head's logits at the (padded) network input → crop
  the padding, resize to the scan (bilinear, OpenCV), then the sigmoid, so the resize
  interpolates logits, not probabilities;
* :func:`class_maps`: one image's instance masks and/or semantic maps → ``(C, H, W)`` maps by the
  merge rule (:meth:`~uwm_d2.core.merge.MergeRule.instance_maps`, :meth:`~MergeRule.combine`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.special import expit

from uwm_d2.core.merge import MergeRule


def semantic_probabilities(
    logits: np.ndarray, image_size: Sequence[int], height: int, width: int
) -> np.ndarray:
    """``(C, H', W')`` logits of the padded network input → ``(C, height, width)`` probabilities.

    Args:
        logits: one image's head output at the padded input resolution (``float32``).
        image_size: the network input's size before padding, ``(H, W)``.
        height, width: the scan's own size.

    Returns:
        ``float32`` probabilities in ``[0, 1]``, in ``logits``' class order.
    """
    cropped = np.asarray(logits, dtype=np.float32)[:, : int(image_size[0]), : int(image_size[1])]
    if cropped.shape[1:] != (height, width):
        # OpenCV resizes channel-last images, any channel count; a single class loses its axis.
        resized = cv2.resize(
            np.ascontiguousarray(cropped.transpose(1, 2, 0)),
            (int(width), int(height)),
            interpolation=cv2.INTER_LINEAR,
        )
        cropped = resized.reshape(height, width, -1).transpose(2, 0, 1)
    return expit(cropped).astype(np.float32, copy=False)


def class_maps(
    rule: MergeRule,
    instances: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    semantic: np.ndarray | None = None,
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """One image's outputs → ``(C, H, W)`` ``float32`` per-class probabilities.

    Args:
        rule: selects instances (score thresholds, minimum area) and weighs the kinds when both
            are present.
        instances: ``(masks (N, H, W) probabilities, scores (N,), classes (N,))`` at the scan's
            size, or ``None`` for a model without instances.
        semantic: ``(C, H, W)`` probabilities, or ``None``.
        image_shape: ``(H, W)``, needed when ``N == 0`` and ``masks`` carries no shape.

    Raises:
        ValueError: neither kind is given.
    """
    kinds: dict[str, np.ndarray] = {}
    if instances is not None:
        masks, scores, classes = instances
        kinds["instances"] = rule.instance_maps(masks, scores, classes, image_shape=image_shape)
    if semantic is not None:
        kinds["semantic"] = np.asarray(semantic, dtype=np.float32)
    if not kinds:
        raise ValueError("a model output needs instance masks, semantic maps or both")
    return rule.combine(**kinds)
