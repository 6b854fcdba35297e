"""``hftool estimate-memory``: will this recipe fit, and with which strategy?"""

from __future__ import annotations

import typer

from hftool.cli.options import RECIPE_HELP
from hftool.cli.pretrain import OVERRIDES_HELP
from hftool.cli.setting_options import option
from hftool.schemas.pretrain import EstimateMemoryOptions


def estimate_memory(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    recipe: str = typer.Option("gpt2-tiny", "--recipe", "-r", help=RECIPE_HELP),
    num_processes: int = option(EstimateMemoryOptions, "num_processes"),
) -> None:
    """Estimate training memory per device: parameters, gradients, optimizer state and activations.

    Rows cover DDP, FSDP full shard and DeepSpeed ZeRO-2/3 in fp32 and bf16 mixed precision, for the recipe's
    micro-batch (train.batch_size) and sequence length (data.block_size).

    Examples:

      hftool estimate-memory --recipe gpt2-small --num-processes 8

      hftool estimate-memory --recipe bloom-560m train.batch_size=2 data.block_size=1024
    """
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    from hftool.config import load_recipe
    from hftool.memory import MiB, estimate, recipe_model_config
    from hftool.schemas.pretrain import PretrainRecipe

    config = load_recipe(PretrainRecipe, recipe, overrides or [])
    config.validate()
    model_config = recipe_model_config(config)
    rows = estimate(model_config, config.train.batch_size, config.data.block_size, num_processes)
    table = Table(title=f"{recipe}: micro-batch {config.train.batch_size} x {config.data.block_size} tokens, "
                        f"{num_processes} device(s); MiB per device")
    columns = ("strategy", "precision", "params", "grads", "optimizer", "activations", "transient", "workspace",
               "total")
    for column in columns:
        table.add_column(column, justify="left" if column in ("strategy", "precision") else "right")
    for row in rows:
        values = (row.parameters, row.gradients, row.optimizer, row.activations, row.transient, row.workspace,
                  row.total)
        table.add_row(row.strategy, row.precision, *(f"{v / MiB:,.0f}" for v in values))
    console = Console()
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    Console(width=max(console.width, needed)).print(table)  # whole numbers and headers, even in a pipe
