"""Text sources, the embedded corpus, tokenizer training and block packing."""

from __future__ import annotations

import numpy as np
import pytest

from hftool.data.builtin_corpus import python_docs_documents, python_docs_file
from hftool.data.text import DataConfig, load_documents, pack_documents, pack_tokens, read_text_documents
from hftool.data.tokenizer_training import train_tokenizer
from hftool.errors import HftoolError


@pytest.mark.parametrize("n, block", [(1000, 128), (1024, 128), (127, 128), (5, 1), (0, 4)])
def test_packing_gives_floor_n_over_b_blocks(n, block):
    tokens = np.arange(n, dtype=np.int32)
    packed = pack_tokens(tokens, block)
    assert len(packed) == n // block
    assert packed.dropped_tokens == n - (n // block) * block
    if len(packed):
        assert packed.blocks.shape == (n // block, block)
        np.testing.assert_array_equal(packed.blocks.reshape(-1), tokens[: len(packed) * block])


def test_pack_documents_appends_eos_and_caches(byte_bpe_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(byte_bpe_tokenizer)
    docs = ["first document here", "second one", "and a third"]
    expected = []
    for doc in docs:
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    packed = pack_documents(docs, tokenizer, 4, tokenizer.eos_token_id, tmp_path)
    assert packed.total_tokens == len(expected)
    assert len(packed) == len(expected) // 4
    np.testing.assert_array_equal(packed.blocks.reshape(-1), expected[: len(packed) * 4])
    assert len(list(tmp_path.glob("blocks-*.npy"))) == 1
    again = pack_documents(docs, _NoTokenizing(tokenizer), 4, tokenizer.eos_token_id, tmp_path)
    np.testing.assert_array_equal(again.blocks, packed.blocks)
    pack_documents(docs, tokenizer, 4, None, tmp_path)  # other settings: another file, not a stale hit
    assert len(list(tmp_path.glob("blocks-*.npy"))) == 2


class _NoTokenizing:
    """The tokenizer's definition (the cache key) without the means to tokenize: proves a cache hit."""

    def __init__(self, tokenizer):
        self.backend_tokenizer = tokenizer.backend_tokenizer

    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenized again instead of reading the cache")


def test_sentence_corpus_is_cached_by_tokenizer_splitter_and_text(wordpiece_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from hftool.data.bert_examples import tokenize_corpus

    tokenizer = AutoTokenizer.from_pretrained(wordpiece_tokenizer)
    docs = ["The first sentence. And a second one.", "Another document! With two sentences."]
    corpus = tokenize_corpus(docs, tokenizer, cache_dir=tmp_path)
    assert corpus.num_sentences == 4 and corpus.num_documents == 2
    again = tokenize_corpus(docs, _NoTokenizing(tokenizer), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.tokens, corpus.tokens)
    np.testing.assert_array_equal(again.sentence_starts, corpus.sentence_starts)
    tokenize_corpus(docs[:1], tokenizer, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("sentences-*.npz"))) == 2


def test_text_documents_split_at_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\nline two\n\n  \n\nthree\r\n\r\nfour\n\n\n")
    assert read_text_documents(path) == ["one\nline two", "three", "four"]


def test_non_utf8_names_file_line_and_fix(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine line\nsecond line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(HftoolError, match=r"latin1.txt:3:4: not UTF-8 \(byte 0xe9\).*encoding_errors=replace"):
        read_text_documents(path)
    assert read_text_documents(path, "replace") == ["fine line\nsecond line\ncaf\ufffd au lait"]


def test_jsonl_source_and_missing_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "alpha beta"}\n{"text": "gamma"}\n{"text": ""}\n')
    docs = load_documents(DataConfig(files=[str(path)], validation_fraction=0.0), seed=0)
    assert docs.train == ["alpha beta", "gamma"]
    with pytest.raises(HftoolError, match="no column 'body'"):
        load_documents(DataConfig(files=[str(path)], text_column="body"), seed=0)


def test_validation_split_is_seeded_and_disjoint():
    docs = [f"document {i}" for i in range(100)]
    cfg = DataConfig()
    from hftool.data.text import _split_documents

    train, val = _split_documents(docs, 0.1, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 100
    assert _split_documents(docs, 0.1, seed=3) == (train, val)
    assert cfg.validation_fraction == 0.05


def test_embedded_corpus_is_real_deterministic_text():
    text = python_docs_file().read_text()  # written once per cache folder; later processes train on the file
    docs = python_docs_documents()
    assert len(docs) > 2000 and len(text) > 1_000_000
    assert text == "\n\n".join(doc.replace("\n\n", "\n") for doc in docs) + "\n"  # the same documents, in order
    assert " the " in text and "function" in text


def test_byte_bpe_round_trips_any_text():
    tok = train_tokenizer(["hello world, hello tokenizers"] * 10, "byte-bpe", vocab_size=300, min_frequency=1)
    text = "Ünïcödé and emoji 🤗 never become unknown"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"


def test_wordpiece_has_bert_specials_and_pair_template():
    tok = train_tokenizer(["The cat sat on the mat.", "Dogs bark loudly."] * 20, "wordpiece", vocab_size=120,
                          lowercase=True, min_frequency=1)
    enc = tok("The CAT", "dogs bark")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert enc["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
    assert "cat" in tokens  # lower-cased
    assert tok.mask_token == "[MASK]"
