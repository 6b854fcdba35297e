"""Plain helpers and constants the tests import (``from helpers import ...``); the fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. A robot must obey the orders given it by human beings.\n\n"
    "Transformers read whole sentences at once. Attention lets every token look at every other token.\n\n"
    "Language models predict the next word. Masked language models predict hidden words from both sides.\n\n"
) * 20

TINY_BERT = ("model.config={num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, "
             "max_position_embeddings: 64}")


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run ``hftool ARGS`` in this process through the real entry point; returns (exit code, stdout, stderr)."""
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


def hftool_cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m hftool`` as a user would, offline, with an empty Hugging Face cache."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "hftool", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        timeout=180,
    )


def tiny_pretrain_args(corpus: Path, output: Path, *extra: str) -> list[str]:
    """Overrides that make ``hftool pretrain`` train a 1-layer GPT-2 for a few seconds."""
    return [
        f"data.files=[{corpus}]", "data.block_size=32", "tokenizer.vocab_size=400",
        "model.config={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}",
        f"train.output_dir={output}", "train.batch_size=4", "train.max_steps=6", "train.log_every=1",
        "train.eval_every=0", "train.save_every=0", "train.mixed_precision=no", "train.report_to=none",
        "train.eval_max_batches=2", *extra,
    ]


def tiny_bert_args(corpus, output, *extra: str) -> list[str]:
    """Overrides that make ``hftool pretrain -r bert-tiny-mlm-nsp`` train a 1-layer BERT for a few seconds."""
    return ["-r", "bert-tiny-mlm-nsp", f"data.files=[{corpus}]", "data.block_size=32", "tokenizer.vocab_size=400",
            TINY_BERT, f"train.output_dir={output}", "train.batch_size=4", "train.max_steps=6", "train.log_every=1",
            "train.eval_every=0", "train.save_every=0", "train.mixed_precision=no", "train.report_to=none",
            "train.eval_max_batches=2", *extra]


def load_weights(folder: Path) -> dict:
    """The tensors of a saved model folder's model.safetensors, by name."""
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def wait_for_step(metrics: Path, step: int, proc, timeout: float = 240) -> None:
    """Block until a training subprocess has logged ``step`` in its metrics.jsonl (it logs every step)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file():
            steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line]
            if steps and max(steps) >= step:
                return
        assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")
