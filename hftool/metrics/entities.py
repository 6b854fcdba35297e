"""Entity-level precision, recall and F1 exactly as ``seqeval`` computes them in strict IOB2 mode
(``mode="strict", scheme=IOB2``): an entity is a ``B-X`` followed by any ``I-X`` of the same type; an
``I-X`` that does not continue such a run belongs to no entity. A predicted entity counts only when its
sentence, first and last token and type all match a gold one. Overall scores are micro-averaged."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

Entity = tuple[int, str, int, int]  # (sentence, type, first token, one past the last token)


def is_iob_tag(tag: str) -> bool:
    return tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def entities(tags: Sequence[str], sentence: int = 0) -> list[Entity]:
    """The strict IOB2 entities of one sentence's tags."""
    found: list[Entity] = []
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        if start is not None and tag != f"I-{kind}":
            found.append((sentence, kind, start, i))
            start = kind = None
        if tag.startswith("B-"):
            start, kind = i, tag[2:]
    return found


def _prf(tp: int, predicted: int, gold: int) -> dict[str, float]:
    precision = tp / predicted if predicted else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "number": gold}


def entity_scores(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict:
    """``{"overall": {precision, recall, f1, number}, "per_type": {type: {...}}}`` (fractions in [0, 1];
    ``number`` is the count of gold entities)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} reference sentences for {len(predictions)} predicted ones")
    gold: set[Entity] = set()
    predicted: set[Entity] = set()
    for n, (ref, pred) in enumerate(zip(references, predictions, strict=True)):
        if len(ref) != len(pred):
            raise ValueError(f"sentence {n}: {len(ref)} reference tags for {len(pred)} predicted tags")
        gold.update(entities(ref, n))
        predicted.update(entities(pred, n))
    hits = gold & predicted
    tp, pred, true = (Counter(e[1] for e in group) for group in (hits, predicted, gold))
    by_type = {kind: _prf(tp[kind], pred[kind], true[kind]) for kind in sorted(set(pred) | set(true))}
    return {"overall": _prf(len(hits), len(predicted), len(gold)), "per_type": by_type}
