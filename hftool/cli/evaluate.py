"""``hftool evaluate``: score a trained model on a task's evaluation data."""

from __future__ import annotations

import typing

import typer

from hftool.cli.options import OVERWRITE, QA_DOC_STRIDE, QA_MAX_ANSWER_LENGTH, QA_MAX_LENGTH, QA_MODEL
from hftool.data.squad_windows import N_BEST

app = typer.Typer(help="Score a trained model (SQuAD exact match and F1).", no_args_is_help=True)


@app.command("squad")
def squad(
    model: str = QA_MODEL,
    file: str = typer.Option(None, "--file", "-f", show_default=False,
                             help="SQuAD v1.1 JSON or JSONL with gold answers; default: the Hub's squad "
                                  "validation split."),
    output_dir: str = typer.Option("runs/evaluate-squad", "--output-dir", "-o",
                                   help="Folder for predictions.json and metrics.json."),
    max_length: int = QA_MAX_LENGTH,
    doc_stride: int = QA_DOC_STRIDE,
    max_answer_length: int = QA_MAX_ANSWER_LENGTH,
    n_best: int = typer.Option(N_BEST, "--n-best", help="Start/end candidates per window."),
    batch_size: int = typer.Option(64, "--batch-size", help="Windows per batch (per process)."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision",
                                        help="no, fp16, bf16, or auto (bf16 where the device supports it)."),
    max_examples: int = typer.Option(None, "--max-examples", show_default=False,
                                     help="Score only the first N questions."),
    strict: bool = typer.Option(False, "--strict",
                                help="Fail on answers whose text is not at answer_start "
                                     "(default: skip them)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Score any question-answering model folder on SQuAD v1.1: exact match and F1.

    The same evaluation 'hftool finetune squad' runs (n-best span search, official SQuAD v1.1 scoring), for a
    model trained elsewhere or earlier. Writes predictions.json (id -> answer) and metrics.json.

    Examples:

      hftool evaluate squad --model runs/squad-minilm --file dev-v1.1.json

      accelerate launch -m hftool evaluate squad --model runs/squad-bert-base --file dev-v1.1.json
    """
    from hftool.data.squad import WindowSettings
    from hftool.engine.config import TrainConfig
    from hftool.environment import check_bf16_pays
    from hftool.errors import HftoolError
    from hftool.runs.squad import run_evaluate_squad

    precisions = typing.get_args(typing.get_type_hints(TrainConfig)["mixed_precision"])  # train.mixed_precision's
    if mixed_precision not in precisions:
        raise HftoolError(f"--mixed-precision={mixed_precision} is not one of: {', '.join(precisions)}")
    check_bf16_pays(mixed_precision, False, setting="--mixed-precision", insist=None)
    settings = WindowSettings(max_length, doc_stride, max_answer_length, n_best, prefix="--")
    metrics = run_evaluate_squad(model, file, output_dir, settings, batch_size, mixed_precision, strict,
                                 max_examples, overwrite)
    typer.echo(f"exact_match {metrics['exact_match']:.2f}  f1 {metrics['f1']:.2f}  "
               f"({metrics['examples']} questions, {metrics['examples_per_s']:.1f}/s); wrote {output_dir}/"
               "predictions.json and metrics.json")
