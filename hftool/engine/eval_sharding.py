"""Evaluation across processes: each scores one length-sorted block of the examples, then every process gets
the merged predictions and the same metrics. Shared by the SQuAD, classification and NER tasks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Ordered(Sequence):
    """``items`` seen through an index order, without copying them."""

    def __init__(self, items: Sequence, order: np.ndarray):
        self.items, self.order = items, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int):
        return self.items[int(self.order[index])]


def balanced_length_order(lengths: np.ndarray, num_processes: int) -> np.ndarray:
    """Longest first, dealt round-robin into one contiguous block per process: every block is sorted (little
    padding per batch) and the blocks hold similar amounts of work."""
    by_length = np.argsort(-lengths, kind="stable")
    return np.concatenate([by_length[rank::num_processes] for rank in range(num_processes)])


def gather_predictions(engine, found: dict[int, object]) -> dict[int, object]:
    """Every process's ``index -> prediction`` merged (each index is predicted by exactly one process)."""
    if engine.num_processes == 1:
        return found
    from accelerate.utils import gather_object

    return dict(gather_object(list(found.items())))


def broadcast_metrics(engine, metrics: dict) -> dict:
    """The main process's metrics on every process, so each returns the same."""
    if engine.num_processes == 1:
        return metrics
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([metrics])[0]
