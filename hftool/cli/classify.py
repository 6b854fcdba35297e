"""``hftool classify``: label texts with a sequence-classification model."""

from __future__ import annotations

import json

import typer

from hftool.cli.options import OVERWRITE_FILE
from hftool.cli.setting_options import option
from hftool.schemas.inference import PredictOptions


def classify(
    texts: list[str] = typer.Argument(None, help="Texts to classify.", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="Sequence-classification model folder (or Hub id)."),
    input_file: str = typer.Option(None, "--input", "-i", show_default=False,
                                   help="Texts to classify: .txt (one per line), or CSV / TSV / JSONL."),
    text_column: str = option(PredictOptions, "text_column"),
    output: str = typer.Option(None, "--output", "-o", show_default=False,
                               help="Write one JSON object per text to this file instead of printing."),
    max_length: int = option(PredictOptions, "text_max_length"),
    batch_size: int = option(PredictOptions, "batch_size"),
    as_json: bool = option(PredictOptions, "as_json"),
    overwrite: bool = OVERWRITE_FILE,
) -> None:
    """Classify texts: the label and the probability of every label.

    Examples:

      hftool classify --model runs/classify-sst2-minilm "a charming and often affecting journey"

      hftool classify -m runs/classify-sst2-minilm --input reviews.txt --output labels.jsonl
    """
    from hftool.outputs import check_output_file
    from hftool.runs.classify import classify_texts, label_record
    from hftool.runs.labelled import texts_from, write_jsonl_file

    target = check_output_file(output, "--output", overwrite) if output else None
    chosen = texts_from(texts, input_file, text_column)
    results = classify_texts(model, chosen, max_length, batch_size)
    records = [label_record(t, r) for t, r in zip(chosen, results, strict=True)]
    if target is not None:
        write_jsonl_file(target, records)
        typer.echo(f"wrote {len(records)} label(s) to {target}")
        return
    for record in records:
        if as_json:
            typer.echo(json.dumps(record, ensure_ascii=False))
            continue
        shown = "  ".join(f"{k} {v:.3f}" for k, v in record["probabilities"].items())
        typer.echo(f"{record['label']}\t({shown})\t{record['text']}")
