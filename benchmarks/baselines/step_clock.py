"""Instrumentation the Trainer baselines share: the wall time and loss of every optimizer step.

Not part of "the plain Hugging Face way": a Trainer callback that only records, so the benchmark can take
per-step medians that leave out warm-up, as it does for hftool's own metrics.jsonl.
"""

from __future__ import annotations

import json
import resource
import time

from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Records when each optimizer step ends and the loss the Trainer logs for it."""

    def __init__(self):
        self.start = time.perf_counter()
        self.times, self.losses = [], {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]

    def write(self, path: str, tokens_per_step) -> None:
        """Write step end times (seconds since training began), losses, tokens per step and peak RSS (MB)."""
        result = {"step_end_times": [t - self.start for t in self.times], "losses": self.losses,
                  "tokens_per_step": tokens_per_step,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
