"""Output folders: --overwrite replaces only hftool's own files, refused resumes leave the folder as it was,
and a run is quiet by default."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli, tiny_pretrain_args

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
