"""From start/end logits back to answer text, as the reference run_qa post-processing does it.

Per window, the ``n_best`` highest start and end logits are paired; a pair is a candidate when both tokens
are context tokens, the end is not before the start, and the span is at most ``max_answer_length`` tokens.
Its score is start logit + end logit, and its text is the context between the first token's start offset
and the last token's end offset. An example's answer is its best candidate over all of its windows, so
windows may be scored on different processes and merged afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A possible answer span: its score (start + end logit) and its characters in the context."""

    score: float
    start_char: int
    end_char: int


@dataclass(frozen=True)
class Answer:
    """A ranked answer: text, probability among the n-best, and its character span in the context."""

    text: str
    probability: float
    score: float
    start_char: int
    end_char: int


def span_candidates(start_values: np.ndarray, start_indices: np.ndarray, end_values: np.ndarray,
                    end_indices: np.ndarray, offsets: np.ndarray, max_answer_length: int,
                    n_best: int) -> list[Candidate]:
    """The best valid spans of one window from its top start and end logits (values and token indices).

    ``offsets`` holds the window's (start, end) character offsets, -1 outside the context; indices at or
    past its length (padding) are never valid.
    """
    length = len(offsets)
    starts, ends = start_indices[:, None], end_indices[None, :]
    inside = (starts < length) & (ends < length)
    first = offsets[np.minimum(starts, length - 1), 0]
    last = offsets[np.minimum(ends, length - 1), 0]
    valid = inside & (first >= 0) & (last >= 0) & (ends >= starts) & (ends - starts + 1 <= max_answer_length)
    rows, cols = np.nonzero(valid)
    if len(rows) == 0:
        return []
    scores = start_values[rows] + end_values[cols]
    best = np.argsort(-scores, kind="stable")[:n_best]
    return [Candidate(float(scores[b]), int(offsets[start_indices[rows[b]], 0]),
                      int(offsets[end_indices[cols[b]], 1])) for b in best]


def rank_answers(candidates: Iterable[Candidate], context: str, n_best: int) -> list[Answer]:
    """The n-best distinct spans of one example, best first, with probabilities (softmax over them)."""
    best_per_span: dict[tuple[int, int], float] = {}
    for candidate in candidates:
        span = (candidate.start_char, candidate.end_char)
        if candidate.score > best_per_span.get(span, -math.inf):
            best_per_span[span] = candidate.score
    ranked = sorted(best_per_span.items(), key=lambda item: -item[1])[:n_best]
    if not ranked:
        return []
    top = ranked[0][1]
    weights = [math.exp(score - top) for _, score in ranked]
    total = sum(weights)
    return [Answer(text=context[start:end], probability=weight / total, score=score, start_char=start,
                   end_char=end) for ((start, end), score), weight in zip(ranked, weights, strict=True)]
