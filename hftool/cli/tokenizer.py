"""``hftool tokenizer``: train a tokenizer on your text."""

from __future__ import annotations

from pathlib import Path

import typer

from hftool.cli.options import OVERWRITE
from hftool.cli.setting_options import option
from hftool.schemas.pretrain import TokenizerTrainOptions as Options

app = typer.Typer(help="Train tokenizers (byte-level BPE or WordPiece).\n\nExamples:\n\n"
                       "  hftool tokenizer train corpus.txt -o my-tokenizer --vocab-size 8000",
                  no_args_is_help=True)


@app.command("train")
def train(
    files: list[Path] = typer.Argument(None, help="Text/JSONL/Parquet files; none: the embedded corpus."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the tokenizer to."),
    kind: str = option(Options, "kind"),
    vocab_size: int = option(Options, "vocab_size"),
    lowercase: bool = option(Options, "lowercase"),
    min_frequency: int = option(Options, "min_frequency"),
    hub_dataset: str = option(Options, "hub_dataset"),
    hub_config: str = option(Options, "hub_config"),
    text_column: str = option(Options, "text_column"),
    overwrite: bool = OVERWRITE,
) -> None:
    """Train a tokenizer and save it as a transformers fast-tokenizer folder.

    Examples:

      hftool tokenizer train corpus.txt -o my-tokenizer --vocab-size 8000

      hftool tokenizer train --kind wordpiece --lowercase -o bert-tok wiki.valid.raw
    """
    from hftool.runs.tokenizer import run_train_tokenizer

    typer.echo(run_train_tokenizer([str(f) for f in files or []], output, kind, vocab_size, lowercase,
                                   min_frequency, hub_dataset, hub_config, text_column, overwrite))
