"""``hftool generate``, ``hftool summarize`` and ``hftool translate``: text generation with causal LMs.

Decoding flags default to None so that only the flags the user typed override the recipe or task defaults.
"""

from __future__ import annotations

import typer

from hftool.cli.generation_flags import recipe_with_flags
from hftool.cli.options import OVERWRITE_FILE
from hftool.cli.setting_options import option, options, with_options
from hftool.schemas.generate import DecodingSettings, GenerateRecipe, ModelSettings, TextOptions

MODEL = options(ModelSettings, ["name"])
PLACEMENT = [*options(GenerateRecipe, ["batch_size"]),
             *options(ModelSettings, ["dtype", "device_map", "offload_folder", "max_memory", "trust_remote_code"])]
# summarize and translate: their task defaults are both the base of their recipe and the defaults --help shows.
SUMMARIZE = DecodingSettings(max_new_tokens=100, do_sample=True, top_k=2)
TRANSLATE = DecodingSettings(max_new_tokens=64, stop=["\n"])
TASK_DECODING = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_beams", "repetition_penalty",
                 "no_repeat_ngram_size", "seed")  # no --num-return-sequences, --stop or --fast-decode

OUTPUT = typer.Option(
    None,
    "--output",
    "-o",
    show_default=False,
    help="Write one JSON record per input (text, settings, token counts) to this JSONL file.",
)
MAX_CONTEXT = option(TextOptions, "max_context")
REFERENCE = typer.Option(
    None,
    "--reference",
    show_default=False,
    help="Reference file for scoring a text --input (aligned with it).",
)
REFERENCE_COLUMN = option(TextOptions, "reference_column")


def _input_option(help: str):
    """``--input/-i``: each command reads its own kind of file, so only the help differs."""
    return typer.Option(None, "--input", "-i", show_default=False, help=help)


def _recipe(base: GenerateRecipe, flags: dict, output: str | None = None, overwrite: bool = False) -> GenerateRecipe:
    """The flags laid over ``base`` and checked (:func:`recipe_with_flags`), and the ``--output`` file checked,
    before any load."""
    recipe = recipe_with_flags(base, flags)
    if output:
        from hftool.outputs import check_output_file

        check_output_file(output, "--output", overwrite)
    return recipe


@with_options(*MODEL, *options(DecodingSettings), *PLACEMENT)
def generate(
    overrides: list[str] = typer.Argument(
        None, show_default=False, help="Recipe overrides as section.key=value, e.g. decoding.top_p=0.9."
    ),
    prompt: str = typer.Option(
        None,
        "--prompt",
        "-p",
        show_default=False,
        help="Text to continue ('-' reads stdin; '' generates from the begin-of-text token).",
    ),
    input_path: str = _input_option(
        "Prompts file: .txt (one per line) or .jsonl (see --column)."
    ),
    output: str = OUTPUT,
    overwrite: bool = OVERWRITE_FILE,
    column: str = option(TextOptions, "prompt_column"),
    recipe: str = typer.Option(
        None,
        "--recipe",
        "-r",
        show_default=False,
        help="Recipe name (bloom-560m, gpt2, local-gpt2-tiny) or path to a YAML recipe.",
    ),
    stream: bool = option(TextOptions, "stream"),
    **flags,
) -> None:
    """Continue a prompt with a causal LM (GPT-2, BLOOM, or a model from 'hftool pretrain').

    Settings come from, lowest precedence first: built-in defaults (greedy, 64 tokens), the --recipe file,
    its section.key=value overrides, then the flags. One --prompt streams to the terminal; --input runs many
    prompts in batches and writes JSONL. An empty prompt generates from the begin-of-text token. Tokens/s is
    reported on stderr at the end.

    Examples:

      hftool generate --recipe bloom-560m --prompt "The meaning of life is"

      hftool generate -m gpt2 -p "Once upon a time" --sample --top-p 0.9 --temperature 0.8 --seed 1

      hftool generate -m runs/gpt2-tiny --input prompts.jsonl --output out.jsonl --batch-size 16

      hftool generate -m bloom-1b7 --device-map auto --offload-folder offload --dtype bfloat16 -p "Hello"
    """
    from hftool.config import load_recipe
    from hftool.runs.generate import run_generate

    base = load_recipe(GenerateRecipe, recipe, overrides or [])
    config = _recipe(base, flags, output, overwrite)
    run_generate(config, prompt, input_path, output, column=column, stream=stream)


@with_options(*MODEL,
              *options(DecodingSettings, TASK_DECODING, defaults=SUMMARIZE,
                       show=("max_new_tokens", "do_sample", "top_k"),
                       help={"max_new_tokens": "Tokens to generate per summary.",
                             "do_sample": "Sample (as in the GPT-2 paper) or greedy."}),
              *PLACEMENT)
def summarize(
    input_path: str = _input_option(
        "Article: a text file (the whole file), a .jsonl file (see --column), or stdin when left out."
    ),
    column: str = option(TextOptions, "article_column"),
    reference: str = REFERENCE,
    reference_column: str = REFERENCE_COLUMN,
    sentences: int = option(TextOptions, "sentences"),
    output: str = OUTPUT,
    overwrite: bool = OVERWRITE_FILE,
    max_context: int = MAX_CONTEXT,
    **flags,
) -> None:
    """Summarize articles GPT-2 style: prompt '<article>\\nTL;DR:', keep the first sentences generated.

    Defaults follow the GPT-2 paper: top-k 2 sampling, 100 new tokens, first 3 sentences kept. The article is
    truncated from its end (at token level) so it and the summary fit the context. With references
    (--reference for a text file, --reference-column for JSONL) ROUGE-1/2/L F-measures are printed.

    Examples:

      hftool summarize -m gpt2 --input article.txt

      cat article.txt | hftool summarize -m gpt2 --seed 0

      hftool summarize -m gpt2-medium -i cnn.jsonl --column article --reference-column highlights -o out.jsonl
    """
    from hftool.runs.generate import run_summarize

    config = _recipe(GenerateRecipe(decoding=SUMMARIZE), flags, output, overwrite)
    run_summarize(config, input_path, column, reference_column, reference, sentences, max_context, output)


@with_options(*MODEL,
              *options(DecodingSettings, TASK_DECODING, defaults=TRANSLATE, show=("max_new_tokens",),
                       help={"max_new_tokens": "Tokens to generate, at most."}),
              *PLACEMENT)
def translate(
    text: str = typer.Argument(None, show_default=False, help="Sentence to translate (or use --input)."),
    input_path: str = _input_option(
        "Sentences: a text file (one per line), a .jsonl file (see --column), or '-' for stdin."
    ),
    column: str = option(TextOptions, "source_column"),
    reference: str = REFERENCE,
    reference_column: str = REFERENCE_COLUMN,
    pairs: str = typer.Option(
        None,
        "--pairs",
        show_default=False,
        help="Example pairs: TSV (source<TAB>target) or JSONL {source, target}. "
        "Default: 12 built-in English = French pairs.",
    ),
    shots: int = option(TextOptions, "shots"),
    output: str = OUTPUT,
    overwrite: bool = OVERWRITE_FILE,
    max_context: int = MAX_CONTEXT,
    **flags,
) -> None:
    """Translate with a few-shot prompt of 'source = target' lines (English to French by default).

    The prompt lists the example pairs, one per line, then 'sentence ='; the model's answer is cut at the
    end of its line. Greedy by default. With references (--reference, one per line, or --reference-column)
    BLEU and chrF (sacrebleu) are printed.

    Examples:

      hftool translate -m gpt2-large "The weather is nice today."

      hftool translate -m bloom-560m --input en.txt --reference fr.txt -o fr.jsonl

      hftool translate -m gpt2 --pairs en-de.tsv "Where is the library?"
    """
    from hftool.runs.generate import run_translate

    config = _recipe(GenerateRecipe(decoding=TRANSLATE), flags, output, overwrite)
    run_translate(
        config, text, input_path, column, reference_column, reference, pairs, shots, max_context, output
    )
