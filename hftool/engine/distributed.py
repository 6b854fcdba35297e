"""The Accelerator and its distributed settings: processes, precision, DeepSpeed and FSDP.

The recipe's ``train:`` values are handed to DeepSpeed and FSDP here, so a launch config needs no copy of them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration

from hftool.engine.config import TrainConfig
from hftool.environment import check_bf16_pays, resolve_mixed_precision
from hftool.errors import HftoolError
from hftool.launch import check_launch_matches_hardware


def make_accelerator(config: TrainConfig, output_dir: Path) -> tuple[Accelerator, bool]:
    """The Accelerator for a run, and whether it logs to TensorBoard; refuses a launch that does not match."""
    trackers = "tensorboard" if config.report_to == "tensorboard" and _has_tensorboard() else None
    check_launch_matches_hardware()
    check_bf16_pays(config.mixed_precision, config.allow_slow_bf16)
    mixed_precision = resolve_mixed_precision(config.mixed_precision)
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        accelerator = Accelerator(
            mixed_precision=mixed_precision,
            log_with=trackers,
            project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                logging_dir=str(output_dir / "tensorboard")),
            dynamo_backend="inductor" if config.compile else None,
            step_scheduler_with_optimizer=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise HftoolError(f"train.mixed_precision={config.mixed_precision}: {exc}") from None
    if accelerator.num_processes != launched_world:
        raise HftoolError(f"launched as {launched_world} processes but Accelerate set up "
                          f"{accelerator.num_processes}; check the accelerate config ('hftool env')")
    return accelerator, trackers is not None


def _has_tensorboard() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def per_process_batch_size(config: TrainConfig, num_processes: int) -> int:
    """``train.batch_size``, or with ``global_batch_size`` the micro-batch each process takes so that it is met
    exactly (a clear refusal when it does not divide)."""
    if config.global_batch_size is None:
        return config.batch_size
    share = num_processes * config.grad_accum
    if config.global_batch_size % share:
        raise HftoolError(
            f"train.global_batch_size={config.global_batch_size} does not divide across {num_processes} "
            f"process(es) x train.grad_accum={config.grad_accum}; use a multiple of {share}"
        )
    return config.global_batch_size // share


def uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def shards_parameters(accelerator: Accelerator) -> bool:
    """FSDP and DeepSpeed hold parameters in their own flat shards: only the model's forward sees them whole."""
    return uses_deepspeed(accelerator) or accelerator.distributed_type == DistributedType.FSDP


def static_shapes(accelerator: Accelerator) -> bool:
    """XLA (TPU) compiles one graph per shape: keep every batch the same size."""
    return accelerator.distributed_type == DistributedType.XLA


def configure_sharding(accelerator: Accelerator, model: torch.nn.Module, config: TrainConfig,
                       batch_size: int) -> None:
    """Before ``prepare()``: DeepSpeed owns accumulation boundaries and clipping, so it gets the recipe's values;
    FSDP wraps each transformer block unless the launch config names the classes."""
    if uses_deepspeed(accelerator):
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["gradient_accumulation_steps"] = config.grad_accum
        ds_config["train_micro_batch_size_per_gpu"] = batch_size
        ds_config["gradient_clipping"] = config.max_grad_norm or 0.0
    fsdp_plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if fsdp_plugin is not None and fsdp_plugin.transformer_cls_names_to_wrap is None:
        fsdp_plugin.transformer_cls_names_to_wrap = transformer_block_classes(model)


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
