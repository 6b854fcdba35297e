"""The run's processes as tasks and the engine see them: who is main, the device, reductions, sharding."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator


class Processes:
    """Helpers over an :class:`accelerate.Accelerator` that every process calls alike (tasks use them to
    evaluate); the :class:`~hftool.engine.trainer.Engine` builds on them."""

    accelerator: Accelerator

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def print(self, *args: Any) -> None:
        self.accelerator.print(*args)

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        value = value.to(self.device)
        return self.accelerator.reduce(value, reduction="sum") if self.num_processes > 1 else value

    def any_process(self, flag: bool) -> bool:
        """True on every process if it is true on any (so all stop at the same step)."""
        value = torch.tensor(1.0 if flag else 0.0)
        return bool(self.reduce_sum(value).item() > 0) if self.num_processes > 1 else flag

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.accelerator.autocast()

    def shard(self, items: Sequence[Any]) -> Sequence[Any]:
        """This process's share of an evaluation set (contiguous, so every item is seen exactly once)."""
        per_rank = math.ceil(len(items) / self.num_processes)
        start = self.accelerator.process_index * per_rank
        return items[start:start + per_rank]

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
