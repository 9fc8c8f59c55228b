"""A ``DetectionCheckpointer`` whose files appear whole or not at all.

fvcore writes checkpoints and the ``last_checkpoint`` tag in place: a run killed while saving
leaves a truncated ``model_best.pth`` (overwritten in place on every improvement) or a tag naming a
half-written file, and ``--resume`` then fails. Here both go through a temp file and a rename
(:mod:`uwm_d2.core.atomic`), so a killed run resumes from the last *complete* checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from uwm_d2.core.atomic import atomic_path, atomic_write_text


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic ``save`` and ``tag_last_checkpoint``."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, checkpointable in self.checkpointables.items():
            data[key] = checkpointable.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        target = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {target}")
        with atomic_path(target) as tmp_path:
            torch.save(data, tmp_path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self.save_to_disk:
            atomic_write_text(
                os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename
            )
