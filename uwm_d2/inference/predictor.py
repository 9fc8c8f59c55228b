"""Batched Mask R-CNN inference over whole case-days, with flip TTA and checkpoint ensembles.

Each slice goes through the *test-time* :class:`~uwm_d2.data.mapper.UWMDatasetMapper`, the same
2.5D stacking, normalization and resizing as validation during training. Models run on batches of
slices (not one ``DefaultPredictor`` call per image). For every pass (a checkpoint, optionally its
horizontally flipped twin) the instances become per-class probability maps through
:func:`uwm_d2.core.merge.class_probability_maps`; maps are averaged over passes, then cut at the
mask threshold: with one pass this is exactly :func:`uwm_d2.core.merge.merge_instances`, the rule
the evaluator uses, so the validation score is the score of what gets submitted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import class_probability_maps, remove_single_slice_components
from uwm_d2.data.inputs import attach_neighbor_files, group_by_case_day
from uwm_d2.data.mapper import UWMDatasetMapper

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeSettings:
    """The thresholds of the merge rule, read from ``cfg.UWM.EVAL``."""

    score_thresholds: tuple[float, ...]
    mask_threshold: float
    min_area: int
    cleanup_3d: bool

    @classmethod
    def from_config(cls, cfg: CfgNode) -> MergeSettings:
        return cls(
            tuple(float(value) for value in cfg.UWM.EVAL.SCORE_THRESHOLDS),
            float(cfg.UWM.EVAL.MASK_THRESHOLD),
            int(cfg.UWM.EVAL.MIN_AREA),
            bool(cfg.UWM.EVAL.CLEANUP_3D),
        )


def split_weights(weights: str) -> list[str]:
    """``MODEL.WEIGHTS`` may list several checkpoints, comma-separated, for a fold ensemble."""
    paths = [path.strip() for path in weights.split(",") if path.strip()]
    if not paths:
        raise UWMInputError("no checkpoint given: set MODEL.WEIGHTS (comma-separate an ensemble)")
    return paths


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load ``path`` into ``model``, failing with one line if it does not fit the config.

    detectron2's own loader only *warns* about missing keys and shape mismatches (it is built for
    fine-tuning from other datasets); for inference that would silently run a half-random model.
    """
    if not path.startswith("detectron2://") and not Path(path).is_file():
        raise UWMInputError(f"checkpoint {path!r} does not exist")
    checkpointer = DetectionCheckpointer(model)
    try:
        loaded = checkpointer._load_file(path)  # torch.load with weights_only where allowed
    except Exception as error:  # corrupt or not a checkpoint: one line naming the file
        raise UWMInputError(f"checkpoint {path!r} cannot be read: {error}") from None
    state = loaded.get("model", loaded)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise UWMInputError(f"checkpoint {path!r} does not fit the config: no {name!r}")
        shape = tuple(getattr(state[name], "shape", ()))
        if shape != tuple(tensor.shape):
            raise UWMInputError(
                f"checkpoint {path!r} does not fit the config: {name} has shape {shape}, "
                f"the config builds {tuple(tensor.shape)}"
            )
    checkpointer.load(path)


def build_models(cfg: CfgNode) -> list[torch.nn.Module]:
    """One model in eval mode per checkpoint listed in ``MODEL.WEIGHTS``."""
    models = []
    for path in split_weights(cfg.MODEL.WEIGHTS):
        model = build_model(cfg)
        load_checkpoint(model, path)
        model.eval()
        models.append(model)
    return models


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class VolumePredictor:
    """Predict per-class masks for whole case-days with one or more models.

    Args:
        cfg: a frozen config (``add_uwm_config`` applied).
        models: models from :func:`build_models` (one per checkpoint).
        tta: also run each model on the horizontally flipped slices and average.
        batch_size: slices per forward pass.
    """

    def __init__(
        self,
        cfg: CfgNode,
        models: Sequence[torch.nn.Module],
        tta: bool = False,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise UWMInputError(f"batch size must be at least 1, got {batch_size}")
        self.cfg = cfg
        self.models = list(models)
        self.tta = tta
        self.batch_size = batch_size
        self.settings = MergeSettings.from_config(cfg)
        self.mapper = UWMDatasetMapper(cfg, is_train=False)
        self.offsets = tuple(int(offset) for offset in cfg.UWM.SLICE_OFFSETS)

    @torch.no_grad()
    def _class_maps(self, model: torch.nn.Module, inputs: list[dict], flip: bool) -> np.ndarray:
        """``(B, 3, H, W)`` per-class probability maps of one model pass over a batch."""
        if flip:
            inputs = [{**item, "image": item["image"].flip(-1)} for item in inputs]
        instances = model.inference(inputs, do_postprocess=False)
        maps = []
        for item, result in zip(inputs, instances, strict=True):
            height, width = int(item["height"]), int(item["width"])
            # mask_threshold < 0: paste soft masks (uint8, probability * 255) at the scan's size.
            pasted = detector_postprocess(result, height, width, mask_threshold=-1.0).to("cpu")
            probabilities = pasted.pred_masks.numpy().astype(np.float32) / 255.0
            class_maps = class_probability_maps(
                probabilities,
                pasted.scores.numpy(),
                pasted.pred_classes.numpy(),
                self.settings.score_thresholds,
                self.settings.mask_threshold,
                self.settings.min_area,
                image_shape=(height, width),
            )
            maps.append(class_maps[..., ::-1] if flip else class_maps)
        return np.stack(maps)

    def predict_case_day(self, records: Sequence[dict]) -> np.ndarray:
        """Masks of one case-day: ``(D, 3, H, W)`` bool, slices in the records' order.

        ``records`` are one case-day's slices sorted by slice number, each with ``file_name``,
        ``neighbor_files``, ``height`` and ``width`` (see :func:`scan_records`).
        """
        probabilities = []
        for batch in _batches(records, self.batch_size):
            inputs = [self.mapper(dict(record)) for record in batch]
            passes = [
                self._class_maps(model, inputs, flip)
                for model in self.models
                for flip in ((False, True) if self.tta else (False,))
            ]
            probabilities.append(np.mean(passes, axis=0))
        masks = np.concatenate(probabilities) >= self.settings.mask_threshold
        if self.settings.cleanup_3d:
            for class_index in range(masks.shape[1]):
                masks[:, class_index] = remove_single_slice_components(masks[:, class_index])
        return masks


def scan_records(
    data_root: str | os.PathLike, scans, offsets: Sequence[int]
) -> dict[str, list[dict]]:
    """Slice records per case-day from an :func:`~uwm_d2.core.layout.index_scans` frame."""
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
    attach_neighbor_files(records, offsets)
    return {case_day: list(group) for case_day, group in group_by_case_day(records).items()}
