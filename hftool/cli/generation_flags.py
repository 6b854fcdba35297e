"""The generation settings a user typed as flags, laid over a recipe: one step shared by ``generate``,
``summarize``, ``translate`` and ``serve``."""

from __future__ import annotations

import dataclasses

from hftool.cli.setting_options import given
from hftool.schemas.generate import DecodingSettings, GenerateRecipe, ModelSettings, apply_flags

SETTING_FIELDS = [*dataclasses.fields(ModelSettings), *dataclasses.fields(DecodingSettings),
                  *(f for f in dataclasses.fields(GenerateRecipe) if f.name == "batch_size")]


def recipe_with_flags(base: GenerateRecipe, flags: dict) -> GenerateRecipe:
    """Overlay the flags the user typed on ``base`` (recipe or task defaults) and check them all, before any load.

    ``flags`` maps the commands' setting parameters (``with_options``) to their values; the bounds and the
    error words come from the settings' field metadata, the same checks a recipe file gets.
    """
    recipe = apply_flags(base, **given(SETTING_FIELDS, flags))
    recipe.validate()
    return recipe
