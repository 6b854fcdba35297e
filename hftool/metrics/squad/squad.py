"""SQuAD v1.1 exact match and F1, computed as the official ``evaluate-v1.1.py`` script computes them.

Shipped inside hftool and loaded by path (``evaluate.load(<this folder>)``), so scoring works offline.
Answers are normalised (lower-case, ASCII punctuation removed, the articles a/an/the removed, white space
collapsed); exact match compares the normalised strings, F1 the bags of normalised tokens; each question
takes its best score over its gold answers; questions without a prediction score 0; both are percentages.
"""

import re
import string
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = __doc__
_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing",
    year = "2016",
    pages = "2383--2392",
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str}.
    references: list of {"id": str, "answers": {"text": [str, ...], "answer_start": [int, ...]}}.
Returns:
    {"exact_match": float, "f1": float}, both in [0, 100], averaged over the references.
Example:
    >>> squad = evaluate.load("hftool/metrics/squad")
    >>> squad.compute(predictions=[{"id": "1", "prediction_text": "the Broncos"}],
    ...               references=[{"id": "1", "answers": {"text": ["Broncos"], "answer_start": [0]}}])
    {'exact_match': 100.0, 'f1': 100.0}
"""

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop articles, collapse white space (in the official order)."""
    return " ".join(ARTICLES.sub(" ", text.lower().translate(PUNCTUATION)).split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    predicted = normalize_answer(prediction).split()
    gold = normalize_answer(truth).split()
    shared = sum((Counter(predicted) & Counter(gold)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(gold)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    """Exact match and F1 of SQuAD v1.1."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                "references": {
                    "id": datasets.Value("string"),
                    "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                  "answer_start": datasets.Value("int32")}),
                },
            }),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references):
        predicted = {p["id"]: p["prediction_text"] for p in predictions}
        exact = f1 = 0.0
        for reference in references:
            if reference["id"] not in predicted:
                continue
            prediction, truths = predicted[reference["id"]], reference["answers"]["text"]
            exact += max(exact_match_score(prediction, truth) for truth in truths)
            f1 += max(f1_score(prediction, truth) for truth in truths)
        total = len(references)
        return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}
