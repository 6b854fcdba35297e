"""``hftool tag``: find named entities in texts with a token-classification model."""

from __future__ import annotations

import json

import typer

from hftool.cli.options import OVERWRITE_FILE
from hftool.cli.setting_options import option
from hftool.schemas.inference import PredictOptions


def tag(
    texts: list[str] = typer.Argument(None, help="Texts to tag.", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="Token-classification model folder (or Hub id)."),
    input_file: str = typer.Option(None, "--input", "-i", show_default=False,
                                   help="Texts to tag: .txt (one per line), or CSV / TSV / JSONL."),
    text_column: str = option(PredictOptions, "text_column"),
    output: str = typer.Option(None, "--output", "-o", show_default=False,
                               help="Write one JSON object per text to this file instead of printing."),
    max_length: int = option(PredictOptions, "tag_max_length"),
    as_json: bool = option(PredictOptions, "as_json"),
    overwrite: bool = OVERWRITE_FILE,
) -> None:
    """Tag named entities: type, character span [start, end) and score of each, sub-words merged as
    pipeline("token-classification", aggregation_strategy="simple") merges them.

    Examples:

      hftool tag --model runs/ner-conll2003-minilm "Angela Merkel visited Paris on Monday."

      hftool tag -m runs/ner-conll2003-minilm --input news.txt --output entities.jsonl
    """
    from hftool.outputs import check_output_file
    from hftool.runs.labelled import texts_from, write_jsonl_file
    from hftool.runs.ner import entity_record, tag_texts

    target = check_output_file(output, "--output", overwrite) if output else None
    chosen = texts_from(texts, input_file, text_column)
    results = tag_texts(model, chosen, max_length)
    records = [entity_record(t, found) for t, found in zip(chosen, results, strict=True)]
    if target is not None:
        write_jsonl_file(target, records)
        typer.echo(f"wrote the entities of {len(records)} text(s) to {target}")
        return
    for record in records:
        if as_json:
            typer.echo(json.dumps(record, ensure_ascii=False))
            continue
        typer.echo(record["text"])
        if not record["entities"]:
            typer.echo("   (no entities)")
        for e in record["entities"]:
            typer.echo(f"   {e['type']:<6} {e['text']!r}  chars {e['start']}-{e['end']}  score {e['score']:.3f}")
