"""``hftool tokenizer``: train a tokenizer on your text."""

from __future__ import annotations

from pathlib import Path

import typer

from hftool.cli.options import OVERWRITE, bounded_int

app = typer.Typer(help="Train tokenizers (byte-level BPE or WordPiece).\n\nExamples:\n\n"
                       "  hftool tokenizer train corpus.txt -o my-tokenizer --vocab-size 8000",
                  no_args_is_help=True)


@app.command("train")
def train(
    files: list[Path] = typer.Argument(None, help="Text/JSONL/Parquet files; none: the embedded corpus."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the tokenizer to."),
    kind: str = typer.Option("byte-bpe", "--kind", help="byte-bpe (GPT-2/BLOOM) or wordpiece (BERT)."),
    vocab_size: int = bounded_int(8000, "--vocab-size", low=1, help="Vocabulary size, special tokens included."),
    lowercase: bool = typer.Option(False, "--lowercase", help="Lower-case and strip accents (WordPiece)."),
    min_frequency: int = bounded_int(2, "--min-frequency", low=0, help="Minimum count for a merge or word."),
    hub_dataset: str = typer.Option(None, "--hub-dataset", help="Hub dataset name instead of files."),
    hub_config: str = typer.Option(None, "--hub-config", help="Hub dataset configuration."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text (JSONL, Parquet, Hub)."),
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
