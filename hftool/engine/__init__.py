"""The one training engine every training command uses (Accelerate underneath).

``Engine`` and ``TrainingTask`` are imported on first use, so reading ``TrainConfig`` (every recipe schema
does) does not import torch: commands check their input and fail fast before the heavy imports.
"""

from hftool.engine.config import TrainConfig

__all__ = ["Engine", "TrainConfig", "TrainingTask"]


def __getattr__(name: str):
    if name in ("Engine", "TrainingTask"):
        from hftool.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hftool.engine' has no attribute '{name}'")
