"""Causal-LM pretraining end to end, on the shared engine: loss, artifacts, resume, bad input.

SIGTERM then resume, for GPT-2 and BERT alike, is in test_checkpoints.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import run_cli, tiny_pretrain_args

from hftool.engine import Engine, TrainConfig
from hftool.errors import HftoolError, TrainingDivergedError
from hftool.tasks.causal_lm import CausalLMTask, causal_lm_loss_sum


def _tiny_gpt2(vocab=50, dropout=0.0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_layer=1, n_embd=16, n_head=2, n_positions=32, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel(config)


def test_loss_is_the_hand_computed_shifted_cross_entropy():
    model = _tiny_gpt2()
    ids = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
    logits = model(input_ids=ids).logits
    by_hand = 0.0
    for row in range(3):
        for t in range(9):
            log_probs = torch.log_softmax(logits[row, t].double(), dim=-1)
            by_hand -= log_probs[ids[row, t + 1]].item()
    task = CausalLMTask()
    assert task.count_targets({"input_ids": ids}) == 27
    assert causal_lm_loss_sum(logits, ids).item() == pytest.approx(by_hand, rel=1e-5)
    hf_mean = model(input_ids=ids, labels=ids).loss.item()  # transformers' own shifted loss
    assert causal_lm_loss_sum(logits, ids).item() / 27 == pytest.approx(hf_mean, rel=1e-5)


def _train(tmp_path, name, data, **overrides):
    # adam_eps is raised so that Adam does not blow float rounding noise up into lr-sized steps where the true
    # gradient is exactly zero (GPT-2's attention key bias): the test checks how the engine splits batches.
    config = TrainConfig(output_dir=str(tmp_path / name), mixed_precision="no", report_to="none", log_every=1,
                         lr=1e-2, warmup_steps=0, adam_eps=1e-6, **overrides)
    model = _tiny_gpt2()
    Engine(config, config.output_dir).fit(model, data, CausalLMTask())
    return model


def test_accumulation_equals_one_big_batch(tmp_path):
    data = np.random.default_rng(0).integers(0, 50, size=(64, 12)).astype(np.int32)
    big = _train(tmp_path, "big", data, batch_size=8, grad_accum=1, max_steps=4)
    accumulated = _train(tmp_path, "acc", data, batch_size=4, grad_accum=2, max_steps=4)
    for (name, a), b in zip(big.state_dict().items(), accumulated.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_metrics_log_the_learning_rate_each_step_used(tmp_path):
    """Step N is logged with the rate it trained with (the schedule at N - 1), not the next step's."""
    data = np.random.default_rng(0).integers(0, 50, size=(64, 12)).astype(np.int32)
    config = TrainConfig(output_dir=str(tmp_path), mixed_precision="no", report_to="none", log_every=1,
                         lr=1e-2, warmup_steps=4, batch_size=4, max_steps=3)
    Engine(config, tmp_path).fit(_tiny_gpt2(), data, CausalLMTask())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in logged if "loss" in r] == [(1, 0.0), (2, 2.5e-3), (3, 5e-3)]


def test_releasing_freed_memory_keeps_the_training_identical(tmp_path, monkeypatch):
    """train.release_memory_every=N calls glibc's malloc_trim every N steps and changes no weight."""
    from hftool.engine import heap

    trim = heap.glibc_malloc_trim()
    assert trim is not None and trim(0) in (0, 1)  # glibc here: the real function answers
    calls = []
    monkeypatch.setattr(heap, "glibc_malloc_trim", lambda: lambda pad: calls.append(pad) or trim(pad))
    data = np.random.default_rng(0).integers(0, 50, size=(64, 12)).astype(np.int32)
    plain = _train(tmp_path, "plain", data, batch_size=8, max_steps=4)
    assert calls == []
    trimmed = _train(tmp_path, "trimmed", data, batch_size=8, max_steps=4, release_memory_every=2)
    assert calls == [0, 0]
    for a, b in zip(plain.state_dict().values(), trimmed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(HftoolError, match="release_memory_every"):
        TrainConfig(release_memory_every=-1).validate()


class _NaNAtStep(CausalLMTask):
    """Returns a NaN loss from the third optimizer step on."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def loss_sum(self, model, batch):
        self.calls += 1
        loss = super().loss_sum(model, batch)
        return loss * float("nan") if self.calls >= 3 else loss


def test_nan_loss_stops_naming_the_step_without_a_later_checkpoint(tmp_path):
    data = np.random.default_rng(0).integers(0, 50, size=(64, 12)).astype(np.int32)
    config = TrainConfig(output_dir=str(tmp_path), mixed_precision="no", report_to="none", log_every=5,
                         save_every=1, batch_size=4, max_steps=10)
    with pytest.raises(TrainingDivergedError, match="at step 3;"):
        Engine(config, tmp_path).fit(_tiny_gpt2(), data, _NaNAtStep())
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step-00000001", "step-00000002"]


@pytest.mark.integration
def test_pretrain_end_to_end_writes_a_plain_hf_model_folder(small_corpus, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.save_every=3")])
    assert code == 0, err
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
                 "hftool_recipe.yaml", "metrics.json", "metrics.jsonl", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not (out / ".final-tmp").exists()
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sample (prompt:" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["eval_loss"] > 0 and metrics["eval_perplexity"] > 1
    assert metrics["train_tokens"] // 32 == metrics["train_blocks"]
    assert metrics["train_tokens"] - metrics["train_blocks"] * 32 == metrics["dropped_tokens"]
    # Loads in plain transformers, without importing hftool.
    script = (
        "import sys; from transformers import AutoModelForCausalLM, pipeline; "
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); "
        f"p = pipeline('text-generation', model={str(out)!r}); "
        "t = p('The', max_new_tokens=5, do_sample=False)[0]['generated_text']; "
        "assert t.startswith('The') and len(t) > 3, t; "
        "assert not any(k.startswith('hftool') for k in sys.modules); print(type(m).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "GPT2LMHeadModel"


@pytest.mark.integration
def test_bloom_pretrain_runs(small_corpus, tmp_path):
    out = tmp_path / "bloom"
    args = tiny_pretrain_args(small_corpus, out, "-r", "bloom-tiny",
                              "model.config={n_layer: 1, hidden_size: 32, n_head: 2}")
    args = [a for a in args if not a.startswith("model.config={n_layer: 1, n_embd")]
    code, _, err = run_cli(["pretrain", *args])
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BloomForCausalLM"]


@pytest.mark.integration
def test_checkpoints_rotate_after_successful_saves(small_corpus, tmp_path):
    out = tmp_path / "rot"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.save_every=1",
                                                            "train.keep_checkpoints=2")])
    assert code == 0, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000005", "step-00000006"]


@pytest.mark.parametrize("content, message", [
    ("", "no text"),
    ("\n\n   \n\n", "no text"),
    ("too short", "fewer than one block"),
])
def test_bad_corpus_fails_before_training(tmp_path, content, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text(content)
    out = tmp_path / "out"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(corpus, out)])
    assert code != 0
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (out / "model.safetensors").exists()


def test_non_utf8_corpus_is_named(tmp_path):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"good text\n\xff\xfe broken\n")
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(corpus, tmp_path / "out")])
    assert code != 0 and "bad.txt:2:1: not UTF-8" in err


@pytest.mark.integration
def test_existing_output_from_another_run_is_refused(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out)])[0] == 0
    before = (out / "model.safetensors").read_bytes()
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.lr=2e-3")])
    assert code != 0 and "different recipe" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == before
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.lr=2e-3"), "--overwrite"])
    assert code == 0, err


def test_unknown_recipe_key_on_command_line(tmp_path):
    code, _, err = run_cli(["pretrain", "train.bach_size=3", f"train.output_dir={tmp_path}"])
    assert code != 0 and "did you mean 'train.batch_size'" in err


def test_streaming_jsonl_trains_with_an_existing_tokenizer(small_corpus, tmp_path, byte_bpe_tokenizer):
    from hftool.data.text import read_text_documents

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": doc}) + "\n" for doc in read_text_documents(small_corpus)))
    out = tmp_path / "stream"
    args = [a for a in tiny_pretrain_args(jsonl, out) if not a.startswith("tokenizer.")]
    code, _, err = run_cli(["pretrain", *args, "data.streaming=true", "data.text_column=body",
                            f"tokenizer.path={byte_bpe_tokenizer}", "data.streaming_validation_documents=5"])
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["eval_blocks"] > 0


def test_tokenizer_train_command(small_corpus, tmp_path):
    from transformers import AutoTokenizer

    code, out, err = run_cli(["tokenizer", "train", str(small_corpus), "-o", str(tmp_path / "tok"),
                              "--kind", "wordpiece", "--vocab-size", "500", "--lowercase"])
    assert code == 0, err
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tokenizer) == 500 and tokenizer.mask_token == "[MASK]"
    assert tokenizer.tokenize("The FUNCTION") == tokenizer.tokenize("the function")
