"""Checkpoints: nothing in one can run code, a damaged one is skipped (or refused), a full disk is one line,
a run stopped by SIGTERM or SIGKILL resumes bitwise exactly, and metrics.jsonl holds each step exactly once
across kills and resumes."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from helpers import REPO, load_weights, run_cli, tiny_bert_args, tiny_pretrain_args, wait_for_step

from hftool.engine.checkpoint_files import CheckpointError, verify_checkpoint

COMMON = ("train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=2", "train.lr=3e-3",
          "train.warmup_steps=2", "model.config.resid_pdrop=0.1")


def _pretrain(corpus, out, *extra):
    return run_cli(["pretrain", *tiny_pretrain_args(corpus, out, *COMMON, *extra)])


def _assert_one_error_line(code, err, *needles):
    assert code != 0
    assert "Traceback" not in err, err
    progress = re.compile(r"^[\w ]+: +\d+%\|")  # progress bars share stderr
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not progress.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _train_steps(metrics):
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r], [r["step"] for r in records if "loss" not in r]


@pytest.fixture(scope="module")
def finished_run(small_corpus, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4, and its final weights."""
    out = tmp_path_factory.mktemp("run") / "out"
    code, _, err = _pretrain(small_corpus, out)
    assert code == 0, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    return out


class Payload:
    """Writes a marker file when unpickled: what a crafted checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.integration
def test_no_checkpoint_file_can_run_code(finished_run, small_corpus, tmp_path):
    """Each file of a checkpoint replaced by a live malicious pickle (the manifest updated to match, so that
    verification alone cannot catch it): resuming never runs it and names the file in one line."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is live: unpickling it the old way runs it
    assert marker.exists()
    marker.unlink()

    out = tmp_path / "out"
    newest = out / "checkpoints" / "step-00000004"
    names = sorted(p.name for p in (finished_run / "checkpoints" / "step-00000004").iterdir())
    assert not [n for n in names if n.endswith((".pkl", ".bin", ".pt"))], names
    for name in names:
        shutil.copytree(finished_run, out)
        shutil.copy(evil, newest / name)
        if name != "manifest.json":
            manifest = json.loads((newest / "manifest.json").read_text())
            if name in manifest["files"]:
                manifest["files"][name] = {"size": evil.stat().st_size,
                                           "sha256": _sha256(evil)}
                (newest / "manifest.json").write_text(json.dumps(manifest))
        code, _, err = _pretrain(small_corpus, out, "--resume", "--strict-resume")
        assert not marker.exists(), name
        if name == "COMPLETE":  # only its presence matters; nothing reads it
            assert code == 0, err
        else:
            _assert_one_error_line(code, err, str(newest / name))
        shutil.rmtree(out)


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.integration
def test_truncated_model_is_refused_with_strict_resume_and_skipped_without(finished_run, small_corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    newest = out / "checkpoints" / "step-00000004"
    model = newest / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    expected = load_weights(finished_run)

    code, _, err = _pretrain(small_corpus, out, "--resume", "--strict-resume")
    _assert_one_error_line(code, err, str(model), "truncated", "--strict-resume")
    assert newest.is_dir()
    assert torch.equal(load_weights(out)["transformer.wte.weight"], expected["transformer.wte.weight"])

    code, stdout, err = _pretrain(small_corpus, out, "--resume")
    assert code == 0, err
    assert f"skipped checkpoint step-00000004: {model} is" in stdout + err
    assert "(step 2)" in stdout + err and (out / "checkpoints" / "rejected-step-00000004").is_dir()
    resumed = load_weights(out)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)  # the fallback resume is exact too
    verify_checkpoint(out / "checkpoints" / "step-00000004")
    train, evals = _train_steps(out / "metrics.jsonl")
    assert train == [1, 2, 3, 4] and evals == [4]


@pytest.mark.integration
def test_no_checkpoint_that_verifies_is_refused(finished_run, small_corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    for checkpoint in (out / "checkpoints").iterdir():
        (checkpoint / "optimizer.json").write_text("{}")
    code, _, err = _pretrain(small_corpus, out, "--resume")
    _assert_one_error_line(code, err, "no checkpoint in", "optimizer.json")


@pytest.mark.integration
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(small_corpus, tmp_path, monkeypatch):
    """ENOSPC while writing the second checkpoint: one line naming the device and the file, the first
    checkpoint intact, no temporary folder left; --resume then finishes, logging each step once."""
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def fill_disk(tensors, filename, *args, **kwargs):
        if ".tmp-step-00000004" in str(filename) and str(filename).endswith("optimizer.safetensors"):
            with open(filename, "wb") as fh:
                fh.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(tensors, filename, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(safetensors.torch, "save_file", fill_disk)
    code, _, err = _pretrain(small_corpus, out, "train.max_steps=6")
    _assert_one_error_line(code, err, "no space left on ", "writing "
                           f"{out / 'checkpoints' / '.tmp-step-00000004' / 'optimizer.safetensors'}")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    verify_checkpoint(out / "checkpoints" / "step-00000002")
    monkeypatch.undo()

    partial = out / "checkpoints" / ".tmp-step-00000004"  # what a kill -9 in the middle of a save leaves
    shutil.copytree(out / "checkpoints" / "step-00000002", partial)
    (partial / "COMPLETE").unlink()
    code, stdout, err = _pretrain(small_corpus, out, "train.max_steps=6", "--resume")
    assert code == 0, err
    assert f"removed {partial}" in stdout + err and "(step 2)" in stdout + err and not partial.exists()
    train, evals = _train_steps(out / "metrics.jsonl")
    assert train == [1, 2, 3, 4, 5, 6] and evals == [6]


@pytest.mark.integration
def test_disk_full_during_the_final_save_leaves_no_partial_model(small_corpus, tmp_path, monkeypatch):
    from pathlib import Path

    real_write = Path.write_text

    def fill_disk(self, *args, **kwargs):
        if self.parent.name == ".final-tmp" and self.name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(Path, "write_text", fill_disk)
    code, _, err = _pretrain(small_corpus, out)
    _assert_one_error_line(code, err, "no space left on ", f"writing {out / '.final-tmp' / 'metrics.json'}")
    assert not (out / ".final-tmp").exists() and not (out / "model.safetensors").exists()
    verify_checkpoint(out / "checkpoints" / "step-00000004")


@pytest.mark.integration
def test_kill_9_then_resume_is_exact_and_logs_each_step_once(small_corpus, tmp_path):
    # Tiny steps take milliseconds: the kill lands some steps after step 7, so the run is long enough that it
    # still lands before the end (a 12-step run once finished before SIGKILL arrived).
    common = ["train.max_steps=48", "train.save_every=3", "train.lr=3e-3", "train.warmup_steps=4",
              "model.config.resid_pdrop=0.1"]
    reference = tmp_path / "reference"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, reference, *common)])
    assert code == 0, err

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hftool", "pretrain", *tiny_pretrain_args(small_corpus, killed, *common)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(killed / "metrics.jsonl", 7, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    logged, _ = _train_steps(killed / "metrics.jsonl")
    assert logged[:7] == list(range(1, 8))

    code, stdout, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, killed, *common), "--resume"])
    assert code == 0, err
    resumed_at = re.search(r"\(step (\d+)\)", stdout + err)
    assert resumed_at and 6 <= int(resumed_at.group(1)) < 48, stdout + err
    expected, resumed = load_weights(reference), load_weights(killed)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    train, evals = _train_steps(killed / "metrics.jsonl")
    assert train == list(range(1, 49)) and evals == [48]
    ref_train = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    res_train = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in ref_train] == [r.get("loss") for r in res_train]


# GPT-2 (causal LM) and BERT (mlm-nsp): (overrides builder, shared overrides, step to stop at, max_steps).
SIGTERM_RUNS = {
    "gpt2": (tiny_pretrain_args, ["train.lr=3e-3", "train.warmup_steps=4", "model.config.resid_pdrop=0.1"], 5, 24),
    "bert": (tiny_bert_args, ["train.lr=3e-3", "train.warmup_steps=3"], 4, 16),
}


@pytest.mark.integration
@pytest.mark.parametrize("model", SIGTERM_RUNS)
def test_sigterm_then_resume_is_bitwise_exact(model, small_corpus, request, tmp_path):
    """A run stopped by a real SIGTERM and resumed ends with exactly the weights of an uninterrupted run.

    The BERT runs share one tokenizer folder: ``tokenizers`` trains WordPiece vocabularies that differ slightly
    from one process to the next (ties broken in hash order), which is not what this test is about.
    """
    build, common, stop_at, max_steps = SIGTERM_RUNS[model]
    common = [f"train.max_steps={max_steps}", *common]
    if model == "bert":
        request.getfixturevalue("corpus_wordpiece").save_pretrained(tmp_path / "tokenizer")
        common.append(f"tokenizer.path={tmp_path / 'tokenizer'}")
    reference = tmp_path / "reference"
    code, _, err = run_cli(["pretrain", *build(small_corpus, reference, *common)])
    assert code == 0, err

    stopped = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "hftool", "pretrain", *build(small_corpus, stopped, *common)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(stopped / "metrics.jsonl", stop_at, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    checkpoints = sorted((stopped / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and (checkpoints[0] / "COMPLETE").is_file()
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert stop_at <= stopped_at < max_steps
    assert not (stopped / "model.safetensors").exists()

    code, _, err = run_cli(["pretrain", *build(small_corpus, stopped, *common), "--resume"])
    assert code == 0, err
    expected, resumed = load_weights(reference), load_weights(stopped)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


@pytest.mark.integration
def test_a_forged_manifest_entry_cannot_escape_the_checkpoint(finished_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    checkpoint = out / "checkpoints" / "step-00000004"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["../../metrics.jsonl"] = {"size": 1, "sha256": "0"}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="invalid entry"):
        verify_checkpoint(checkpoint)


# ---- sharded (FSDP / DeepSpeed) checkpoints: the libraries' own formats, read by Accelerate --------------
def _dcp_checkpoint(folder):
    """A real torch.distributed.checkpoint folder (``.metadata`` + ``.distcp``), as FSDP's sharded state dict is."""
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.randn(3, 4), "b": torch.zeros(4, dtype=torch.bfloat16)}, "step": 3,
             "optim": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}}
    with pytest.warns(UserWarning, match="single process"):
        dcp.save(state, checkpoint_id=str(folder))
    return state


class _ShardedAccelerator:
    """What Accelerate's load_state does with FSDP / DeepSpeed shards: DCP's pickle.load of ``.metadata`` and
    torch.load(weights_only=False) of the ``.bin`` / ``.pt`` files."""

    is_main_process, process_index, num_processes, scaler = True, 0, 1, None

    def __init__(self):
        self.loaded = {}

    def print(self, *args):
        pass

    def load_state(self, folder):
        from pathlib import Path

        from torch.distributed.checkpoint import FileSystemReader

        for path in sorted(Path(folder).rglob("*")):
            if path.name == ".metadata":
                self.loaded[path.name] = FileSystemReader(str(path.parent)).read_metadata()
            elif path.suffix in (".bin", ".pt"):
                self.loaded[path.name] = torch.load(path, weights_only=False)


def test_a_real_dcp_metadata_and_plain_torch_shards_pass(tmp_path):
    from hftool.engine.checkpoint_pickles import check_pickles, weights_only_loads

    state = _dcp_checkpoint(tmp_path / "ckpt")
    torch.save({"w": torch.arange(3.0)}, tmp_path / "ckpt" / "pytorch_model_fsdp.bin")
    (tmp_path / "ckpt" / "latest").write_text("global_step4")  # DeepSpeed's text pointer: not a pickle
    check_pickles(tmp_path / "ckpt")
    accelerator = _ShardedAccelerator()
    with weights_only_loads(tmp_path / "ckpt"):
        accelerator.load_state(tmp_path / "ckpt")
    assert sorted(accelerator.loaded[".metadata"].state_dict_metadata) == sorted(
        ["model.w", "model.b", "step", "optim.state.0.exp_avg", "optim.param_groups.0.lr",
         "optim.param_groups.0.params"])
    assert torch.equal(accelerator.loaded["pytorch_model_fsdp.bin"]["w"], torch.arange(3.0))
    assert accelerator.loaded[".metadata"].state_dict_metadata["model.b"].properties.dtype == state["model"]["b"].dtype


@pytest.mark.parametrize("name", [".metadata", "pytorch_model_fsdp.bin"])
def test_a_sharded_checkpoint_cannot_run_code(tmp_path, monkeypatch, name):
    """A malicious pickle as DCP's ``.metadata`` (raw pickle, read with pickle.load) or as a torch.save shard
    (read with weights_only=False by Accelerate / DeepSpeed): resuming refuses in one line naming the file, and the
    payload never runs; the environment is left as it was."""
    import pickle

    from hftool.engine.checkpoints import Checkpointer

    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    _dcp_checkpoint(folder)
    if name == ".metadata":
        (folder / name).write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"w": torch.ones(1), "x": Payload(marker)}, folder / name)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user's opt-out does not reach a resume
    checkpointer = Checkpointer(_ShardedAccelerator(), tmp_path, keep=1, settings={}, sharded=True)
    with pytest.raises(CheckpointError) as refused:
        checkpointer._load(folder, model=None, optimizer=None, scheduler=None)
    message = str(refused.value)
    assert message.startswith(f"{folder / name} is not a valid hftool checkpoint file: ")
    assert "\n" not in message and "open" in message
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
