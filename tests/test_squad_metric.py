"""The shipped SQuAD v1.1 metric against the official evaluate-v1.1.py formula, to 1e-9."""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import pytest

from hftool.data.squad import read_squad_file
from hftool.tasks.squad import load_metric


# ---- the official SQuAD v1.1 evaluation script (evaluate-v1.1.py), written out independently -------------
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, ground_truth) for ground_truth in ground_truths)


def official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = [x["text"] for x in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += official_metric_max_over_ground_truths(official_exact_match_score, prediction,
                                                                      ground_truths)
                f1 += official_metric_max_over_ground_truths(official_f1_score, prediction, ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}
# -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metric():
    return load_metric()


def score(metric, prediction: str, golds: list[str]) -> tuple[float, float]:
    reference = {"id": "q", "answers": {"text": golds, "answer_start": [0] * len(golds)}}
    result = metric.compute(predictions=[{"id": "q", "prediction_text": prediction}], references=[reference])
    return result["exact_match"], result["f1"]


# (prediction, gold answers, exact match, F1), each worked out by hand from the official definitions.
TRICKY = [
    ("Denver Broncos", ["Denver Broncos"], 100.0, 100.0),
    ("the Denver Broncos.", ["Denver Broncos"], 100.0, 100.0),  # article and punctuation dropped
    ("  DENVER\n broncos ", ["Denver Broncos"], 100.0, 100.0),  # case and white space
    ("Broncos", ["Denver Broncos"], 0.0, 100 * 2 / 3),  # P = 1, R = 1/2
    ("Carolina", ["Carolina Panthers", "Panthers", "Carolina"], 100.0, 100.0),  # best of several golds
    ("the Panthers of Carolina", ["Carolina Panthers", "Panthers"], 0.0, 80.0),  # P = 2/3, R = 1 beats 0.5
    ("", ["Denver Broncos"], 0.0, 0.0),  # empty prediction
    ("a", ["the"], 100.0, 0.0),  # both normalise to "": equal strings, but no shared token
    ("a b b", ["b b c"], 0.0, 80.0),  # token bags: shared {b: 2}, P = 1, R = 2/3
    ("\u201cBroncos\u201d", ["Broncos"], 0.0, 0.0),  # curly quotes are not ASCII punctuation
    ("well-known", ["well known"], 0.0, 0.0),  # a hyphen is removed, not turned into a space
    ("Theatre an anthem", ["theatre anthem"], 100.0, 100.0),  # only whole-word articles go
]


@pytest.mark.parametrize("prediction, golds, exact, f1", TRICKY)
def test_metric_on_tricky_cases(metric, prediction, golds, exact, f1):
    got_exact, got_f1 = score(metric, prediction, golds)
    assert got_exact == pytest.approx(exact, abs=1e-9)
    assert got_f1 == pytest.approx(f1, abs=1e-9)
    nested = [{"paragraphs": [{"qas": [{"id": "q", "answers": [{"text": g} for g in golds]}]}]}]
    official = official_evaluate(nested, {"q": prediction})
    assert (got_exact, got_f1) == pytest.approx((official["exact_match"], official["f1"]), abs=1e-9)


def fixed_prediction(number: int, question: str, context: str, golds: list[str]) -> str:
    """Deterministic predictions of every kind: right, right but decorated, partly right, wrong, empty."""
    kind = number % 5
    if kind == 0:
        return golds[0]
    if kind == 1:
        return f"The {golds[-1]}."
    if kind == 2:
        return " ".join(context.split()[:3])
    if kind == 3:
        return question.split()[-1]
    return ""


def test_metric_equals_official_formula_on_the_real_dev_half(metric, shared_data):
    path = shared_data / "squad" / "dev-v1.1-even-articles.json"
    dataset = json.loads(path.read_text(encoding="utf-8"))["data"]
    examples = read_squad_file(path)
    assert len(examples) == 5397
    predictions = {e.id: fixed_prediction(i, e.question, e.context, list(e.answer_texts))
                   for i, e in enumerate(examples)}
    ours = metric.compute(predictions=[{"id": k, "prediction_text": v} for k, v in predictions.items()],
                          references=[e.reference() for e in examples])
    official = official_evaluate(dataset, predictions)
    assert ours["exact_match"] == pytest.approx(official["exact_match"], abs=1e-9)
    assert ours["f1"] == pytest.approx(official["f1"], abs=1e-9)
    assert 30 < ours["exact_match"] < 60 and ours["f1"] > ours["exact_match"]  # non-trivial numbers
