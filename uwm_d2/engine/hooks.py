"""Training hooks of ``UWMTrainer`` that detectron2 does not ship.

* :class:`ValidationLoss`: every ``period`` iterations, the model's training losses on a fixed
  subset of validation images, under ``torch.no_grad`` and with BatchNorm layers in eval mode (so
  validation never changes the running statistics) and the RNG state restored (so logging a
  validation loss does not change the training run). Logged as ``validation_loss`` and
  ``validation/<loss name>``.

Evaluation on a schedule and best-checkpoint keeping need no custom hook: detectron2's ``EvalHook``
and ``BestCheckpointer`` read the evaluator's ``uwm/score``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def _norm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Layers whose training-mode forward changes state (BatchNorm running statistics)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


class ValidationLoss(HookBase):
    """Log the mean training loss on validation batches every ``period`` iterations.

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

    def _do_loss(self) -> None:
        # Unwrap DistributedDataParallel: no gradients, so nothing to synchronise.
        model = getattr(self.trainer.model, "module", self.trainer.model)
        norms = [layer for layer in _norm_layers(model) if layer.training]
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        totals: dict[str, float] = {}
        batches = 0
        try:
            for layer in norms:
                layer.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                for batch in self._loader:
                    losses = model(batch)
                    for name, value in losses.items():
                        totals[name] = totals.get(name, 0.0) + float(value)
                    batches += 1
        finally:
            for layer in norms:
                layer.train()
        # Every rank saw its shard of the subset; average over all of them.
        gathered = comm.all_gather((totals, batches))
        count = sum(n for _, n in gathered)
        if count == 0 or not comm.is_main_process():
            return
        mean = {name: sum(t.get(name, 0.0) for t, _ in gathered) / count for name in gathered[0][0]}
        total = float(np.sum(list(mean.values())))
        storage = self.trainer.storage
        storage.put_scalar("validation_loss", total, smoothing_hint=False)
        storage.put_scalars(
            **{f"validation/{name}": value for name, value in mean.items()}, smoothing_hint=False
        )
        if not math.isfinite(total):
            logger.warning(f"validation loss is {total} at iteration {self.trainer.iter}")
        else:
            logger.info(f"iteration {self.trainer.iter}: validation_loss {total:.4f}")
