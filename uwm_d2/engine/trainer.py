"""``UWMTrainer``: detectron2's ``DefaultTrainer`` with this project's data, evaluation and hooks.

It overrides only what differs (detectron2's project convention):

* ``build_train_loader``: :class:`~uwm_d2.data.mapper.UWMDatasetMapper` (16-bit, 2.5D,
  augmentation), empty slices kept, :class:`~uwm_d2.data.samplers.EmptySliceRatioSampler` when
  ``DATALOADER.SAMPLER_TRAIN`` names it;
* ``build_test_loader`` / ``build_evaluator`` / ``test``: the test-time mapper,
  :class:`~uwm_d2.evaluation.evaluator.UWMEvaluator` (plus ``COCOEvaluator`` when
  ``UWM.EVAL.COCO_AP``), masks cut at ``UWM.EVAL.MASK_THRESHOLD`` as the submission does;
* ``build_hooks``: detectron2's hooks (``EvalHook`` every ``TEST.EVAL_PERIOD``) plus
  ``BestCheckpointer`` on ``uwm/score`` (``model_best.pth``) and the validation loss every
  ``UWM.VAL_LOSS_PERIOD`` iterations;
* a NaN/Inf loss stops training with one line naming the iteration and the last good checkpoint
  (:class:`TrainingDivergedError`), instead of a traceback;
* ``SOLVER.AMP.ENABLED`` is honoured on CUDA only (turned off with a warning elsewhere);
* ``resume_or_load(resume=True)`` trims ``metrics.json`` rows at or after the iteration it resumes
  from (rows the interrupted run logged after its last checkpoint), so every iteration appears once.
"""

from __future__ import annotations

import json
import logging
import math
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
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from uwm_d2.config import EMPTY_RATIO_SAMPLER, check_device
from uwm_d2.core.errors import UWMInputError
from uwm_d2.data.mapper import UWMDatasetMapper
from uwm_d2.data.samplers import EmptySliceRatioSampler
from uwm_d2.engine.checkpoint import AtomicCheckpointer
from uwm_d2.engine.hooks import ValidationLoss
from uwm_d2.evaluation.evaluator import UWMEvaluator
from uwm_d2.evaluation.postprocess import ThresholdedMaskInference

logger = logging.getLogger(__name__)

#: The metric ``BestCheckpointer`` maximizes.
BEST_METRIC = "uwm/score"
_REMOTE_PREFIXES = ("detectron2://", "http://", "https://", "catalog://", "s3://", "gs://")


class TrainingDivergedError(UWMInputError):
    """The loss became NaN/Inf: a one-line stop naming the iteration and the last checkpoint."""


class _DropDivergedTraceback(logging.Filter):
    """Keep detectron2's "Exception during training" traceback out of the log for a divergence
    (our one-line message says everything); any other exception still logs its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], TrainingDivergedError))


def prepare_cfg(cfg: CfgNode) -> CfgNode:
    """Check ``MODEL.DEVICE`` and turn AMP off off-CUDA; returns ``cfg`` or a frozen copy."""
    check_device(cfg)
    if not cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN":
        logger.warning(
            "MODEL.RESNETS.NORM FrozenBN with no MODEL.WEIGHTS: from scratch this diverges; use BN "
            "or GN (configs/mask_rcnn_R_50_FPN_gn_scratch_uwm.yaml)"
        )
    if cfg.SOLVER.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        logger.warning(
            f"SOLVER.AMP.ENABLED needs CUDA; training in full precision on {cfg.MODEL.DEVICE}"
        )
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.AMP.ENABLED = False
        cfg.freeze()
    return cfg


def trim_metrics_json(path: str | os.PathLike, start_iter: int) -> int:
    """Drop the rows of a detectron2 ``metrics.json`` with ``iteration >= start_iter``, in place.

    In place (not replaced) because the run's ``JSONWriter`` already holds the file open in append
    mode; unreadable lines (a row cut short by a crash) go too. Returns the number of rows dropped.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open("r+") as handle:
        lines = handle.read().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("iteration", -1) < start_iter:
                kept.append(line)
        if len(kept) != len(lines):
            handle.seek(0)
            handle.write("".join(line + "\n" for line in kept))
            handle.truncate()
    return len(lines) - len(kept)


def best_metric(path: str | os.PathLike, key: str) -> tuple[float, int] | None:
    """``(value, iteration)`` of the largest finite ``key`` in a ``metrics.json``, or ``None``."""
    path = Path(path)
    if not path.is_file():
        return None
    best = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            value, iteration = float(row[key]), int(row["iteration"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(value) and (best is None or value > best[0]):
            best = (value, iteration)
    return best


class UWMTrainer(DefaultTrainer):
    """``DefaultTrainer`` for the UW-Madison GI tract data (see the module docstring)."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(prepare_cfg(cfg))

    def state_dict(self) -> dict[str, Any]:
        """The checkpointed trainer state, with the optimizer's (momentum, AMP scaler) added.

        detectron2 0.6's ``DefaultTrainer`` saves only the iteration and the hooks (scheduler):
        ``--resume`` would restart SGD momentum from zero. Plain tensors and numbers, so the
        checkpoint still loads with ``torch.load(weights_only=True)``.
        """
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "_trainer" in state:  # checkpoints written before this key existed lack it
            self._trainer.load_state_dict(state["_trainer"])

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
            # use_fast_impl=False: the fast COCOeval needs detectron2's compiled _C.
            evaluators.append(
                COCOEvaluator(
                    dataset_name, tasks=("segm",), output_dir=output_folder, use_fast_impl=False
                )
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def test(
        cls,
        cfg: CfgNode,
        model: torch.nn.Module,
        evaluators: list[DatasetEvaluator] | DatasetEvaluator | None = None,
    ) -> dict[str, Any]:
        """detectron2's ``test``, with masks cut at ``UWM.EVAL.MASK_THRESHOLD`` (not 0.5)."""
        wrapped = ThresholdedMaskInference(model, cfg.UWM.EVAL.MASK_THRESHOLD)
        wrapped.train(model.training)  # inference_context restores this mode afterwards
        return super().test(cfg, wrapped, evaluators)

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

    def build_hooks(self) -> list[hooks.HookBase]:
        """detectron2's hooks, plus BestCheckpointer right after EvalHook (it reads the results
        EvalHook stores) and the validation loss before the writers."""
        # Before any hook holds it: swap in the checkpointer that writes files atomically.
        if not isinstance(self.checkpointer, AtomicCheckpointer):
            plain = self.checkpointer
            self.checkpointer = AtomicCheckpointer(
                plain.model,
                plain.save_dir,
                save_to_disk=plain.save_to_disk,
                **plain.checkpointables,
            )
        hook_list = [hook for hook in super().build_hooks() if hook is not None]
        after_eval = (
            next(i for i, hook in enumerate(hook_list) if isinstance(hook, hooks.EvalHook)) + 1
        )
        extra: list[hooks.HookBase] = []
        if comm.is_main_process():
            extra.append(
                hooks.BestCheckpointer(
                    self.cfg.TEST.EVAL_PERIOD, self.checkpointer, BEST_METRIC, mode="max"
                )
            )
        if self.cfg.UWM.VAL_LOSS_PERIOD > 0:
            loader = self.build_validation_loss_loader(self.cfg)
            if loader is not None:
                extra.append(ValidationLoss(self.cfg.UWM.VAL_LOSS_PERIOD, loader))
        return hook_list[:after_eval] + extra + hook_list[after_eval:]

    def resume_or_load(self, resume: bool = True) -> None:
        """detectron2's ``resume_or_load``, with a one-line error for unusable ``MODEL.WEIGHTS``
        and ``metrics.json`` trimmed to the iterations before the one training resumes from."""
        weights = self.cfg.MODEL.WEIGHTS
        resuming = resume and self.checkpointer.has_checkpoint()
        local = weights and not weights.startswith(_REMOTE_PREFIXES)
        if local and not resuming and not Path(weights).is_file():
            raise UWMInputError(f"MODEL.WEIGHTS {weights!r} does not exist")
        try:
            super().resume_or_load(resume=resume)
        except OSError as error:  # a download that fails (offline) or an unreadable file
            raise UWMInputError(
                f"cannot load MODEL.WEIGHTS {weights!r} ({error}); offline, train from scratch "
                "with configs/mask_rcnn_R_50_FPN_gn_scratch_uwm.yaml"
            ) from error
        if resuming and comm.is_main_process():
            metrics = Path(self.cfg.OUTPUT_DIR) / "metrics.json"
            self._restore_best(metrics)
            dropped = trim_metrics_json(metrics, self.start_iter)
            if dropped:
                logger.info(
                    f"metrics.json: dropped {dropped} rows at or after iteration {self.start_iter}"
                    " (logged after the last checkpoint of the interrupted run)"
                )

    def _restore_best(self, metrics: Path) -> None:
        """Seed ``BestCheckpointer`` with the best ``uwm/score`` of the run being resumed, so a
        worse model never replaces its ``model_best.pth`` (detectron2 starts the hook afresh)."""
        best = best_metric(metrics, BEST_METRIC)
        if best is None:
            return
        for hook in self._hooks:
            if isinstance(hook, hooks.BestCheckpointer):
                hook.best_metric, hook.best_iter = best
                logger.info(
                    f"resumed run's best {BEST_METRIC}: {best[0]:.5f} @ iteration {best[1]}"
                )

    def run_step(self) -> None:
        try:
            super().run_step()
        except FloatingPointError as error:
            has_last = self.checkpointer.has_checkpoint()
            last = self.checkpointer.get_checkpoint_file() if has_last else "none saved yet"
            reason = " ".join(str(error).splitlines()[0].split())
            # Not "--resume": resuming restores the scheduler, and with it the old learning rate.
            raise TrainingDivergedError(
                f"training diverged at iteration {self.iter} ({reason}); last good checkpoint: "
                f"{last}; lower SOLVER.BASE_LR (or check the data) and start again, from that "
                "checkpoint with MODEL.WEIGHTS if you like"
            ) from None

    def train(self) -> Any:
        quiet = _DropDivergedTraceback()
        train_loop_logger = logging.getLogger("detectron2.engine.train_loop")
        train_loop_logger.addFilter(quiet)
        try:
            return super().train()
        finally:
            train_loop_logger.removeFilter(quiet)
