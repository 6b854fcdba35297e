"""Output folders: --overwrite replaces only hftool's own files, refused resumes leave the folder as it was,
and a run is quiet by default."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli, tiny_pretrain_args

from hftool.errors import HftoolError
from hftool.outputs import MANIFEST, claim_output_dir, record, written_names


def test_overwrite_refuses_a_folder_with_user_files_and_keeps_them(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(HftoolError, match=r"did not write \(thesis.tex\)"):
        claim_output_dir(out, "train.output_dir", overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_overwrite_deletes_only_recorded_names(tmp_path):
    out = tmp_path / "run"
    claim_output_dir(out, "--output", overwrite=False, names=("metrics.json",))
    (out / "metrics.json").write_text("{}")
    record(out, "checkpoints")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "step").write_text("x")
    claim_output_dir(out, "--output", overwrite=True, names=("new.json",))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]
    assert written_names(out) == {"new.json"}


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
    assert written - {MANIFEST} <= written_names(out)  # every file the run wrote is on its list

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
