"""Batched inference over whole case-days: flip TTA, checkpoint ensembles, ensembles across kinds.

An ensemble is a list of :class:`EnsembleMember`: a config (its model kind, input size, 2.5D
offsets, instance thresholds) with one or more checkpoints and a weight. Each slice goes through
every member's *test-time* :class:`~uwm_d2.data.mapper.UWMDatasetMapper` (the same 2.5D stacking,
normalization and resizing as validation during training) and every member's models, in batches;
each pass's soft output becomes per-class probability maps through the one probability path
(:func:`~uwm_d2.modeling.probabilities.class_probabilities`, with the member's own rule for
instance selection and kind weighting). Maps are averaged over flip TTA and checkpoints within a
member, then over members by their weights, and cut by the ensemble's merge rule
(:meth:`~uwm_d2.core.merge.MergeRule.volume_masks`, with the 3D clean-up): with one model and no
TTA this is exactly what the evaluator scores during training.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.weights import split_weights
from uwm_d2.data.inputs import group_by_case_day, neighbor_files
from uwm_d2.data.mapper import UWMDatasetMapper
from uwm_d2.engine.checkpoint import load_checkpoint
from uwm_d2.modeling.probabilities import check_soft_model, class_probabilities

logger = logging.getLogger(__name__)


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
    """One config's models in an ensemble.

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


class VolumePredictor:
    """Predict per-class masks (or probabilities) for whole case-days with an ensemble.

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
        if batch_size < 1:
            raise UWMInputError(f"batch size must be at least 1, got {batch_size}")
        self.members = list(members)
        self.rule = rule or self.members[0].rule
        self.tta = tta
        self.batch_size = batch_size

    @torch.no_grad()
    def _member_maps(
        self,
        member: EnsembleMember,
        records: Sequence[dict],
        reader: Callable[[Path], np.ndarray] | None = None,
    ) -> np.ndarray:
        """``(B, C, H, W)`` mean probability maps of one member over TTA and its checkpoints."""
        mapper = member.mapper
        if reader is not None:
            # A shallow copy for this call: the member's own mapper keeps reading files.
            mapper = copy.copy(mapper)
            mapper.reader = reader
        inputs = [mapper(dict(record)) for record in records]
        flips = (False, True) if self.tta else (False,)
        total: np.ndarray | None = None
        for model in member.models:
            for flip in flips:
                batch = (
                    [{**item, "image": item["image"].flip(-1)} for item in inputs]
                    if flip
                    else inputs
                )
                maps = [
                    class_probabilities(output, member.rule) for output in model.soft_outputs(batch)
                ]
                stacked = np.stack([m[..., ::-1] if flip else m for m in maps])
                total = stacked if total is None else total + stacked
        return total / (len(member.models) * len(flips))

    def predict_probabilities(
        self, records: Sequence[dict], reader: Callable[[Path], np.ndarray] | None = None
    ) -> np.ndarray:
        """Probabilities of one case-day: ``(D, C, H, W)`` float32, slices in the records' order.

        ``records`` are one case-day's slices sorted by slice number, each with ``file_name``,
        ``height`` and ``width`` (see :func:`scan_records`); every member takes its own 2.5D
        neighbours from them. ``reader`` (default: the mappers' own, 16-bit PNG files) reads one
        ``file_name`` into an ``(H, W)`` array, e.g. a slice of an in-memory NIfTI volume.
        """
        paths = [record["file_name"] for record in records]
        weights = sum(member.weight for member in self.members)
        chunks = []
        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            average: np.ndarray | None = None
            for member in self.members:
                with_neighbours = [
                    {**record, "neighbor_files": neighbor_files(paths, start + i, member.offsets)}
                    for i, record in enumerate(batch)
                ]
                maps = self._member_maps(member, with_neighbours, reader)
                maps *= member.weight / weights
                average = maps if average is None else average + maps
            chunks.append(average.astype(np.float32, copy=False))
        return np.concatenate(chunks)

    def predict_case_day(
        self, records: Sequence[dict], reader: Callable[[Path], np.ndarray] | None = None
    ) -> np.ndarray:
        """Masks of one case-day: ``(D, C, H, W)`` bool, cut and cleaned by the ensemble's rule."""
        return self.rule.volume_masks(self.predict_probabilities(records, reader))


def scan_records(data_root: str | os.PathLike, scans: Any) -> dict[str, list[dict]]:
    """Slice records per case-day (sorted by slice) from an ``index_scans`` frame."""
    root = Path(data_root)
    records = [
        {
            "file_name": str(root / row.path),
            "slice_id": row.id,
            "case_day": row.case_day,
            "slice": int(row.slice),
            "height": int(row.height),
            "width": int(row.width),
        }
        for row in scans.itertuples(index=False)
    ]
    return {case_day: list(group) for case_day, group in group_by_case_day(records).items()}
