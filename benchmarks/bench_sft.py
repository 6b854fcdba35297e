"""Instruction fine-tuning benchmark: hftool finetune sft against TRL's SFTTrainer, same model, data, steps, seed.

A GPT-2 4 x 256 (random weights, a byte-level BPE vocabulary trained by hftool on WikiText-2, ChatML tokens) is
fine-tuned on SQuAD questions as chats (system instruction, context + question, answer; those that fit 384 tokens)
for one epoch, the loss on the answer tokens only, by:

- hftool: ``finetune sft`` with packing (conversations kept apart by their position ids);
- TRL with its defaults (gradient checkpointing and bf16 on, no packing), as a user gets it;
- TRL tuned for the machine: no gradient checkpointing, bf16 only where the CPU has it natively; once padded to
  each batch's longest chat and once with packing (best-fit decreasing, padding-free: on a CPU without flash
  attention the packed row becomes one long sequence under a block mask, which can be slower than padding).

Both read one conversational prompt-completion JSONL and one chat template (ChatML, the end-of-text token after
the answer), so they train on the same tokens: the script checks that the target-token counts match. Reported:
training tokens/s (all conversation tokens / training time), peak memory, the mean training loss over the last
tenth of the steps, and the held-out completion loss of each final model on the same dev conversations, scored by
one function. The ratio that counts is hftool against the faster of the two tuned TRL runs.

``--adapter lora`` runs every arm with the same ``peft`` LoRA (rank 8, alpha 16, dropout 0.05, every GPT-2 block
linear layer: hftool's default targets), TRL through its ``peft_config``, at a LoRA learning rate.

    python benchmarks/bench_sft.py            # 4,000 training chats, 300 held-out (long on a small CPU)
    python benchmarks/bench_sft.py --quick    # a minute or two: checks the plumbing, speeds are indicative
    python benchmarks/bench_sft.py --adapter lora

Writes benchmarks/results/sft.json (sft-lora.json; git-ignored) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, SHARED_DATA, WIKITEXT_VALID, child_env, describe, machine, require, saved_parameters

SQUAD_TRAIN = SHARED_DATA / "squad" / "train-v1.1-subset-44-articles.json"
SQUAD_DEV = SHARED_DATA / "squad" / "dev-v1.1-even-articles.json"
GOAL_SPEEDUP = 1.5
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}  # the layers: hftool's GPT-2 default (hftool.adapters), given to TRL


def prepare(folder: Path, args) -> tuple[Path, Path, Path]:
    """The base model folder and the train / dev JSONL, written once per settings."""
    from transformers import AutoModelForCausalLM

    from hftool.data.sft import read_conversations
    from hftool.data.text import read_text_documents
    from hftool.data.tokenizer_training import train_tokenizer
    from hftool.models import build_config
    from hftool.tasks import sft

    folder.mkdir(parents=True, exist_ok=True)
    base, train, dev = folder / "base", folder / "train.jsonl", folder / "dev.jsonl"
    documents = read_text_documents(WIKITEXT_VALID)
    tokenizer = train_tokenizer(documents, "byte-bpe", vocab_size=args.vocab_size)
    sft.use_chat_template(tokenizer, "chatml")
    # TRL ends a conversational completion with no end-of-text token: the template writes it, for both.
    tokenizer.chat_template = sft.CHATML_TEMPLATE + "{% if not add_generation_prompt %}{{ eos_token }}{% endif %}"
    config = build_config("gpt2", {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": args.max_length},
                          tokenizer, args.max_length)
    config.vocab_size = len(tokenizer)
    import torch

    torch.manual_seed(args.seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    for path, source, count in ((train, SQUAD_TRAIN, args.train_examples), (dev, SQUAD_DEV, args.eval_examples)):
        # only chats that fit max_length: TRL keeps chats cut before their answer, hftool drops them
        conversations = read_conversations(source, "--file", "squad")[:count * 2]
        whole, _ = sft.encode(tokenizer, conversations, 10**9, False)
        conversations = [c for c, item in zip(conversations, whole, strict=True)
                         if len(item["input_ids"]) <= args.max_length][:count]
        path.write_text("".join(json.dumps({"prompt": list(c.messages[:-1]), "completion": [c.messages[-1]]}) + "\n"
                                for c in conversations))
    return base, train, dev


def run_measured(command: list[str], log: Path) -> dict:
    """Wall seconds and peak RSS (MiB) of ``command``."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**child_env(), "HFTOOL_CACHE": cache}
        started = time.perf_counter()
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed; see {log}")
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def run_hftool(base: Path, train: Path, dev: Path, out: Path, args, precision: str) -> dict:
    fields = {"model.name_or_path": base, "data.format": "auto", "data.max_length": args.max_length,
              "data.packing": "true", "data.truncation": "keep_start", "data.max_train_examples": "null",
              "data.max_eval_examples": "null", "evaluation.max_generate_examples": 0, "train.output_dir": out,
              "train.epochs": 1, "train.max_steps": "null", "train.batch_size": args.batch_size, "train.lr": args.lr,
              "train.scheduler": "cosine", "train.warmup_steps": 0, "train.weight_decay": 0.0,
              "train.max_grad_norm": 1.0, "train.seed": args.seed, "train.mixed_precision": precision,
              "train.log_every": 1, "train.save_every": 0, "train.report_to": "none"}
    if args.adapter == "lora":
        fields.update({"adapter.kind": "lora", "adapter.r": LORA["r"], "adapter.alpha": LORA["alpha"],
                       "adapter.dropout": LORA["dropout"]})
    measured = run_measured([sys.executable, "-m", "hftool", "finetune", "sft", "-r", "sft-gpt2-mini-squad",
                             "--overwrite", "--train-file", str(train), "--validation-file", str(dev),
                             *(f"{k}={v}" for k, v in fields.items())], RESULTS / "sft-hftool.log")
    summary = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    return {**measured, "steps": summary["steps"], "tokens": summary["train_tokens"],
            "target_tokens": summary["train_target_tokens"], "train_s": summary["wall_s"],
            "trainable_parameters": saved_parameters(out),
            "tokens_per_s": summary["train_tokens"] / summary["wall_s"], "losses": losses}


def run_trl(base: Path, train: Path, out: Path, args, mode: str, bf16: bool, packing: bool = False) -> dict:
    command = [sys.executable, str(REPO / "benchmarks" / "baselines" / "trl_sft.py"), "--model", str(base),
               "--train-file", str(train), "--output-dir", str(out), "--mode", mode, "--epochs", "1",
               "--lr", str(args.lr), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--seed", str(args.seed)]
    if mode == "tuned":
        command += (["--packing"] if packing else []) + (["--bf16"] if bf16 else [])
    if args.adapter == "lora":
        from hftool.adapters import DEFAULT_TARGETS

        command += ["--lora-r", str(LORA["r"]), "--lora-alpha", str(LORA["alpha"]),
                    "--lora-dropout", str(LORA["dropout"]), "--lora-targets", ",".join(DEFAULT_TARGETS["gpt2"])]
    measured = run_measured(command, RESULTS / f"{out.parent.name}-{out.name}.log")
    raw = json.loads((out / "trl_result.json").read_text())
    losses = [raw["losses"][k] for k in sorted(raw["losses"], key=int)]
    return {**measured, "steps": raw["steps"], "tokens": raw["tokens"], "target_tokens": raw["target_tokens"],
            "train_s": raw["train_runtime_s"], "tokens_per_s": raw["tokens"] / raw["train_runtime_s"],
            "losses": losses, "trainable_parameters": raw["trainable_parameters"],
            "settings": {k: raw[k] for k in ("gradient_checkpointing", "bf16", "packing", "lora")}}


def held_out_loss(model_dir: Path, dev: Path, max_length: int) -> float:
    """Mean loss per answer token of ``model_dir`` on the dev conversations (float32, one function for all)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hftool.data.sft import read_conversations
    from hftool.tasks import sft

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).merge_and_unload().eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    items, _ = sft.encode(tokenizer, read_conversations(dev, "--file"), max_length, False)
    task = sft.SftTask(tokenizer, max_length)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), 16):
            batch = task.collate(items[start:start + 16], 0)
            total += float(task.loss_sum(model, batch))
            count += task.count_targets(batch)
    return total / count


def tail_mean(losses: list[float]) -> tuple[float, float]:
    """Mean training loss over the last tenth of the steps and its standard error (the two runs' batches differ,
    so their tails are compared within these errors; the held-out loss is on the same conversations)."""
    tail = losses[-max(2, len(losses) // 10):]
    return statistics.fmean(tail), statistics.stdev(tail) / len(tail) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 training chats, 32 held out")
    parser.add_argument("--train-examples", type=int, default=4000)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--adapter", choices=("none", "lora"), default="none")
    parser.add_argument("--lr", type=float, default=None, help="3e-4 full, 1e-3 LoRA")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--skip-trl-default", action="store_true", help="leave out TRL's (slow) default run")
    args = parser.parse_args()
    if args.quick:
        args.train_examples, args.eval_examples = 64, 32
    if args.lr is None:
        args.lr = 1e-3 if args.adapter == "lora" else 3e-4
    for path in (SQUAD_TRAIN, SQUAD_DEV, WIKITEXT_VALID):
        require(path)
    sys.path.insert(0, str(REPO))
    from hftool.adapters import DEFAULT_TARGETS
    from hftool.environment import cpu_has_native_bf16

    bf16 = cpu_has_native_bf16()
    precision = "bf16" if bf16 else "no"
    RESULTS.mkdir(parents=True, exist_ok=True)
    folder = RESULTS / ("sft" if args.adapter == "none" else "sft-lora")
    base, train, dev = prepare(folder, args)
    runs = {"hftool": run_hftool(base, train, dev, folder / "hftool", args, precision),
            "trl_tuned": run_trl(base, train, folder / "trl-tuned", args, "tuned", bf16),
            "trl_tuned_packed": run_trl(base, train, folder / "trl-tuned-packed", args, "tuned", bf16, packing=True)}
    if not args.skip_trl_default:
        runs["trl_default"] = run_trl(base, train, folder / "trl-default", args, "default", bf16)
    for name, run in runs.items():
        run["held_out_loss"] = held_out_loss(folder / name.replace("_", "-"), dev, args.max_length)
        run["train_loss_tail"], run["train_loss_tail_se"] = tail_mean(run.pop("losses"))
    same_targets = len({run["target_tokens"] for run in runs.values()}) == 1
    ratios = {f"speedup_vs_{name}": runs["hftool"]["tokens_per_s"] / run["tokens_per_s"]
              for name, run in runs.items() if name != "hftool"}
    best = max(("trl_tuned", "trl_tuned_packed"), key=lambda name: runs[name]["tokens_per_s"])
    ratios["speedup_vs_best_tuned_trl"] = ratios[f"speedup_vs_{best}"]
    ratios["memory_vs_best_tuned_trl"] = runs["hftool"]["peak_rss_mib"] / runs[best]["peak_rss_mib"]
    report = {"mode": "quick" if args.quick else "full", "settings": vars(args),
              "lora": {**LORA, "targets": DEFAULT_TARGETS["gpt2"]} if args.adapter == "lora" else None,
              "precision": precision,
              "machine": machine(precision), "runs": runs, "best_tuned_trl": best, "ratios": ratios,
              "same_target_tokens": same_targets,
              "goals_met": {"speedup_1.5x_vs_tuned_trl": ratios["speedup_vs_best_tuned_trl"] >= GOAL_SPEEDUP,
                            "memory_at_most_tuned_trl": ratios["memory_vs_best_tuned_trl"] <= 1.0}}
    result = RESULTS / f"{folder.name}.json"
    result.write_text(json.dumps(report, indent=2) + "\n")
    print(describe(report["machine"]))
    names = list(runs)
    print("| | " + " | ".join(names) + " |\n| --- |" + " ---: |" * len(names))
    for label, key, fmt in (("steps", "steps", "{}"), ("training tokens/s", "tokens_per_s", "{:,.0f}"),
                            ("peak memory (MiB)", "peak_rss_mib", "{:,.0f}"),
                            ("training loss, last tenth of steps", "train_loss_tail", "{:.3f}"),
                            ("its standard error", "train_loss_tail_se", "{:.3f}"),
                            ("held-out completion loss", "held_out_loss", "{:.3f}"),
                            ("answer tokens trained on", "target_tokens", "{:,}"),
                            ("trainable parameters", "trainable_parameters", "{:,}")):
        print(f"| {label} | " + " | ".join(fmt.format(runs[n][key]) for n in names) + " |")
    print("\n" + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) + f"; same answer tokens: {same_targets}")
    print(f"wrote {result}")


if __name__ == "__main__":
    main()
