"""The one training engine every training command uses (Accelerate underneath)."""

from hftool.engine.config import TrainConfig
from hftool.engine.trainer import Engine, TrainingTask

__all__ = ["Engine", "TrainConfig", "TrainingTask"]
