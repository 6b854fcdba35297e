"""Facts about the machine that decide how a run goes: devices, precision support, launcher config, Hub."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

from hftool.hub import hub_reachable, offline_mode

PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "accelerate", "evaluate", "safetensors")


SIMULATE_CPU_VAR = "HFTOOL_SIMULATE_CPU"
# What each simulated CPU keeps of the real one's flags: "avx2" is an AVX2 + FMA machine without AVX-512 or
# native bf16 (as AMD Zen 3). Set it before torch is imported to make the kernels match too (hftool/__init__.py).
SIMULATED_CPUS = {"avx2": ("avx2", "fma", "avx", "sse4_2")}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # bf16: Arm (Graviton 3, Neoverse V1+) in /proc/cpuinfo

# How much slower bf16 runs than float32 where the CPU emulates it: benchmarks/bench_bf16.py on a 2-core AMD EPYC
# (avx512_bf16) restricted to the kernels an AVX2-only CPU gets (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2):
# a 1024x1024 product and a 4-layer x 256 GPT-2 training step (benchmarks/recorded/bf16-emulation-*.json).
EMULATED_BF16_SLOWDOWN = {"matmul": 35.0, "training step": 4.5}


def simulated_cpu() -> str | None:
    """The CPU named by HFTOOL_SIMULATE_CPU (tests and CI run as if on that machine), or None."""
    name = os.environ.get(SIMULATE_CPU_VAR, "").strip().lower()
    if not name:
        return None
    if name not in SIMULATED_CPUS:
        from hftool.errors import HftoolError

        raise HftoolError(f"{SIMULATE_CPU_VAR}={name}: unknown CPU; use one of {', '.join(SIMULATED_CPUS)}")
    return name


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (/proc/cpuinfo), less those HFTOOL_SIMULATE_CPU takes away."""
    flags = set(cpuinfo_field(("flags", "Features")).split())
    simulated = simulated_cpu()
    return flags & set(SIMULATED_CPUS[simulated]) if simulated else flags


def cpu_has_native_bf16() -> bool:
    """bf16 matrix products run natively (AVX512-BF16 or AMX on x86, Arm's BF16, Apple silicon); else emulated."""
    if simulated_cpu():
        return False
    if not os.path.exists("/proc/cpuinfo"):
        return platform.machine() == "arm64"  # Apple silicon supports bf16 matmul
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def cpu_has_amx_bf16() -> bool:
    """AMX tiles with bf16 (Intel Sapphire Rapids and later): where PyTorch's CPU attention kernel takes bf16 and
    fp16 fast (oneDNN's brgemm); without them its bf16 path runs several times slower than its float32 one."""
    return not simulated_cpu() and "amx_bf16" in cpu_flags()


def cpu_vendor() -> str:
    """The CPU's maker as /proc/cpuinfo names it ("GenuineIntel", "AuthenticAMD", ...; "" where unknown): MKL,
    which runs PyTorch's float32 products on x86, has its fast kernels for Intel's own."""
    return cpuinfo_field(("vendor_id",)).strip()


def cpuinfo_field(names: tuple[str, ...]) -> str:
    """The value of the first /proc/cpuinfo line named one of ``names`` ("" where there is none, or no file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            line = next((line for line in fh if line.startswith(names)), "")
    except OSError:
        line = ""
    return line.partition(":")[2]


def missing_bf16_feature() -> str:
    """The CPU feature whose absence makes bf16 slow, for messages and skip reasons."""
    return "native bf16 (avx512_bf16 or amx_bf16)"


def on_cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available() and importlib.util.find_spec("torch_xla") is None \
        and not torch.backends.mps.is_available()


def bf16_supported() -> bool:
    """bf16 is worth using: a CUDA card that supports it, a TPU, or a CPU with native bf16 instructions."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if importlib.util.find_spec("torch_xla") is not None:
        return True
    return cpu_has_native_bf16()


def check_bf16_pays(requested: str, allow_slow: bool, setting: str = "train.mixed_precision",
                    insist: str | None = "train.allow_slow_bf16=true") -> None:
    """Refuse an explicit ``bf16`` on a CPU that would emulate it, unless the user insists (allow_slow).

    ``setting`` and ``insist`` name the flag as the user gave it (a recipe key or a command-line option).
    """
    if requested != "bf16" or allow_slow or not on_cpu_only() or cpu_has_native_bf16():
        return
    from hftool.errors import HftoolError

    slow = EMULATED_BF16_SLOWDOWN
    raise HftoolError(f"{setting}=bf16: this CPU lacks {missing_bf16_feature()}, so bf16 is emulated "
                      f"(matrix products {slow['matmul']:.0f}x, a small GPT-2 training step {slow['training step']}x "
                      f"slower than float32, measured); use {setting}=auto (or no)"
                      + (f", or {insist} to insist" if insist else ""))


def bf16_inference_warning(dtype: str) -> str | None:
    """A warning for ``--dtype bfloat16`` on a CPU that emulates bf16, or None where it runs natively."""
    if dtype != "bfloat16" or not on_cpu_only() or cpu_has_native_bf16():
        return None
    return (f"warning: --dtype bfloat16: this CPU lacks {missing_bf16_feature()}; bf16 matrix products are "
            f"emulated, {EMULATED_BF16_SLOWDOWN['matmul']:.0f}x slower than float32 (measured); "
            "--dtype float32 is faster here")


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
    flags = cpu_flags()
    info["cpu features"] = " ".join(f for f in ("avx2", "avx512f", *NATIVE_BF16_FLAGS) if f in flags) or "none"
    if simulated_cpu():
        info["cpu features"] += f" (simulated by {SIMULATE_CPU_VAR}={simulated_cpu()})"
    info["bf16 usable"] = "yes" if bf16_supported() else "no"
    info["mixed_precision=auto"] = resolve_mixed_precision("auto")
    info["accelerate config"] = accelerate_config_in_force()
    if offline_mode():
        info["hugging face hub"] = "offline mode on (HF_HUB_OFFLINE)"
    else:
        info["hugging face hub"] = "reachable" if hub_reachable() else "unreachable (use local folders)"
    return info
