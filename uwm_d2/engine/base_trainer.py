"""``PatchedDefaultTrainer``: detectron2 0.6's ``DefaultTrainer`` with what it lacks or gets wrong.

Nothing here is about this project's data or metric (that is :class:`~uwm_d2.engine.trainer.
UWMTrainer`, which reads like detectron2's own project trainers). What is patched, and why:

* **optimizer state in checkpoints**: 0.6 saves only the iteration and the hooks (scheduler), so
  ``--resume`` restarted SGD momentum (and the AMP loss scale) from zero;
* **checkpoints**: written atomically and read as data only (:mod:`uwm_d2.engine.checkpoint`); only
  the newest ``UWM.KEEP_CHECKPOINTS`` periodic checkpoints stay on disk;
* **resume**: ``metrics.json`` rows logged after the last checkpoint of an interrupted run are
  dropped, so every iteration appears once, while a finished run's final evaluation (and so its
  best score) survives ``--resume SOLVER.MAX_ITER <more>``; an unusable ``MODEL.WEIGHTS`` is
  one line, not a traceback (a missing file, an offline model-zoo download);
* **divergence**: a NaN/Inf loss stops training with one line naming the iteration and the last
  good checkpoint (:class:`~uwm_d2.core.errors.TrainingDivergedError`), instead of a traceback;
* **AMP** (``SOLVER.AMP.ENABLED``) is honoured on CUDA only, turned off with a warning elsewhere;
  ``MODEL.DEVICE cuda`` without a GPU is one line;
* **evaluation of a multi-process run**: DDP (``broadcast_buffers=False``) lets every rank's
  BatchNorm running statistics drift apart, so each rank scored its shard with a different model
  than the checkpoint rank 0 saves; every rank now evaluates with rank 0's buffers, and a
  distributed score equals an ``--eval-only`` of the saved weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, hooks
from detectron2.utils import comm

from uwm_d2.config import check_device
from uwm_d2.core.errors import TrainingDivergedError, UWMInputError
from uwm_d2.core.training_log import trim_metrics_json
from uwm_d2.engine.checkpoint import DataOnlyCheckpointer
from uwm_d2.engine.hooks import RetainingPeriodicCheckpointer

logger = logging.getLogger(__name__)

_REMOTE_PREFIXES = ("detectron2://", "http://", "https://", "catalog://", "s3://", "gs://")


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


def share_main_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank; no-op in one process."""
    if comm.get_world_size() == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():  # a wrapper's buffers() are its model's (DDP, SoftOutputs)
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


class PatchedDefaultTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the fixes of the module docstring; subclass it like the original."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(prepare_cfg(cfg))

    def state_dict(self) -> dict[str, Any]:
        """The checkpointed trainer state, with the optimizer's (momentum, AMP scaler) added.

        Plain tensors and numbers, so the checkpoint still loads with ``weights_only=True``.
        """
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "_trainer" in state:  # checkpoints written before this key existed lack it
            self._trainer.load_state_dict(state["_trainer"])

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators: Any = None) -> dict[str, Any]:
        """detectron2's ``test``, with every rank evaluating rank 0's buffers (see above)."""
        share_main_buffers(model)
        return super().test(cfg, model, evaluators)

    def build_hooks(self) -> list[hooks.HookBase]:
        """detectron2's hooks, with the atomic, data-only checkpointer and checkpoint retention.

        ``DefaultTrainer.__init__`` calls this before any hook holds the checkpointer, so it is
        swapped here (``self.checkpointer`` is also what ``resume_or_load`` reads with).
        """
        if not isinstance(self.checkpointer, DataOnlyCheckpointer):
            plain = self.checkpointer
            self.checkpointer = DataOnlyCheckpointer(
                plain.model,
                plain.save_dir,
                save_to_disk=plain.save_to_disk,
                **plain.checkpointables,
            )
        hook_list = []
        for hook in super().build_hooks():
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook = RetainingPeriodicCheckpointer(
                    self.checkpointer,
                    self.cfg.SOLVER.CHECKPOINT_PERIOD,
                    keep=self.cfg.UWM.KEEP_CHECKPOINTS,
                )
            if hook is not None:
                hook_list.append(hook)
        return hook_list

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
        if resume and not resuming:
            logger.info(
                f"--resume: no checkpoint in {self.cfg.OUTPUT_DIR}, training starts from "
                "iteration 0"
            )
        if comm.is_main_process():
            self._trim_metrics(resuming)

    def _trim_metrics(self, resuming: bool) -> None:
        """Keep the rows of ``metrics.json`` that the run continues from; each iteration once.

        A run starting from iteration 0 keeps none (a run killed before its first checkpoint
        left rows behind). A resumed run keeps the rows before the iteration it resumes from, and,
        when it resumes a finished run (from ``model_final.pth``), also that run's final
        evaluation: detectron2 logs it at iteration ``MAX_ITER`` (= where the resumed run starts),
        and it scored exactly the weights the run continues from, so it is kept, and with it the
        run's best score.
        """
        limit = self.start_iter
        if resuming and Path(self.checkpointer.get_checkpoint_file()).name == "model_final.pth":
            limit += 1
        metrics = Path(self.cfg.OUTPUT_DIR) / "metrics.json"
        dropped = trim_metrics_json(metrics, limit)
        if dropped:
            logger.info(
                f"metrics.json: dropped {dropped} rows at or after iteration {limit} (logged after "
                "the checkpoint this run continues from)"
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
                f"{last}; lower SOLVER.BASE_LR (see the README's training section) and start "
                "again, from that checkpoint with MODEL.WEIGHTS if you like"
            ) from None

    def train(self) -> Any:
        quiet = _DropDivergedTraceback()
        train_loop_logger = logging.getLogger("detectron2.engine.train_loop")
        train_loop_logger.addFilter(quiet)
        try:
            return super().train()
        finally:
            train_loop_logger.removeFilter(quiet)
