"""Training settings shared by every training command (the ``train:`` section of a recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hftool.errors import HftoolError
from hftool.schemas.fields import MixedPrecision


@dataclass(frozen=True)
class TrainConfig:
    """How to train, independent of the task.

    Batch sizes are per process and per micro-batch: the global batch of one optimizer step is
    ``batch_size * grad_accum * num_processes`` examples.

    Read-only: the engine keeps what it resolves (the per-process batch size from ``global_batch_size``) on
    itself, and a command that needs other values builds a new config with ``dataclasses.replace``.
    """

    output_dir: str = "runs/out"
    seed: int = 42
    max_steps: int | None = None  # optimizer steps; when set it wins over epochs
    epochs: int = 1
    batch_size: int = 16
    grad_accum: int = 1
    global_batch_size: int | None = None  # if set: batch_size = global / (processes x grad_accum), must divide
    lr: float = 5e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    mixed_precision: MixedPrecision = "auto"
    allow_slow_bf16: bool = False  # run an explicit bf16 even on a CPU that emulates it (refused otherwise)
    eval_every: int = 0  # optimizer steps between evaluations; 0 evaluates only at the end
    eval_max_batches: int | None = None  # cap on evaluation batches (None: the whole validation split)
    eval_batch_size: int | None = None  # defaults to batch_size
    save_every: int = 0  # optimizer steps between checkpoints; 0 saves only when stopped by a signal
    keep_checkpoints: int = 2
    log_every: int = 10
    compile: bool = False  # torch.compile the model (worth it on GPUs; small gains on CPU)
    fast_cpu_dropout: bool = True  # on CPU, draw dropout masks 16 bits per element (hftool/engine/cpu_dropout.py)
    release_memory_every: int = 0  # on CPU/glibc, malloc_trim every N steps: less RSS with varying shapes, slower
    report_to: Literal["tensorboard", "none"] = "tensorboard"

    def validate(self) -> None:
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "epochs": self.epochs,
                    "log_every": self.log_every, "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value < 1:
                raise HftoolError(f"train.{name}={value} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise HftoolError(f"train.max_steps={self.max_steps} must be at least 1 (or null to use epochs)")
        for name in ("eval_every", "save_every", "warmup_steps", "release_memory_every"):
            if getattr(self, name) < 0:
                raise HftoolError(f"train.{name} must be 0 or more")
        if self.lr <= 0:
            raise HftoolError(f"train.lr={self.lr} must be positive")
