"""Which typed schema each command's recipes follow, for ``hftool recipes validate`` and the tests."""

from __future__ import annotations

import importlib
from pathlib import Path

from hftool import config as cfg
from hftool.errors import HftoolError

# command name -> "module:Class" of its recipe schema (imported lazily: the schemas pull in little, but
# their modules may import torch).
SCHEMAS: dict[str, str] = {
    "pretrain": "hftool.tasks.pretrain:PretrainRecipe",
    "finetune squad": "hftool.tasks.squad:SquadRecipe",
    "finetune classify": "hftool.tasks.classify:ClassifyRecipe",
    "finetune ner": "hftool.tasks.ner:NerRecipe",
    "generate": "hftool.generation.settings:GenerateRecipe",
}


def schema_for(command: str) -> type:
    if command not in SCHEMAS:
        raise HftoolError(f"unknown recipe command '{command}'; known: {', '.join(sorted(SCHEMAS))}")
    module, name = SCHEMAS[command].split(":")
    return getattr(importlib.import_module(module), name)


def validate_recipe(path: Path, overrides: list[str]) -> str:
    """Load ``path`` into its schema, run the schema's own checks, and return the resolved YAML."""
    command = cfg.recipe_command(path)
    schema = schema_for(command)
    recipe = cfg.load_recipe(schema, str(path), overrides)
    check = getattr(recipe, "validate", None)
    if callable(check):
        check()
    return cfg.dump_yaml(recipe, command)
