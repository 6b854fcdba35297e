"""``hftool evaluate``: score a trained model on a task's evaluation data."""

from __future__ import annotations

import typing

import typer

from hftool.cli.options import (
    MAX_EXAMPLES_HELP,
    OVERWRITE,
    QA_DOC_STRIDE,
    QA_MAX_ANSWER_LENGTH,
    QA_MAX_LENGTH,
    QA_MODEL,
    bounded_int,
)
from hftool.data import classification, conll
from hftool.data.squad_windows import N_BEST

app = typer.Typer(help="Score a trained model (SQuAD exact match and F1, classification accuracy, entity F1)."
                       "\n\nExamples:\n\n"
                       "  hftool evaluate classify -m runs/classify-sst2-minilm -f sst2/dev-even.tsv\n\n"
                       "  hftool evaluate ner -m runs/ner-conll2003-minilm -f conll2003/dev.txt\n\n"
                       "  hftool evaluate squad -m runs/squad-minilm -f dev-v1.1.json",
                  no_args_is_help=True)


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
    n_best: int = bounded_int(N_BEST, "--n-best", low=1, help="Start/end candidates per window."),
    batch_size: int = bounded_int(64, "--batch-size", low=1, help="Windows per batch (per process)."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision",
                                        help="no, fp16, bf16, or auto (bf16 where the device supports it)."),
    max_examples: int = bounded_int(None, "--max-examples", low=1, show_default=False,
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


MIXED_PRECISION = typer.Option("auto", "--mixed-precision",
                               help="no, fp16, bf16, or auto (bf16 where the device supports it).")


def _check_precision(mixed_precision: str) -> None:
    from hftool.environment import check_bf16_pays
    from hftool.errors import HftoolError

    if mixed_precision not in ("no", "fp16", "bf16", "auto"):
        raise HftoolError(f"--mixed-precision={mixed_precision} is not one of: no, fp16, bf16, auto")
    check_bf16_pays(mixed_precision, False, setting="--mixed-precision", insist=None)


@app.command("classify")
def classify(
    model: str = typer.Option(..., "--model", "-m", help="Sequence-classification model folder (or Hub id)."),
    file: str = typer.Option(..., "--file", "-f", help="Labelled CSV, TSV or JSONL."),
    output_dir: str = typer.Option("runs/evaluate-classify", "--output-dir", "-o",
                                   help="Folder for predictions.json and metrics.json."),
    text_column: str = typer.Option("sentence", "--text-column", help="Column holding the text."),
    text_pair_column: str = typer.Option(None, "--text-pair-column", show_default=False,
                                         help="Column holding the second text of a pair."),
    label_column: str = typer.Option("label", "--label-column", help="Column holding the label."),
    max_length: int = bounded_int(128, "--max-length", low=classification.MIN_MAX_LENGTH,
                                  help="Tokens per text (longer ones are truncated)."),
    batch_size: int = bounded_int(64, "--batch-size", low=1, help="Texts per batch (per process)."),
    matthews: bool = typer.Option(False, "--matthews", help="Also report Matthews correlation."),
    mixed_precision: str = MIXED_PRECISION,
    max_examples: int = bounded_int(None, "--max-examples", low=1, show_default=False, help=MAX_EXAMPLES_HELP),
    overwrite: bool = OVERWRITE,
) -> None:
    """Score a sequence-classification folder on a labelled file: accuracy and macro-F1.

    Examples:

      hftool evaluate classify --model runs/classify-sst2-minilm --file sst2/dev-even.tsv
    """
    from hftool.data.classification import ClassifyDataConfig
    from hftool.runs.classify import run_evaluate_classify

    _check_precision(mixed_precision)
    data = ClassifyDataConfig(text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                              max_length=max_length, max_eval_examples=max_examples, matthews=matthews)
    metrics = run_evaluate_classify(model, file, output_dir, data, batch_size, mixed_precision, overwrite)
    typer.echo(f"accuracy {metrics['accuracy']:.2f}  macro_f1 {metrics['macro_f1']:.2f}  "
               f"({metrics['examples']} texts, {metrics['examples_per_s']:.1f}/s); wrote {output_dir}/"
               "predictions.json and metrics.json")


@app.command("ner")
def ner(
    model: str = typer.Option(..., "--model", "-m", help="Token-classification model folder (or Hub id)."),
    file: str = typer.Option(..., "--file", "-f", help="CoNLL file (token ... tag) or JSONL (tokens + tags)."),
    output_dir: str = typer.Option("runs/evaluate-ner", "--output-dir", "-o",
                                   help="Folder for predictions.json and metrics.json."),
    tag_scheme: str = typer.Option("iob2", "--tag-scheme", help="iob2, or iob1 to convert IOB1 tags."),
    max_length: int = bounded_int(128, "--max-length", low=conll.MIN_MAX_LENGTH,
                                  help="Tokens per sentence (longer ones are truncated)."),
    batch_size: int = bounded_int(64, "--batch-size", low=1, help="Sentences per batch (per process)."),
    mixed_precision: str = MIXED_PRECISION,
    max_examples: int = bounded_int(None, "--max-examples", low=1, show_default=False, help=MAX_EXAMPLES_HELP),
    overwrite: bool = OVERWRITE,
) -> None:
    """Score a token-classification folder on a tagged file: entity precision / recall / F1 (seqeval, strict IOB2).

    Examples:

      hftool evaluate ner --model runs/ner-conll2003-minilm --file conll2003/dev.txt
    """
    from hftool.data.conll import NerDataConfig
    from hftool.errors import HftoolError
    from hftool.runs.ner import run_evaluate_ner

    _check_precision(mixed_precision)
    if tag_scheme not in ("iob2", "iob1"):
        raise HftoolError(f"--tag-scheme={tag_scheme} must be iob2 or iob1")
    data = NerDataConfig(tag_scheme=tag_scheme, max_length=max_length, max_eval_examples=max_examples)
    metrics = run_evaluate_ner(model, file, output_dir, data, batch_size, mixed_precision, overwrite)
    typer.echo(f"precision {metrics['precision']:.2f}  recall {metrics['recall']:.2f}  f1 {metrics['f1']:.2f}  "
               f"({metrics['examples']} sentences, {metrics['examples_per_s']:.1f}/s); wrote {output_dir}/"
               "predictions.json and metrics.json")
