"""Accuracy, macro-F1 and Matthews correlation from label ids, with the definitions scikit-learn uses."""

from __future__ import annotations

import math
from collections.abc import Sequence


def confusion(references: Sequence[int], predictions: Sequence[int], num_labels: int) -> list[list[int]]:
    """``matrix[gold][predicted]`` counts."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references for {len(predictions)} predictions")
    matrix = [[0] * num_labels for _ in range(num_labels)]
    for gold, predicted in zip(references, predictions, strict=True):
        matrix[gold][predicted] += 1
    return matrix


def accuracy(references: Sequence[int], predictions: Sequence[int]) -> float:
    if not references:
        return 0.0
    return sum(g == p for g, p in zip(references, predictions, strict=True)) / len(references)


def macro_f1(references: Sequence[int], predictions: Sequence[int], num_labels: int) -> float:
    """The unweighted mean of each label's F1 over the labels that occur in the references or predictions
    (a label never seen on either side is left out, as scikit-learn does with ``labels=None``)."""
    matrix = confusion(references, predictions, num_labels)
    scores = []
    for label in range(num_labels):
        tp = matrix[label][label]
        gold = sum(matrix[label])
        predicted = sum(row[label] for row in matrix)
        if gold == 0 and predicted == 0:
            continue
        scores.append(2 * tp / (gold + predicted))
    return sum(scores) / len(scores) if scores else 0.0


def matthews(references: Sequence[int], predictions: Sequence[int], num_labels: int) -> float:
    """Matthews correlation (Gorodkin's multi-class form; the phi coefficient for two labels); 0 when
    undefined (one side constant)."""
    matrix = confusion(references, predictions, num_labels)
    n = sum(map(sum, matrix))
    correct = sum(matrix[k][k] for k in range(num_labels))
    gold = [sum(matrix[k]) for k in range(num_labels)]
    predicted = [sum(row[k] for row in matrix) for k in range(num_labels)]
    numerator = correct * n - sum(g * p for g, p in zip(gold, predicted, strict=True))
    denominator = math.sqrt(n * n - sum(p * p for p in predicted)) * math.sqrt(n * n - sum(g * g for g in gold))
    return numerator / denominator if denominator else 0.0


def classification_scores(references: Sequence[int], predictions: Sequence[int], num_labels: int,
                          with_matthews: bool = False) -> dict[str, float]:
    """Accuracy and macro-F1 in percent (and Matthews correlation in [-1, 1] when asked)."""
    scores = {"accuracy": 100 * accuracy(references, predictions),
              "macro_f1": 100 * macro_f1(references, predictions, num_labels)}
    if with_matthews:
        scores["matthews"] = matthews(references, predictions, num_labels)
    return scores
