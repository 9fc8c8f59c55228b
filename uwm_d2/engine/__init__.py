"""Training: :class:`UWMTrainer` (detectron2's ``DefaultTrainer`` for this data) and its hooks.

Everything here needs torch and detectron2.
"""

from uwm_d2.engine.hooks import ValidationLoss
from uwm_d2.engine.trainer import TrainingDivergedError, UWMTrainer

__all__ = ["TrainingDivergedError", "UWMTrainer", "ValidationLoss"]
