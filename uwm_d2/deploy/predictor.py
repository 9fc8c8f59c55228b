"""The exported-model predictor: the PyTorch predictor's rules around an exported network.

Every step but the network itself is a call into the project's shared, torch-free rules:
the 2.5D channels and intensity window (:func:`uwm_d2.data.inputs.build_model_input`), the
test-time resize (:func:`uwm_d2.data.inputs.resize_to_test_size`), the batches, flip TTA and
averaging (:class:`uwm_d2.inference.volume.EnsemblePredictor`), logits → probabilities and the
probability path (:mod:`uwm_d2.inference.soft_maps`) and the merge rule
(:class:`uwm_d2.core.merge.MergeRule`, read back with ``from_dict``). What is left here is the
normalization and padding that a semantic network expects outside itself (detectron2's
``(x - PIXEL_MEAN) / PIXEL_STD``, then zeros up to the backbone's size divisibility).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule
from uwm_d2.data.cache import SliceLRU
from uwm_d2.data.inputs import build_model_input, resize_to_test_size
from uwm_d2.deploy.export_format import ExportedMember, ExportInfo, InputRule, read_export
from uwm_d2.deploy.runtime import load_network
from uwm_d2.inference.soft_maps import class_maps, semantic_probabilities
from uwm_d2.inference.volume import EnsemblePredictor

Reader = Callable[[Path], np.ndarray]
#: Decoded slices kept per member (the PyTorch test mapper's ``UWM.SCAN_LRU_MB`` default).
LRU_BYTES = 32 * 2**20


@dataclass(frozen=True)
class SliceInput:
    """One slice's network input, ``(C, H', W')`` ``float32`` in the model range, and its scan's
    own size."""

    image: np.ndarray
    height: int
    width: int


def normalized_batch(
    images: Sequence[np.ndarray], rule: InputRule
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``(C, H, W)`` images → one ``(N, C, Hp, Wp)`` batch, as detectron2's models make it.

    Each image becomes ``(image - PIXEL_MEAN) / PIXEL_STD`` (``float32``, per channel), then all
    are zero-padded at the bottom and right to the batch's largest size, rounded up to
    ``size_divisibility``. Returns the batch and each image's size before padding.
    """
    mean = np.asarray(rule.pixel_mean, np.float32)[:, None, None]
    std = np.asarray(rule.pixel_std, np.float32)[:, None, None]
    sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    step = max(int(rule.size_divisibility), 1)
    height = -(-max(size[0] for size in sizes) // step) * step
    width = -(-max(size[1] for size in sizes) // step) * step
    batch = np.zeros((len(images), images[0].shape[0], height, width), np.float32)
    for index, (image, (h, w)) in enumerate(zip(images, sizes, strict=True)):
        batch[index, :, :h, :w] = (image - mean) / std
    return batch, sizes


class DeployMember:
    """One exported config: its networks and input rule (a
    :class:`~uwm_d2.inference.volume.Member`)."""

    def __init__(self, info: ExportInfo, member: ExportedMember) -> None:
        self.name = member.name
        self.weight = member.weight
        self.rule: MergeRule = member.merge_rule
        self.inputs = member.inputs
        self.interface = member.interface
        self.offsets = tuple(member.inputs.slice_offsets)
        self.pixel_spacing_mm = float(member.inputs.pixel_spacing_mm)
        self.networks = [
            load_network(info.network_path(n), info.network_format, self.interface, self.inputs)
            for n in member.networks
        ]
        self.reader: Reader = SliceLRU(LRU_BYTES)

    @property
    def network_count(self) -> int:
        return len(self.networks)

    def prepare(self, records: Sequence[dict], reader: Reader | None) -> list[SliceInput]:
        """Each record's 2.5D input (window, model range), resized for the test."""
        prepared = []
        for record in records:
            image = build_model_input(
                record["neighbor_files"],
                self.inputs.low_percentile,
                self.inputs.high_percentile,
                reader or self.reader,
            )
            height, width = int(record["height"]), int(record["width"])
            if image.shape[:2] != (height, width):
                raise UWMInputError(
                    f"scan {record['file_name']!r} is {image.shape[1]}x{image.shape[0]} (W x H), "
                    f"but its record says {width}x{height}"
                )
            resized = resize_to_test_size(
                image, self.inputs.min_size_test, self.inputs.max_size_test
            )
            prepared.append(SliceInput(resized.transpose(2, 0, 1), height, width))
        return prepared

    def run(self, network: int, inputs: list[SliceInput], flip: bool) -> np.ndarray:
        """``(B, C, H, W)`` maps of one network (on the flipped inputs if ``flip``)."""
        images = [item.image[..., ::-1] if flip else item.image for item in inputs]
        if self.interface == "semantic":
            batch, sizes = normalized_batch(images, self.inputs)
            (logits,) = self.networks[network]([batch])
            maps = [
                class_maps(
                    self.rule,
                    semantic=semantic_probabilities(logit, size, item.height, item.width),
                )
                for logit, size, item in zip(logits, sizes, inputs, strict=True)
            ]
            return np.stack(maps)
        pairs = zip(images, inputs, strict=True)
        return np.stack([self._instance_maps(network, image, item) for image, item in pairs])

    def _instance_maps(self, network: int, image: np.ndarray, item: SliceInput) -> np.ndarray:
        size = np.array([item.height, item.width], np.int64)
        outputs = self.networks[network]([np.ascontiguousarray(image, np.float32), size])
        masks, scores, classes = outputs[:3]
        semantic = None
        if self.interface == "instances+semantic":
            semantic = semantic_probabilities(
                outputs[3][0], image.shape[1:], item.height, item.width
            )
        return class_maps(
            self.rule,
            instances=(masks, scores, classes.astype(np.int64, copy=False)),
            semantic=semantic,
            image_shape=(item.height, item.width),
        )


class DeployPredictor(EnsemblePredictor):
    """Exported models as an ensemble (several folders, or one folder of several members).

    Args:
        exports: read export folders (:func:`~uwm_d2.deploy.export_format.read_export`); every
            member of every folder joins, with its weight.
        tta: flip TTA; ``None`` takes the first folder's ``tta`` setting.
        batch_size: slices per network run (semantic networks take batches; instance networks
            run one slice at a time).
    """

    def __init__(
        self, exports: Sequence[ExportInfo], tta: bool | None = None, batch_size: int | None = None
    ) -> None:
        if not exports:
            raise UWMInputError("give at least one export folder")
        members = [DeployMember(info, member) for info in exports for member in info.members]
        super().__init__(
            members,
            rule=exports[0].merge_rule,
            tta=exports[0].tta if tta is None else tta,
            batch_size=batch_size or 1,
        )
        self.exports = list(exports)


def load_exported(
    folders: Sequence[str | os.PathLike],
    tta: bool | None = None,
    batch_size: int | None = None,
    overrides: Sequence[str] = (),
) -> DeployPredictor:
    """A :class:`DeployPredictor` from export folders (checked, see ``read_export``).

    ``overrides`` are a tool's ``KEY VALUE`` config overrides, which an export has no config
    for: any is refused (the network and its rules were fixed at export).

    Raises:
        UWMInputError: overrides were given; a folder is missing, incomplete, of a newer format,
            or holds a network that its runtime refuses or that does not match its metadata.
    """
    if overrides:
        raise UWMInputError(
            f"config overrides ({' '.join(overrides)}) do not apply to exported models: their "
            "settings were fixed at export (export again with the overrides)"
        )
    return DeployPredictor([read_export(folder) for folder in folders], tta, batch_size)


def describe(predictor: DeployPredictor) -> dict[str, Any]:
    """What the predictor runs, for logs: folders, members, networks, the rule."""
    return {
        "folders": [str(info.folder) for info in predictor.exports],
        "members": [
            {"name": m.name, "networks": m.network_count, "weight": m.weight}
            for m in predictor.members
        ],
        "tta": predictor.tta,
        "merge_rule": predictor.rule.as_dict(),
    }
