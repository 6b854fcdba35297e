"""Output folders: --overwrite replaces only hftool's own files, refused resumes leave the folder as it was,
and a run is quiet by default."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, run_cli, tiny_pretrain_args

from hftool.errors import HftoolError
from hftool.outputs import (
    LOCK,
    MANIFEST,
    claim_output_dir,
    claims_scope,
    fingerprint,
    read_manifest,
    record,
    write_text,
)


def test_overwrite_refuses_a_folder_with_user_files_and_keeps_them(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(HftoolError, match=r"did not write \(thesis.tex\)"):
        claim_output_dir(out, "train.output_dir", overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_a_folder_without_a_run_is_not_called_an_earlier_run(tmp_path):
    """Issue 24 nit: a folder holding only a user's files was said to hold 'an earlier run', and --overwrite
    was suggested although it could not help."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(HftoolError) as caught:
        claim_output_dir(tmp_path / "run", "--output", overwrite=False)
    assert "did not write (notes.txt)" in str(caught.value) and "--overwrite" not in str(caught.value)


def _own_run(out):
    """A claimed folder with files hftool wrote at three depths."""
    with claims_scope():
        claim_output_dir(out, "--output", overwrite=False)
        write_text(out / "metrics.json", "{}")
        (out / "checkpoints" / "step-1" / "sub").mkdir(parents=True)
        (out / "checkpoints" / "step-1" / "sub" / "w.bin").write_bytes(b"weights")
        fingerprint(out, "checkpoints")


def test_overwrite_removes_its_own_unchanged_files_at_any_depth(tmp_path):
    out = tmp_path / "run"
    _own_run(out)
    record(out, ".final-tmp")  # a crash while writing a temporary folder: hftool's, removed too
    (out / ".final-tmp").mkdir()
    (out / ".final-tmp" / "half.bin").write_bytes(b"half")
    with claims_scope():
        claim_output_dir(out, "--output", overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == [LOCK, MANIFEST]
    assert read_manifest(out).files == {} and not (out / LOCK).exists()


@pytest.mark.parametrize("case", ["user-file-two-levels-down", "changed-file", "user-symlink"])
def test_overwrite_refuses_foreign_or_changed_files_at_any_depth(tmp_path, case):
    """Principle 1, cases not in the issue: a user's file two levels down in a checkpoint, a file of the run
    the user changed (same name, other content), a symlink the user made; nothing is deleted."""
    out = tmp_path / "run"
    _own_run(out)
    if case == "user-file-two-levels-down":
        (out / "checkpoints" / "step-1" / "sub" / "mine.txt").write_text("mine")
        named = "checkpoints/step-1/sub/mine.txt"
    elif case == "changed-file":
        (out / "checkpoints" / "step-1" / "sub" / "w.bin").write_bytes(b"weightz")
        named = "checkpoints/step-1/sub/w.bin (changed)"
    else:
        (out / "link").symlink_to(tmp_path)
        named = "link"
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(HftoolError, match="did not write or that changed") as caught:
        claim_output_dir(out, "--output", overwrite=True)
    assert named in str(caught.value)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_an_append_only_log_that_grew_after_its_fingerprint_is_still_hftools(tmp_path):
    """A run killed after the last fingerprint of metrics.jsonl has appended lines to it; the recorded prefix is
    intact, so it is hftool's. A log whose recorded part was edited is not."""
    out = tmp_path / "run"
    with claims_scope():
        claim_output_dir(out, "--output", overwrite=False)
        (out / "metrics.jsonl").write_text('{"step": 1}\n')
        fingerprint(out, "metrics.jsonl")
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 2}\n')
    (out / "other.jsonl").write_text("")
    fingerprint(out, "other.jsonl")
    (out / "other.jsonl").write_text("grown, but not an append-only log\n")
    with pytest.raises(HftoolError, match="did not write or that changed") as caught:
        claim_output_dir(out, "--output", overwrite=True)
    assert "other.jsonl (changed)" in str(caught.value) and "metrics.jsonl" not in str(caught.value)
    (out / "other.jsonl").write_text("")
    (out / "metrics.jsonl").write_text('{"step": 9}\n{"step": 2}\n')  # the recorded line was replaced
    with pytest.raises(HftoolError, match=r"metrics.jsonl \(changed\)"):
        claim_output_dir(out, "--output", overwrite=True)


def test_a_name_only_manifest_of_an_earlier_hftool_is_refused_by_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"maybe fine-tuned by hand since")
    (out / MANIFEST).write_text(json.dumps(["model.safetensors"]))
    with pytest.raises(HftoolError, match="recorded file names, not contents"):
        claim_output_dir(out, "--output", overwrite=True)
    assert (out / "model.safetensors").read_bytes() == b"maybe fine-tuned by hand since"
    with claims_scope():  # a resume takes the listed files as hftool's, as they are now
        claim_output_dir(out, "--output", overwrite=False, resume=True)
    assert set(read_manifest(out).files) == {"model.safetensors"}


def test_output_folder_below_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(HftoolError, match="afile is a file, not a folder"):
        claim_output_dir(tmp_path / "afile" / "sub", "train.output_dir", overwrite=False)


@pytest.mark.parametrize("target", [".", "..", "~", "/"])
def test_refuses_current_directory_its_ancestors_home_and_root(target, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(HftoolError, match="current directory|home or root"):
        claim_output_dir(work / target if target in (".", "..") else target, "train.output_dir", overwrite=True)
    assert (work / "keep.txt").read_text() == "mine"


@pytest.mark.integration
def test_pretrain_overwrite_keeps_user_files_and_replaces_its_own(small_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out)])
    assert code == 0, err[-2000:]
    written = set(p.name for p in out.iterdir())
    assert {"model.safetensors", "hftool_recipe.yaml", "metrics.jsonl", MANIFEST} <= written
    recorded = read_manifest(out).files
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MANIFEST} <= set(recorded)

    (out / "notes.txt").write_text("the user's notes")
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out), "--overwrite"])
    assert code == 2 and "notes.txt" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert (out / "model.safetensors").is_file()  # nothing of the earlier run was deleted either

    (out / "notes.txt").unlink()
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.max_steps=3"), "--overwrite"])
    assert code == 0, err[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3 and steps.count(1) == 1  # the old run's log was replaced, not appended to
    assert "max_steps: 3" in (out / "hftool_recipe.yaml").read_text()


def test_pretrain_output_dir_dot_deletes_nothing(small_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, tmp_path / "x"), "train.output_dir=.",
                            "--overwrite"])
    assert code == 2 and "current directory" in err and "Traceback" not in err
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.integration
def test_resume_with_a_changed_shape_is_refused_before_writing(small_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.save_every=3")])
    assert code == 0, err[-2000:]
    recipe = (out / "hftool_recipe.yaml").read_bytes()
    changed = tiny_pretrain_args(small_corpus, out, "train.save_every=3",
                                 "model.config={n_layer: 2, n_embd: 32, n_head: 2, n_positions: 64}")
    code, _, err = run_cli(["pretrain", *changed, "--resume"])
    assert code == 2 and "Traceback" not in err
    assert "model.config.n_layer: 1 -> 2" in err.strip().splitlines()[-1]
    assert (out / "hftool_recipe.yaml").read_bytes() == recipe


@pytest.mark.integration
def test_tiny_pretrain_and_save_are_quiet(small_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)  # conftest sets it; the CLI must do it alone
    monkeypatch.delenv("HFTOOL_VERBOSE", raising=False)
    code, out, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, tmp_path / "run")])
    assert code == 0, err[-2000:]
    text = out + err
    for chatter in ("Removed shared tensor", "LOAD REPORT", "generation flags are not valid", "\x1b["):
        assert chatter not in text
    assert "hftool pretrain" in text  # hftool's own summary is still shown


# ---- issue 24: ownership by content, inputs, one run per folder, failed runs ----------------------------------
@pytest.mark.integration
def test_overwrite_keeps_user_files_in_tensorboard_and_checkpoints(small_corpus, tmp_path, monkeypatch):
    """Issue 24 item 1, and a model file the user changed by hand (principle 1): --overwrite refuses, naming
    them, and deletes nothing; once they are moved away it replaces the run, checkpoints and logs included."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = tiny_pretrain_args(small_corpus, out, "train.save_every=3", "train.report_to=tensorboard")
    code, _, err = run_cli(["pretrain", *args])
    assert code == 0, err[-2000:]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert any(f.startswith("tensorboard/") for f in files) and "checkpoints/step-00000006/COMPLETE" in files
    assert files - {MANIFEST} == set(read_manifest(out).files)  # every file hftool wrote, at any depth

    (out / "tensorboard" / "my_notes.txt").write_text("notes")
    (out / "checkpoints" / "mine").mkdir()
    (out / "checkpoints" / "mine" / "x.txt").write_text("x")
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[:-1] + b"!")  # "fine-tuned by hand"
    code, _, err = run_cli(["pretrain", *args, "--overwrite"])
    line = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    for name in ("tensorboard/my_notes.txt", "checkpoints/mine/x.txt", "model.safetensors (changed)"):
        assert name in line
    assert (out / "tensorboard" / "my_notes.txt").read_text() == "notes"
    assert (out / "checkpoints" / "mine" / "x.txt").read_text() == "x"
    assert (out / "checkpoints" / "step-00000006" / "COMPLETE").is_file()

    (out / "tensorboard" / "my_notes.txt").unlink()
    shutil.rmtree(out / "checkpoints" / "mine")
    (out / "model.safetensors").write_bytes(weights)
    code, _, err = run_cli(["pretrain", *args, "--overwrite"])
    assert code == 0, err[-2000:]


def _evaluate_args(command, model, data, out):
    window = ["--max-length", "64", "--doc-stride", "16"] if command == "squad" else []
    return ["evaluate", command, "-m", str(model), "-f", str(data), "-o", str(out), *window]


@pytest.mark.parametrize("command", ["classify", "ner", "squad"])
@pytest.mark.parametrize("how", ["same-folder", "symlinked-model", "data-inside-output"])
def test_evaluate_never_writes_into_the_model_it_scores(command, how, tiny_gpt2, tmp_path, monkeypatch):
    """Issue 24 item 2 (-m cls -o cls --overwrite deleted the model), and cases not listed (principle 2): the
    model reached through a symlink, the scored file inside the output folder. Refused before anything loads,
    and the refusal without --overwrite does not suggest it."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "cls"
    shutil.copytree(tiny_gpt2, model)
    data = tmp_path / "dev.txt"
    data.write_text("good\t1\n")
    given, out = model, model
    if how == "symlinked-model":
        given = tmp_path / "link"
        given.symlink_to(model)
    elif how == "data-inside-output":
        out = tmp_path / "results"
        out.mkdir()
        data = out / "dev.txt"
        data.write_text("good\t1\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for extra in (["--overwrite"], []):
        code, _, err = run_cli([*_evaluate_args(command, given, data, out), *extra])
        line = err.strip().splitlines()[-1]
        assert code == 2 and "this run reads" in line and "Traceback" not in err, err[-1500:]
        assert "pass --overwrite" not in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("setting", ["model.init_from", "tokenizer.path", "data.files"])
def test_pretrain_never_writes_into_what_it_reads(setting, small_corpus, tiny_gpt2, tmp_path, monkeypatch):
    """Principle 2 for pretraining: continuing from, or tokenizing with, the output folder itself, or reading a
    data file inside it, is refused before anything is written."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    shutil.copytree(tiny_gpt2, out)
    value = f"[{out / 'docs.txt'}]" if setting == "data.files" else str(out)
    shutil.copy(small_corpus, out / "docs.txt")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    shape = ["model.config={}"] if setting == "model.init_from" else []
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out), *shape, f"{setting}={value}",
                            "--overwrite"])
    assert code == 2 and "this run reads" in err.strip().splitlines()[-1], err[-1500:]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("whose", ["user-model", "hftool-run"])
def test_tokenizer_train_refuses_a_model_folder(whose, tiny_gpt2, small_corpus, tmp_path, monkeypatch):
    """Issue 24 principle 3: `tokenizer train -o <model folder> --overwrite` left a folder without its model. It
    is refused, also when every file of the folder is hftool's own (a case not listed)."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(tiny_gpt2, model)
    if whose == "hftool-run":
        with claims_scope():
            claim_output_dir(model, "--output", overwrite=False, resume=True)
            fingerprint(model, *(p.name for p in model.iterdir() if p.name != MANIFEST and p.name != LOCK))
    before = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    code, _, err = run_cli(["tokenizer", "train", str(small_corpus), "-o", str(model), "--overwrite",
                            "--vocab-size", "300"])
    assert code == 2 and "holds a model" in err.strip().splitlines()[-1], err[-1500:]
    assert {p: p.read_bytes() for p in model.rglob("*") if p.is_file()} == before


HOLD_LOCK = """
import sys, time
from hftool.outputs import claim_output_dir
claim_output_dir(sys.argv[1], "--output", overwrite=False)
print("locked", flush=True)
time.sleep(120)
"""


def test_one_run_per_folder_a_live_lock_is_refused_a_stale_one_taken_over(small_corpus, tmp_path, monkeypatch):
    """Issue 24 item 3: a second run into a folder another process is writing is refused in one line naming the
    holder's PID; once that process is dead (killed: its lock file is left behind) the next run takes it over."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out), "--resume"])
        line = err.strip().splitlines()[-1]
        assert code == 2 and f"pid {holder.pid}" in line and "in use" in line, err[-1500:]
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK).is_file()  # left by the killed process
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.max_steps=2"), "--resume"])
    assert code == 0, err[-2000:]
    assert f"took over {out / LOCK}, left by pid {holder.pid}" in err
    assert not (out / LOCK).exists()  # released at the end of the run


def test_a_run_that_fails_on_bad_data_leaves_nothing_that_blocks_its_rerun(small_corpus, tmp_path, monkeypatch):
    """Issue 24 item 4: a JSONL line {"text": 5} left the manifest and the recipe, and the corrected rerun was
    refused as 'a different recipe'."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"text": "fine"}\n{"text": 5}\n')
    out = tmp_path / "run"
    args = [*tiny_pretrain_args(small_corpus, out, "train.max_steps=2"), f"data.files=[{data}]"]
    code, _, err = run_cli(["pretrain", *args])
    assert code == 2 and "corpus.jsonl:2" in err.strip().splitlines()[-1]
    assert not out.exists()
    text = small_corpus.read_text().split("\n\n")
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in text))
    code, _, err = run_cli(["pretrain", *args])
    assert code == 0, err[-2000:]


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_that_fails_after_its_claim_releases_it(existed, small_corpus, tmp_path, monkeypatch):
    """Principle of item 4, a failure the data checks cannot see (fewer examples than one step, found by the
    engine after the folder was claimed and the tokenizer saved): the folder is left as it was found (absent, or
    empty), and the corrected command just runs."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    if existed:
        out.mkdir()
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.batch_size=100000")])
    assert code == 2 and "fewer than one optimizer step" in err.strip().splitlines()[-1], err[-1500:]
    assert out.exists() == existed and (not existed or not any(out.iterdir()))
    code, _, err = run_cli(["pretrain", *tiny_pretrain_args(small_corpus, out, "train.max_steps=2")])
    assert code == 0, err[-2000:]
