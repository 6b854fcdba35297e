"""The training engine: one Accelerate loop shared by every training command.

A task (causal LM, BERT pretraining, SQuAD, ...) only says how to collate examples, how many loss items a
batch holds, and the summed loss of a batch. The engine owns everything else, each part in its own module:
data order (:mod:`~hftool.engine.order`), the optimizer and schedule (:mod:`~hftool.engine.optim`),
checkpoints and exact resume (:mod:`~hftool.engine.checkpoints`, files in
:mod:`~hftool.engine.checkpoint_files`), stop signals (:mod:`~hftool.engine.signals`),
the metrics log, divergence checks and throughput (:mod:`~hftool.engine.metrics_log`), DeepSpeed/FSDP settings
(:mod:`~hftool.engine.distributed`) and heap trimming (:mod:`~hftool.engine.heap`). This file is the loop.

The loss is normalised by the number of loss items in the *whole* optimizer step (all micro-batches and
processes), not per micro-batch, so gradient accumulation and data parallelism give the same gradient as one
big batch even when batches hold different numbers of targets (masked tokens, padding).

The engine never writes into the :class:`TrainConfig` it is given; values it resolves (the per-process batch
size from ``global_batch_size``) are its own attributes. On CPU, dropout masks are drawn by
:mod:`hftool.engine.cpu_dropout` (``train.fast_cpu_dropout``), several times cheaper than PyTorch's own there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from hftool.engine import distributed, optim, order
from hftool.engine.checkpoints import Checkpointer
from hftool.engine.config import TrainConfig
from hftool.engine.cpu_dropout import use_fast_cpu_dropout
from hftool.engine.heap import HeapTrimmer
from hftool.engine.metrics_log import MetricsLog, PendingLosses, Throughput
from hftool.engine.processes import Processes
from hftool.engine.signals import StopSignals
from hftool.errors import HftoolError
from hftool.outputs import fingerprint, is_claimed


class TrainingTask(Protocol):
    """What a task module gives the engine."""

    def collate(self, examples: list[Any], epoch: int) -> dict[str, torch.Tensor]:
        """Turn dataset items into a batch of tensors (on the CPU). ``epoch`` seeds per-epoch randomness."""

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """How many loss items (e.g. predicted tokens) the batch holds."""

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of the batch summed (not averaged) over its loss items."""

    def evaluate(self, model: torch.nn.Module, engine: Engine) -> dict[str, float]:
        """Metrics on the validation split, reduced over all processes."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    steps: int
    total_steps: int
    interrupted: bool
    wall_s: float
    tokens_per_s: float | None
    last_loss: float | None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None


class Engine(Processes):
    """Owns the :class:`accelerate.Accelerator` and runs :meth:`fit` for any :class:`TrainingTask`.

    ``batch_size`` is each process's micro-batch: ``train.batch_size``, or the share of ``train.global_batch_size``.
    """

    def __init__(self, config: TrainConfig, output_dir: str | Path):
        self.config = config
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.accelerator, self._trackers = distributed.make_accelerator(config, self.output_dir)
        self.batch_size = distributed.per_process_batch_size(config, self.num_processes)
        self.layout = order.Layout(self.batch_size, config.grad_accum, self.num_processes,
                                   self.accelerator.process_index)
        self.uses_deepspeed = distributed.uses_deepspeed(self.accelerator)
        self.shards_parameters = distributed.shards_parameters(self.accelerator)
        self.static_shapes = distributed.static_shapes(self.accelerator)

    def eval_batches(self, dataset: Sequence[Any], task: TrainingTask) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of this process's share of ``dataset``, on the device, capped by ``eval_max_batches``."""
        size = self.config.eval_batch_size or self.batch_size
        indices = self.shard(range(len(dataset)))
        for n, start in enumerate(range(0, len(indices), size)):
            if self.config.eval_max_batches is not None and n >= self.config.eval_max_batches:
                return
            if self.static_shapes and start + size > len(indices):
                return  # a smaller last batch would recompile the XLA graph
            yield self.to_device(task.collate([dataset[i] for i in indices[start:start + size]], 0))

    @property
    def examples_per_step(self) -> int:
        return self.layout.examples_per_step

    def steps_per_epoch(self, num_examples: int) -> int:
        return num_examples // self.examples_per_step

    # ---- training --------------------------------------------------------------------------------------
    def fit(self, model: torch.nn.Module, train_data: Sequence[Any], task: TrainingTask, resume: bool = False,
            strict_resume: bool = False, tracker_config: dict[str, Any] | None = None,
            lengths: Sequence[int] | None = None, eval_every: int | None = None) -> TrainResult:
        """Train ``model`` on ``train_data`` and return what happened; evaluates at the end.

        ``lengths`` (one per example of a sized ``train_data``) groups examples of similar length into the same
        steps (see :mod:`~hftool.engine.order`). ``eval_every`` replaces ``train.eval_every`` for this run.
        """
        cfg = self.config
        if lengths is not None and len(lengths) != len(train_data):
            raise ValueError(f"{len(lengths)} lengths for {len(train_data)} training examples")
        total_steps = self._total_steps(train_data)
        set_seed(cfg.seed)
        optimizer = optim.adamw(model, cfg)
        scheduler = optim.lr_schedule(optimizer, cfg, total_steps)
        distributed.configure_sharding(self.accelerator, model, cfg, self.batch_size)
        model, optimizer = self.accelerator.prepare(model, optimizer)
        # prepare() wraps forward in autocast and casts every output to fp32; the engine already runs each loss
        # under autocast, and the cast would copy the largest tensor of the step (the logits) once more.
        self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        settings = {"num_processes": self.num_processes, "batch_size": self.batch_size,
                    "grad_accum": cfg.grad_accum, "seed": cfg.seed}  # a resume with others changes the data order
        checkpoints = Checkpointer(self.accelerator, self.checkpoint_dir, cfg.keep_checkpoints, settings,
                                   sharded=self.shards_parameters)
        resumed_from = checkpoints.resume(model, optimizer, scheduler, strict_resume) if resume else None
        start_step = resumed_from or 0

        if self._trackers and self.is_main:
            self.accelerator.init_trackers("hftool", config=_scalar_items(tracker_config or {}))
        metrics_log = MetricsLog(self.output_dir / "metrics.jsonl", enabled=self.is_main,
                                 keep_through=start_step if resume else None)
        self._record_logs()
        if metrics_log.dropped:
            self.print(f"{metrics_log.path}: removed {metrics_log.dropped} record(s) logged after step "
                       f"{start_step}, the step this run resumes from; they are logged again as it retrains them")
        batches = order.step_examples(train_data, start_step, cfg.seed, self.layout,
                                      None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64))
        fast_dropout = cfg.fast_cpu_dropout and self.device.type == "cpu"
        with use_fast_cpu_dropout(self.unwrap(model)) if fast_dropout else contextlib.nullcontext():
            result = self._loop(model, optimizer, scheduler, batches, task, start_step, total_steps, metrics_log,
                                checkpoints, cfg.eval_every if eval_every is None else eval_every)
            if not result.interrupted:
                result.eval_metrics = self._evaluate(model, task, result.steps, metrics_log)
        result.resumed_from = resumed_from
        for tracker in self.accelerator.trackers:  # not end_training(): it also tears down the process group
            tracker.finish()
        self._record_logs()
        return result

    def _record_logs(self) -> None:
        """Fingerprint the logs the run appends to (metrics.jsonl, TensorBoard's event files) in the output
        folder's manifest, so that --overwrite knows them as hftool's (:mod:`hftool.outputs`)."""
        if self.is_main and is_claimed(self.output_dir):
            fingerprint(self.output_dir, *(name for name in ("metrics.jsonl", "tensorboard")
                                           if (self.output_dir / name).exists()))

    def _total_steps(self, train_data) -> int:
        cfg = self.config
        if not hasattr(train_data, "__len__"):
            if cfg.max_steps is None:
                raise HftoolError("streaming data has no length: set train.max_steps")
            return cfg.max_steps
        if self.steps_per_epoch(len(train_data)) == 0:
            raise HftoolError(
                f"the training split has {len(train_data)} examples, fewer than one optimizer step "
                f"(train.batch_size={self.batch_size} x train.grad_accum={cfg.grad_accum} x "
                f"{self.num_processes} process(es)); add data or lower train.batch_size"
            )
        return cfg.max_steps or cfg.epochs * self.steps_per_epoch(len(train_data))

    def _loop(self, model, optimizer, scheduler, batches, task, start_step, total_steps, metrics_log,
              checkpoints, eval_every) -> TrainResult:
        cfg = self.config
        started = time.perf_counter()
        step, last_loss, interrupted = start_step, None, False
        pending = PendingLosses(self.reduce_sum)  # step losses not yet checked for NaN
        throughput = Throughput(start_step, cfg.log_every, self.num_processes)
        heap = HeapTrimmer(cfg.release_memory_every if self.device.type == "cpu" else 0)
        bar = tqdm(total=total_steps, initial=start_step, disable=not self.is_main, desc="train",
                   dynamic_ncols=True)
        with StopSignals() as signals, contextlib.closing(bar):  # closed on errors too: they start a new line
            while step < total_steps:
                epoch, examples = next(batches)
                step_lr = scheduler.get_last_lr()[0]  # the rate this step uses; scheduler.step() moves to the next
                loss_sum, count, tokens = self._train_step(model, optimizer, task,
                                                           [task.collate(micro, epoch) for micro in examples])
                scheduler.step()
                heap.after_step(step)
                step += 1
                pending.add(step, loss_sum, count)
                throughput.add(tokens)
                if step % cfg.log_every == 0 or step == total_steps:
                    last_loss = pending.check()
                    tokens_per_s = throughput.close_window(step, last=step == total_steps)
                    metrics_log.write({"step": step, "loss": last_loss, "lr": step_lr,
                                       "tokens_per_s": round(tokens_per_s, 1), "epoch": epoch})
                    if self._trackers:
                        self.accelerator.log({"train/loss": last_loss, "train/lr": step_lr,
                                              "train/tokens_per_s": tokens_per_s}, step=step)
                    bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
                bar.update(1)

                if eval_every and step % eval_every == 0 and step < total_steps:
                    self._evaluate(model, task, step, metrics_log)
                stop = self.any_process(signals.received is not None) and step < total_steps
                if (cfg.save_every and step % cfg.save_every == 0) or stop:
                    last_loss = pending.check() if pending else last_loss  # never checkpoint a diverged run
                    checkpoints.save(step, epoch, model, optimizer, scheduler)
                    self._record_logs()
                if stop:
                    self.print(f"\nstopped by {signals.name} after step {step}; resume with --resume")
                    interrupted = True
                    break
        if pending:
            last_loss = pending.check()
        return TrainResult(steps=step, total_steps=total_steps, interrupted=interrupted,
                           wall_s=time.perf_counter() - started, tokens_per_s=throughput.median, last_loss=last_loss)

    def _train_step(self, model, optimizer, task, micro_batches) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimizer step over this process's micro-batches: (summed loss, loss items, tokens)."""
        local_count = sum(task.count_targets(b) for b in micro_batches)
        scale = self.num_processes / self.reduce_sum(torch.tensor(float(local_count))).clamp(min=1.0)
        if self.uses_deepspeed:  # DeepSpeed divides every micro-batch loss by its accumulation steps itself
            scale = scale * self.config.grad_accum
        model.train()
        loss_total = torch.zeros((), device=self.device)
        tokens = 0
        for i, batch in enumerate(micro_batches):
            tokens += _count_tokens(batch)
            sync = i == len(micro_batches) - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(model), self.autocast():
                loss_sum = task.loss_sum(model, self.to_device(batch))
            self.accelerator.backward(loss_sum * scale)
            loss_total += loss_sum.detach().float()
        if self.config.max_grad_norm and not self.uses_deepspeed:
            self.accelerator.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_total, torch.tensor(float(local_count)), tokens

    def _evaluate(self, model, task, step, metrics_log) -> dict[str, float]:
        model.eval()
        with torch.no_grad(), self.autocast():
            metrics = task.evaluate(model, self)
        model.train()
        if metrics:
            metrics_log.write({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
            if self._trackers:
                self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
            self.print(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics


def _count_tokens(batch: dict[str, torch.Tensor]) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def _scalar_items(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_scalar_items(value, name + "."))
        elif isinstance(value, int | float | str | bool):
            flat[name] = value
    return flat
