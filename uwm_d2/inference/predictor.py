"""Batched inference of PyTorch models over whole case-days: checkpoint and cross-kind ensembles.

An ensemble is a list of :class:`EnsembleMember`: a config (its model kind, input size, 2.5D
offsets, instance thresholds) with one or more checkpoints and a weight. Each slice goes through
every member's *test-time* :class:`~uwm_d2.data.mapper.UWMDatasetMapper` (the same 2.5D stacking,
normalization and resizing as validation during training) and every member's models, in batches;
each pass's soft output becomes per-class probability maps through the one probability path
(:func:`~uwm_d2.modeling.probabilities.class_probabilities`, with the member's own rule for
instance selection and kind weighting). The batching, flip TTA, averaging and the cut are
:class:`~uwm_d2.inference.volume.EnsemblePredictor`'s, shared with the exported-model predictor:
with one model and no TTA this is exactly what the evaluator scores during training.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.weights import split_weights
from uwm_d2.data.mapper import UWMDatasetMapper
from uwm_d2.engine.checkpoint import load_checkpoint
from uwm_d2.inference.volume import EnsemblePredictor, scan_records
from uwm_d2.modeling.probabilities import check_soft_model, class_probabilities

logger = logging.getLogger(__name__)

__all__ = [
    "EnsembleMember",
    "VolumePredictor",
    "build_models",
    "default_batch_size",
    "scan_records",
    "split_weights",
]


def build_models(cfg: CfgNode) -> list[torch.nn.Module]:
    """One model in eval mode per checkpoint listed in ``MODEL.WEIGHTS`` (strictly loaded)."""
    models = []
    for path in split_weights(cfg.MODEL.WEIGHTS):
        model = build_model(cfg)
        check_soft_model(model, cfg.MODEL.META_ARCHITECTURE)
        load_checkpoint(model, path)
        model.eval()
        models.append(model)
    return models


def default_batch_size(device: str) -> int:
    """Slices per forward pass: 8 on a GPU, 1 on the CPU.

    On the CPU a batch only adds memory traffic: measured with ``benchmarks/bench_infer.py``
    (2 cores), the trained Mask R-CNN demo model ran slower at batch 8 than one slice at a time,
    and the semantic one equally fast.
    """
    return 8 if str(device).startswith("cuda") else 1


@dataclass
class EnsembleMember:
    """One config's models in an ensemble (a :class:`~uwm_d2.inference.volume.Member`).

    Args:
        cfg: a frozen config (``add_uwm_config`` applied).
        models: its models in eval mode (one per checkpoint; see :func:`build_models`).
        weight: the member's share of the ensemble average (> 0).
        name: shown in logs (the config file, say).
    """

    cfg: CfgNode
    models: list[torch.nn.Module]
    weight: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        if not self.models:
            raise UWMInputError(f"ensemble member {self.name or '?'} has no checkpoint")
        if not self.weight > 0:
            raise UWMInputError(f"ensemble member {self.name or '?'}: weight must be > 0")
        self.rule = MergeRule.from_cfg(self.cfg)
        self.mapper = UWMDatasetMapper(self.cfg, is_train=False)
        self.offsets = tuple(int(offset) for offset in self.cfg.UWM.SLICE_OFFSETS)
        self.pixel_spacing_mm = float(self.cfg.UWM.PIXEL_SPACING_MM)

    @property
    def network_count(self) -> int:
        return len(self.models)

    def prepare(
        self, records: Sequence[dict], reader: Callable[[Path], np.ndarray] | None
    ) -> list[dict]:
        """The test mapper's outputs (2.5D stack, window, test-time resize) for ``records``."""
        mapper = self.mapper
        if reader is not None:
            # A shallow copy for this call: the member's own mapper keeps reading files.
            mapper = copy.copy(mapper)
            mapper.reader = reader
        return [mapper(dict(record)) for record in records]

    @torch.no_grad()
    def run(self, network: int, inputs: list[dict], flip: bool) -> np.ndarray:
        """``(B, C, H, W)`` maps of model ``network`` through the one probability path."""
        batch = [{**item, "image": item["image"].flip(-1)} for item in inputs] if flip else inputs
        outputs = self.models[network].soft_outputs(batch)
        return np.stack([class_probabilities(output, self.rule) for output in outputs])


class VolumePredictor(EnsemblePredictor):
    """An :class:`~uwm_d2.inference.volume.EnsemblePredictor` of PyTorch models.

    Args:
        members: one or more :class:`EnsembleMember`.
        rule: the ensemble's merge rule (cut and 3D clean-up); the first member's by default.
        tta: also run every model on the horizontally flipped slices and average.
        batch_size: slices per forward pass; default :func:`default_batch_size` of the first
            member's device.
    """

    def __init__(
        self,
        members: Sequence[EnsembleMember],
        rule: MergeRule | None = None,
        tta: bool = False,
        batch_size: int | None = None,
    ) -> None:
        if not members:
            raise UWMInputError("an ensemble needs at least one member")
        if batch_size is None:
            batch_size = default_batch_size(members[0].cfg.MODEL.DEVICE)
        super().__init__(members, rule=rule, tta=tta, batch_size=batch_size)
