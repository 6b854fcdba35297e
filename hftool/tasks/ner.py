"""Token classification (``finetune ner``): a tag for every word, scored as entities.

Words are split into sub-tokens; as in run_ner, only a word's first sub-token carries its tag (the others
are left out of the loss) unless ``data.label_all_tokens`` gives them the tag too (``B-X`` continuing as
``I-X``). Evaluation predicts each word's tag from its first sub-token; a word cut off by ``max_length``
is predicted ``O`` (and counted), so the score covers every gold entity. Entity precision / recall / F1
are computed as seqeval does in strict IOB2 mode (:mod:`hftool.metrics.entities`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from hftool.data.conll import TaggedSentence
from hftool.engine.eval_sharding import Ordered, balanced_length_order, broadcast_metrics, gather_predictions
from hftool.metrics.entities import entity_scores
from hftool.tasks.labelling import pad_batch

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def encode_sentences(tokenizer, sentences: Sequence[TaggedSentence], max_length: int, label2id: dict | None,
                     label_all_tokens: bool = False) -> tuple[list[dict], int]:
    """Sub-token ids of each sentence, the position of each kept word's first sub-token, and (with
    ``label2id``) the labels; also how many sentences lost words to ``max_length``."""
    encoded = tokenizer([s.tokens for s in sentences], is_split_into_words=True, truncation=True,
                        max_length=max_length)
    with_types = "token_type_ids" in encoded
    continuing = {}
    if label2id is not None:
        continuing = {i: label2id.get("I-" + tag[2:], i) if tag.startswith("B-") else i
                      for tag, i in label2id.items()}
    items, truncated = [], 0
    for n, sentence in enumerate(sentences):
        word_ids = encoded.word_ids(n)
        first_tokens: list[int] = []
        labels = [IGNORE] * len(word_ids)
        previous = None
        for position, word in enumerate(word_ids):
            if word is None:
                previous = None
                continue
            tag_id = label2id[sentence.tags[word]] if label2id is not None else None
            if word != previous:
                first_tokens.append(position)
                if tag_id is not None:
                    labels[position] = tag_id
            elif label_all_tokens and tag_id is not None:
                labels[position] = continuing[tag_id]
            previous = word
        if len(first_tokens) < len(sentence.tokens):
            truncated += 1
        item = {"input_ids": encoded["input_ids"][n], "index": n, "first_tokens": first_tokens}
        if with_types:
            item["token_type_ids"] = encoded["token_type_ids"][n]
        if label2id is not None:
            item["labels"] = labels
        items.append(item)
    return items, truncated


class NerTask:
    """Batches of sub-token ids with word labels, the token cross-entropy, and entity-level evaluation."""

    def __init__(self, pad_token_id: int, id2label: dict[int, str], max_length: int,
                 eval_sentences: Sequence[TaggedSentence] = (), eval_items: Sequence[dict] = ()):
        self.pad_token_id = pad_token_id
        self.id2label = id2label
        self.max_length = max_length
        self.eval_sentences = list(eval_sentences)
        self.eval_items = list(eval_items)
        self.last_predictions: dict[int, list[str]] = {}
        self.eval_seconds: list[float] = []

    # ---- the engine's interface ---------------------------------------------------------------------------
    def collate(self, items: list[dict], epoch: int):
        import torch

        batch = pad_batch(items, self.pad_token_id, None, self.max_length)
        if "labels" in items[0]:
            labels = torch.full(batch["input_ids"].shape, IGNORE, dtype=torch.int64)
            for row, item in enumerate(items):
                labels[row, :len(item["labels"])] = torch.tensor(item["labels"])
            batch["labels"] = labels
        return batch

    def count_targets(self, batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss_sum(self, model, batch):
        import torch.nn.functional as F

        logits = self.logits(model, batch)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE,
                               reduction="sum")

    def evaluate(self, model, engine) -> dict[str, float]:
        if not self.eval_items:
            return {}
        started = time.perf_counter()
        lengths = np.array([len(item["input_ids"]) for item in self.eval_items])
        order = balanced_length_order(lengths, engine.num_processes)
        found = self.predict_words(model, engine.eval_batches(Ordered(self.eval_items, order), self))
        self.last_predictions = dict(sorted(gather_predictions(engine, found).items()))
        metrics: dict[str, float] = {}
        if engine.is_main:
            indices = list(self.last_predictions)
            scores = entity_scores([self.eval_sentences[i].tags for i in indices],
                                   [self.last_predictions[i] for i in indices])
            metrics = {k: 100 * scores["overall"][k] for k in ("precision", "recall", "f1")}
            for kind, values in scores["per_type"].items():
                metrics[f"{kind}_f1"] = 100 * values["f1"]
            seconds = time.perf_counter() - started
            metrics.update(examples=len(indices), entities=scores["overall"]["number"],
                           examples_per_s=len(indices) / max(seconds, 1e-9))
        metrics = broadcast_metrics(engine, metrics)
        self.eval_seconds.append(time.perf_counter() - started)
        return metrics

    # ---- shared by evaluation and `hftool tag` ------------------------------------------------------------
    def logits(self, model, batch):
        inputs = {name: batch[name] for name in MODEL_INPUTS if name in batch}
        return model(**inputs).logits.float()

    def predict_words(self, model, batches) -> dict[int, list[str]]:
        """Each sentence's word tags (index -> tags); words cut off by ``max_length`` are ``O``."""
        found: dict[int, list[str]] = {}
        for batch in batches:
            predicted = self.logits(model, batch).argmax(-1).cpu().numpy()
            for row, index in enumerate(batch["index"].tolist()):
                item = self.eval_items[index]
                tags = [self.id2label[int(t)] for t in predicted[row, item["first_tokens"]]]
                words = len(self.eval_sentences[index].tokens)
                found[index] = tags + ["O"] * (words - len(tags))
        return found


def group_entities(tokens: list[dict]) -> list[dict]:
    """Merge token predictions into entities exactly as ``pipeline("token-classification",
    aggregation_strategy="simple")`` does: a token continues the group when its type equals the previous
    token's and it is not ``B-``; a group's type comes from its first token, its score is the mean, and
    groups typed ``O`` are dropped. ``tokens`` hold ``entity`` (a tag), ``score``, ``start`` and ``end``."""
    def split(tag: str) -> tuple[str, str]:
        if tag.startswith(("B-", "I-")):
            return tag[0], tag[2:]
        return "I", tag

    groups: list[list[dict]] = []
    for token in tokens:
        bi, kind = split(token["entity"])
        if groups and kind == split(groups[-1][-1]["entity"])[1] and bi != "B":
            groups[-1].append(token)
        else:
            groups.append([token])
    merged = []
    for group in groups:
        kind = group[0]["entity"].split("-", 1)[-1]
        if kind == "O":
            continue
        merged.append({"entity_group": kind, "score": float(np.mean([t["score"] for t in group])),
                       "start": group[0]["start"], "end": group[-1]["end"]})
    return merged
