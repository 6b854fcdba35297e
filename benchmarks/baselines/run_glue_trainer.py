"""A plain Hugging Face run_glue-style sequence-classification script: the baseline of bench_classify.py.

It follows ``examples/pytorch/text-classification/run_glue.py``: texts padded to ``max_seq_length``
(``padding="max_length"``, run_glue's default), ``default_data_collator``, the stock ``Trainer``,
``trainer.predict`` on the validation set, accuracy computed from the argmax. Nothing from hftool is used.

    python benchmarks/baselines/run_glue_trainer.py --model M --train-file train.tsv --validation-file dev.tsv \\
        --output-dir runs/glue-baseline --metrics-json runs/glue-baseline/metrics.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    default_data_collator,
)


def read_tsv(path: str, limit: int | None) -> Dataset:
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return Dataset.from_dict({"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("--model", "--train-file", "--validation-file", "--output-dir", "--metrics-json"):
        parser.add_argument(name, required=True)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)

    def tokenize(batch):
        return tokenizer(batch["sentence"], padding="max_length", max_length=args.max_length, truncation=True)

    train = read_tsv(args.train_file, args.max_train_samples).map(tokenize, batched=True, remove_columns=["sentence"])
    dev = read_tsv(args.validation_file, args.max_eval_samples).map(tokenize, batched=True,
                                                                    remove_columns=["sentence"])
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr, num_train_epochs=args.epochs,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_scheduler_type="linear",
        bf16=args.bf16, save_strategy="no", eval_strategy="no", report_to=[], logging_steps=50, seed=args.seed,
        disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=default_data_collator,
                      processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    output = trainer.predict(dev)
    predicted = np.argmax(output.predictions, axis=-1)
    accuracy = 100 * float((predicted == np.array(dev["label"])).mean())
    eval_seconds = time.perf_counter() - started
    result = {"accuracy": accuracy, "train_examples": len(train),
              "train_examples_per_s": len(train) * args.epochs / train_seconds,
              "eval_examples": len(dev), "eval_examples_per_s": len(dev) / eval_seconds}
    Path(args.metrics_json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
