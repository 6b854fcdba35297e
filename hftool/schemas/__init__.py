"""Every command's schema, one module per command family; a field declares its default, bound and help once.

- :mod:`~hftool.schemas.fields`: how a field is declared (``setting``, ``Bound``) and checked.
- :mod:`~hftool.schemas.pretrain`: ``pretrain`` recipes, ``estimate-memory``, ``tokenizer train``, launch.
- :mod:`~hftool.schemas.finetune`: ``finetune squad|classify|ner|sft`` recipes.
- :mod:`~hftool.schemas.adapter`: the ``adapter:`` (LoRA) section of every fine-tuning recipe.
- :mod:`~hftool.schemas.generate`: ``generate`` recipes and the decoding settings (``summarize``, ``translate``).
- :mod:`~hftool.schemas.inference`: ``answer``, ``classify``, ``tag``, ``evaluate`` options.
- :mod:`~hftool.schemas.serve`: ``serve``'s listening address and limits.
- :mod:`~hftool.schemas.explain`: ``explain`` options.

The CLI derives its options from these fields (``hftool.cli.setting_options``); a recipe's module is named for
its command family, as its folder in ``recipes/`` is, and ``hftool.recipes.RECIPES`` maps each command to its
recipe class. This package imports none of its modules: the engine and the CLI import the one they need.
"""
