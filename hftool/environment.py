"""Facts about the machine that decide how a run goes: devices, precision support, launcher config, Hub."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

from hftool.hub import hub_reachable, offline_mode

PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "accelerate", "evaluate", "safetensors")


def bf16_supported() -> bool:
    """bf16 is worth using: a CUDA card that supports it, a TPU, or a CPU with native bf16 instructions."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if importlib.util.find_spec("torch_xla") is not None:
        return True
    return bool(getattr(torch.backends, "cpu", None)) and _cpu_has_native_bf16()


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return platform.machine() == "arm64"  # Apple silicon supports bf16 matmul
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_mixed_precision(requested: str) -> str:
    """``auto`` becomes bf16 where the device does bf16 natively, fp16 on CUDA without bf16, else no."""
    if requested != "auto":
        return requested
    import torch

    if bf16_supported():
        return "bf16"
    if torch.cuda.is_available():
        return "fp16"
    return "no"


def accelerate_config_in_force() -> str:
    from accelerate.commands.config.config_args import default_config_file

    path = os.environ.get("ACCELERATE_CONFIG_FILE", default_config_file)
    if "ACCELERATE_MIXED_PRECISION" in os.environ or "LOCAL_RANK" in os.environ:
        return f"launched by accelerate (world size {os.environ.get('WORLD_SIZE', '1')})"
    return path if os.path.isfile(path) else "none (single process, defaults)"


def describe_environment() -> dict[str, str]:
    import torch

    info: dict[str, str] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        info["cuda"] = f"{torch.cuda.device_count()} device(s): {names} (CUDA {torch.version.cuda})"
    else:
        info["cuda"] = "not available"
    info["mps"] = "available" if torch.backends.mps.is_available() else "not available"
    info["xla/tpu"] = "torch_xla installed" if importlib.util.find_spec("torch_xla") else "not available"
    info["cpu threads"] = str(torch.get_num_threads())
    info["bf16 usable"] = "yes" if bf16_supported() else "no"
    info["mixed_precision=auto"] = resolve_mixed_precision("auto")
    info["accelerate config"] = accelerate_config_in_force()
    if offline_mode():
        info["hugging face hub"] = "offline mode on (HF_HUB_OFFLINE)"
    else:
        info["hugging face hub"] = "reachable" if hub_reachable() else "unreachable (use local folders)"
    return info
