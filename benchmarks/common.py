"""What the training benchmarks share: paths, the child-process environment, running a step, per-step speeds.

The benchmark scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import
this module as ``common``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
WIKITEXT_VALID = SHARED_DATA / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"
RESULTS = REPO / "benchmarks" / "results"


def child_env() -> dict:
    """The environment of every measured process: this checkout on the path, offline, quiet."""
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


def run(cmd: list[str], env: dict) -> None:
    """Run one step of a benchmark; on failure stop with the command and the end of its stderr."""
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")


def require(path: Path) -> None:
    if not path.exists():
        sys.exit(f"benchmark data not found: {path} (the ../shared folder beside the repository)")


def hftool_steps(output_dir: Path) -> tuple[list[float], dict[int, float]]:
    """Per-step tokens/s (in step order) and losses from the ``metrics.jsonl`` an hftool run writes."""
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    per_step = {r["step"]: r for r in records if "loss" in r}
    return [per_step[s]["tokens_per_s"] for s in sorted(per_step)], {s: per_step[s]["loss"] for s in per_step}


def trainer_steps(timing_file: Path) -> tuple[list[float], dict[int, float], float]:
    """Per-step tokens/s, losses and peak RSS (MB) from the JSON a baseline's ``StepClock`` writes."""
    raw = json.loads(timing_file.read_text())
    times = [0.0, *raw["step_end_times"]]
    tokens = raw["tokens_per_step"]
    if isinstance(tokens, int):
        tokens = [tokens] * len(raw["step_end_times"])
    tokens_per_s = [n / (b - a) for n, a, b in zip(tokens, times, times[1:], strict=False)]
    return tokens_per_s, {int(k): v for k, v in raw["losses"].items()}, raw["peak_rss_mb"]


def window_median(values: list[float], first: int, last: int) -> float:
    """Median of the per-step values for steps first+1..last (steps count from 1): leaves out warm-up steps."""
    return statistics.median(values[first:last])


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def saved_parameters(folder: Path) -> int:
    """The weights a run saved: the whole model (full fine-tune) or the adapter and head (LoRA)."""
    from safetensors import safe_open

    name = "adapter_model.safetensors" if (folder / "adapter_config.json").is_file() else "model.safetensors"
    with safe_open(str(folder / name), "pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())


def machine(precision: str) -> dict:
    """What a result depends on: CPU model, cores, the ISA flags that decide the kernels, precision, versions.

    Every benchmark puts this in its JSON and prints it, so a figure always says which machine class it is from.
    HFTOOL_SIMULATE_CPU / ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY are recorded when set, as they change the kernels.
    """
    import importlib.metadata

    import torch

    from hftool.environment import cpu_flags

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    flags = cpu_flags()
    info = {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "isa": {flag: flag in flags for flag in ISA_FLAGS}, "precision": precision,
            "torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
            "load_average": [round(x, 2) for x in os.getloadavg()]}  # others' jobs on a shared machine skew speed
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    emulation = {k: os.environ[k] for k in ("HFTOOL_SIMULATE_CPU", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
                 if os.environ.get(k)}
    if emulation:
        info["emulation"] = emulation
    return info


def describe(info: dict) -> str:
    """One printed line for :func:`machine`'s record."""
    isa = " ".join(flag for flag, present in info["isa"].items() if present) or "none of " + " ".join(ISA_FLAGS)
    text = (f"machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), ISA: {isa}; "
            f"precision {info['precision']}; torch {info['torch']}, transformers {info['transformers']}; "
            f"load average {info['load_average'][0]}")
    if info.get("gpu"):
        text += f"; GPU {info['gpu']}"
    if info.get("emulation"):
        text += "; emulating " + " ".join(f"{k}={v}" for k, v in info["emulation"].items())
    return text
