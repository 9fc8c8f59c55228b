"""The model kinds, as detectron2 registered modules (importing this package registers them).

* ``UWMRCNN`` (``META_ARCH_REGISTRY``): Mask R-CNN, detectron2's ``GeneralizedRCNN`` plus
  :meth:`soft_outputs`, its masks pasted as probabilities;
* ``UWMSemanticSegmentor`` (``META_ARCH_REGISTRY``): a backbone and a multi-label semantic head,
  one sigmoid map per class (classes may overlap);
* ``UWMPanopticFPN`` (``META_ARCH_REGISTRY``): both heads on one backbone, both losses, both
  outputs (PanopticFPN without its panoptic merge, which would force one label per pixel);
* ``MultiLabelSemSegHead`` (``SEM_SEG_HEADS_REGISTRY``): FPN features → one logit map per class at
  input resolution, trained with binary cross-entropy + Dice.

Every meta-architecture here answers ``soft_outputs(batched_inputs)`` with detectron2-style
outputs at each input's ``height`` x ``width``: ``"instances"`` whose ``pred_masks`` are float
probabilities, and/or ``"sem_seg"``, ``(C, H, W)`` per-class probabilities. One function,
:func:`uwm_d2.modeling.probabilities.class_probabilities`, turns either into the per-class maps
that the merge rule (:class:`uwm_d2.core.merge.MergeRule`) cuts: a new model kind is a registered
module plus a config, not a branch in the pipeline.
"""

from uwm_d2.modeling.meta_arch import UWMRCNN, UWMPanopticFPN, UWMSemanticSegmentor
from uwm_d2.modeling.semantic import MultiLabelSemSegHead

__all__ = ["UWMRCNN", "MultiLabelSemSegHead", "UWMPanopticFPN", "UWMSemanticSegmentor"]
