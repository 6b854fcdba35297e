"""Start several training processes without a separate tool, and check that a launch matches the hardware.

``hftool pretrain --num-processes 2 ...`` re-executes the same command through Accelerate's launcher
(``accelerate launch --multi_gpu``, i.e. torchrun): one process per GPU, or data parallel on the CPU over gloo
where there is no GPU.
"""

from __future__ import annotations

import os
import sys

from hftool.errors import HftoolError

NUM_PROCESSES_FLAG = "--num-processes"


def launched_by_a_distributed_launcher() -> bool:
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def relaunch(num_processes: int, argv: list[str] | None = None) -> None:
    """Replace this process with ``accelerate launch`` running ``num_processes`` copies of this command.

    Returns without doing anything for one process or when already inside a distributed launch (the CLI option
    refuses fewer than one). The process is replaced (not wrapped), so signals such as SIGTERM reach the launcher,
    which passes them on to every rank.
    """
    if num_processes == 1 or launched_by_a_distributed_launcher():
        return
    import torch

    args = _without_num_processes(sys.argv[1:] if argv is None else argv)
    gpus = torch.cuda.device_count()
    if gpus and num_processes > gpus:
        raise HftoolError(f"{NUM_PROCESSES_FLAG} {num_processes}: only {gpus} GPU(s) are visible; "
                          f"use at most {gpus}")
    env = dict(os.environ)
    if not gpus:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "hftool", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(sys.executable, command, env)


def _without_num_processes(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == NUM_PROCESSES_FLAG:
            skip = True
        elif not arg.startswith(NUM_PROCESSES_FLAG + "="):
            out.append(arg)
    return out


def check_launch_matches_hardware() -> None:
    """Refuse a launch that asks for hardware this machine does not have, before any work is done."""
    import importlib.util

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    gpus = torch.cuda.device_count()
    wants_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
    sharded = [name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
               if os.environ.get(var, "").lower() in {"1", "true", "yes"}]
    if sharded and not gpus:
        raise HftoolError(f"the accelerate config asks for {sharded[0]}, which needs GPUs, and none is visible; "
                          f"launch with '{NUM_PROCESSES_FLAG} N' for data parallel on the CPU, or use a GPU machine")
    if os.environ.get("ACCELERATE_DISTRIBUTED_TYPE", "") == "XLA" or os.environ.get("ACCELERATE_USE_XLA"):
        if importlib.util.find_spec("torch_xla") is None:
            raise HftoolError("the accelerate config asks for a TPU (XLA) but torch_xla is not installed; "
                              "install torch_xla on the TPU VM or use another config")
    if world > 1 and not wants_cpu and not gpus and not torch.backends.mps.is_available():
        raise HftoolError(f"launched as {world} processes for GPUs but no GPU is visible; for data parallel on "
                          f"the CPU use '{NUM_PROCESSES_FLAG} {world}' (or set ACCELERATE_USE_CPU=1)")
    if gpus and not wants_cpu and local_world > gpus:
        raise HftoolError(f"launched {local_world} processes on this machine but only {gpus} GPU(s) are "
                          f"visible; use --num_processes {gpus} or fewer")


SUPPORTED_DISTRIBUTED = {"NO", "MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED", "XLA"}


def check_accelerate_config(path: str) -> dict:
    """Read an accelerate config file and check it asks for a setup the engine supports; returns its summary.

    The engine's requirements: FSDP wraps transformer blocks (or by size), DeepSpeed uses ZeRO stage 2 or 3,
    the precision is one the engine knows, and the processes split evenly over the machines.
    """
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(path)
    except Exception as exc:  # accelerate raises several types for bad files
        raise HftoolError(f"{path}: not a valid accelerate config ({exc})") from None
    kind = str(getattr(config.distributed_type, "value", config.distributed_type))
    if kind not in SUPPORTED_DISTRIBUTED:
        raise HftoolError(f"{path}: distributed_type {kind} is not supported by hftool "
                          f"(use one of {', '.join(sorted(SUPPORTED_DISTRIBUTED))})")
    precision = str(getattr(config.mixed_precision, "value", config.mixed_precision) or "no")
    if precision not in {"no", "fp16", "bf16"}:
        raise HftoolError(f"{path}: mixed_precision {precision} is not one of no, fp16, bf16")
    if config.num_processes < 1 or config.num_processes % max(config.num_machines, 1):
        raise HftoolError(f"{path}: num_processes {config.num_processes} does not split evenly over "
                          f"{config.num_machines} machine(s)")
    if kind == "FSDP":
        fsdp = config.fsdp_config or {}
        policy = fsdp.get("fsdp_auto_wrap_policy")
        if policy not in {"TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP"}:
            raise HftoolError(f"{path}: fsdp_auto_wrap_policy {policy} must be TRANSFORMER_BASED_WRAP (wraps "
                              "GPT2Block, BloomBlock, BertLayer) or SIZE_BASED_WRAP")
    if kind == "DEEPSPEED":
        stage = (config.deepspeed_config or {}).get("zero_stage")
        if stage not in (2, 3):
            raise HftoolError(f"{path}: deepspeed zero_stage {stage} is not 2 or 3")
    return {"distributed_type": kind, "num_processes": config.num_processes, "num_machines": config.num_machines,
            "mixed_precision": precision}
