"""``hftool pretrain``: language-model pretraining from a recipe."""

from __future__ import annotations

import os

import typer

from hftool.cli.options import OVERWRITE, RECIPE_HELP, RESUME, STRICT_RESUME
from hftool.cli.setting_options import option
from hftool.schemas.pretrain import LaunchOptions

OVERRIDES_HELP = "Recipe overrides as section.key=value, e.g. train.max_steps=200 model.config.n_layer=2."


def pretrain(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    recipe: str = typer.Option("gpt2-tiny", "--recipe", "-r", help=RECIPE_HELP),
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    strict_resume: bool = STRICT_RESUME,
    num_processes: int = option(LaunchOptions, "num_processes"),
) -> None:
    """Pretrain a GPT-2/BLOOM causal LM (or BERT MLM+NSP) from scratch or from a checkpoint.

    With no arguments it trains the gpt2-tiny recipe on the embedded corpus (Python's own documentation).

    Examples:

      hftool pretrain train.max_steps=50

      hftool pretrain -r bloom-tiny data.files=\\[corpus.txt] train.output_dir=runs/bloom

      hftool pretrain -r gpt2-small data.hub_dataset=wikitext data.hub_config=wikitext-2-raw-v1

      hftool pretrain -r bert-tiny-mlm-nsp data.files=\\[wiki.txt] train.output_dir=runs/bert

      hftool pretrain -r bert-tiny-mlm-nsp objective=mlm bert.whole_word_mask=true

      hftool pretrain -r gpt2-tiny --num-processes 2

      accelerate launch --multi_gpu --num_processes 8 -m hftool pretrain -r gpt2-small
    """
    from hftool.config import load_recipe
    from hftool.cost import long_cpu_run_warning
    from hftool.environment import check_bf16_pays
    from hftool.launch import launched_by_a_distributed_launcher, relaunch
    from hftool.runs.pretrain import run_pretrain
    from hftool.schemas.pretrain import PretrainRecipe

    config = load_recipe(PretrainRecipe, recipe, overrides or [])
    config.validate()
    check_bf16_pays(config.train.mixed_precision, config.train.allow_slow_bf16)
    relaunch(num_processes)
    if not launched_by_a_distributed_launcher() or os.environ.get("RANK", "0") == "0":
        warning = long_cpu_run_warning(config, recipe)
        if warning:
            typer.echo(warning, err=True)
    run_pretrain(config, resume=resume, overwrite=overwrite, strict_resume=strict_resume)
