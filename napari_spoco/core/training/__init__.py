"""Training as a stoppable generator.

Configuration, data and patch sampling, augmentation, the trainer, the adversarial term and
data-parallel runs.
"""

from .config import LossSettings, TrainingConfig
from .trainer import Trainer, TrainingReport

__all__ = ["LossSettings", "Trainer", "TrainingConfig", "TrainingReport"]
