"""A plain Hugging Face run_ner-style token-classification script: the baseline of bench_ner.py.

It follows ``examples/pytorch/token-classification/run_ner.py``: words tokenized with
``is_split_into_words``, the label on each word's first sub-token (-100 elsewhere), sentences padded per
batch by ``DataCollatorForTokenClassification`` (run_ner's default), the stock ``Trainer``,
``trainer.predict``, then entity scores from seqeval in strict IOB2 mode. Nothing from hftool is used.

    python benchmarks/baselines/run_ner_trainer.py --model M --train-file train.txt --validation-file dev.txt \\
        --output-dir runs/ner-baseline --metrics-json runs/ner-baseline/metrics.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    Trainer,
    TrainingArguments,
)


def read_conll(path: str, limit: int | None) -> list[tuple[list[str], list[str]]]:
    sentences, tokens, tags = [], [], []
    for line in [*Path(path).read_text(encoding="utf-8").splitlines(), ""]:
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        tokens.append(fields[0])
        tags.append(fields[-1])
    return sentences[:limit] if limit else sentences


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

    train_sentences = read_conll(args.train_file, args.max_train_samples)
    dev_sentences = read_conll(args.validation_file, args.max_eval_samples)
    kinds = sorted({t[2:] for _, tags in train_sentences for t in tags if t != "O"})
    labels = ["O"] + [f"{p}-{k}" for k in kinds for p in "BI"]
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    def encode(sentences):
        encoded = tokenizer([s[0] for s in sentences], is_split_into_words=True, truncation=True,
                            max_length=args.max_length)
        all_labels = []
        for n, (_, tags) in enumerate(sentences):
            previous, row = None, []
            for word in encoded.word_ids(n):
                row.append(-100 if word is None or word == previous else label2id.get(tags[word], 0))
                previous = word
            all_labels.append(row)
        return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                                  "labels": all_labels})

    train, dev = encode(train_sentences), encode(dev_sentences)
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr, num_train_epochs=args.epochs,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_scheduler_type="linear",
        bf16=args.bf16, save_strategy="no", eval_strategy="no", report_to=[], logging_steps=50, seed=args.seed,
        disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=training_args, train_dataset=train,
                      data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    output = trainer.predict(dev)
    predicted = np.argmax(output.predictions, axis=-1)
    predictions = []
    for row, (tokens, _) in enumerate(dev_sentences):
        tags = [labels[p] for p, gold in zip(predicted[row], output.label_ids[row], strict=True) if gold != -100]
        predictions.append(tags + ["O"] * (len(tokens) - len(tags)))  # words cut off by max_length: O
    gold = [tags for _, tags in dev_sentences]
    options = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    eval_seconds = time.perf_counter() - started
    result = {"precision": 100 * precision_score(gold, predictions, **options),
              "recall": 100 * recall_score(gold, predictions, **options),
              "f1": 100 * f1_score(gold, predictions, **options), "train_examples": len(train),
              "train_examples_per_s": len(train) * args.epochs / train_seconds,
              "eval_examples": len(dev), "eval_examples_per_s": len(dev) / eval_seconds}
    Path(args.metrics_json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
