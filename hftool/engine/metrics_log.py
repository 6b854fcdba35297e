"""What a run reports while it trains: the JSON-lines metrics log, the loss check and the throughput."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hftool.engine.checkpoint_files import writing
from hftool.errors import TrainingDivergedError


class MetricsLog:
    """Metrics as JSON lines, written by the main process only.

    ``keep_through`` (on resume) keeps the records up to the step the run resumes from and drops the later
    ones (and a line cut short by a crash), so each step appears exactly once once the run is retrained.
    """

    def __init__(self, path: Path, enabled: bool, keep_through: int | None):
        self.path = path
        self.enabled = enabled
        self.dropped = 0
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if keep_through is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                step = _logged_step(line)
                if step is not None and step <= keep_through:
                    kept.append(line)
                elif line.strip():
                    self.dropped += 1
        tmp = path.with_name(path.name + ".tmp")
        with writing(tmp):
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, path)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with writing(self.path), self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def _logged_step(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


class PendingLosses:
    """Step losses kept on the device until the next log line, so a step does not wait for the device.

    :meth:`check` reduces them over all processes, raises on the first step whose loss was NaN or infinite,
    and returns the mean loss of the pending steps.
    """

    def __init__(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]):
        self._reduce_sum = reduce_sum
        self._steps: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss sum, loss items)

    def __bool__(self) -> bool:
        return bool(self._steps)

    def add(self, step: int, loss_sum: torch.Tensor, count: torch.Tensor) -> None:
        self._steps.append((step, loss_sum, count))

    def check(self) -> float:
        losses = self._reduce_sum(torch.stack([p[1] for p in self._steps]))
        counts = self._reduce_sum(torch.stack([p[2] for p in self._steps]).to(losses.device))
        per_step = (losses / counts.clamp(min=1)).tolist()
        for (step, _, _), value in zip(self._steps, per_step, strict=True):
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"loss became {value} at step {step}; stopped without saving a checkpoint after it. "
                    "Lower train.lr, set train.max_grad_norm, or try train.mixed_precision=no"
                )
        self._steps.clear()
        return float(losses.sum() / counts.sum().clamp(min=1))


class Throughput:
    """Tokens per second over each logging window, all processes together; the run reports the median.

    The first window after a (re)start holds the warm-up and is left out of the median unless it is the only one.
    """

    def __init__(self, start_step: int, log_every: int, num_processes: int):
        self.start_step, self.log_every, self.num_processes = start_step, log_every, num_processes
        self.windows: list[float] = []
        self._tokens, self._since = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def close_window(self, step: int, last: bool) -> float:
        """Tokens/s of the window ending at ``step`` (``last``: the run's final step)."""
        now = time.perf_counter()
        tokens_per_s = self._tokens * self.num_processes / max(now - self._since, 1e-9)
        if step - self.start_step > self.log_every or last:  # skip the warm-up window
            self.windows.append(tokens_per_s)
        self._tokens, self._since = 0, now
        return tokens_per_s

    @property
    def median(self) -> float | None:
        return statistics.median(self.windows) if self.windows else None
