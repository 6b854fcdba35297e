"""Summarize/translate prompt construction and truncation, sentence and line cutting, and the metrics on
pairs whose scores are worked out by hand."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from hftool.errors import HftoolError
from hftool.generation.decoding import trim_at_stop
from hftool.generation.metrics import bleu_chrf, rouge
from hftool.generation.prompts import (
    DEFAULT_EN_FR_PAIRS,
    TLDR_SUFFIX,
    first_line,
    first_sentences,
    read_pairs,
    summarization_prompt,
    translation_prompt,
)


@pytest.fixture(scope="module")
def tokenizer(byte_bpe_tokenizer):
    return AutoTokenizer.from_pretrained(byte_bpe_tokenizer)


def test_summarization_prompt_keeps_a_short_article_whole(tokenizer):
    article = "The quick brown fox jumps over the lazy dog."
    ids, text, truncated = summarization_prompt(tokenizer, article, context=128, max_new_tokens=20)
    assert not truncated and text == article + "\nTL;DR:"
    suffix = tokenizer(TLDR_SUFFIX, add_special_tokens=False)["input_ids"]
    assert ids == tokenizer(article, add_special_tokens=False)["input_ids"] + suffix
    assert tokenizer.decode(ids) == article + "\nTL;DR:"


def test_summarization_prompt_cuts_the_article_end_at_token_level(tokenizer):
    article = "Transformers read whole sentences at once. " * 40
    article_ids = tokenizer(article, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(TLDR_SUFFIX, add_special_tokens=False)["input_ids"]
    ids, text, truncated = summarization_prompt(tokenizer, article, context=64, max_new_tokens=20)
    budget = 64 - 20 - len(suffix)
    assert truncated and len(ids) == 64 - 20
    assert ids == article_ids[:budget] + suffix  # the beginning is kept, the end is cut
    assert text == tokenizer.decode(article_ids[:budget]) + "\nTL;DR:"
    with pytest.raises(HftoolError, match="--max-new-tokens 62"):
        summarization_prompt(tokenizer, article, context=64, max_new_tokens=62)


def test_first_sentences_keeps_three_and_collapses_whitespace():
    text = " The cat sat.\nIt was happy!  Was it? Yes. No."
    assert first_sentences(text, 3) == "The cat sat. It was happy! Was it?"
    assert first_sentences("no end mark here", 3) == "no end mark here"
    assert first_sentences("", 3) == ""


def test_translation_prompt_lists_pairs_then_the_sentence(tokenizer):
    pairs = [("The cat sleeps.", "Le chat dort."), ("It rains.", "Il pleut.")]
    ids, text, kept = translation_prompt(tokenizer, pairs, " I like tea. ", context=256, max_new_tokens=10)
    assert text == "The cat sleeps. = Le chat dort.\nIt rains. = Il pleut.\nI like tea. ="
    assert kept == 2 and ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_translation_prompt_drops_the_oldest_pairs_to_fit(tokenizer):
    pairs = list(DEFAULT_EN_FR_PAIRS)
    full_ids, _, kept_all = translation_prompt(tokenizer, pairs, "I like tea.", 10_000, 10)
    assert kept_all == 12
    context = len(full_ids) - 5 + 10  # a little too small for all twelve
    ids, text, kept = translation_prompt(tokenizer, pairs, "I like tea.", context, 10)
    assert kept < 12 and len(ids) + 10 <= context
    assert text.startswith(f"{pairs[12 - kept][0]} = {pairs[12 - kept][1]}\n")
    with pytest.raises(HftoolError, match="does not fit"):
        translation_prompt(tokenizer, pairs, "I like tea. " * 50, 60, 10)


def test_default_pairs_are_a_dozen_single_line_sentences():
    assert len(DEFAULT_EN_FR_PAIRS) == 12
    for english, french in DEFAULT_EN_FR_PAIRS:
        assert english and french and "\n" not in english + french and " = " not in english + french


def test_first_line_and_stop_trimming():
    assert first_line(" Le chat dort.\nThe dog = Le chien") == "Le chat dort."
    assert trim_at_stop("one. two. three", [". t", "xx"]) == "one"
    assert trim_at_stop("abc", ["z"]) == "abc"


def test_read_pairs_from_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("Hello.\tBonjour.\n\nThank you.\tMerci.\n", encoding="utf-8")
    assert read_pairs(str(tsv)) == [("Hello.", "Bonjour."), ("Thank you.", "Merci.")]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"source": "Yes.", "target": "Oui."}) + "\n", encoding="utf-8")
    assert read_pairs(str(jsonl)) == [("Yes.", "Oui.")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.tsv", "only one field\n", "bad.tsv:1: expected 'source<TAB>target'"),
        ("bad.jsonl", '{"source": "x"}\n', "bad.jsonl:1: needs string fields"),
        ("broken.jsonl", "{not json\n", "broken.jsonl:1: not valid JSON"),
        ("empty.tsv", "\n\n", "no pairs"),
        ("blank.tsv", "Hello.\t \n", "blank.tsv:1: source and target must be non-empty"),
    ],
)
def test_read_pairs_names_the_bad_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(HftoolError, match=message):
        read_pairs(str(path))


def test_rouge_on_a_pair_worked_out_by_hand():
    # prediction: the cat sat on the mat / reference: the cat was on the mat (6 tokens each)
    # ROUGE-1: 5 shared unigrams (the x2, cat, on, mat) -> P = R = F = 5/6
    # ROUGE-2: 3 shared bigrams (the cat, on the, the mat) of 5 -> 3/5
    # ROUGE-L: longest common subsequence "the cat on the mat" = 5 -> 5/6
    scores = rouge(["the cat sat on the mat"], ["the cat was on the mat"])
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    both = rouge(["the cat sat on the mat", "a b c"], ["the cat was on the mat", "a b c"])
    assert both["rouge1"] == pytest.approx((5 / 6 + 1) / 2)


def test_bleu_on_a_pair_worked_out_by_hand_and_chrf_against_sacrebleu():
    import sacrebleu

    # the cat is on the mat / the cat sat on the mat: n-gram precisions 5/6, 3/5, 1/4 and 0/3; sacrebleu's
    # default 'exp' smoothing turns the first zero count into 1 / (2 * 3). Same length: brevity penalty 1.
    expected_bleu = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    scores = bleu_chrf(["the cat is on the mat"], ["the cat sat on the mat"])
    assert scores["bleu"] == pytest.approx(expected_bleu, abs=1e-9)
    assert scores["chrf"] == pytest.approx(
        sacrebleu.sentence_chrf("the cat is on the mat", ["the cat sat on the mat"]).score
    )
    assert bleu_chrf(["Le chat dort."], ["Le chat dort."]) == {
        "bleu": pytest.approx(100),
        "chrf": pytest.approx(100),
    }
