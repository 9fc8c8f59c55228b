"""Run one exported network on numpy arrays: onnxruntime for ONNX, torch alone for TorchScript.

Both runners take and give numpy arrays in the order of the interface's inputs and outputs
(:data:`~uwm_d2.deploy.export_format.INTERFACES`) and check, on loading, that the network fits
its metadata: they run it once on a small blank input and compare the shapes it gives with what
the metadata promises (channels, classes), so a folder whose metadata belongs to another network
fails on loading with one line, not inside the first scan. Neither module imports torch unless a
TorchScript file is loaded.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uwm_d2.core.errors import UWMInputError
from uwm_d2.deploy.export_format import InputRule

#: Names of each interface's inputs and outputs, in order.
INPUT_NAMES = {
    "semantic": ("image",),
    "instances": ("image", "size"),
    "instances+semantic": ("image", "size"),
}
OUTPUT_NAMES = {
    "semantic": ("logits",),
    "instances": ("masks", "scores", "classes"),
    "instances+semantic": ("masks", "scores", "classes", "logits"),
}


def onnx_providers() -> list[str]:
    """CUDA when onnxruntime has it, then the CPU (override: ``UWM_ORT_PROVIDERS=a,b``)."""
    import onnxruntime

    wanted = os.environ.get("UWM_ORT_PROVIDERS")
    if wanted:
        return [name.strip() for name in wanted.split(",") if name.strip()]
    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxNetwork:
    """An ONNX network in an onnxruntime session (all cores; CUDA first when available)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        self.path = path
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=onnx_providers())
        except Exception as error:  # onnxruntime raises its own exception types, and ValueError
            detail = " ".join(str(error).split())[:300]
            raise UWMInputError(f"onnxruntime cannot load {str(path)!r}: {detail}") from None
        self.input_names = tuple(item.name for item in self.session.get_inputs())
        self.output_names = tuple(item.name for item in self.session.get_outputs())

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self.input_names, arrays, strict=True))
        return list(self.session.run(None, feeds))


class TorchScriptNetwork:
    """A TorchScript network on the CPU (torch is imported here, and only here).

    The instance kinds' networks call torchvision's NMS and RoIAlign operators, which torchvision
    registers with torch when it is imported: so it is imported first when installed.
    """

    def __init__(self, path: Path) -> None:
        import torch

        with contextlib.suppress(ImportError):
            import torchvision  # noqa: F401  (registers torchvision::nms, roi_align)

        self.path = path
        self._torch = torch
        try:
            with warnings.catch_warnings():  # torch 2.14 calls TorchScript deprecated; it runs
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as error:  # torch raises RuntimeError, ValueError, zipfile errors...
            detail = " ".join(str(error).split())[:300]
            raise UWMInputError(
                f"torch cannot load {str(path)!r} as TorchScript: {detail}"
            ) from None

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            outputs = self.module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        return [output.numpy() for output in outputs]


def load_network(path: Path, network_format: str, interface: str, inputs: InputRule) -> Any:
    """Load one network file and check it against its metadata (see the module docstring).

    Raises:
        UWMInputError: the runtime refuses the file, or the network's inputs or outputs do not
            match the metadata (names, channels, number of classes).
    """
    network = OnnxNetwork(path) if network_format == "onnx" else TorchScriptNetwork(path)
    expected = INPUT_NAMES[interface]
    if network_format == "onnx" and network.input_names != expected:
        raise UWMInputError(
            f"network {str(path)!r} takes inputs {list(network.input_names)}, but its metadata "
            f"(interface {interface!r}) says {list(expected)}"
        )
    _probe(network, path, interface, inputs)
    return network


def _probe(network: Any, path: Path, interface: str, inputs: InputRule) -> None:
    """One run on a blank input of the promised channel count; check the outputs' shapes."""
    side = 2 * max(int(inputs.size_divisibility), 32)
    if interface == "semantic":
        arrays = [np.zeros((1, inputs.channels, side, side), np.float32)]
    else:
        arrays = [np.zeros((inputs.channels, side, side), np.float32), np.array([side, side])]
    try:
        outputs = network(arrays)
    except Exception as error:  # the runtimes raise their own types on a shape mismatch
        detail = " ".join(str(error).split())[:200]
        raise UWMInputError(
            f"network {str(path)!r} does not take the input its metadata describes "
            f"({inputs.channels} channels, interface {interface!r}): {detail}"
        ) from None
    names = OUTPUT_NAMES[interface]
    classes = _classes_of(outputs, interface)
    if len(outputs) != len(names) or (classes is not None and classes != _num_classes()):
        raise UWMInputError(
            f"network {str(path)!r} gives {len(outputs)} outputs"
            + (f" with {classes} classes" if classes is not None else "")
            + f"; its metadata (interface {interface!r}) promises {list(names)} "
            f"with {_num_classes()} classes"
        )


def _classes_of(outputs: list[np.ndarray], interface: str) -> int | None:
    """The class axis of the logits (``None`` when the interface has none)."""
    if interface == "instances" or len(outputs) != len(OUTPUT_NAMES[interface]):
        return None
    logits = outputs[-1]
    return int(logits.shape[1]) if logits.ndim == 4 else -1


def _num_classes() -> int:
    from uwm_d2.core.ids import CLASSES

    return len(CLASSES)
