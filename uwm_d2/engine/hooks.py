"""Training hooks: an honest validation loss, and checkpoint hooks that survive a resume.

* :class:`ValidationLoss`: every ``period`` iterations, the model's training losses on a fixed
  subset of validation images. It never changes the run and never stops it (see the class).
* :class:`ResumableBestCheckpointer`: detectron2's ``BestCheckpointer`` forgets the best score
  when a run resumes, so a worse model would overwrite ``model_best.pth``; this one reads the best
  ``uwm/score`` of the resumed run back from ``metrics.json`` first.
* :class:`RetainingPeriodicCheckpointer`: detectron2's ``PeriodicCheckpointer`` that keeps only the
  newest ``UWM.KEEP_CHECKPOINTS`` periodic checkpoints on disk (a real schedule writes dozens of
  files of hundreds of MB each).

Evaluation on a schedule needs no custom hook: detectron2's ``EvalHook`` runs the evaluator.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

from uwm_d2.core.errors import one_line
from uwm_d2.core.training_log import best_metric
from uwm_d2.engine.checkpoint import prune_checkpoints

logger = logging.getLogger(__name__)


class ValidationLoss(HookBase):
    """Log the mean training loss on validation batches every ``period`` iterations.

    What it measures: the losses the model is trained on, with BatchNorm on **batch statistics**
    (training mode), as the training losses are computed. Early in a from-scratch run the
    BatchNorm running statistics are still far from the batch statistics; a pass in eval mode then
    measures a model that does not exist yet (measured: a validation loss of 2.3 → 9.6 → 159 →
    4797 while the training losses were ~3, until the eval-mode boxes overflowed).

    What it must not do, and how it does not:

    * change the run: gradients are off, every buffer (BatchNorm running statistics, their batch
      counters) is saved before and restored after, and the CPU and CUDA random generators are
      forked, so training continues bit for bit as without the hook;
    * stop the run: a non-finite loss, or detectron2's ``FloatingPointError`` raised inside the
      heads on non-finite boxes, is logged as a warning and the run goes on.

    Logged as ``validation_loss`` and ``validation/<loss name>`` (main process).

    Args:
        period: iterations between estimates (> 0).
        data_loader: yields lists of mapped dicts *with* ``instances`` (a finite iterable, walked
            completely each time; keep it small).
    """

    def __init__(self, period: int, data_loader: Iterable[list[dict]]) -> None:
        self._period = period
        self._loader = data_loader

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            self._do_loss()

    def _losses(self, model: torch.nn.Module) -> tuple[dict[str, float], int, str]:
        """``(summed losses, batches, failure)`` of one pass; ``failure`` is ``""`` when fine."""
        totals: dict[str, float] = {}
        batches = 0
        buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        was_training = model.training
        try:
            model.train()
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                for batch in self._loader:
                    losses = model(batch)
                    for name, value in losses.items():
                        totals[name] = totals.get(name, 0.0) + float(value)
                    batches += 1
        except FloatingPointError as error:
            return {}, 0, one_line(error)
        finally:
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(buffers[name])
            model.train(was_training)
        return totals, batches, ""

    def _do_loss(self) -> None:
        # Unwrap DistributedDataParallel: no gradients, so nothing to synchronise.
        model = getattr(self.trainer.model, "module", self.trainer.model)
        totals, batches, failure = self._losses(model)
        # Every rank saw its shard of the subset; every rank joins the gather, failed or not.
        gathered = comm.all_gather((totals, batches, failure))
        if not comm.is_main_process():
            return
        failures = [reason for _, _, reason in gathered if reason]
        count = sum(n for _, n, _ in gathered)
        if failures or count == 0:
            reason = failures[0] if failures else "no validation batches"
            logger.warning(
                f"validation loss skipped at iteration {self.trainer.iter} ({reason}); "
                "training goes on"
            )
            return
        names = sorted({name for rank_totals, _, _ in gathered for name in rank_totals})
        mean = {name: sum(t.get(name, 0.0) for t, _, _ in gathered) / count for name in names}
        total = float(sum(mean.values()))
        if not math.isfinite(total):
            logger.warning(
                f"validation loss is {total} at iteration {self.trainer.iter} (not logged); "
                "training goes on"
            )
            return
        storage = self.trainer.storage
        storage.put_scalar("validation_loss", total, smoothing_hint=False)
        storage.put_scalars(
            **{f"validation/{name}": value for name, value in mean.items()}, smoothing_hint=False
        )
        logger.info(f"iteration {self.trainer.iter}: validation_loss {total:.4f}")


class ResumableBestCheckpointer(hooks.BestCheckpointer):
    """``BestCheckpointer`` that, on a resumed run, starts from the best score already reached.

    Args:
        metrics_json: the run's ``metrics.json`` (read once, before training resumes).
        Others as ``hooks.BestCheckpointer``.
    """

    def __init__(self, *args: object, metrics_json: str | Path, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._metrics_json = Path(metrics_json)

    def before_train(self) -> None:
        if self.trainer.start_iter == 0:
            return
        best = best_metric(self._metrics_json, self._val_metric)
        if best is not None:
            self.best_metric, self.best_iter = best
            logger.info(
                f"resumed run's best {self._val_metric}: {best[0]:.5f} @ iteration {best[1]}"
            )


class RetainingPeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """``PeriodicCheckpointer`` that deletes all but the newest ``keep`` periodic checkpoints.

    Counted on disk (not in memory as fvcore's ``max_to_keep`` does), so a resumed run also
    prunes the files of the run it continues. ``keep <= 0`` keeps everything.
    """

    def __init__(self, *args: object, keep: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._keep = int(keep)

    def after_step(self) -> None:
        super().after_step()
        if not (comm.is_main_process() and self.checkpointer.save_dir):
            return
        folder = Path(self.checkpointer.save_dir)
        if self.trainer.iter >= self.trainer.max_iter - 1:
            # The last iteration is saved twice (model_XXXXXXX and model_final, same content)
            # when it falls on the period: keep model_final only.
            (folder / f"model_{self.trainer.iter:07d}.pth").unlink(missing_ok=True)
        for path in prune_checkpoints(folder, self._keep):
            logger.info(f"removed old checkpoint {path.name} (UWM.KEEP_CHECKPOINTS)")
