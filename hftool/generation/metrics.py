"""Scores against references: ROUGE via hftool's offline ``evaluate`` module, BLEU and chrF via sacrebleu."""

from __future__ import annotations

from pathlib import Path

ROUGE_MODULE = Path(__file__).resolve().parent.parent / "metrics" / "rouge"


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures in [0, 1], through ``evaluate.load`` on the module shipped in hftool."""
    import evaluate

    metric = evaluate.load(str(ROUGE_MODULE))
    return metric.compute(predictions=predictions, references=references)


def bleu_chrf(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (0-100, sacrebleu's defaults: 13a tokenization, chrF with character 6-grams)."""
    import sacrebleu

    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }
