"""Extractive question answering on SQuAD v1.1: the task behind ``finetune squad``, ``evaluate squad`` and
``answer`` (their runs are in :mod:`hftool.runs.squad`).

The model reads question + context windows and scores every token as the answer's start and end; the
loss is the mean of the two cross-entropies (as in BERT). Windows are padded only to the longest in their
batch (or to ``max_length`` for static-shape accelerators) and the padding is masked out of the loss and
the answer search, so the padding strategy does not change results. Evaluation scores windows sorted by
length, keeps each window's best spans, merges them per question across processes, and scores the
predictions with the SQuAD v1.1 metric shipped in ``hftool/metrics/squad``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hftool.data.squad import PAD_TO_MULTIPLE_OF, QAExample, Windows, WindowSettings
from hftool.engine.eval_sharding import Ordered, balanced_length_order
from hftool.tasks.squad_postprocess import Candidate, rank_answers, span_candidates

METRIC_DIR = Path(__file__).resolve().parent.parent / "metrics" / "squad"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MASKED_LOGIT = -1e9


def load_metric():
    """The SQuAD v1.1 metric shipped in the package, loaded by path (works offline)."""
    import evaluate

    return evaluate.load(str(METRIC_DIR), keep_in_memory=True)


class SquadTask:
    """Batches of windows, the start/end loss, and SQuAD evaluation (exact match and F1)."""

    def __init__(self, settings: WindowSettings, pad_token_id: int, eval_examples: list[QAExample] = (),
                 eval_windows: Windows | None = None, metric=None, pad_to_max_length: bool = False,
                 pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF):
        self.settings = settings
        self.pad_token_id = pad_token_id
        self.pad_to = settings.max_length if pad_to_max_length else None
        self.pad_to_multiple_of = pad_to_multiple_of
        self.eval_examples = list(eval_examples)
        self.eval_windows = eval_windows
        self.metric = metric
        self.last_predictions: dict[str, str] = {}
        self.eval_seconds: list[float] = []

    # ---- the engine's interface ---------------------------------------------------------------------------
    def collate(self, items: list[dict], epoch: int):
        import torch

        longest = max(len(item["input_ids"]) for item in items)
        rounded = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        length = self.pad_to or max(longest, min(rounded, self.settings.max_length))
        input_ids = np.full((len(items), length), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(items), length), dtype=np.int64)
        with_types = "token_type_ids" in items[0]
        token_type_ids = np.zeros((len(items), length), dtype=np.int64) if with_types else None
        for row, item in enumerate(items):
            size = len(item["input_ids"])
            input_ids[row, :size] = item["input_ids"]
            attention_mask[row, :size] = 1
            if with_types:
                token_type_ids[row, :size] = item["token_type_ids"]
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "start_positions": torch.tensor([item["start_positions"] for item in items]),
            "end_positions": torch.tensor([item["end_positions"] for item in items]),
            "window_index": torch.tensor([item["window_index"] for item in items]),
        }
        if with_types:
            batch["token_type_ids"] = torch.from_numpy(token_type_ids)
        return batch

    def count_targets(self, batch) -> int:
        return int(batch["input_ids"].shape[0])

    def loss_sum(self, model, batch):
        import torch.nn.functional as F

        start_logits, end_logits = self.logits(model, batch)
        return (F.cross_entropy(start_logits, batch["start_positions"], reduction="sum")
                + F.cross_entropy(end_logits, batch["end_positions"], reduction="sum")) / 2

    def evaluate(self, model, engine) -> dict[str, float]:
        if self.eval_windows is None or len(self.eval_windows) == 0:
            return {}
        started = time.perf_counter()
        order = balanced_length_order(self.eval_windows.lengths, engine.num_processes)
        batches = engine.eval_batches(Ordered(self.eval_windows, order), self)
        candidates = self.window_candidates(model, batches)
        if engine.num_processes > 1:
            from accelerate.utils import gather_object

            candidates = merge_candidates(gather_object(list(candidates.items())))
        self.last_predictions = {self.eval_examples[i].id: best_text(self.eval_examples[i], found,
                                                                     self.settings.n_best)
                                 for i, found in sorted(candidates.items())}
        metrics: dict[str, float] = {}
        if engine.is_main:
            scored = [self.eval_examples[i] for i in sorted(candidates)]
            metrics = self.metric.compute(
                predictions=[{"id": e.id, "prediction_text": self.last_predictions[e.id]} for e in scored],
                references=[e.reference() for e in scored])
            seconds = time.perf_counter() - started
            metrics.update(examples=len(scored), examples_per_s=len(scored) / max(seconds, 1e-9))
        if engine.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            metrics = broadcast_object_list([metrics])[0]
        self.eval_seconds.append(time.perf_counter() - started)
        return metrics

    # ---- shared by evaluation and `hftool answer` ---------------------------------------------------------
    def logits(self, model, batch):
        """Start and end logits in float32, padding masked out."""
        inputs = {name: batch[name] for name in MODEL_INPUTS if name in batch}
        output = model(**inputs)
        padding = batch["attention_mask"] == 0
        return (output.start_logits.float().masked_fill(padding, MASKED_LOGIT),
                output.end_logits.float().masked_fill(padding, MASKED_LOGIT))

    def window_candidates(self, model, batches: Iterable[dict], windows: Windows | None = None
                          ) -> dict[int, list[Candidate]]:
        """Each example's candidate spans from the windows in ``batches`` (keyed by example index)."""
        windows = windows if windows is not None else self.eval_windows
        found: dict[int, list[Candidate]] = {}
        for batch in batches:
            start_logits, end_logits = self.logits(model, batch)
            k = min(self.settings.n_best, start_logits.shape[1])
            start_values, start_indices = (t.cpu().numpy() for t in start_logits.topk(k, dim=1))
            end_values, end_indices = (t.cpu().numpy() for t in end_logits.topk(k, dim=1))
            for row, window in enumerate(batch["window_index"].tolist()):
                spans = span_candidates(start_values[row], start_indices[row], end_values[row],
                                        end_indices[row], windows.window_offsets(window),
                                        self.settings.max_answer_length, self.settings.n_best)
                found.setdefault(int(windows.example_index[window]), []).extend(spans)
        return found


def merge_candidates(pairs: Iterable[tuple[int, list[Candidate]]]) -> dict[int, list[Candidate]]:
    merged: dict[int, list[Candidate]] = {}
    for example, spans in pairs:
        merged.setdefault(example, []).extend(spans)
    return merged


def best_text(example: QAExample, candidates: list[Candidate], n_best: int) -> str:
    """The top answer's text; empty when no window had a valid span."""
    ranked = rank_answers(candidates, example.context, n_best)
    return ranked[0].text if ranked else ""


def local_batches(task: SquadTask, windows: Windows, batch_size: int, device) -> Iterator[dict]:
    """Batches of all windows, longest first, on ``device`` (one process, no engine)."""
    order = np.argsort(-windows.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        batch = task.collate([windows[int(i)] for i in order[start:start + batch_size]], 0)
        yield {name: tensor.to(device) for name, tensor in batch.items()}
