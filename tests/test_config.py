"""Recipes: typed loading, overrides, unknown keys, hostile YAML, and every shipped recipe validates."""

from __future__ import annotations

import pytest
from helpers import run_cli

from hftool import config as cfg
from hftool.errors import HftoolError
from hftool.recipes import schema_for, validate_recipe
from hftool.schemas.pretrain import PretrainRecipe

ALL_RECIPES = cfg.list_recipes()


def test_recipes_exist():
    names = {p.stem for p in ALL_RECIPES}
    assert {"gpt2-tiny", "gpt2-small", "bloom-tiny", "bloom-560m"} <= names


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(cfg.RECIPES_DIR)))
def test_every_recipe_validates_and_says_how_to_run(path):
    text = path.read_text()
    assert text.startswith("#") and "hftool" in text.split("command:")[0], "recipe must open with how to run it"
    resolved = validate_recipe(path, [])
    assert resolved.startswith("command:")
    # its schema lives in hftool.schemas in the module of its folder (how a bare name in two folders resolves)
    assert cfg._recipe_folder(schema_for(cfg.recipe_command(path))) == path.relative_to(cfg.RECIPES_DIR).parts[0]


def test_real_shapes():
    gpt2 = cfg.load_recipe(PretrainRecipe, "gpt2-small")
    assert (gpt2.model.config["n_layer"], gpt2.model.config["n_embd"], gpt2.model.config["n_head"]) == (12, 768, 12)
    bloom = cfg.load_recipe(PretrainRecipe, "bloom-560m")
    assert (bloom.model.config["n_layer"], bloom.model.config["hidden_size"], bloom.model.config["n_head"]) == (
        24, 1024, 16)


def test_overrides_are_typed_and_nested():
    recipe = cfg.load_recipe(PretrainRecipe, "gpt2-tiny",
                             ["train.lr=3e-4", "train.max_steps=7", "model.config.n_layer=2", "data.files=a.txt"])
    assert recipe.train.lr == pytest.approx(3e-4) and isinstance(recipe.train.lr, float)
    assert recipe.train.max_steps == 7
    assert recipe.model.config["n_layer"] == 2 and recipe.model.config["n_embd"] == 256
    assert recipe.data.files == ["a.txt"]


@pytest.mark.parametrize("override, suggestion", [
    ("train.max_stpes=3", "train.max_steps"),
    ("trian.lr=1", "train"),
    ("data.blok_size=4", "data.block_size"),
])
def test_unknown_key_suggests_closest(override, suggestion):
    with pytest.raises(HftoolError, match=f"did you mean '{suggestion}'"):
        cfg.load_recipe(PretrainRecipe, "gpt2-tiny", [override])


def test_unknown_model_config_key_is_refused():
    recipe = cfg.load_recipe(PretrainRecipe, "gpt2-tiny", ["model.config.n_layr=2"])
    with pytest.raises(HftoolError, match="did you mean 'model.config.n_layer'"):
        recipe.validate()


def test_wrong_type_and_choice_named():
    with pytest.raises(HftoolError, match="train.batch_size='many'"):
        cfg.load_recipe(PretrainRecipe, "gpt2-tiny", ["train.batch_size=many"])
    with pytest.raises(HftoolError, match="train.mixed_precision='fp8' is not one of"):
        cfg.load_recipe(PretrainRecipe, "gpt2-tiny", ["train.mixed_precision=fp8"])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("command: pretrain\ntrain:\n  batchsize: 4\n")
    with pytest.raises(HftoolError, match=r"r.yaml: unknown key 'train.batchsize'; did you mean 'train.batch_size'"):
        cfg.load_recipe(PretrainRecipe, str(path))


def test_hostile_yaml_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"command: pretrain\ntrain: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = run_cli(["recipes", "validate", str(path)])
    assert code != 0
    assert err.startswith("error:") and "tag refused" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_recipes_cli(tmp_path):
    code, out, _ = run_cli(["recipes", "ls"])
    assert code == 0 and "pretrain/gpt2-tiny" in out and "hftool pretrain --recipe" in out
    code, out, _ = run_cli(["recipes", "show", "gpt2-tiny"])
    assert code == 0 and "n_layer: 4" in out
    code, out, err = run_cli(["recipes", "validate", str(cfg.find_recipe("bloom-tiny")), "train.max_steps=5"])
    assert code == 0 and "max_steps: 5" in out
    code, _, err = run_cli(["recipes", "show", "gpt2-tiyn"])
    assert code != 0 and "did you mean" in err
