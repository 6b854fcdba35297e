"""Offline metrics and readers of finetune classify / ner: hand-computed cases, seqeval and scikit-learn."""

from __future__ import annotations

import random

import pytest

from hftool.data.classification import ClassifyDataConfig, label_ids, label_list, read_classification_file
from hftool.data.conll import read_conll_file, tag_list
from hftool.errors import HftoolError
from hftool.metrics.classification import classification_scores
from hftool.metrics.entities import entities, entity_scores

TYPES = ("PER", "LOC", "ORG")


def test_entity_scores_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O", "I-LOC"]]
    # gold: PER(0-2), LOC(3), ORG(0-3); predicted: PER(0-2), ORG(3), ORG(0-2); the stray I-LOC is no entity.
    scores = entity_scores(gold, predicted)
    assert scores["overall"] == {"precision": 1 / 3, "recall": 1 / 3, "f1": pytest.approx(1 / 3), "number": 3}
    assert scores["per_type"]["PER"]["f1"] == 1.0
    assert scores["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert scores["per_type"]["LOC"]["recall"] == 0.0
    assert entities(["I-PER", "I-PER", "B-PER", "I-LOC"]) == [(0, "PER", 2, 3)]


def _random_tags(rng: random.Random, length: int) -> list[str]:
    return [rng.choice(["O", "O", "O", *(f"{p}-{t}" for p in "BI" for t in TYPES)]) for _ in range(length)]


def test_entity_scores_equal_seqeval_strict_iob2():
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval (a dev dependency) is not installed")
    from seqeval.scheme import IOB2

    rng = random.Random(0)
    for _ in range(20):
        gold = [_random_tags(rng, rng.randint(1, 12)) for _ in range(rng.randint(1, 8))]
        predicted = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC", "B-ORG"]) for t in s]
                     for s in gold]
        ours = entity_scores(gold, predicted)
        kwargs = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
        assert ours["overall"]["precision"] == pytest.approx(seqeval.precision_score(gold, predicted, **kwargs))
        assert ours["overall"]["recall"] == pytest.approx(seqeval.recall_score(gold, predicted, **kwargs))
        assert ours["overall"]["f1"] == pytest.approx(seqeval.f1_score(gold, predicted, **kwargs))
        report = seqeval.classification_report(gold, predicted, output_dict=True, **kwargs)
        for kind, values in ours["per_type"].items():
            if kind in report:
                assert values["f1"] == pytest.approx(report[kind]["f1-score"])
                assert values["number"] == report[kind]["support"]


def test_classification_scores_hand_computed_and_sklearn():
    gold, predicted = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    scores = classification_scores(gold, predicted, 3, with_matthews=True)
    # per-label F1: label 0: 2*1/(2+2)=0.5; label 1: 2*2/(2+3)=0.8; label 2: 0 -> mean 0.4333
    assert scores["accuracy"] == pytest.approx(60.0)
    assert scores["macro_f1"] == pytest.approx(100 * (0.5 + 0.8 + 0.0) / 3)
    sklearn = pytest.importorskip("sklearn.metrics", reason="scikit-learn (seqeval's dependency) not installed")
    rng = random.Random(1)
    for _ in range(10):
        gold = [rng.randrange(3) for _ in range(40)]
        predicted = [g if rng.random() < 0.6 else rng.randrange(3) for g in gold]
        ours = classification_scores(gold, predicted, 3, with_matthews=True)
        assert ours["macro_f1"] == pytest.approx(100 * sklearn.f1_score(gold, predicted, average="macro"))
        assert ours["matthews"] == pytest.approx(sklearn.matthews_corrcoef(gold, predicted))


def test_conll_reader(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("-DOCSTART- O\n\nEU B-ORG\nrejects O\nGerman B-MISC\n\n\nPeter B-PER\nBlackburn I-PER\n")
    sentences = read_conll_file(path, "--file")
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert sentences[1].where == f"{path}:8"
    assert tag_list(sentences) == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.mark.parametrize(("text", "message"), [
    ("EU B-ORG\nrejects\n", "a.txt:2: token 'rejects' has no tag"),
    ("EU B-ORG\nrejects PERSON\n", "a.txt:2: tag 'PERSON' is not IOB"),
    ("EU I-ORG\nrejects O\nPeter I-PER\n", "this is IOB1"),
    ("-DOCSTART- O\n\n", "no sentences found"),
])
def test_conll_bad_input(tmp_path, text, message):
    path = tmp_path / "a.txt"
    path.write_text(text)
    with pytest.raises(HftoolError, match=message):
        read_conll_file(path, "--file")


def test_iob1_is_converted_on_request(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("EU I-ORG\nbans O\nPeter I-PER\nPaul B-PER\n")
    assert read_conll_file(path, "--file", scheme="iob1")[0].tags == ["B-ORG", "O", "B-PER", "B-PER"]


def test_classification_reader_and_labels(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('sentence\tlabel\nit \'s " great\t1\n\t0\nawful\t0\n')
    data = ClassifyDataConfig()
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        examples = read_classification_file(path, "--train-file", data)
    assert [e.text for e in examples] == ["it 's \" great", "awful"] and "skipped 1 record(s)" in err.getvalue()
    assert label_list(examples) == ["0", "1"]
    with pytest.raises(HftoolError, match=r"t.tsv:2: no column 'text'"):
        read_classification_file(path, "--file", ClassifyDataConfig(text_column="text"))
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text('{"sentence": "fine", "label": "2"}\n')
    unknown = read_classification_file(jsonl, "--file", data)
    with pytest.raises(HftoolError, match=r"e.jsonl:1: label '2' is not one the model was trained on"):
        label_ids(unknown, {"0": 0, "1": 1}, "e.jsonl")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(HftoolError, match="no examples found"):
        read_classification_file(empty, "--file", data)


def test_long_texts_are_truncated_and_counted(minilm):
    from transformers import AutoTokenizer

    from hftool.data.classification import TextExample
    from hftool.tasks.classify import encode_texts

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    examples = [TextExample("short text", "0", "f:1"), TextExample("word " * 50, "1", "f:2")]
    items, truncated = encode_texts(tokenizer, examples, 16)
    assert truncated == 1 and len(items[1]["input_ids"]) == 16 and len(items[0]["input_ids"]) == 4


def test_stray_i_tags_are_kept_warned_and_scored_as_seqeval_strict(tmp_path):
    """CoNLL-2003 slips such as 'Iranian I-MISC / Resistance I-ORG' after O: the reader keeps them, warns
    naming the first line and the scoring, and the metric gives them no entity, as seqeval's strict mode does."""
    path = tmp_path / "a.txt"
    path.write_text("Rajavi B-MISC\nsaid O\nIranian I-MISC\nResistance I-ORG\nwould O\n\nEU B-ORG\nvotes O\n")
    warnings = []
    sentences = read_conll_file(path, "--file", warn=warnings.append)
    gold = [s.tags for s in sentences]
    assert gold[0] == ["B-MISC", "O", "I-MISC", "I-ORG", "O"]
    assert len(warnings) == 1 and f"2 I- tag(s) follow O or a tag of another type (first at {path}:3)" in warnings[0]
    assert "seqeval's strict IOB2 mode" in warnings[0] and "form no entity" in warnings[0]
    # Predicting the strays as written neither gains nor loses; predicting them as B- entities costs precision.
    as_b = [["B-MISC", "O", "B-MISC", "B-ORG", "O"], ["B-ORG", "O"]]
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval (a dev dependency) is not installed")
    from seqeval.scheme import IOB2

    for predicted in (gold, as_b):
        ours = entity_scores(gold, predicted)["overall"]
        assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, predicted, mode="strict", scheme=IOB2))
        assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, predicted, mode="strict", scheme=IOB2))
    assert entity_scores(gold, gold)["overall"]["f1"] == 1.0
    assert entity_scores(gold, as_b)["overall"]["precision"] == 0.5
    # data.tag_scheme=iob1 reads each stray as an entity start: seqeval's default (conlleval) entities.
    from seqeval.metrics.sequence_labeling import get_entities

    converted = read_conll_file(path, "--file", scheme="iob1", warn=warnings.append)[0].tags
    assert converted == ["B-MISC", "O", "B-MISC", "B-ORG", "O"] and len(warnings) == 1
    assert [(k, a, b + 1) for k, a, b in get_entities(gold[0])] == [(k, a, b) for _, k, a, b in entities(converted)]
