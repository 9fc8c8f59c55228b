"""``UWMTrainer``: the trainer of this project's data, evaluation and hooks.

Like detectron2's own project trainers (PointRend's, Panoptic-DeepLab's), it overrides only what
differs; detectron2 0.6's shortcomings are patched once in
:class:`~uwm_d2.engine.base_trainer.PatchedDefaultTrainer`:

* ``build_train_loader``: :class:`~uwm_d2.data.mapper.UWMDatasetMapper` (16-bit, 2.5D,
  augmentation), empty slices kept, :class:`~uwm_d2.data.samplers.EmptySliceRatioSampler` when
  ``DATALOADER.SAMPLER_TRAIN`` names it;
* ``build_test_loader`` / ``build_evaluator`` / ``test``: the test-time mapper and
  :class:`~uwm_d2.evaluation.evaluator.UWMEvaluator` over the model's soft outputs (the
  submission's probability path and merge rule), plus ``COCOEvaluator`` when ``UWM.EVAL.COCO_AP``;
* ``build_hooks``: ``model_best.pth`` (weights only) on ``uwm/score`` after each evaluation, and
  the validation loss every ``UWM.VAL_LOSS_PERIOD`` iterations;
* ``build_optimizer``: detectron2's SGD, or AdamW when ``UWM.OPTIMIZER`` says so (the same
  parameter groups and ``SOLVER.CLIP_GRADIENTS``);
* :meth:`evaluate_checkpoint`: what ``--eval-only`` runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler
from detectron2.engine import hooks
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm

from uwm_d2.config import EMPTY_RATIO_SAMPLER
from uwm_d2.core.errors import UWMInputError
from uwm_d2.data.mapper import UWMDatasetMapper
from uwm_d2.data.samplers import EmptySliceRatioSampler
from uwm_d2.engine.base_trainer import PatchedDefaultTrainer
from uwm_d2.engine.checkpoint import AtomicCheckpointer, DataOnlyCheckpointer, load_checkpoint
from uwm_d2.engine.hooks import ResumableBestCheckpointer, ValidationLoss
from uwm_d2.evaluation.evaluator import ThresholdedCOCOEvaluator, UWMEvaluator
from uwm_d2.modeling.probabilities import SoftOutputs

logger = logging.getLogger(__name__)

#: The metric the best checkpoint maximizes.
BEST_METRIC = "uwm/score"


class UWMTrainer(PatchedDefaultTrainer):
    """The trainer of the UW-Madison GI tract data (see the module docstring)."""

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """SGD as detectron2 builds it, or AdamW (``UWM.OPTIMIZER``): from scratch on a small
        budget, AdamW reaches in a few hundred iterations what SGD needs thousands for."""
        if cfg.UWM.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        sampler = None  # detectron2 builds the sampler DATALOADER.SAMPLER_TRAIN names
        if cfg.DATALOADER.SAMPLER_TRAIN == EMPTY_RATIO_SAMPLER:
            sampler = EmptySliceRatioSampler.from_dataset(dataset, cfg.UWM.EMPTY_SLICE_RATIO)
            logger.info(
                f"{EMPTY_RATIO_SAMPLER}: {sampler.epoch_size} of {len(dataset)} slices per epoch, "
                f"{sampler.num_empty} of them empty (UWM.EMPTY_SLICE_RATIO "
                f"{cfg.UWM.EMPTY_SLICE_RATIO})"
            )
        mapper = UWMDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset, sampler=sampler)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        return build_detection_test_loader(
            cfg, dataset_name, mapper=UWMDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluators: list[DatasetEvaluator] = [
            UWMEvaluator.from_config(cfg, dataset_name, output_folder)
        ]
        if cfg.UWM.EVAL.COCO_AP:
            evaluators.append(
                ThresholdedCOCOEvaluator.from_config(cfg, dataset_name, output_folder)
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def test(
        cls,
        cfg: CfgNode,
        model: torch.nn.Module,
        evaluators: list[DatasetEvaluator] | DatasetEvaluator | None = None,
    ) -> dict[str, Any]:
        """detectron2's ``test`` over the model's soft outputs (probabilities, not yet cut)."""
        wrapped = SoftOutputs(model)
        wrapped.train(model.training)  # inference_context restores this mode afterwards
        return super().test(cfg, wrapped, evaluators)

    def build_hooks(self) -> list[Any]:
        """The base hooks, with the best checkpoint right after ``EvalHook`` (it reads the
        results ``EvalHook`` stores) and the validation loss before the writers."""
        hook_list = super().build_hooks()
        after_eval = next(
            index for index, hook in enumerate(hook_list) if isinstance(hook, hooks.EvalHook)
        )
        extra = []
        if comm.is_main_process():
            # Weights only and never tagged "last": the file to ship, not the one to resume.
            weights_only = AtomicCheckpointer(self.model, self.cfg.OUTPUT_DIR, tag_last=False)
            extra.append(
                ResumableBestCheckpointer(
                    self.cfg.TEST.EVAL_PERIOD,
                    weights_only,
                    BEST_METRIC,
                    mode="max",
                    metrics_json=Path(self.cfg.OUTPUT_DIR) / "metrics.json",
                )
            )
        if self.cfg.UWM.VAL_LOSS_PERIOD > 0:
            loader = self.build_validation_loss_loader(self.cfg)
            if loader is not None:
                extra.append(ValidationLoss(self.cfg.UWM.VAL_LOSS_PERIOD, loader))
        return hook_list[: after_eval + 1] + extra + hook_list[after_eval + 1 :]

    @classmethod
    def build_validation_loss_loader(cls, cfg: CfgNode) -> torch.utils.data.DataLoader | None:
        """Batches of a fixed, seeded subset of ``DATASETS.TEST[0]`` with annotations (no
        augmentation), sharded over the ranks; ``None`` without a test dataset."""
        if not cfg.DATASETS.TEST:
            return None
        records = DatasetCatalog.get(cfg.DATASETS.TEST[0])
        if not records:
            return None
        count = min(cfg.UWM.VAL_LOSS_IMAGES, len(records))
        chosen = np.sort(np.random.default_rng(0).choice(len(records), count, replace=False))
        mapper = UWMDatasetMapper(cfg, is_train=False, keep_annotations=True)
        dataset = MapDataset(DatasetFromList([records[i] for i in chosen], copy=False), mapper)
        batch_size = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
        batches = torch.utils.data.BatchSampler(InferenceSampler(len(dataset)), batch_size, False)
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            collate_fn=trivial_batch_collator,
        )

    @classmethod
    def evaluate_checkpoint(cls, cfg: CfgNode, resume: bool = False) -> dict[str, Any]:
        """``--eval-only``: score a checkpoint on ``DATASETS.TEST``.

        The checkpoint is ``MODEL.WEIGHTS``, or with ``resume`` the run's last checkpoint in
        ``OUTPUT_DIR`` (as detectron2 does). Loaded strictly: detectron2's loader only warns
        about a checkpoint that does not fit and would evaluate a half-random model.

        Raises:
            UWMInputError: no checkpoint, or one that cannot be read or does not fit.
        """
        model = cls.build_model(cfg)
        last = DataOnlyCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        weights = last.get_checkpoint_file() if resume and last.has_checkpoint() else ""
        weights = weights or cfg.MODEL.WEIGHTS
        if not weights:
            raise UWMInputError("--eval-only needs a checkpoint: set MODEL.WEIGHTS")
        load_checkpoint(model, weights)
        return cls.test(cfg, model)
