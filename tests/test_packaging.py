"""The recipes and accelerate configs ship inside the package; `hftool recipes cp` copies one out."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest
from helpers import REPO, run_cli

from hftool import config as cfg

SHIPPED = sorted(p.relative_to(REPO / "recipes") for p in (REPO / "recipes").glob("*/*.yaml"))


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(re.findall(r'"(hftool[\w.]*)"', (REPO / "pyproject.toml").read_text().split("[tool.setuptools]")[1]
                            .split("[tool.setuptools.package-dir]")[0]))
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "hftool").rglob("__init__.py")}
    assert found | {"hftool.recipe_files"} == listed


def test_recipes_are_read_from_the_package_resource():
    assert cfg.RECIPES_DIR == Path(str(files("hftool.recipe_files")))
    recipes = {p.relative_to(cfg.RECIPES_DIR) for p in cfg.list_recipes()}
    accelerate = {p.relative_to(cfg.RECIPES_DIR) for p in cfg.list_accelerate_configs()}
    assert recipes | accelerate == set(SHIPPED) and len(accelerate) == 7
    assert all(p.parts[0] == "accelerate" for p in accelerate)


@pytest.mark.integration
def test_the_wheel_holds_every_recipe_and_accelerate_config(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("hftool-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"hftool/recipe_files/{p.as_posix()}" for p in SHIPPED} <= names
    assert "hftool/generation/__init__.py" in names and "hftool/metrics/squad/squad.py" in names


def test_ls_lists_recipes_with_their_command_and_the_accelerate_configs():
    code, out, err = run_cli(["recipes", "ls"])
    assert code == 0, err
    assert re.search(r"pretrain/gpt2-tiny\s+hftool pretrain --recipe pretrain/gpt2-tiny", out)
    assert re.search(r"accelerate/fsdp\s+accelerate launch --config_file \S+/accelerate/fsdp.yaml -m hftool", out)
    assert len(out.strip().splitlines()) == len(SHIPPED)


def test_an_accelerate_config_is_not_taken_for_a_recipe(tmp_path):
    code, _, err = run_cli(["pretrain", "-r", "fsdp", f"train.output_dir={tmp_path / 'x'}"])
    assert code != 0 and "--recipe fsdp: no such file or recipe" in err


def test_cp_copies_a_recipe_that_then_runs_by_path_and_never_overwrites(tmp_path):
    code, out, err = run_cli(["recipes", "cp", "gpt2-tiny", str(tmp_path)])
    assert code == 0, err
    copy = tmp_path / "gpt2-tiny.yaml"
    assert copy.read_text() == (REPO / "recipes/pretrain/gpt2-tiny.yaml").read_text()
    copy.write_text(copy.read_text().replace("max_steps: 300", "max_steps: 7"))
    code, out, err = run_cli(["recipes", "validate", str(copy)])
    assert code == 0 and "max_steps: 7" in out, err
    edited = copy.read_text()
    code, _, err = run_cli(["recipes", "cp", "gpt2-tiny", str(copy)])
    assert code != 0 and err.strip() == f"error: {copy}: already exists; choose another destination " \
                                       "(nothing was overwritten)"
    assert copy.read_text() == edited and sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-tiny.yaml"]
    code, _, err = run_cli(["recipes", "cp", "accelerate/fsdp", str(tmp_path / "fsdp.yaml")])
    assert code == 0 and "fsdp_config" in (tmp_path / "fsdp.yaml").read_text(), err
