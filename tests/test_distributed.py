"""Data parallel on the CPU (gloo, 2 real processes through Accelerate's launcher) against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from helpers import REPO, load_weights, run_cli, tiny_bert_args, tiny_pretrain_args, wait_for_step

pytestmark = pytest.mark.integration  # every test launches 2 processes (or the launcher) as subprocesses

NO_DROPOUT = "model.config={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64, resid_pdrop: 0.0, " \
             "embd_pdrop: 0.0, attn_pdrop: 0.0}"
# Adam turns float rounding noise into lr-sized steps where the true gradient is exactly zero (GPT-2's attention
# key bias); a larger eps keeps the comparison about how the engine splits batches.
COMMON = ["train.max_steps=8", "train.lr=3e-3", "train.adam_eps=1e-6", "train.eval_max_batches=null", NO_DROPOUT]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _two_processes(args: list[str], **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hftool", "pretrain", *args, "--num-processes", "2"]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _finish(proc: subprocess.Popen, timeout=300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def _assert_close(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def tokenizer_args(small_corpus, tmp_path_factory):
    """Train the tokenizer once so every run below starts from the same vocabulary."""
    from hftool.data.text import read_text_documents
    from hftool.data.tokenizer_training import train_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer(read_text_documents(small_corpus), "byte-bpe", 400).save_pretrained(folder)
    return [f"tokenizer.path={folder}"]


def test_two_processes_equal_one_big_batch_and_accumulation(small_corpus, tmp_path, tokenizer_args):
    two = tmp_path / "two"
    proc = _two_processes(tiny_pretrain_args(small_corpus, two, *COMMON, *tokenizer_args, "train.batch_size=4"))
    big = tmp_path / "big"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, big, *COMMON, *tokenizer_args,
                                                            "train.batch_size=8")])
    assert code == 0, err
    accumulated = tmp_path / "acc"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, accumulated, *COMMON, *tokenizer_args,
                                                            "train.batch_size=4", "train.grad_accum=2")])
    assert code == 0, err
    _finish(proc)
    _assert_close(load_weights(big), load_weights(two), atol=1e-6)
    _assert_close(load_weights(big), load_weights(accumulated), atol=1e-6)
    # Evaluation sharded over 2 processes sees every block once: same metric as one process.
    two_metrics = json.loads((two / "metrics.json").read_text())
    big_metrics = json.loads((big / "metrics.json").read_text())
    assert two_metrics["eval_blocks"] == big_metrics["eval_blocks"] > 2
    assert two_metrics["eval_loss"] == pytest.approx(big_metrics["eval_loss"], abs=1e-5)


def _rank_pids(launcher: subprocess.Popen, timeout=60) -> dict[int, int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ranks = {}
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                rank = child.environ().get("RANK")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if rank is not None and "hftool" in " ".join(child.cmdline()):
                ranks[int(rank)] = child.pid
        if len(ranks) == 2:
            return ranks
        time.sleep(0.2)
    raise AssertionError("the two ranks did not start")


# make test holds the halves faster: SIGTERM then an exact resume in one process (test_checkpoints, GPT-2 and
# BERT) and two processes agreeing with one (below); the signal reaching one rank only runs in make test-slow.
@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_and_resume_is_exact(small_corpus, tmp_path, tokenizer_args):
    args = [*COMMON, *tokenizer_args, "train.batch_size=4", "train.max_steps=30", "model.config.resid_pdrop=0.1"]
    reference = tmp_path / "reference"
    ref_proc = _two_processes(tiny_pretrain_args(small_corpus, reference, *args))
    _finish(ref_proc)

    stopped = tmp_path / "stopped"
    proc = _two_processes(tiny_pretrain_args(small_corpus, stopped, *args), start_new_session=True)
    ranks = _rank_pids(proc)
    wait_for_step(stopped / "metrics.jsonl", 4, proc)
    os.kill(ranks[1], signal.SIGTERM)  # only rank 1 is told: rank 0 must stop at the same step
    _finish(proc)
    checkpoints = sorted((stopped / "checkpoints").iterdir())
    assert len(checkpoints) == 1
    saved = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert saved["num_processes"] == 2 and 4 <= saved["global_step"] < 30
    assert {p.name for p in checkpoints[0].glob("rng-*")} == {"rng-0.safetensors", "rng-0.json",
                                                              "rng-1.safetensors", "rng-1.json"}
    assert not list(checkpoints[0].glob("*.pkl")) and not list(checkpoints[0].glob("*.bin"))
    assert not (stopped / "model.safetensors").exists()

    _finish(_two_processes([*tiny_pretrain_args(small_corpus, stopped, *args), "--resume"]))
    expected, resumed = load_weights(reference), load_weights(stopped)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def test_resume_with_another_world_size_warns_and_strict_refuses(small_corpus, tmp_path, tokenizer_args):
    out = tmp_path / "run"
    args = tiny_pretrain_args(small_corpus, out, *tokenizer_args, "train.save_every=3")
    assert run_cli(["pretrain", *args])[0] == 0
    extended = [*args, "train.max_steps=9", "train.batch_size=2"]
    code, _, err = run_cli(["pretrain", *extended, "--resume", "--strict-resume"])
    assert code != 0 and "batch_size: 4 -> 2" in err and len(err.strip().splitlines()) == 1
    code, out_text, err = run_cli(["pretrain", *extended, "--resume"])
    assert code == 0, err
    assert "warning: resuming with changed settings (batch_size: 4 -> 2)" in out_text + err


def test_global_batch_that_does_not_divide_is_refused_before_training(small_corpus, tmp_path):
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, tmp_path / "o", "train.global_batch_size=9",
                                                            "train.grad_accum=2")])
    assert code != 0
    assert "train.global_batch_size=9 does not divide across 1 process(es) x train.grad_accum=2" in err


def test_gpu_launch_without_gpus_is_a_clear_error(small_corpus, tmp_path):
    env = {**_env(), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    env.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run([sys.executable, "-m", "hftool", "pretrain",
                             *tiny_pretrain_args(small_corpus, tmp_path / "o")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no GPU is visible" in result.stderr and "--num-processes 2" in result.stderr


# make test holds the mechanism with GPT-2 above (per-rank batches, the cross-process loss sum); SQuAD's per-rank
# padding runs in make test-slow, as BERT's masked-token counts do below.
@pytest.mark.slow
def test_squad_two_processes_equal_one_big_batch_and_accumulation(tmp_path, tiny_bert):
    """SQuAD batches are padded per micro-batch (so per rank): the padding is masked out, the weights agree.

    The QA head's bias has an exactly-zero true gradient (a shift of all start or end logits does not change
    their softmax), so Adam's eps is raised to keep rounding noise from becoming lr-sized steps there.
    """
    from squad_fixtures import hand_examples, write_official
    from transformers import BertForPreTraining

    model = BertForPreTraining.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(tmp_path / "bert")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "bert")
    data = write_official(tmp_path / "squad.json", hand_examples())
    common = ["-r", "squad-minilm", "--train-file", str(data), "--validation-file", str(data),
              f"model.name_or_path={tmp_path / 'bert'}", "data.max_length=128", "data.doc_stride=32",
              "train.max_steps=3", "train.lr=1e-3", "train.adam_eps=1e-4", "train.mixed_precision=no",
              "train.report_to=none", "train.warmup_steps=0"]

    def args(name, *extra):
        return ["finetune", "squad", *common, f"train.output_dir={tmp_path / name}", *extra]

    cmd = [sys.executable, "-m", "hftool", *args("two", "train.batch_size=2"), "--num-processes", "2"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, extra in (("big", ["train.batch_size=4"]), ("acc", ["train.batch_size=2", "train.grad_accum=2"])):
        code, _, err = run_cli(args(name, *extra))
        assert code == 0, err
    _finish(proc)
    big = load_weights(tmp_path / "big")
    _assert_close(big, load_weights(tmp_path / "two"), atol=1e-6)
    _assert_close(big, load_weights(tmp_path / "acc"), atol=1e-6)
    two_metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    big_metrics = json.loads((tmp_path / "big" / "metrics.json").read_text())
    assert two_metrics["eval_exact_match"] == big_metrics["eval_exact_match"]
    assert two_metrics["eval_f1"] == pytest.approx(big_metrics["eval_f1"], abs=1e-9)


# make test holds both halves faster: BERT's accumulation equals one big batch in process (test_bert_pretraining)
# and the cross-process sum of loss items is the one the GPT-2 case above checks.
@pytest.mark.slow
def test_mlm_nsp_two_processes_equal_one_big_batch_and_accumulation(small_corpus, tmp_path):
    """Masked-token counts differ between ranks; the loss is normalised over the whole step, so weights agree."""
    no_dropout = ("model.config={num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, "
                  "intermediate_size: 64, max_position_embeddings: 64, hidden_dropout_prob: 0.0, "
                  "attention_probs_dropout_prob: 0.0}")
    # One tokenizer for the three runs: WordPiece training in the tokenizers library may order tied tokens
    # differently from run to run.
    from hftool.data.text import read_text_documents
    from hftool.data.tokenizer_training import train_tokenizer

    train_tokenizer(read_text_documents(small_corpus), "wordpiece", 400, lowercase=True).save_pretrained(
        tmp_path / "tok")
    common = ["train.max_steps=4", "train.lr=3e-3", "train.adam_eps=1e-6", no_dropout,
              f"tokenizer.path={tmp_path / 'tok'}"]
    proc = _two_processes([*tiny_bert_args(small_corpus, tmp_path / "two", *common), "train.batch_size=4"])
    code, _, err = run_cli(["pretrain", *tiny_bert_args(small_corpus, tmp_path / "big", *common),
                            "train.batch_size=8"])
    assert code == 0, err
    code, _, err = run_cli(["pretrain", *tiny_bert_args(small_corpus, tmp_path / "acc", *common),
                            "train.batch_size=4", "train.grad_accum=2"])
    assert code == 0, err
    _finish(proc)
    big = load_weights(tmp_path / "big")
    _assert_close(big, load_weights(tmp_path / "two"), atol=1e-6)
    _assert_close(big, load_weights(tmp_path / "acc"), atol=1e-6)
