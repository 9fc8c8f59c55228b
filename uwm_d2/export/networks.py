"""The part of each model kind that goes into an exported file, and how it gets there.

* semantic kind (``UWMSemanticSegmentor``): :class:`SemanticNetwork`, the backbone and the
  multi-label head, normalized and padded images in, logits at the padded size out. Plain
  convolutions and one bilinear upsampling: ONNX (dynamic batch, height and width) and
  TorchScript (traced).
* Mask R-CNN (``UWMRCNN``) and the combined kind (``UWMPanopticFPN``): :class:`InstanceNetwork`,
  the whole detector from the image in the model range (normalization and padding inside) to the
  masks pasted onto the scan (:func:`uwm_d2.modeling.postprocess.paste_soft_masks`, the function
  the PyTorch models use), plus the semantic logits for the combined kind. Traced with
  ``torch.jit.trace``: detectron2 0.6's R-CNN code is written to be traced (its ``TracingAdapter``
  flattens dict inputs and ``Instances`` outputs into tensors; the wrapper here takes and gives
  plain tensors, so it does that flattening itself), and the paste has no per-instance loop, so
  one trace serves any input size and any number of detections.

The interface names (``semantic``, ``instances``, ``instances+semantic``) are the metadata's
(:data:`uwm_d2.deploy.export_format.INTERFACES`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode

from uwm_d2.core.errors import UWMInputError
from uwm_d2.modeling.postprocess import paste_soft_masks

#: ``MODEL.META_ARCHITECTURE`` → interface.
INTERFACE_OF = {
    "UWMSemanticSegmentor": "semantic",
    "UWMRCNN": "instances",
    "UWMPanopticFPN": "instances+semantic",
}
#: The ONNX opset: 17 runs on onnxruntime's CPU and CUDA providers (and has GridSample, which
#: the instance networks' mask paste needs).
ONNX_OPSET = 17


def interface_of(cfg: CfgNode) -> str:
    """The export interface of ``cfg``'s model kind.

    Raises:
        UWMInputError: the kind cannot be exported (named, with the reason).
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in INTERFACE_OF:
        raise UWMInputError(
            f"cannot export MODEL.META_ARCHITECTURE {name!r}: only uwm_d2's model kinds "
            f"({', '.join(INTERFACE_OF)}) have the soft outputs an export reproduces"
        )
    if name != "UWMRCNN" and cfg.MODEL.SEM_SEG_HEAD.NAME != "MultiLabelSemSegHead":
        raise UWMInputError(
            f"cannot export {name} with MODEL.SEM_SEG_HEAD.NAME {cfg.MODEL.SEM_SEG_HEAD.NAME!r}: "
            "the exported predictor reads one sigmoid map per class (MultiLabelSemSegHead)"
        )
    return INTERFACE_OF[name]


class SemanticNetwork(torch.nn.Module):
    """``(N, C, H, W)`` normalized, padded images → ``(N, K, H, W)`` logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.sem_seg_head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits, _ = self.head(self.backbone(image), None)
        return logits


class InstanceNetwork(torch.nn.Module):
    """``(C, H', W')`` image in the model range and ``(2,)`` scan size → pasted soft masks,
    scores, classes (and the combined kind's ``(1, K, Hp, Wp)`` semantic logits)."""

    def __init__(self, model: torch.nn.Module, with_semantic: bool) -> None:
        super().__init__()
        self.model = model
        self.with_semantic = with_semantic

    def forward(self, image: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = [{"image": image}]
        if self.with_semantic:
            _, logits, detections = self.model.raw_outputs(inputs)
        else:
            detections = self.model.inference(inputs, do_postprocess=False)
        detection = detections[0]
        input_size = torch._shape_as_tensor(image)[
            1:
        ]  # traced as the input's shape, not a constant
        keep, _, masks = paste_soft_masks(
            detection.pred_boxes.tensor, detection.pred_masks, input_size, size[0], size[1]
        )
        outputs = (masks, detection.scores[keep], detection.pred_classes[keep])
        return (*outputs, logits) if self.with_semantic else outputs


def network_for(model: torch.nn.Module, interface: str) -> torch.nn.Module:
    """The exportable part of ``model`` (eval mode)."""
    if interface == "semantic":
        return SemanticNetwork(model).eval()
    return InstanceNetwork(model, with_semantic=interface == "instances+semantic").eval()


def example_inputs(interface: str, images: list[np.ndarray], size: tuple[int, int]) -> tuple:
    """The arrays to trace with: real slices (so the trace follows the detector's usual path)."""
    if interface == "semantic":
        return (torch.from_numpy(np.stack(images)),)
    return (torch.from_numpy(images[0]), torch.tensor(size, dtype=torch.int64))


def _output_names(interface: str) -> list[str]:
    from uwm_d2.deploy.runtime import OUTPUT_NAMES

    return list(OUTPUT_NAMES[interface])


def save_network(
    network: torch.nn.Module, interface: str, network_format: str, example: tuple, path: Path
) -> None:
    """Trace ``network`` on ``example`` and write it to ``path`` (ONNX or TorchScript).

    Raises:
        UWMInputError: the tracer or the ONNX exporter fails (one line with its reason).
    """
    with warnings.catch_warnings():
        # Tracing warns about every shape read as a Python number; the export is checked against
        # the PyTorch model afterwards instead (see uwm_d2.export.exporter.self_check).
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                if network_format == "torchscript":
                    traced = torch.jit.trace(network, example, check_trace=False)
                    torch.jit.save(traced, str(path))
                else:
                    _export_onnx(network, interface, example, path)
        except UWMInputError:
            raise
        except Exception as error:  # the tracer and exporter raise many types
            detail = " ".join(str(error).split())[:300]
            raise UWMInputError(
                f"exporting the {interface} network to {network_format} failed: {detail}"
            ) from None


def _export_onnx(network: torch.nn.Module, interface: str, example: tuple, path: Path) -> None:
    from uwm_d2.deploy.runtime import INPUT_NAMES

    inputs = list(INPUT_NAMES[interface])
    outputs = _output_names(interface)
    if interface == "semantic":
        axes = {"image": {0: "batch", 2: "height", 3: "width"}}
        axes["logits"] = {0: "batch", 2: "height", 3: "width"}
    else:
        axes = {"image": {1: "height", 2: "width"}, "masks": {0: "instances", 1: "h", 2: "w"}}
        axes |= {"scores": {0: "instances"}, "classes": {0: "instances"}}
        if interface == "instances+semantic":
            axes["logits"] = {2: "padded_height", 3: "padded_width"}
    buffer = io.BytesIO()
    # The TorchScript-based exporter (dynamo=False): it follows detectron2's traceable code
    # paths, which the dynamo exporter does not know.
    torch.onnx.export(
        network,
        example,
        buffer,
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=axes,
    )
    path.write_bytes(buffer.getvalue())
    network.eval()  # the exporter restores the wrapper's mode, which may have been training
