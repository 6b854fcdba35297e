"""BERT pretraining (MLM + NSP): pairs, masking, the masked-only head, accumulation, real text, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_BERT, run_cli, tiny_bert_args
from transformers import AutoTokenizer, BertForMaskedLM, BertForPreTraining

from hftool.data.bert_examples import (
    IS_NEXT,
    NOT_NEXT,
    BertExamples,
    BertExamplesConfig,
    SentenceCorpus,
    prepare_corpus,
    split_sentences,
    tokenize_corpus,
    truncate_pair,
)
from hftool.data.text import read_text_documents
from hftool.engine import Engine, TrainConfig
from hftool.tasks.bert_pretraining import (
    BertPretrainingTask,
    MaskedOnlyBertForPreTraining,
    as_standard_model,
)


@pytest.fixture(scope="module")
def tokenizer(corpus_wordpiece):
    """The shared WordPiece vocabulary of small_corpus (conftest.py), under this module's short name."""
    return corpus_wordpiece


@pytest.fixture(scope="module")
def corpus(small_corpus, tokenizer) -> SentenceCorpus:
    return prepare_corpus(tokenize_corpus(read_text_documents(small_corpus), tokenizer), 61, 16)


def _examples(corpus, tokenizer, block_size=64, seed=3, **settings) -> BertExamples:
    return BertExamples(corpus, tokenizer, BertExamplesConfig(**settings), block_size, seed, next_sentence=True)


def _unmasked(example) -> np.ndarray:
    ids = example.input_ids.copy()
    ids[example.masked_positions] = example.masked_labels
    return ids


# ---- sentences and pairs --------------------------------------------------------------------------------

def test_sentence_splitter_keeps_abbreviations_and_initials():
    text = "Dr. Smith met J. R. Tolkien in 1950. They spoke, e.g. about Oxford! Was it \"fun\"? Yes .\nIt was."
    assert split_sentences(text) == ["Dr. Smith met J. R. Tolkien in 1950.", "They spoke, e.g. about Oxford!",
                                     "Was it \"fun\"?", "Yes .", "It was."]
    assert split_sentences("one\n two \n\nthree", "lines") == ["one", "two", "three"]
    assert split_sentences("no boundary here at all") == ["no boundary here at all"]


def _bert_reference_truncation(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths after create_pretraining_data.truncate_seq_pair: trim the longer one (B on ties) a token at a time."""
    while len_a + len_b > max_tokens:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_truncation_matches_berts_loop_and_trims_both_ends():
    rng = np.random.default_rng(0)
    fronts = 0
    for _ in range(2000):
        len_a, len_b, limit = (int(x) for x in rng.integers([1, 1, 2], 90))
        a, b = truncate_pair(np.arange(len_a), np.arange(len_b) + 1000, limit, rng)
        assert (len(a), len(b)) == _bert_reference_truncation(len_a, len_b, limit)
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)  # contiguous: cut only at the ends
        fronts += (len(a) < len_a and a[0] > 0) + (len(b) < len_b and b[0] > 1000)
    assert fronts > 500  # the front is trimmed too, not only the back


def test_prepare_corpus_splits_long_sentences_and_joins_short_documents():
    raw = SentenceCorpus(tokens=np.arange(60, dtype=np.int32),
                         sentence_starts=np.array([0, 3, 3, 28, 30, 40, 60]),  # sentence 1 is empty
                         document_starts=np.array([0, 3, 4, 6]))  # docs: 28 tokens, 2 tokens, 30 tokens
    prepared = prepare_corpus(raw, max_tokens=10, min_document_tokens=5)
    np.testing.assert_array_equal(prepared.tokens, raw.tokens)  # nothing dropped
    np.testing.assert_array_equal(prepared.sentence_starts, [0, 3, 13, 23, 28, 30, 40, 50, 60])
    np.testing.assert_array_equal(prepared.document_starts, [0, 4, 8])  # the 2-token doc joined the next one
    assert prepared.stats["long_sentences_split"] == 2 and prepared.stats["short_documents_joined"] == 1


def _positions(corpus: SentenceCorpus) -> tuple[SentenceCorpus, np.ndarray]:
    """The same boundaries with every token replaced by its own offset, and the document of every offset."""
    positional = SentenceCorpus(np.arange(len(corpus.tokens)), corpus.sentence_starts, corpus.document_starts)
    return positional, np.repeat(np.arange(corpus.num_documents), corpus.document_lengths())


def test_isnext_is_half_of_10000_pairs_and_negatives_come_from_other_documents(corpus, tokenizer):
    positional, document_of = _positions(corpus)
    examples = _examples(positional, tokenizer)
    labels = []
    for n in range(10_000):
        index, epoch = n % len(examples), n // len(examples)
        a, b, label = examples.segments(index, examples.rng(index, epoch))
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= examples.max_tokens
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)
        (doc_a,), (doc_b,) = set(document_of[a]), set(document_of[b])
        if label == NOT_NEXT:
            assert doc_b != doc_a
        else:
            assert doc_b == doc_a and b[0] > a[-1]
            if len(a) + len(b) < examples.max_tokens:  # untruncated: B starts right where A ends
                assert b[0] == a[-1] + 1
        labels.append(label)
    assert np.mean(np.asarray(labels) == IS_NEXT) == pytest.approx(0.5, abs=0.02)


def test_cls_sep_and_token_type_ids(corpus, tokenizer):
    examples = _examples(corpus, tokenizer)
    for index in range(0, len(examples), 7):
        example = examples.example(index, epoch=2)
        a, b, label = examples.segments(index, examples.rng(index, 2))
        expected = np.concatenate([[tokenizer.cls_token_id], a, [tokenizer.sep_token_id], b,
                                   [tokenizer.sep_token_id]])
        np.testing.assert_array_equal(_unmasked(example), expected)
        np.testing.assert_array_equal(example.token_type_ids, [0] * (len(a) + 2) + [1] * (len(b) + 1))
        np.testing.assert_array_equal(np.flatnonzero(example.input_ids == tokenizer.sep_token_id),
                                      [len(a) + 1, len(a) + len(b) + 2])
        assert example.next_sentence_label == label


def test_masking_rates_specials_and_fresh_masks_per_epoch(corpus, tokenizer):
    examples = _examples(corpus, tokenizer)
    special = set(tokenizer.all_special_ids)
    candidates = predicted = as_mask = kept = 0
    for n in range(6000):
        index, epoch = n % len(examples), n // len(examples)
        example = examples.example(index, epoch)
        original = _unmasked(example)
        positions = example.masked_positions
        assert len(np.unique(positions)) == len(positions) >= 1
        assert not special & set(original[positions].tolist())  # [CLS]/[SEP]/[PAD]/[UNK] never chosen
        candidates += sum(t not in special for t in original.tolist())
        predicted += len(positions)
        as_mask += int((example.input_ids[positions] == tokenizer.mask_token_id).sum())
        kept += int((example.input_ids[positions] == original[positions]).sum())
    assert predicted / candidates == pytest.approx(0.15, abs=0.01)
    assert as_mask / predicted == pytest.approx(0.8, abs=0.02)
    assert kept / predicted == pytest.approx(0.1, abs=0.02)
    assert (predicted - as_mask - kept) / predicted == pytest.approx(0.1, abs=0.02)

    again = [examples.example(i, 0).masked_positions for i in range(50)]
    assert all(np.array_equal(x, examples.example(i, 0).masked_positions) for i, x in enumerate(again))
    changed = sum(not np.array_equal(x, examples.example(i, 1).masked_positions) for i, x in enumerate(again))
    assert changed >= 45  # a new epoch draws new pairs and masks


def test_padding_is_never_masked_and_positions_index_the_flat_batch(corpus, tokenizer):
    task = BertPretrainingTask(tokenizer.pad_token_id)
    examples = _examples(corpus, tokenizer, short_seq_probability=0.5)
    batch = task.collate([examples[i] for i in range(16)], 0)
    flat_ids = batch["input_ids"].flatten()
    assert batch["attention_mask"].flatten()[batch["masked_positions"]].all()
    assert not torch.isin(flat_ids[batch["masked_positions"]], torch.tensor([tokenizer.pad_token_id])).any()
    assert (batch["attention_mask"] == 0).any()  # the batch really holds padding
    rows = batch["masked_positions"] // batch["input_ids"].shape[1]
    per_row = torch.bincount(rows, minlength=16).float()
    torch.testing.assert_close(batch["masked_weights"], 1.0 / per_row[rows])


def test_whole_word_masking_masks_every_piece_of_a_word(corpus, tokenizer):
    examples = _examples(corpus, tokenizer, whole_word_mask=True)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    continuation = np.array([token.startswith("##") for token in vocab])
    pieces = candidates = predicted = 0
    for index in range(len(examples)):
        example = examples.example(index, 0)
        original = _unmasked(example)
        chosen = set(example.masked_positions.tolist())
        for p in chosen:
            if continuation[original[p]] and not examples.masker.special[original[p - 1]]:  # not B's first token
                assert p - 1 in chosen
                pieces += 1
            if p + 1 < len(original) and continuation[original[p + 1]]:
                assert p + 1 in chosen
        candidates += int((~examples.masker.special[original]).sum())
        predicted += len(chosen)
    assert pieces > 100  # the corpus has multi-piece words, and they were masked whole
    assert 0.13 < predicted / candidates <= 0.155


# ---- the model ------------------------------------------------------------------------------------------

def _tiny_model(tokenizer, dropout=0.1) -> MaskedOnlyBertForPreTraining:
    from transformers import BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, pad_token_id=tokenizer.pad_token_id)
    return MaskedOnlyBertForPreTraining(config)


def test_masked_only_head_gives_the_full_heads_loss(corpus, tokenizer):
    model = _tiny_model(tokenizer).eval()
    task = BertPretrainingTask(tokenizer.pad_token_id)
    examples = _examples(corpus, tokenizer, short_seq_probability=0.5)
    batch = task.collate([examples[i] for i in range(8)], 0)
    ours = task.losses(model, batch)

    standard = as_standard_model(model)
    full = standard(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
    logits = full.prediction_logits.flatten(0, 1)[batch["masked_positions"]]
    mlm = F.cross_entropy(logits, batch["masked_labels"], reduction="none") * batch["masked_weights"]
    nsp = F.cross_entropy(full.seq_relationship_logits, batch["next_sentence_label"], reduction="sum")
    assert abs(ours["objective"].item() - (mlm.sum() + nsp).item()) / 8 < 1e-5

    # One example: the objective is exactly the loss transformers' BertForPreTraining computes from labels.
    single = task.collate([examples[0]], 0)
    labels = torch.full_like(single["input_ids"], -100).flatten()
    labels[single["masked_positions"]] = single["masked_labels"]
    hf_loss = standard(input_ids=single["input_ids"], token_type_ids=single["token_type_ids"],
                       attention_mask=single["attention_mask"], labels=labels.view_as(single["input_ids"]),
                       next_sentence_label=single["next_sentence_label"]).loss
    assert abs(task.loss_sum(model, single).item() - hf_loss.item()) < 1e-5


def _fit(tmp_path, name, examples, tokenizer, **overrides):
    # adam_eps is raised so that Adam does not blow float rounding noise up into lr-sized steps where the true
    # gradient is exactly zero (attention key biases): the test checks how the engine splits batches.
    config = TrainConfig(output_dir=str(tmp_path / name), mixed_precision="no", report_to="none", log_every=1,
                         lr=1e-2, warmup_steps=0, adam_eps=1e-6, **overrides)
    model = _tiny_model(tokenizer, dropout=0.0)
    Engine(config, config.output_dir).fit(model, examples, BertPretrainingTask(tokenizer.pad_token_id))
    return model


@pytest.mark.integration
def test_accumulation_equals_one_big_batch(tmp_path, corpus, tokenizer):
    examples = _examples(corpus, tokenizer, block_size=32, short_seq_probability=0.3)
    big = _fit(tmp_path, "big", examples, tokenizer, batch_size=8, grad_accum=1, max_steps=3)
    accumulated = _fit(tmp_path, "acc", examples, tokenizer, batch_size=4, grad_accum=2, max_steps=3)
    # A wrong split or normalisation moves weights by about lr (1e-2); float rounding of the two summation orders
    # stays far below 1e-5 but, with the session's freshly trained WordPiece vocabulary, once exceeded 1e-6.
    for (name, a), b in zip(big.state_dict().items(), accumulated.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


# ---- end to end -----------------------------------------------------------------------------------------

def _load_in_plain_transformers(folder, tmp_path, script: str) -> str:
    code = ("import sys; from transformers import AutoTokenizer, BertModel, BertForPreTraining, BertForMaskedLM, "
            f"pipeline; folder = {str(folder)!r}; {script}; "
            "assert not any(k.startswith('hftool') for k in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.integration
def test_mlm_nsp_end_to_end_loads_as_standard_bert(small_corpus, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["pretrain", *tiny_bert_args(small_corpus, out)])
    assert code == 0, err
    assert "pairs per epoch" in stdout and "fill-mask sample" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["eval_examples"] > 0
    for key in ("eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_loss", "eval_nsp_accuracy"):
        assert key in metrics, key
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_nsp_accuracy" in r for r in logged)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    stdout = _load_in_plain_transformers(out, tmp_path, (
        "m, info = BertForPreTraining.from_pretrained(folder, output_loading_info=True); "
        "assert not info['missing_keys'] and not info['unexpected_keys'], info; "
        "BertModel.from_pretrained(folder); "
        "fill = pipeline('fill-mask', model=folder); "
        "out = fill('the [MASK] is here.'); assert len(out) == 5 and 'token_str' in out[0]; print('ok')"))
    assert stdout.strip() == "ok"


@pytest.mark.integration
def test_mlm_objective_saves_bert_for_masked_lm(small_corpus, tmp_path):
    out = tmp_path / "mlm"
    code, stdout, err = run_cli(["pretrain", *tiny_bert_args(small_corpus, out, "objective=mlm",
                                                             "train.max_steps=2")])
    assert code == 0, err
    assert "examples per epoch" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_mlm_accuracy" in metrics and "eval_nsp_accuracy" not in metrics
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    _, info = BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.integration
def test_continued_pretraining_from_minilm_initialises_the_missing_heads(minilm, small_corpus, tmp_path):
    out = tmp_path / "minilm"
    args = tiny_bert_args(small_corpus, out, f"model.init_from={minilm}", "model.config={}",
                          "train.max_steps=2", "train.lr=1e-5")
    code, stdout, err = run_cli(["pretrain", *[a for a in args if a != TINY_BERT]])
    assert code == 0, err
    assert "has no pretraining heads for cls.predictions" in stdout and "freshly initialised" in stdout
    assert "cls.seq_relationship" in stdout
    model, info = BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and model.config.hidden_size == 384
    assert len(AutoTokenizer.from_pretrained(out)) == 30522


REAL_TEXT_RUN = [
    "data.block_size=128", "data.validation_fraction=0.2", "tokenizer.vocab_size=4000",
    "model.config={num_hidden_layers: 2, hidden_size: 128, num_attention_heads: 2, intermediate_size: 512, "
    "max_position_embeddings: 128, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0}",
    "train.max_steps=300", "train.batch_size=32", "train.lr=1e-3", "train.warmup_steps=20", "train.eval_every=50",
    "train.eval_max_batches=null", "train.save_every=0", "train.log_every=50", "train.report_to=none",
    "train.mixed_precision=no",  # one process holds one Accelerate precision: the other tests' fp32
]


@pytest.mark.slow
@pytest.mark.integration
def test_short_run_on_real_text_learns_nsp_and_mlm(shared_data, tmp_path):
    """300 steps of a 2-layer BERT on WikiText-2 (the validation file; a fifth of its documents held out).

    NSP accuracy on a few hundred pairs jitters by a few points between evaluations while the model sits
    near its decision boundary, so the last three evaluations are averaged; the NSP loss must fall too.
    """
    out = tmp_path / "wiki"
    corpus = shared_data / "corpus" / "wikitext-2-raw" / "wiki.valid.raw"
    code, _, err = run_cli(["pretrain", "-r", "bert-tiny-mlm-nsp", f"data.files=[{corpus}]", *REAL_TEXT_RUN,
                            f"train.output_dir={out}"])
    assert code == 0, err
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_nsp_accuracy" in r]
    first, last = evals[0], evals[-1]
    late_nsp = float(np.mean([r["eval_nsp_accuracy"] for r in evals[-3:]]))
    pairs = json.loads((out / "metrics.json").read_text())["eval_examples"]
    shown = ", ".join(f"{r['step']}: NSP {r['eval_nsp_accuracy']:.3f} (loss {r['eval_nsp_loss']:.3f}) "
                      f"MLM {r['eval_mlm_accuracy']:.3f}" for r in evals)
    print(f"\n{pairs} held-out pairs; by step: {shown}")
    assert pairs > 400
    assert late_nsp > 0.56 and last["eval_nsp_loss"] < 0.67  # chance: 0.5 and ln 2 = 0.693
    assert last["eval_mlm_accuracy"] > first["eval_mlm_accuracy"] + 0.02


# ---- bad input ------------------------------------------------------------------------------------------

def _one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_single_document_corpus_is_refused(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text("This corpus is one document. It has several sentences. None of them are apart.\n" * 40)
    out = tmp_path / "out"
    code, _, err = run_cli(["pretrain", *tiny_bert_args(corpus, out, "data.validation_fraction=0")])
    _one_line_error(code, err, "1 document", "objective=mlm")
    assert not (out / "model.safetensors").exists()


def test_no_sentence_boundary_and_long_lines_are_counted_not_fatal(tmp_path):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma"]
    docs = [" ".join(rng.choice(words, size=int(rng.integers(20, 300)))) for _ in range(40)]
    corpus = tmp_path / "flat.txt"
    corpus.write_text("\n\n".join(docs) + "\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["pretrain", *tiny_bert_args(corpus, out, "train.max_steps=2",
                                                             "data.validation_fraction=0")])
    assert code == 0, err
    long_lines = sum(len(doc.split()) > 29 for doc in docs)  # one token per word; 32 - 3 fit in a pair
    assert 0 < long_lines < 40
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["documents_without_sentence_boundary"] == 40
    assert metrics["long_sentences_split"] == long_lines
    assert f"40 documents had no sentence boundary, {long_lines} sentences longer than 29 tokens" in stdout


@pytest.mark.integration
def test_tokenizer_larger_than_the_model_is_refused_unless_resized(tiny_bert, small_corpus, tmp_path):
    from hftool.data.tokenizer_training import train_tokenizer

    bigger = tmp_path / "tok"
    train_tokenizer(read_text_documents(small_corpus), "wordpiece", vocab_size=700, lowercase=True,
                    min_frequency=1).save_pretrained(bigger)
    args = [a for a in tiny_bert_args(small_corpus, tmp_path / "out", f"model.init_from={tiny_bert}",
                                      "model.config={}", f"tokenizer.path={bigger}", "train.max_steps=2")
            if a != TINY_BERT]
    rows = json.loads((tiny_bert / "config.json").read_text())["vocab_size"]
    assert rows < 700
    code, _, err = run_cli(["pretrain", *args])
    _one_line_error(code, err, "700 tokens", f"model's {rows} embedding rows", "tokenizer.resize_embeddings=true")
    code, _, err = run_cli(["pretrain", *args, "tokenizer.resize_embeddings=true", "--overwrite"])
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 700


@pytest.mark.parametrize("extra, fragments", [
    (["tokenizer.kind=byte-bpe"], ["no cls_token", "[MASK]"]),
    (["data.streaming=true"], ["data.streaming=true", "objective=mlm-nsp"]),
    (["data.block_size=4"], ["data.block_size=4", "at least 5"]),
    (["bert.mask_probability=1.5"], ["bert.mask_probability=1.5"]),
])
def test_bad_settings_give_one_line_errors(small_corpus, tmp_path, extra, fragments):
    code, _, err = run_cli(["pretrain", *tiny_bert_args(small_corpus, tmp_path / "out", *extra)])
    _one_line_error(code, err, *fragments)
