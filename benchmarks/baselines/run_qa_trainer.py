"""A plain Hugging Face run_qa-style SQuAD fine-tuning script: the baseline of benchmarks/bench_squad.py.

It follows the transformers example ``examples/pytorch/question-answering/run_qa.py`` and its
``utils_qa.postprocess_qa_predictions``: windows padded to ``max_length`` (``padding="max_length"``),
``default_data_collator``, the stock ``Trainer`` (``bf16=True`` where supported), ``trainer.predict`` on the
validation windows, then the n-best span search in Python. Scores use the same SQuAD v1.1 metric as hftool
(shipped in ``hftool/metrics/squad``, equal to the official script). Nothing from hftool's training code
is used.

    python benchmarks/baselines/run_qa_trainer.py --model M --train-file train.json \\
        --validation-file dev.json --output-dir runs/baseline --metrics-json runs/baseline/metrics.json
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import evaluate
import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

METRIC_DIR = Path(__file__).resolve().parents[2] / "hftool" / "metrics" / "squad"


def read_squad(path: str, limit: int | None) -> Dataset:
    """The official nested SQuAD v1.1 JSON as the flat columns of the Hub's `squad` dataset."""
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in json.loads(Path(path).read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [a["answer_start"] for a in qa["answers"]]})
    dataset = Dataset.from_dict(rows)
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--validation-file", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--metrics-json", required=True)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--n-best", type=int, default=20)
    parser.add_argument("--max-answer-length", type=int, default=30)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model)
    pad_on_right = tokenizer.padding_side == "right"
    max_length = min(args.max_length, tokenizer.model_max_length)

    def prepare_train_features(examples):
        examples["question"] = [q.lstrip() for q in examples["question"]]
        tokenized = tokenizer(
            examples["question" if pad_on_right else "context"],
            examples["context" if pad_on_right else "question"],
            truncation="only_second" if pad_on_right else "only_first",
            max_length=max_length, stride=args.doc_stride, return_overflowing_tokens=True,
            return_offsets_mapping=True, padding="max_length",
        )
        sample_mapping = tokenized.pop("overflow_to_sample_mapping")
        offset_mapping = tokenized.pop("offset_mapping")
        tokenized["start_positions"], tokenized["end_positions"] = [], []
        for i, offsets in enumerate(offset_mapping):
            input_ids = tokenized["input_ids"][i]
            cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
            sequence_ids = tokenized.sequence_ids(i)
            answers = examples["answers"][sample_mapping[i]]
            if len(answers["answer_start"]) == 0:
                tokenized["start_positions"].append(cls_index)
                tokenized["end_positions"].append(cls_index)
                continue
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start_index = 0
            while sequence_ids[token_start_index] != (1 if pad_on_right else 0):
                token_start_index += 1
            token_end_index = len(input_ids) - 1
            while sequence_ids[token_end_index] != (1 if pad_on_right else 0):
                token_end_index -= 1
            if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
                tokenized["start_positions"].append(cls_index)
                tokenized["end_positions"].append(cls_index)
            else:
                while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                    token_start_index += 1
                tokenized["start_positions"].append(token_start_index - 1)
                while offsets[token_end_index][1] >= end_char:
                    token_end_index -= 1
                tokenized["end_positions"].append(token_end_index + 1)
        return tokenized

    def prepare_validation_features(examples):
        examples["question"] = [q.lstrip() for q in examples["question"]]
        tokenized = tokenizer(
            examples["question" if pad_on_right else "context"],
            examples["context" if pad_on_right else "question"],
            truncation="only_second" if pad_on_right else "only_first",
            max_length=max_length, stride=args.doc_stride, return_overflowing_tokens=True,
            return_offsets_mapping=True, padding="max_length",
        )
        sample_mapping = tokenized.pop("overflow_to_sample_mapping")
        tokenized["example_id"] = []
        for i in range(len(tokenized["input_ids"])):
            sequence_ids = tokenized.sequence_ids(i)
            context_index = 1 if pad_on_right else 0
            tokenized["example_id"].append(examples["id"][sample_mapping[i]])
            tokenized["offset_mapping"][i] = [o if sequence_ids[k] == context_index else None
                                              for k, o in enumerate(tokenized["offset_mapping"][i])]
        return tokenized

    train_examples = read_squad(args.train_file, args.max_train_samples)
    eval_examples = read_squad(args.validation_file, args.max_eval_samples)
    train_dataset = train_examples.map(prepare_train_features, batched=True,
                                       remove_columns=train_examples.column_names)
    eval_dataset = eval_examples.map(prepare_validation_features, batched=True,
                                     remove_columns=eval_examples.column_names)

    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr, num_train_epochs=args.epochs,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_scheduler_type="linear",
        bf16=args.bf16, save_strategy="no", eval_strategy="no", report_to=[], logging_steps=50,
        seed=args.seed, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset,
                      data_collator=default_data_collator, processing_class=tokenizer)
    started = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    model_inputs = eval_dataset.remove_columns(["example_id", "offset_mapping"])
    start_logits, end_logits = trainer.predict(model_inputs).predictions
    predictions = postprocess_qa_predictions(eval_examples, eval_dataset, start_logits, end_logits,
                                             args.n_best, args.max_answer_length)
    metric = evaluate.load(str(METRIC_DIR), keep_in_memory=True)
    scores = metric.compute(
        predictions=[{"id": k, "prediction_text": v} for k, v in predictions.items()],
        references=[{"id": e["id"], "answers": e["answers"]} for e in eval_examples])
    eval_seconds = time.perf_counter() - started

    result = {
        "exact_match": scores["exact_match"], "f1": scores["f1"],
        "train_windows": len(train_dataset), "train_questions": len(train_examples),
        "train_windows_per_s": len(train_dataset) * args.epochs / train_seconds,
        "trainer_train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
        "train_seconds": train_seconds, "train_loss": train_output.training_loss,
        "eval_questions": len(eval_examples), "eval_windows": len(eval_dataset),
        "eval_examples_per_s": len(eval_examples) / eval_seconds, "eval_seconds": eval_seconds,
    }
    Path(args.metrics_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics_json).write_text(json.dumps(result, indent=2) + "\n")
    (Path(args.output_dir) / "predictions.json").write_text(json.dumps(predictions, indent=1) + "\n")
    print(json.dumps(result, indent=2))


def postprocess_qa_predictions(examples, features, all_start_logits, all_end_logits, n_best_size: int = 20,
                               max_answer_length: int = 30) -> dict[str, str]:
    """run_qa's utils_qa.postprocess_qa_predictions (SQuAD v1: no null answer), best answer per example."""
    example_id_to_index = {k: i for i, k in enumerate(examples["id"])}
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[example_id_to_index[feature["example_id"]]].append(i)
    predictions = collections.OrderedDict()
    for example_index, example in enumerate(examples):
        prelim_predictions = []
        for feature_index in features_per_example[example_index]:
            start_logits = all_start_logits[feature_index]
            end_logits = all_end_logits[feature_index]
            offset_mapping = features[feature_index]["offset_mapping"]
            start_indexes = np.argsort(start_logits)[-1: -n_best_size - 1: -1].tolist()
            end_indexes = np.argsort(end_logits)[-1: -n_best_size - 1: -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if (start_index >= len(offset_mapping) or end_index >= len(offset_mapping)
                            or offset_mapping[start_index] is None or len(offset_mapping[start_index]) < 2
                            or offset_mapping[end_index] is None or len(offset_mapping[end_index]) < 2):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    prelim_predictions.append({
                        "offsets": (offset_mapping[start_index][0], offset_mapping[end_index][1]),
                        "score": start_logits[start_index] + end_logits[end_index]})
        best = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)[:n_best_size]
        context = example["context"]
        texts = [context[p["offsets"][0]:p["offsets"][1]] for p in best]
        if not texts or (len(texts) == 1 and texts[0] == ""):
            texts = ["empty"]
        predictions[example["id"]] = texts[0]
    return predictions


if __name__ == "__main__":
    main()
