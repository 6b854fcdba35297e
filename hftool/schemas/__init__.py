"""Every command's schema, one module per command family; a field declares its default, bound and help once.

- :mod:`~hftool.schemas.fields`: how a field is declared (``setting``, ``Bound``) and checked.
- :mod:`~hftool.schemas.pretrain`: ``pretrain`` recipes, ``estimate-memory``, ``tokenizer train``, launch.
- :mod:`~hftool.schemas.finetune`: ``finetune squad|classify|ner`` recipes.
- :mod:`~hftool.schemas.generate`: ``generate`` recipes and the decoding settings (``summarize``, ``translate``).
- :mod:`~hftool.schemas.inference`: ``answer``, ``classify``, ``tag``, ``evaluate`` options.
- :mod:`~hftool.schemas.serve`: ``serve``'s listening address and limits.
- :mod:`~hftool.schemas.explain`: ``explain`` options.

The CLI derives its options from these fields (``hftool.cli.setting_options``); a recipe's module is named for
its command family, as its folder in ``recipes/`` is.
"""

from __future__ import annotations

from hftool.schemas.finetune import ClassifyRecipe, NerRecipe, SquadRecipe
from hftool.schemas.generate import GenerateRecipe
from hftool.schemas.pretrain import PretrainRecipe

# command (a recipe's top-level ``command:``) -> the schema its recipes follow
RECIPES: dict[str, type] = {
    "pretrain": PretrainRecipe,
    "finetune squad": SquadRecipe,
    "finetune classify": ClassifyRecipe,
    "finetune ner": NerRecipe,
    "generate": GenerateRecipe,
}
