"""Sequence classification (``finetune classify``): texts or text pairs to one label each.

The loss is the cross-entropy of the classification head's logits, summed over the batch's examples.
Batches are padded to their longest text (rounded up to a multiple of 8) unless ``pad_to_max_length`` is
set, as run_glue does by default; the padding is masked, so it does not change the results. Evaluation
scores this process's share of the validation set sorted by length, gathers the predicted label ids on
every process and computes accuracy and macro-F1 (and Matthews correlation when asked) offline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from hftool.data.classification import TextExample
from hftool.engine.eval_sharding import Ordered, balanced_length_order, broadcast_metrics, gather_predictions
from hftool.metrics.classification import classification_scores
from hftool.tasks.labelling import pad_batch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def encode_texts(tokenizer, examples: Sequence[TextExample], max_length: int) -> tuple[list[dict], int]:
    """Token ids of each example (truncated to ``max_length``) and how many were longer than that; no examples
    (a run without validation data) encode to none, which the fast tokenizer cannot do itself."""
    if not examples:
        return [], 0
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    with_types = "token_type_ids" in encoded
    items, full = [], []
    for i in range(len(examples)):
        item = {"input_ids": encoded["input_ids"][i], "index": i}
        if with_types:
            item["token_type_ids"] = encoded["token_type_ids"][i]
        if len(item["input_ids"]) >= max_length:
            full.append(i)
        items.append(item)
    truncated = 0
    if full:  # only texts that fill the context can have been cut: check those without truncation
        whole = tokenizer([texts[i] for i in full], [pairs[i] for i in full] if pairs else None)
        truncated = sum(len(ids) > max_length for ids in whole["input_ids"])
    return items, truncated


def with_labels(items: list[dict], labels: Sequence[int]) -> list[dict]:
    for item, label in zip(items, labels, strict=True):
        item["label"] = label
    return items


class ClassifyTask:
    """Batches of encoded texts, the cross-entropy loss, and accuracy / macro-F1 evaluation."""

    def __init__(self, pad_token_id: int, num_labels: int, max_length: int, eval_items: Sequence[dict] = (),
                 pad_to_max_length: bool = False, matthews: bool = False):
        self.pad_token_id = pad_token_id
        self.num_labels = num_labels
        self.max_length = max_length
        self.pad_to = max_length if pad_to_max_length else None
        self.eval_items = list(eval_items)
        self.matthews = matthews
        self.last_predictions: dict[int, int] = {}
        self.eval_seconds: list[float] = []

    # ---- the engine's interface ---------------------------------------------------------------------------
    def collate(self, items: list[dict], epoch: int):
        import torch

        batch = pad_batch(items, self.pad_token_id, self.pad_to, self.max_length)
        if "label" in items[0]:
            batch["labels"] = torch.tensor([item["label"] for item in items])
        return batch

    def count_targets(self, batch) -> int:
        return int(batch["input_ids"].shape[0])

    def loss_sum(self, model, batch):
        import torch.nn.functional as F

        return F.cross_entropy(self.logits(model, batch), batch["labels"], reduction="sum")

    def evaluate(self, model, engine) -> dict[str, float]:
        if not self.eval_items:
            return {}
        started = time.perf_counter()
        lengths = np.array([len(item["input_ids"]) for item in self.eval_items])
        order = balanced_length_order(lengths, engine.num_processes)
        found: dict[int, int] = {}
        for batch in engine.eval_batches(Ordered(self.eval_items, order), self):
            predicted = self.logits(model, batch).argmax(-1).tolist()
            found.update(zip(batch["index"].tolist(), predicted, strict=True))
        self.last_predictions = dict(sorted(gather_predictions(engine, found).items()))
        metrics: dict[str, float] = {}
        if engine.is_main:
            indices = list(self.last_predictions)
            gold = [self.eval_items[i]["label"] for i in indices]
            metrics = classification_scores(gold, [self.last_predictions[i] for i in indices], self.num_labels,
                                            self.matthews)
            seconds = time.perf_counter() - started
            metrics.update(examples=len(indices), examples_per_s=len(indices) / max(seconds, 1e-9))
        metrics = broadcast_metrics(engine, metrics)
        self.eval_seconds.append(time.perf_counter() - started)
        return metrics

    # ---- shared by evaluation and `hftool classify` --------------------------------------------------------
    def logits(self, model, batch):
        inputs = {name: batch[name] for name in MODEL_INPUTS if name in batch}
        return model(**inputs).logits.float()
