"""``hftool finetune``: fine-tune a pretrained model on a downstream task from a recipe."""

from __future__ import annotations

import typer

from hftool.cli.options import OVERWRITE, RECIPE_HELP, RESUME, STRICT_RESUME
from hftool.cli.setting_options import option
from hftool.schemas.pretrain import LaunchOptions

OVERRIDES_HELP = "Recipe overrides as section.key=value, e.g. train.lr=5e-5 data.max_length=256."

app = typer.Typer(help="Fine-tune a pretrained model on a task (SQuAD question answering, text classification, "
                       "named entities, instructions / chat).\n\nExamples:\n\n"
                       "  hftool finetune classify -r classify-sst2-minilm --train-file sst2/train.tsv\n\n"
                       "  hftool finetune ner -r ner-conll2003-minilm --train-file conll2003/train.txt\n\n"
                       "  hftool finetune squad -r squad-minilm --train-file train-v1.1.json "
                       "--validation-file dev-v1.1.json\n\n"
                       "  hftool finetune sft -r sft-gpt2-mini-squad",
                  no_args_is_help=True)


def _files(train_file: str | None, validation_file: str | None) -> list[str]:
    flags = {"data.train_file": train_file, "data.validation_file": validation_file}
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


def _finetune(task: str, recipe: str, overrides: list[str], resume: bool, overwrite: bool, strict_resume: bool,
              num_processes: int) -> None:
    """Every fine-tune: read the recipe with its overrides and check what needs no model (before any process is
    started), relaunch across processes if asked, run the task."""
    from importlib import import_module

    from hftool.config import load_recipe
    from hftool.environment import check_bf16_pays
    from hftool.launch import relaunch
    from hftool.recipes import RECIPES

    config = load_recipe(RECIPES[f"finetune {task}"], recipe, overrides)
    check_bf16_pays(config.train.mixed_precision, config.train.allow_slow_bf16)
    relaunch(num_processes)
    run = getattr(import_module(f"hftool.runs.{task}"), f"run_finetune_{task}")
    run(config, resume=resume, overwrite=overwrite, strict_resume=strict_resume)


TRAIN_FILE = typer.Option(None, "--train-file", show_default=False,
                          help="File to train on (same as data.train_file=...).")
VALIDATION_FILE = typer.Option(None, "--validation-file", show_default=False,
                               help="File to evaluate on (same as data.validation_file=...).")


@app.command("squad")
def squad(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    recipe: str = typer.Option("squad-bert-base", "--recipe", "-r", help=RECIPE_HELP),
    train_file: str = typer.Option(None, "--train-file", show_default=False,
                                   help="SQuAD v1.1 JSON or JSONL to train on (same as data.train_file=...); "
                                        "default: the Hub's squad train split."),
    validation_file: str = typer.Option(None, "--validation-file", show_default=False,
                                        help="SQuAD v1.1 JSON or JSONL to evaluate on (same as "
                                             "data.validation_file=...); default: the Hub's squad "
                                             "validation split."),
    strict: bool = typer.Option(False, "--strict",
                                help="Fail on answers whose text is not at answer_start (default: skip them "
                                     "with a warning)."),
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    strict_resume: bool = STRICT_RESUME,
    num_processes: int = option(LaunchOptions, "num_processes"),
) -> None:
    """Fine-tune an encoder (BERT, MiniLM, ...) for extractive question answering on SQuAD v1.1.

    BERT's headline fine-tuning task: the model learns to point at the answer's first and last token in the
    context. It evaluates at every epoch end and at the end (exact match and F1 as the official SQuAD v1.1
    script), then saves a transformers model folder with predictions.json (id -> answer) and metrics.json.

    Examples:

      hftool finetune squad -r squad-minilm --train-file train-v1.1.json --validation-file dev-v1.1.json

      hftool finetune squad -r squad-bert-base train.output_dir=runs/bert-squad

      hftool finetune squad -r squad-minilm --train-file t.json --validation-file d.json train.max_steps=50

      hftool finetune squad -r squad-bert-base --num-processes 8

      accelerate launch -m hftool finetune squad -r squad-bert-base --resume
    """
    extra = ["data.strict=true"] if strict else []
    _finetune("squad", recipe, (overrides or []) + _files(train_file, validation_file) + extra, resume, overwrite,
              strict_resume, num_processes)


@app.command("classify")
def classify(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    recipe: str = typer.Option("classify-sst2-bert-base", "--recipe", "-r", help=RECIPE_HELP),
    train_file: str = TRAIN_FILE,
    validation_file: str = VALIDATION_FILE,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    strict_resume: bool = STRICT_RESUME,
    num_processes: int = option(LaunchOptions, "num_processes"),
) -> None:
    """Fine-tune a sequence classifier (sentiment, topic, entailment) on CSV / TSV / JSONL or a Hub dataset.

    Any AutoModelForSequenceClassification (BERT, MiniLM, GPT-2, BLOOM). Files hold a text column, an
    optional second text column (data.text_pair_column) and a label column (names or integers); the label
    set is saved as id2label, so the folder loads in pipeline("text-classification"). Reports accuracy and
    macro-F1 (Matthews correlation with data.matthews=true).

    Examples:

      hftool finetune classify -r classify-sst2-minilm --train-file sst2/train.tsv --validation-file sst2/dev.tsv

      hftool finetune classify -r classify-sst2-bert-base data.text_column=text data.label_column=stars
    """
    _finetune("classify", recipe, (overrides or []) + _files(train_file, validation_file), resume, overwrite,
              strict_resume, num_processes)


@app.command("ner")
def ner(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    recipe: str = typer.Option("ner-conll2003-bert-base", "--recipe", "-r", help=RECIPE_HELP),
    train_file: str = TRAIN_FILE,
    validation_file: str = VALIDATION_FILE,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    strict_resume: bool = STRICT_RESUME,
    num_processes: int = option(LaunchOptions, "num_processes"),
) -> None:
    """Fine-tune a token classifier for named entities on CoNLL files, JSONL (tokens + tags) or a Hub dataset.

    Any AutoModelForTokenClassification. Tags are IOB2 (IOB1 with data.tag_scheme=iob1); each word's tag
    sits on its first sub-token (data.label_all_tokens=true tags them all). Reports entity-level
    precision / recall / F1 as seqeval computes them in strict IOB2 mode, overall and per type.

    Examples:

      hftool finetune ner -r ner-conll2003-minilm --train-file conll2003/train.txt --validation-file conll2003/dev.txt

      hftool finetune ner -r ner-conll2003-bert-base --num-processes 2
    """
    _finetune("ner", recipe, (overrides or []) + _files(train_file, validation_file), resume, overwrite,
              strict_resume, num_processes)


@app.command("sft")
def sft(
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    recipe: str = typer.Option("sft-gpt2-mini-squad", "--recipe", "-r", help=RECIPE_HELP),
    train_file: str = TRAIN_FILE,
    validation_file: str = VALIDATION_FILE,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    strict_resume: bool = STRICT_RESUME,
    num_processes: int = option(LaunchOptions, "num_processes"),
) -> None:
    """Instruction / chat fine-tuning of a causal LM (GPT-2, BLOOM, any AutoModelForCausalLM).

    JSONL with OpenAI-style "messages", Alpaca "instruction"/"input"/"output", or "prompt"/"completion"
    records; or, with data.format=squad|sst2|conll, those data sets' own files turned into chats at run time.
    The loss is on the assistant's tokens only (data.train_on_prompt=true: on every token), an end-of-text token
    ends each conversation, data.packing=true packs conversations without attention between them, and cut
    conversations are counted. The tokenizer's chat template is used (ChatML when it has none) and saved with
    the model, so apply_chat_template and `hftool serve`'s /v1/chat/completions work on the result. Evaluation:
    held-out loss and perplexity on the answer tokens, and exact match / F1 of generated answers where the data
    has references.

    Examples:

      hftool finetune sft -r sft-gpt2-mini-squad

      hftool finetune sft -r sft-bloom-560m-lora data.format=auto --train-file chats.jsonl --validation-file dev.jsonl

      hftool finetune sft -r sft-gpt2-mini-squad model.name_or_path=runs/gpt2-mini data.packing=true
    """
    _finetune("sft", recipe, (overrides or []) + _files(train_file, validation_file), resume, overwrite,
              strict_resume, num_processes)
