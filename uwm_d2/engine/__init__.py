"""Training: :class:`UWMTrainer` (this project's trainer), its base with detectron2 0.6's fixes,
hooks and checkpoints. Everything here needs torch and detectron2.
"""

from uwm_d2.core.errors import TrainingDivergedError
from uwm_d2.engine.base_trainer import PatchedDefaultTrainer
from uwm_d2.engine.hooks import ValidationLoss
from uwm_d2.engine.trainer import UWMTrainer

__all__ = ["PatchedDefaultTrainer", "TrainingDivergedError", "UWMTrainer", "ValidationLoss"]
