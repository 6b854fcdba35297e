"""What the training benchmarks share: paths, the child-process environment, running a step, per-step speeds.

The benchmark scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import
this module as ``common``.
"""

from __future__ import annotations

import json
import os
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
