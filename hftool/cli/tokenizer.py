"""``hftool tokenizer``: train a tokenizer on your text."""

from __future__ import annotations

from pathlib import Path

import typer

from hftool.cli.options import OVERWRITE

app = typer.Typer(help="Train tokenizers (byte-level BPE or WordPiece).", no_args_is_help=True)


@app.command("train")
def train(
    files: list[Path] = typer.Argument(None, help="Text/JSONL/Parquet files; none: the embedded corpus."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the tokenizer to."),
    kind: str = typer.Option("byte-bpe", "--kind", help="byte-bpe (GPT-2/BLOOM) or wordpiece (BERT)."),
    vocab_size: int = typer.Option(8000, "--vocab-size", help="Vocabulary size, special tokens included."),
    lowercase: bool = typer.Option(False, "--lowercase", help="Lower-case and strip accents (WordPiece)."),
    min_frequency: int = typer.Option(2, "--min-frequency", help="Minimum count for a merge or word."),
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
    from hftool.data.text import DataConfig, load_documents
    from hftool.data.tokenizer_training import train_tokenizer
    from hftool.errors import HftoolError
    from hftool.outputs import check_output_dir, claim_output_dir, move_into

    if kind not in ("byte-bpe", "wordpiece"):
        raise HftoolError(f"--kind {kind}: use byte-bpe or wordpiece")
    output = check_output_dir(output, "--output")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise HftoolError(f"--output={output} already holds files; pass --overwrite to replace hftool's own "
                          "files there, or choose another folder")
    data = DataConfig(files=[str(f) for f in files or []], hub_dataset=hub_dataset, hub_config=hub_config,
                      text_column=text_column, validation_fraction=0.0)
    docs = load_documents(data, seed=0)
    tokenizer = train_tokenizer(docs.train, kind, vocab_size, lowercase, min_frequency)
    claim_output_dir(output, "--output", overwrite, names=(".tokenizer-tmp",))
    tmp = output / ".tokenizer-tmp"
    tokenizer.save_pretrained(tmp)
    move_into(tmp, output)
    typer.echo(f"trained a {kind} tokenizer with {len(tokenizer):,} tokens on {docs.source}; saved to {output}")
