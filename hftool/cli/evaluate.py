"""``hftool evaluate``: score a trained model on a task's evaluation data."""

from __future__ import annotations

import typer

from hftool.cli.options import OVERWRITE, QA_MODEL
from hftool.cli.setting_options import option
from hftool.schemas.inference import EvaluateOptions, QAWindowOptions

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
    max_length: int = option(QAWindowOptions, "max_length"),
    doc_stride: int = option(QAWindowOptions, "doc_stride"),
    max_answer_length: int = option(QAWindowOptions, "max_answer_length"),
    n_best: int = option(QAWindowOptions, "n_best"),
    batch_size: int = option(EvaluateOptions, "batch_size"),
    mixed_precision: str = option(EvaluateOptions, "mixed_precision"),
    max_examples: int = option(EvaluateOptions, "max_examples"),
    strict: bool = option(EvaluateOptions, "strict"),
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
    from hftool.runs.squad import run_evaluate_squad

    _check_precision(mixed_precision)
    settings = WindowSettings(max_length, doc_stride, max_answer_length, n_best, prefix="--")
    metrics = run_evaluate_squad(model, file, output_dir, settings, batch_size, mixed_precision, strict,
                                 max_examples, overwrite)
    typer.echo(f"exact_match {metrics['exact_match']:.2f}  f1 {metrics['f1']:.2f}  "
               f"({metrics['examples']} questions, {metrics['examples_per_s']:.1f}/s); wrote {output_dir}/"
               "predictions.json and metrics.json")


def _check_precision(mixed_precision: str) -> None:
    """bf16 on a CPU that only emulates it is refused (the choice itself was checked while parsing)."""
    from hftool.environment import check_bf16_pays

    check_bf16_pays(mixed_precision, False, setting="--mixed-precision", insist=None)


@app.command("classify")
def classify(
    model: str = typer.Option(..., "--model", "-m", help="Sequence-classification model folder (or Hub id)."),
    file: str = typer.Option(..., "--file", "-f", help="Labelled CSV, TSV or JSONL."),
    output_dir: str = typer.Option("runs/evaluate-classify", "--output-dir", "-o",
                                   help="Folder for predictions.json and metrics.json."),
    text_column: str = option(EvaluateOptions, "text_column"),
    text_pair_column: str = option(EvaluateOptions, "text_pair_column"),
    label_column: str = option(EvaluateOptions, "label_column"),
    max_length: int = option(EvaluateOptions, "text_max_length"),
    batch_size: int = option(EvaluateOptions, "batch_size"),
    matthews: bool = option(EvaluateOptions, "matthews"),
    mixed_precision: str = option(EvaluateOptions, "mixed_precision"),
    max_examples: int = option(EvaluateOptions, "max_examples"),
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
    tag_scheme: str = option(EvaluateOptions, "tag_scheme"),
    max_length: int = option(EvaluateOptions, "tag_max_length"),
    batch_size: int = option(EvaluateOptions, "batch_size"),
    mixed_precision: str = option(EvaluateOptions, "mixed_precision"),
    max_examples: int = option(EvaluateOptions, "max_examples"),
    overwrite: bool = OVERWRITE,
) -> None:
    """Score a token-classification folder on a tagged file: entity precision / recall / F1 (seqeval, strict IOB2).

    Examples:

      hftool evaluate ner --model runs/ner-conll2003-minilm --file conll2003/dev.txt
    """
    from hftool.data.conll import NerDataConfig
    from hftool.runs.ner import run_evaluate_ner

    _check_precision(mixed_precision)
    data = NerDataConfig(tag_scheme=tag_scheme, max_length=max_length, max_eval_examples=max_examples)
    metrics = run_evaluate_ner(model, file, output_dir, data, batch_size, mixed_precision, overwrite)
    typer.echo(f"precision {metrics['precision']:.2f}  recall {metrics['recall']:.2f}  f1 {metrics['f1']:.2f}  "
               f"({metrics['examples']} sentences, {metrics['examples_per_s']:.1f}/s); wrote {output_dir}/"
               "predictions.json and metrics.json")
