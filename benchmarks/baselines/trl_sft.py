"""The plain Hugging Face way of instruction fine-tuning: TRL's ``SFTTrainer``, the baseline of bench_sft.py.

Reads the conversational prompt-completion JSONL the benchmark writes (``{"prompt": [messages], "completion":
[messages]}``), so TRL masks the prompt itself (``completion_only_loss``, its default for that layout) and applies
the model folder's chat template. ``--mode default`` keeps SFTConfig's defaults (gradient checkpointing on, bf16
on); ``--mode tuned`` sets them for the machine: no gradient checkpointing, bf16 only with ``--bf16`` (native
bf16), and packing (best-fit decreasing, padding-free) with ``--packing``. ``--lora-r`` trains ``peft`` LoRA
adapters (``--lora-targets``, alpha, dropout) instead of every weight, as TRL's ``peft_config`` does. Nothing from
hftool is used.

    python benchmarks/baselines/trl_sft.py --model M --train-file train.jsonl --output-dir out --mode tuned
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer


class StepLog(TrainerCallback):
    """Each optimizer step's end time and logged loss (the Trainer logs every step here)."""

    def __init__(self):
        self.start, self.times, self.losses = time.perf_counter(), [], {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("--model", "--train-file", "--output-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--mode", choices=("default", "tuned"), default="tuned")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--lora-r", type=int, default=0, help="0: full fine-tuning")
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--lora-targets", help="comma-separated layer names (with --lora-r)")
    args = parser.parse_args()
    if args.lora_r and not args.lora_targets:
        parser.error("--lora-r needs --lora-targets")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    settings = dict(output_dir=args.output_dir, num_train_epochs=args.epochs, learning_rate=args.lr,
                    per_device_train_batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
                    lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                    logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0)
    if args.mode == "tuned":
        settings.update(gradient_checkpointing=False, bf16=args.bf16, packing=args.packing)
    lora = None
    if args.lora_r:
        from peft import LoraConfig

        lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=args.lora_targets.split(","), task_type="CAUSAL_LM")
    clock = StepLog()
    trainer = SFTTrainer(model=model, args=SFTConfig(**settings), processing_class=tokenizer,
                         train_dataset=load_dataset("json", data_files=args.train_file, split="train"),
                         callbacks=[clock], peft_config=lora)
    dataset = trainer.train_dataset
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    targets = sum(sum(label != -100 for label in labels) for labels in dataset["labels"])
    metrics = trainer.train().metrics
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    result = {"steps": trainer.state.global_step, "train_runtime_s": metrics["train_runtime"],
              "tokens": tokens, "target_tokens": targets, "step_end_times": clock.times,
              "losses": clock.losses, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "gradient_checkpointing": trainer.args.gradient_checkpointing, "bf16": trainer.args.bf16,
              "packing": trainer.args.packing, "lora": bool(lora),
              "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}
    with open(f"{args.output_dir}/trl_result.json", "w", encoding="utf-8") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
