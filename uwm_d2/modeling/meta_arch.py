"""The meta-architectures of the model kinds, each answering ``soft_outputs(batched_inputs)``.

``soft_outputs`` is what evaluation and inference call (through
:class:`uwm_d2.modeling.probabilities.SoftOutputs`): one dict per input, at the input's
``height`` x ``width`` (the scan's own size), holding

* ``"instances"``: detectron2 ``Instances`` with boxes, scores, classes and ``pred_masks`` as
  ``float32`` probabilities (instance kinds);
* ``"sem_seg"``: ``(C, H, W)`` ``float32`` per-class probabilities (semantic kinds).

``forward`` stays detectron2's (losses in training; in eval, detectron2's usual outputs, with
``"sem_seg"`` as probabilities for the semantic kinds), so detectron2's own tools keep working.
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, PanopticFPN
from detectron2.modeling.meta_arch.semantic_seg import SemanticSegmentor
from detectron2.structures import ImageList, Instances

from uwm_d2.modeling.postprocess import postprocess_soft, semantic_probabilities

Outputs = list[dict[str, Any]]


def _output_size(item: dict[str, Any], image_size: tuple[int, int]) -> tuple[int, int]:
    """The size an output is resized to: the input's ``height``/``width``, else the network's."""
    return int(item.get("height", image_size[0])), int(item.get("width", image_size[1]))


def soft_instance_outputs(model: torch.nn.Module, batched_inputs: Outputs) -> Outputs:
    """Soft outputs of any ``GeneralizedRCNN``-like model (``inference(do_postprocess=False)``)."""
    results = model.inference(batched_inputs, do_postprocess=False)
    outputs = []
    for result, item in zip(results, batched_inputs, strict=True):
        height, width = _output_size(item, result.image_size)
        outputs.append({"instances": postprocess_soft(result, height, width)})
    return outputs


@META_ARCH_REGISTRY.register()
class UWMRCNN(GeneralizedRCNN):
    """detectron2's Mask R-CNN (``GeneralizedRCNN``) with :meth:`soft_outputs`.

    Same parameters and checkpoints as ``GeneralizedRCNN`` (model-zoo weights load as they are).
    """

    @torch.no_grad()
    def soft_outputs(self, batched_inputs: Outputs) -> Outputs:
        return soft_instance_outputs(self, batched_inputs)


def _semantic_targets(
    batched_inputs: Outputs, size_divisibility: int, ignore_value: int, device: torch.device
) -> torch.Tensor:
    """The mapper's ``(C, H, W)`` ``sem_seg`` maps, padded like the images (padding ignored)."""
    if "sem_seg" not in batched_inputs[0]:
        raise ValueError(
            "training a semantic head needs 'sem_seg' targets in the inputs; "
            "uwm_d2.data.mapper.UWMDatasetMapper adds them when annotations are kept"
        )
    targets = [item["sem_seg"].to(device) for item in batched_inputs]
    return ImageList.from_tensors(targets, size_divisibility, ignore_value).tensor


@META_ARCH_REGISTRY.register()
class UWMSemanticSegmentor(SemanticSegmentor):
    """A backbone and ``MultiLabelSemSegHead``: per-class sigmoid maps, classes may overlap.

    In eval, ``forward`` returns ``{"sem_seg": (C, H, W) probabilities}`` per input (detectron2's
    ``SemanticSegmentor`` returns softmax logits there).
    """

    def forward(self, batched_inputs: Outputs) -> Outputs | dict[str, torch.Tensor]:
        images = [item["image"].to(self.device) for item in batched_inputs]
        images = [(image - self.pixel_mean) / self.pixel_std for image in images]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        features = self.backbone(images.tensor)
        if self.training:
            targets = _semantic_targets(
                batched_inputs,
                self.backbone.size_divisibility,
                self.sem_seg_head.ignore_value,
                self.device,
            )
            _, losses = self.sem_seg_head(features, targets)
            return losses
        logits, _ = self.sem_seg_head(features, None)
        outputs = []
        for logit, item, image_size in zip(logits, batched_inputs, images.image_sizes, strict=True):
            height, width = _output_size(item, image_size)
            outputs.append({"sem_seg": semantic_probabilities(logit, image_size, height, width)})
        return outputs

    @torch.no_grad()
    def soft_outputs(self, batched_inputs: Outputs) -> Outputs:
        return self.forward(batched_inputs)


@META_ARCH_REGISTRY.register()
class UWMPanopticFPN(PanopticFPN):
    """Mask R-CNN and ``MultiLabelSemSegHead`` on one backbone: both losses, both outputs.

    detectron2's ``PanopticFPN`` trains the same way (the semantic targets are the mapper's
    multi-label maps); its panoptic merge (one label per pixel, argmax over classes) is left out,
    because the classes here overlap and the two outputs are averaged as probabilities instead.
    """

    def inference(
        self, batched_inputs: Outputs, do_postprocess: bool = True
    ) -> Outputs | tuple[list, list]:
        if not do_postprocess:
            return super().inference(batched_inputs, do_postprocess=False)
        outputs = self.soft_outputs(batched_inputs)
        for output in outputs:
            instances = output["instances"]
            if instances.has("pred_masks"):  # detectron2's own cut, as GeneralizedRCNN makes
                instances.pred_masks = instances.pred_masks >= 0.5
        return outputs

    def raw_outputs(
        self, batched_inputs: Outputs
    ) -> tuple[list[tuple[int, int]], torch.Tensor, list[Instances]]:
        """``(input sizes, semantic logits, detections)`` at the network input, before any
        postprocessing (what :mod:`uwm_d2.export` traces)."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        logits, _ = self.sem_seg_head(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        detections, _ = self.roi_heads(images, features, proposals, None)
        return images.image_sizes, logits, detections

    @torch.no_grad()
    def soft_outputs(self, batched_inputs: Outputs) -> Outputs:
        image_sizes, logits, detections = self.raw_outputs(batched_inputs)
        outputs = []
        for logit, detection, item, image_size in zip(
            logits, detections, batched_inputs, image_sizes, strict=True
        ):
            height, width = _output_size(item, image_size)
            outputs.append(
                {
                    "instances": postprocess_soft(detection, height, width),
                    "sem_seg": semantic_probabilities(logit, image_size, height, width),
                }
            )
        return outputs
