"""Which typed schema each command's recipes follow, for ``hftool recipes validate`` and the tests."""

from __future__ import annotations

from pathlib import Path

from hftool import config as cfg
from hftool.errors import HftoolError
from hftool.schemas.finetune import ClassifyRecipe, NerRecipe, SftRecipe, SquadRecipe
from hftool.schemas.generate import GenerateRecipe
from hftool.schemas.pretrain import PretrainRecipe

__all__ = ["RECIPES", "schema_for", "validate_recipe"]

# command (a recipe's top-level ``command:``) -> the schema its recipes follow
RECIPES: dict[str, type] = {
    "pretrain": PretrainRecipe,
    "finetune squad": SquadRecipe,
    "finetune classify": ClassifyRecipe,
    "finetune ner": NerRecipe,
    "finetune sft": SftRecipe,
    "generate": GenerateRecipe,
}


def schema_for(command: str) -> type:
    if command not in RECIPES:
        raise HftoolError(f"unknown recipe command '{command}'; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[command]


def validate_recipe(path: Path, overrides: list[str]) -> str:
    """Load ``path`` into its schema, run the schema's own checks, and return the resolved YAML."""
    command = cfg.recipe_command(path)
    schema = schema_for(command)
    recipe = cfg.load_recipe(schema, str(path), overrides)
    check = getattr(recipe, "validate", None)
    if callable(check):
        check()
    return cfg.dump_yaml(recipe, command)
