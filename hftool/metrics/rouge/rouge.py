"""ROUGE-1/2/L as an ``evaluate`` module shipped inside hftool, so ``evaluate.load(path)`` works offline.

It wraps Google's ``rouge_score`` package and returns the mean F-measure over the pairs (no bootstrap
resampling, so the numbers are exact and repeatable).
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-N and ROUGE-L F-measures between generated and reference texts, averaged over pairs."
_CITATION = """@inproceedings{lin-2004-rouge,
  title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
  author = "Lin, Chin-Yew", booktitle = "Text Summarization Branches Out", year = "2004", pages = "74--81"}"""
_INPUTS = """
Args:
    predictions: generated texts.
    references: one reference text per prediction.
    rouge_types: which scores, default ["rouge1", "rouge2", "rougeL"].
    use_stemmer: apply the Porter stemmer before matching (default False).
Returns:
    a dict mapping each rouge type to its mean F-measure in [0, 1].
"""


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False):
        rouge_types = list(rouge_types or ["rouge1", "rouge2", "rougeL"])
        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=use_stemmer)
        totals = dict.fromkeys(rouge_types, 0.0)
        for prediction, reference in zip(predictions, references, strict=True):
            scores = scorer.score(reference, prediction)
            for name in rouge_types:
                totals[name] += scores[name].fmeasure
        count = max(len(predictions), 1)
        return {name: total / count for name, total in totals.items()}
