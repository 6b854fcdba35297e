"""The training engine: one Accelerate loop shared by every training command.

A task (causal LM, BERT pretraining, SQuAD, ...) only says how to collate examples, how many loss items a
batch holds, and the summed loss of a batch. The engine owns everything else: data order, gradient
accumulation, mixed precision, the optimizer and schedule, clipping, evaluation, logging, checkpoints,
exact resume, signals and divergence checks.

Two design choices make runs reproducible and scale-invariant:

* Data order is a pure function of ``(seed, epoch, step)``: each epoch is a seeded permutation and optimizer
  step ``s`` takes the next ``batch_size * grad_accum * num_processes`` indices, split into micro-batches and
  then across processes. Resuming at step ``k`` therefore needs no sampler state, and 2 processes with
  batch ``B`` see exactly the examples 1 process with batch ``2B`` sees.
* The loss is normalised by the number of loss items in the *whole* optimizer step (all micro-batches and
  processes), not per micro-batch, so gradient accumulation and data parallelism give the same gradient as
  one big batch even when batches hold different numbers of targets (masked tokens, padding).

With per-example ``lengths``, each epoch's permutation is cut into mega-batches of up to
``LENGTH_GROUP_STEPS`` optimizer steps and sorted by length inside each, so a batch holds similar lengths
and a task that pads to the longest item in a batch wastes little compute on padding (the order stays a
pure function of seed, epoch and step).

On CPU, dropout masks are drawn by :mod:`hftool.engine.cpu_dropout` (``train.fast_cpu_dropout``), which is
several times cheaper than PyTorch's own there.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from hftool.engine import checkpoints as ckpt
from hftool.engine.checkpoints import CHECKPOINT_PREFIX, COMPLETE_MARKER, STATE_FILE, TMP_PREFIX, complete_checkpoints
from hftool.engine.config import TrainConfig
from hftool.engine.cpu_dropout import use_fast_cpu_dropout
from hftool.errors import HftoolError, TrainingDivergedError

LENGTH_GROUP_STEPS = 50


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


class Engine:
    """Owns the :class:`accelerate.Accelerator` and runs :meth:`fit` for any :class:`TrainingTask`."""

    def __init__(self, config: TrainConfig, output_dir: str | Path):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        from hftool.environment import check_bf16_pays, resolve_mixed_precision

        self.config = config
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        trackers = None
        if config.report_to == "tensorboard" and _has_tensorboard():
            trackers = "tensorboard"
        from hftool.launch import check_launch_matches_hardware

        check_launch_matches_hardware()
        check_bf16_pays(config.mixed_precision, config.allow_slow_bf16)
        self.mixed_precision = resolve_mixed_precision(config.mixed_precision)
        launched_world = int(os.environ.get("WORLD_SIZE", "1"))
        try:
            self.accelerator = Accelerator(
                mixed_precision=self.mixed_precision,
                log_with=trackers,
                project_config=ProjectConfiguration(
                    project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "tensorboard")
                ),
                dynamo_backend="inductor" if config.compile else None,
                step_scheduler_with_optimizer=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise HftoolError(f"train.mixed_precision={config.mixed_precision}: {exc}") from None
        if self.accelerator.num_processes != launched_world:
            raise HftoolError(f"launched as {launched_world} processes but Accelerate set up "
                              f"{self.accelerator.num_processes}; check the accelerate config ('hftool env')")
        if config.global_batch_size is not None:
            config.batch_size = per_process_batch_size(config, self.accelerator.num_processes)
        self._trackers = trackers is not None
        self._stop_signal: int | None = None
        self._lengths: torch.Tensor | None = None
        self._epoch_order_cache: tuple[int, torch.Tensor] | None = None
        self._trim_heap = (_glibc_malloc_trim() if config.release_memory_every and self.accelerator.device.type == "cpu"
                           else None)

    # ---- process helpers -------------------------------------------------------------------------------
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

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def shard(self, items: Sequence[Any]) -> Sequence[Any]:
        """This process's share of an evaluation set (contiguous, so every item is seen exactly once)."""
        per_rank = math.ceil(len(items) / self.num_processes)
        start = self.accelerator.process_index * per_rank
        return items[start:start + per_rank]

    def eval_batches(self, dataset: Sequence[Any], task: TrainingTask) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of this process's share of ``dataset``, on the device, capped by ``eval_max_batches``."""
        size = self.config.eval_batch_size or self.config.batch_size
        indices = self.shard(range(len(dataset)))
        for n, start in enumerate(range(0, len(indices), size)):
            if self.config.eval_max_batches is not None and n >= self.config.eval_max_batches:
                return
            if self.static_shapes and start + size > len(indices):
                return  # a smaller last batch would recompile the XLA graph
            batch = task.collate([dataset[i] for i in indices[start:start + size]], 0)
            yield self._to_device(batch)

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.accelerator.autocast()

    @property
    def uses_deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    @property
    def shards_parameters(self) -> bool:
        """FSDP and DeepSpeed hold parameters in their own flat shards: only the model's forward sees them whole."""
        from accelerate.utils import DistributedType

        return self.uses_deepspeed or self.accelerator.distributed_type == DistributedType.FSDP

    @property
    def static_shapes(self) -> bool:
        """XLA (TPU) compiles one graph per shape: keep every batch the same size."""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.XLA

    def _configure_deepspeed(self) -> None:
        """DeepSpeed owns accumulation boundaries and clipping: give it the recipe's values."""
        ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["gradient_accumulation_steps"] = self.config.grad_accum
        ds_config["train_micro_batch_size_per_gpu"] = self.config.batch_size
        ds_config["gradient_clipping"] = self.config.max_grad_norm or 0.0

    # ---- training --------------------------------------------------------------------------------------
    def steps_per_epoch(self, num_examples: int) -> int:
        return num_examples // self.examples_per_step

    @property
    def examples_per_step(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.num_processes

    def fit(
        self,
        model: torch.nn.Module,
        train_data: Sequence[Any],
        task: TrainingTask,
        resume: bool = False,
        strict_resume: bool = False,
        tracker_config: dict[str, Any] | None = None,
        lengths: Sequence[int] | None = None,
    ) -> TrainResult:
        """Train ``model`` on ``train_data`` and return what happened; evaluates at the end.

        ``lengths`` (one per example of a sized ``train_data``) groups examples of similar length into
        the same steps; see the module docstring.
        """
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        cfg = self.config
        if lengths is not None and len(lengths) != len(train_data):
            raise ValueError(f"{len(lengths)} lengths for {len(train_data)} training examples")
        self._lengths = None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64)
        self._epoch_order_cache = None
        if hasattr(train_data, "__len__"):
            steps_per_epoch = self.steps_per_epoch(len(train_data))
            if steps_per_epoch == 0:
                raise HftoolError(
                    f"the training split has {len(train_data)} examples, fewer than one optimizer step "
                    f"(train.batch_size={cfg.batch_size} x train.grad_accum={cfg.grad_accum} x "
                    f"{self.num_processes} process(es)); add data or lower train.batch_size"
                )
            total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        elif cfg.max_steps is None:
            raise HftoolError("streaming data has no length: set train.max_steps")
        else:
            total_steps = cfg.max_steps
        set_seed(cfg.seed)

        optimizer = _adamw(model, cfg)
        scheduler = get_scheduler(
            "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler,
            optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=total_steps,
        )
        if self.uses_deepspeed:
            self._configure_deepspeed()
        fsdp_plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if fsdp_plugin is not None and fsdp_plugin.transformer_cls_names_to_wrap is None:
            fsdp_plugin.transformer_cls_names_to_wrap = transformer_block_classes(model)
        model, optimizer = self.accelerator.prepare(model, optimizer)
        # prepare() wraps forward in autocast and casts every output to fp32; the engine already runs each loss
        # under autocast, and the cast would copy the largest tensor of the step (the logits) once more.
        self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)

        start_step, resumed_from = 0, None
        if resume:
            checkpoint = self._choose_checkpoint(strict_resume)
            if checkpoint is None:
                self.print(f"no complete checkpoint in {self.checkpoint_dir}; starting from step 0")
            else:
                state = ckpt.read_json(checkpoint / STATE_FILE)
                self._check_resume_compatible(state, strict_resume)
                self._load_checkpoint(checkpoint, model, optimizer, scheduler)
                start_step = resumed_from = state["global_step"]
                self.print(f"resumed from {checkpoint} (step {start_step})")

        if self._trackers and self.is_main:
            self.accelerator.init_trackers("hftool", config=_scalar_items(tracker_config or {}))
        metrics_log = MetricsLog(self.output_dir / "metrics.jsonl", enabled=self.is_main,
                                 keep_through=start_step if resume else None)
        if metrics_log.dropped:
            self.print(f"{metrics_log.path}: removed {metrics_log.dropped} record(s) logged after step "
                       f"{start_step}, the step this run resumes from; they are logged again as it retrains them")

        fast_dropout = cfg.fast_cpu_dropout and self.device.type == "cpu"
        with use_fast_cpu_dropout(self.unwrap(model)) if fast_dropout else contextlib.nullcontext():
            result = self._loop(model, optimizer, scheduler, train_data, task, start_step, total_steps,
                                metrics_log)
            if not result.interrupted:
                result.eval_metrics = self._evaluate(model, task, result.steps, metrics_log)
        result.resumed_from = resumed_from
        for tracker in self.accelerator.trackers:  # not end_training(): it also tears down the process group
            tracker.finish()
        return result

    def _loop(self, model, optimizer, scheduler, train_data, task, start_step, total_steps,
              metrics_log) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.config
        started = time.perf_counter()
        step = start_step
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss sum, count) not yet checked
        window_tokens, window_start = 0, time.perf_counter()
        throughput: list[float] = []
        last_loss: float | None = None
        interrupted = False
        bar = tqdm(total=total_steps, initial=start_step, disable=not self.is_main, desc="train",
                   dynamic_ncols=True)
        batches = self._step_examples(train_data, start_step)
        with self._catch_stop_signals(), contextlib.closing(bar):  # closed on errors too: they start a new line
            while step < total_steps:
                epoch, examples = next(batches)
                micro_batches = [task.collate(micro, epoch) for micro in examples]
                loss_sum, count, tokens = self._train_step(model, optimizer, micro_batches, task)
                scheduler.step()
                if self._trim_heap is not None and step % cfg.release_memory_every == 0:
                    self._trim_heap(0)
                step += 1
                pending.append((step, loss_sum, count))
                window_tokens += tokens

                logged = step % cfg.log_every == 0 or step == total_steps
                if logged:
                    last_loss = self._check_finite(pending)
                    pending.clear()
                    now = time.perf_counter()
                    tokens_per_s = window_tokens * self.num_processes / max(now - window_start, 1e-9)
                    if step - start_step > cfg.log_every or step == total_steps:  # skip warm-up window
                        throughput.append(tokens_per_s)
                    window_tokens, window_start = 0, now
                    record = {"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                              "tokens_per_s": round(tokens_per_s, 1), "epoch": epoch}
                    metrics_log.write(record)
                    if self._trackers:
                        self.accelerator.log({"train/loss": last_loss, "train/lr": record["lr"],
                                              "train/tokens_per_s": tokens_per_s}, step=step)
                    bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
                bar.update(1)

                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    self._evaluate(model, task, step, metrics_log)
                stop = self._agreed_stop()
                if (cfg.save_every and step % cfg.save_every == 0) or (stop and step < total_steps):
                    last_loss = self._check_finite(pending) if pending else last_loss
                    pending.clear()
                    self.save_checkpoint(step, epoch, model, optimizer, scheduler)
                if stop and step < total_steps:
                    name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal"
                    self.print(f"\nstopped by {name} after step {step}; resume with --resume")
                    interrupted = True
                    break
        if pending:
            last_loss = self._check_finite(pending)
        return TrainResult(
            steps=step, total_steps=total_steps, interrupted=interrupted, wall_s=time.perf_counter() - started,
            tokens_per_s=statistics.median(throughput) if throughput else None, last_loss=last_loss,
        )

    def _step_examples(self, train_data, start_step: int) -> Iterator[tuple[int, list[list[Any]]]]:
        """(epoch, this process's examples for each micro-batch) for every step from ``start_step`` on."""
        if hasattr(train_data, "__len__"):
            steps_per_epoch = self.steps_per_epoch(len(train_data))
            step = start_step
            while True:
                epoch, step_in_epoch = divmod(step, steps_per_epoch)
                indices = self._step_indices(len(train_data), epoch, step_in_epoch)
                yield epoch, [[train_data[i] for i in micro] for micro in indices]
                step += 1
        yield from self._stream_step_examples(train_data, start_step)

    def _stream_step_examples(self, stream, start_step: int) -> Iterator[tuple[int, list[list[Any]]]]:
        """Consecutive groups of a stream, one per step; every process reads it and keeps its slices."""
        cfg = self.config
        per_micro = cfg.batch_size * self.num_processes
        rank_offset = self.accelerator.process_index * cfg.batch_size
        to_skip, epoch = start_step, 0
        while True:
            iterator, produced = iter(stream), 0
            while True:
                group = list(itertools.islice(iterator, self.examples_per_step))
                if len(group) < self.examples_per_step:
                    break
                produced += 1
                if to_skip:
                    to_skip -= 1
                    continue
                yield epoch, [group[m * per_micro + rank_offset:m * per_micro + rank_offset + cfg.batch_size]
                              for m in range(cfg.grad_accum)]
            if produced == 0:
                raise HftoolError("the training stream holds fewer examples than one optimizer step; "
                                  "add data or lower train.batch_size")
            epoch += 1

    def _step_indices(self, num_examples: int, epoch: int, step_in_epoch: int) -> list[list[int]]:
        """This process's example indices for each micro-batch of one optimizer step."""
        cfg = self.config
        order = self._epoch_order(num_examples, epoch)
        start = step_in_epoch * self.examples_per_step
        per_micro = cfg.batch_size * self.num_processes
        rank_offset = self.accelerator.process_index * cfg.batch_size
        out = []
        for micro in range(cfg.grad_accum):
            begin = start + micro * per_micro + rank_offset
            out.append(order[begin:begin + cfg.batch_size].tolist())
        return out

    def _epoch_order(self, num_examples: int, epoch: int) -> torch.Tensor:
        """The seeded permutation of one epoch, length-grouped when the run has example lengths."""
        if self._epoch_order_cache is not None and self._epoch_order_cache[0] == epoch:
            return self._epoch_order_cache[1]
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(num_examples, generator=generator)
        if self._lengths is not None:
            mega = self.examples_per_step * max(1, min(LENGTH_GROUP_STEPS,
                                                       num_examples // (4 * self.examples_per_step)))
            groups = []
            for chunk in order.split(mega):
                by_length = torch.sort(self._lengths[chunk], descending=True, stable=True).indices
                groups.append(chunk[by_length])
            order = torch.cat(groups)
        self._epoch_order_cache = (epoch, order)
        return order

    def _train_step(self, model, optimizer, micro_batches, task) -> tuple[torch.Tensor, torch.Tensor, int]:
        cfg = self.config
        local_count = sum(task.count_targets(b) for b in micro_batches)
        global_count = self.reduce_sum(torch.tensor(float(local_count)))
        scale = self.num_processes / global_count.clamp(min=1.0)
        if self.uses_deepspeed:  # DeepSpeed divides every micro-batch loss by its accumulation steps itself
            scale = scale * cfg.grad_accum
        model.train()
        loss_total = torch.zeros((), device=self.device)
        tokens = 0
        for i, batch in enumerate(micro_batches):
            tokens += _count_tokens(batch)
            batch = self._to_device(batch)
            sync = i == len(micro_batches) - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(model), self.autocast():
                loss_sum = task.loss_sum(model, batch)
            self.accelerator.backward(loss_sum * scale)
            loss_total += loss_sum.detach().float()
        if cfg.max_grad_norm and not self.uses_deepspeed:
            self.accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_total, torch.tensor(float(local_count)), tokens

    def _check_finite(self, pending: list[tuple[int, torch.Tensor, torch.Tensor]]) -> float:
        """Raise on the first step whose loss was NaN/inf; return the mean loss of the pending steps."""
        losses = self.reduce_sum(torch.stack([p[1] for p in pending]))
        counts = self.reduce_sum(torch.stack([p[2] for p in pending]).to(losses.device))
        per_step = (losses / counts.clamp(min=1)).tolist()
        for (step, _, _), value in zip(pending, per_step, strict=True):
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"loss became {value} at step {step}; stopped without saving a checkpoint after it. "
                    "Lower train.lr, set train.max_grad_norm, or try train.mixed_precision=no"
                )
        return float(losses.sum() / counts.sum().clamp(min=1))

    def _evaluate(self, model, task, step, metrics_log) -> dict[str, float]:
        model.eval()
        with torch.no_grad(), self.autocast():
            metrics = task.evaluate(model, self)
        model.train()
        if metrics:
            metrics_log.write({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
            if self._trackers:
                self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.print(f"step {step}: {shown}")
        return metrics

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, epoch: int, model, optimizer, scheduler) -> Path:
        """Write a checkpoint atomically: temporary folder, manifest, marker last, rename, then rotate old ones.

        A full disk (on any process) removes the temporary folder, keeps every earlier checkpoint and ends the
        run with one line naming the device and the file.
        """
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
        tmp = self.checkpoint_dir / f"{TMP_PREFIX}{step:08d}"
        error = None
        try:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                with ckpt.writing(tmp):
                    tmp.mkdir(parents=True)
        except HftoolError as exc:
            error = exc
        self._raise_if_any_failed(error, tmp)
        try:
            self._write_training_state(tmp, model, optimizer, scheduler)
        except HftoolError as exc:
            error = exc
        self._raise_if_any_failed(error, tmp)
        try:
            if self.is_main:
                cfg = self.config
                state = {"global_step": step, "epoch": epoch, "num_processes": self.num_processes,
                         "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "seed": cfg.seed}
                ckpt.write_json(tmp / STATE_FILE, state)
                ckpt.write_manifest(tmp)
                ckpt.write_synced(tmp / COMPLETE_MARKER, f"step {step}\n")
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                for old in complete_checkpoints(self.checkpoint_dir)[:-cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
        except HftoolError as exc:
            error = exc
        self._raise_if_any_failed(error, tmp)
        return final

    def _write_training_state(self, folder: Path, model, optimizer, scheduler) -> None:
        """Model, optimizer and scheduler (main process), and every process's random states."""
        if self.shards_parameters:  # the shards are the libraries' own format; Accelerate writes them
            self.accelerator.save_state(str(folder))
        elif self.is_main:
            ckpt.save_model(self.unwrap(model), folder)
            ckpt.save_optimizer(optimizer, folder)
        if self.is_main:
            ckpt.save_scheduler(scheduler, folder)
            if self.accelerator.scaler is not None:
                ckpt.save_scaler(self.accelerator.scaler, folder)
        ckpt.save_rng(folder, self.accelerator.process_index)

    def _raise_if_any_failed(self, error: HftoolError | None, tmp: Path) -> None:
        """Every process learns whether any failed, so none waits forever for one that stopped."""
        failed = self.reduce_sum(torch.tensor(0.0 if error is None else 1.0)).item() > 0
        if not failed:
            return
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise error or HftoolError(f"checkpoint {tmp.name} not saved: another process failed writing it")

    def _choose_checkpoint(self, strict: bool) -> Path | None:
        """The newest checkpoint that verifies (see :func:`checkpoints.choose_checkpoint`); skipped ones are
        moved aside by the main process once every process has made the same choice."""
        if self.is_main:
            for partial in ckpt.remove_partial_checkpoints(self.checkpoint_dir):
                self.print(f"removed {partial}, a checkpoint whose writing never finished")
        self.wait()
        chosen = ckpt.choose_checkpoint(self.checkpoint_dir, strict, self.print)
        self.wait()
        if self.is_main:
            newer = [p for p in complete_checkpoints(self.checkpoint_dir)
                     if chosen is None or ckpt.checkpoint_step(p) > ckpt.checkpoint_step(chosen)]
            for checkpoint in newer:
                self.print(f"moved the skipped checkpoint to {ckpt.set_aside(checkpoint)}")
        self.wait()
        return chosen

    def _load_checkpoint(self, folder: Path, model, optimizer, scheduler) -> None:
        if self.shards_parameters:
            self.accelerator.load_state(str(folder))
        else:
            ckpt.load_model(self.unwrap(model), folder)
            ckpt.load_optimizer(optimizer, folder)
        ckpt.load_scheduler(scheduler, folder)
        if self.accelerator.scaler is not None:
            ckpt.load_scaler(self.accelerator.scaler, folder)
        ckpt.load_rng(folder, self.accelerator.process_index)

    def _check_resume_compatible(self, state: dict, strict: bool) -> None:
        now = {"num_processes": self.num_processes, "batch_size": self.config.batch_size,
               "grad_accum": self.config.grad_accum, "seed": self.config.seed}
        changed = [f"{k}: {state.get(k)} -> {v}" for k, v in now.items() if state.get(k) != v]
        if not changed:
            return
        message = "resuming with changed settings (" + "; ".join(changed) + "): data order and results differ"
        if strict:
            raise HftoolError(message + "; drop --strict-resume to accept, or restore the settings")
        self.print(f"warning: {message}")

    # ---- signals ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _catch_stop_signals(self):
        """SIGTERM/SIGINT finish the current step, save a checkpoint and exit cleanly."""
        def request_stop(signum, _frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _agreed_stop(self) -> bool:
        """Every process stops at the same step if any of them got a signal."""
        flag = torch.tensor(1.0 if self._stop_signal is not None else 0.0)
        return bool(self.reduce_sum(flag).item() > 0) if self.num_processes > 1 else bool(flag.item())

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def transformer_block_classes(model: torch.nn.Module) -> list[str]:
    """Names of the repeated transformer block classes (GPT2Block, BloomBlock, BertLayer): the unit FSDP wraps.

    transformers declares them as ``_no_split_modules``; for a model that does not, the class of the entries of
    its longest ``ModuleList`` (its stack of layers) is used.
    """
    declared = getattr(model, "_no_split_modules", None)
    if declared:
        present = {type(m).__name__ for m in model.modules()}
        return [name for name in declared if name in present]
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not stacks:
        return []
    return [type(max(stacks, key=len)[0]).__name__]


def per_process_batch_size(config: TrainConfig, num_processes: int) -> int:
    """The micro-batch each process takes so that ``global_batch_size`` is met exactly, or a clear refusal."""
    share = num_processes * config.grad_accum
    if config.global_batch_size % share:
        raise HftoolError(
            f"train.global_batch_size={config.global_batch_size} does not divide across {num_processes} "
            f"process(es) x train.grad_accum={config.grad_accum}; use a multiple of {share}"
        )
    return config.global_batch_size // share


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
        with ckpt.writing(tmp):
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, path)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with ckpt.writing(self.path), self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def _logged_step(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _glibc_malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere. Batches of varying shapes (length-grouped padding) leave
    freed activation memory scattered through the heap, which glibc keeps; trimming hands it back to the
    system, so resident memory tracks what the steps really hold, at the cost of faulting it in again
    (measured on SQuAD with MiniLM: every step, peak RSS 3,936 instead of 5,683 MiB, 17 % slower)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and normalisation weights, as in BERT and GPT-2 training."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             fused=fused or None)


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


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None
