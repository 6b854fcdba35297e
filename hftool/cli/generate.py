"""``hftool generate``, ``hftool summarize`` and ``hftool translate``: text generation with causal LMs.

Decoding flags default to None so that only the flags the user typed override the recipe or task defaults.
"""

from __future__ import annotations

import typer

from hftool.cli.options import OVERWRITE_FILE
from hftool.errors import HftoolError

DTYPES = ("auto", "float32", "bfloat16", "float16")

MODEL = typer.Option(
    None,
    "--model",
    "-m",
    show_default=False,
    help="Causal LM: a local folder, a Hub id or an alias (gpt2, distilgpt2, bloom-560m, ...).",
)
MAX_NEW_TOKENS = typer.Option(
    None, "--max-new-tokens", "-n", show_default=False, help="Tokens to generate per prompt, at most."
)
SAMPLE = typer.Option(
    None,
    "--sample/--greedy",
    show_default=False,
    help="Sample from the distribution, or always take the most likely token (greedy/beam).",
)
TEMPERATURE = typer.Option(
    None,
    "--temperature",
    "-t",
    show_default=False,
    help="Sampling temperature, > 0; lower is more conservative.",
)
TOP_K = typer.Option(
    None, "--top-k", show_default=False, help="Sample among the k most likely tokens; 0 = off."
)
TOP_P = typer.Option(
    None,
    "--top-p",
    show_default=False,
    help="Nucleus sampling: the smallest set of tokens with this much probability, in (0, 1].",
)
NUM_BEAMS = typer.Option(
    None, "--num-beams", show_default=False, help="Beam search width; 1 = no beam search."
)
NUM_RETURN = typer.Option(
    None,
    "--num-return-sequences",
    show_default=False,
    help="Continuations per prompt (needs --sample, or --num-beams at least as large).",
)
REPETITION = typer.Option(
    None,
    "--repetition-penalty",
    show_default=False,
    help="> 1 makes tokens already in the text less likely; 1 = off.",
)
NO_REPEAT = typer.Option(
    None, "--no-repeat-ngram-size", show_default=False, help="Never repeat an n-gram of this size; 0 = off."
)
STOP = typer.Option(
    None,
    "--stop",
    show_default=False,
    help="Stop at this string (repeatable); it is trimmed from the output.",
)
SEED = typer.Option(
    None,
    "--seed",
    show_default=False,
    help="Random seed for sampling; without one a fresh seed is drawn and recorded.",
)
BATCH_SIZE = typer.Option(
    None,
    "--batch-size",
    "-b",
    show_default=False,
    help="Prompts per batch (grouped by length, left-padded). Default 8.",
)
DTYPE = typer.Option(
    None,
    "--dtype",
    show_default=False,
    help="Weights dtype: auto (the checkpoint's), float32, bfloat16 or float16.",
)
DEVICE_MAP = typer.Option(
    None,
    "--device-map",
    show_default=False,
    help="'auto': spread a model too large for one device over GPUs, CPU and disk "
    "(Accelerate big-model inference).",
)
OFFLOAD = typer.Option(
    None,
    "--offload-folder",
    show_default=False,
    help="With --device-map auto: folder for the weights that fit on no device.",
)
MAX_MEMORY = typer.Option(
    None,
    "--max-memory",
    show_default=False,
    help="With --device-map auto: memory per device, e.g. cpu=8GiB,0=20GiB; the rest is offloaded to disk.",
)
REMOTE = typer.Option(
    None,
    "--trust-remote-code",
    show_default=False,
    help="Allow the model's own Python code from the Hub (only for models you trust).",
)
OUTPUT = typer.Option(
    None,
    "--output",
    "-o",
    show_default=False,
    help="Write one JSON record per input (text, settings, token counts) to this JSONL file.",
)
MAX_CONTEXT = typer.Option(
    None,
    "--max-context",
    show_default=False,
    help="Context length to fit the prompt into (default: the model's positions).",
)
REFERENCE = typer.Option(
    None,
    "--reference",
    show_default=False,
    help="Reference file for scoring a text --input (aligned with it).",
)
REFERENCE_COLUMN = typer.Option(
    None, "--reference-column", show_default=False, help="JSONL field holding the reference, for scoring."
)


DECODING_FLAGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_beams",
                  "num_return_sequences", "repetition_penalty", "no_repeat_ngram_size", "stop", "seed",
                  "fast_decode")


def _recipe(base, flags: dict):
    """Overlay the typed flags on ``base`` (recipe or task defaults) and check them all, before any load.

    ``flags`` is the command's own parameters by name (its ``locals()``): the three generation commands share
    these flags, and naming them once here keeps them from drifting apart.
    """
    from hftool.generation.settings import apply_flags, parse_max_memory

    flags = {**flags, "stop": flags.get("stop") or None}  # no --stop given: keep the recipe's stop strings
    dtype, device_map, max_memory = flags["dtype"], flags["device_map"], flags["max_memory"]
    if dtype is not None and dtype not in DTYPES:
        raise HftoolError(f"--dtype {dtype}: must be one of {', '.join(DTYPES)}")
    if device_map is not None and device_map != "auto":
        raise HftoolError(f"--device-map {device_map}: only 'auto' is supported (or leave it out)")
    recipe = apply_flags(
        base,
        name=flags["model"],
        dtype=dtype,
        device_map=device_map,
        offload_folder=flags["offload_folder"],
        max_memory=parse_max_memory(max_memory) if max_memory else None,
        trust_remote_code=flags["trust_remote_code"],
        batch_size=flags["batch_size"],
        **{name: flags[name] for name in DECODING_FLAGS if name in flags},
    )
    recipe.validate()
    if flags.get("output"):
        from hftool.outputs import check_output_file

        check_output_file(flags["output"], "--output", flags["overwrite"])
    return recipe


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
    input_path: str = typer.Option(
        None,
        "--input",
        "-i",
        show_default=False,
        help="Prompts file: .txt (one per line) or .jsonl (see --column).",
    ),
    output: str = OUTPUT,
    overwrite: bool = OVERWRITE_FILE,
    column: str = typer.Option("prompt", "--column", help="JSONL field holding the prompt."),
    recipe: str = typer.Option(
        None,
        "--recipe",
        "-r",
        show_default=False,
        help="Recipe name (bloom-560m, gpt2, local-gpt2-tiny) or path to a YAML recipe.",
    ),
    stream: bool = typer.Option(
        True, "--stream/--no-stream", help="Print tokens as they come (one prompt, one sequence, no beams)."
    ),
    model: str = MODEL,
    max_new_tokens: int = MAX_NEW_TOKENS,
    do_sample: bool = SAMPLE,
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    num_beams: int = NUM_BEAMS,
    num_return_sequences: int = NUM_RETURN,
    repetition_penalty: float = REPETITION,
    no_repeat_ngram_size: int = NO_REPEAT,
    stop: list[str] = STOP,
    seed: int = SEED,
    batch_size: int = BATCH_SIZE,
    dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    offload_folder: str = OFFLOAD,
    max_memory: str = MAX_MEMORY,
    trust_remote_code: bool = REMOTE,
    fast_decode: bool = typer.Option(
        None,
        "--fast-decode/--no-fast-decode",
        show_default=False,
        help="Greedy search of one prompt through hftool's fused GPT-2/BLOOM step (on by default; same tokens "
        "as model.generate). --no-fast-decode always uses model.generate.",
    ),
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
    from hftool.generation.settings import GenerateRecipe
    from hftool.runs.generate import run_generate

    base = load_recipe(GenerateRecipe, recipe, overrides or [])
    config = _recipe(base, locals())
    run_generate(config, prompt, input_path, output, column=column, stream=stream)


def summarize(
    input_path: str = typer.Option(
        None,
        "--input",
        "-i",
        show_default=False,
        help="Article: a text file (the whole file), a .jsonl file (see --column), or stdin when left out.",
    ),
    column: str = typer.Option("article", "--column", help="JSONL field holding the article."),
    reference: str = REFERENCE,
    reference_column: str = REFERENCE_COLUMN,
    sentences: int = typer.Option(
        3, "--sentences", help="Keep this many sentences of the generated summary."
    ),
    output: str = OUTPUT,
    overwrite: bool = OVERWRITE_FILE,
    max_context: int = MAX_CONTEXT,
    model: str = MODEL,
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", "-n", help="Tokens to generate per summary."),
    do_sample: bool = typer.Option(True, "--sample/--greedy", help="Sample (as in the GPT-2 paper) or greedy."),
    temperature: float = TEMPERATURE,
    top_k: int = typer.Option(2, "--top-k", help="Sample among the k most likely tokens; 0 = off."),
    top_p: float = TOP_P,
    num_beams: int = NUM_BEAMS,
    repetition_penalty: float = REPETITION,
    no_repeat_ngram_size: int = NO_REPEAT,
    seed: int = SEED,
    batch_size: int = BATCH_SIZE,
    dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    offload_folder: str = OFFLOAD,
    max_memory: str = MAX_MEMORY,
    trust_remote_code: bool = REMOTE,
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
    from hftool.generation.settings import DecodingSettings, GenerateRecipe
    from hftool.runs.generate import run_summarize

    config = _recipe(GenerateRecipe(decoding=DecodingSettings(max_new_tokens=100, do_sample=True, top_k=2)), locals())
    run_summarize(config, input_path, column, reference_column, reference, sentences, max_context, output)


def translate(
    text: str = typer.Argument(None, show_default=False, help="Sentence to translate (or use --input)."),
    input_path: str = typer.Option(
        None,
        "--input",
        "-i",
        show_default=False,
        help="Sentences: a text file (one per line), a .jsonl file (see --column), or '-' for stdin.",
    ),
    column: str = typer.Option("source", "--column", help="JSONL field holding the sentence."),
    reference: str = REFERENCE,
    reference_column: str = REFERENCE_COLUMN,
    pairs: str = typer.Option(
        None,
        "--pairs",
        show_default=False,
        help="Example pairs: TSV (source<TAB>target) or JSONL {source, target}. "
        "Default: 12 built-in English = French pairs.",
    ),
    shots: int = typer.Option(
        None,
        "--shots",
        show_default=False,
        help="Use only the first N example pairs (default: all that fit).",
    ),
    output: str = OUTPUT,
    overwrite: bool = OVERWRITE_FILE,
    max_context: int = MAX_CONTEXT,
    model: str = MODEL,
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", help="Tokens to generate, at most."),
    do_sample: bool = SAMPLE,
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    num_beams: int = NUM_BEAMS,
    repetition_penalty: float = REPETITION,
    no_repeat_ngram_size: int = NO_REPEAT,
    seed: int = SEED,
    batch_size: int = BATCH_SIZE,
    dtype: str = DTYPE,
    device_map: str = DEVICE_MAP,
    offload_folder: str = OFFLOAD,
    max_memory: str = MAX_MEMORY,
    trust_remote_code: bool = REMOTE,
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
    from hftool.generation.settings import DecodingSettings, GenerateRecipe
    from hftool.runs.generate import run_translate

    config = _recipe(GenerateRecipe(decoding=DecodingSettings(max_new_tokens=64, stop=["\n"])), locals())
    run_translate(
        config, text, input_path, column, reference_column, reference, pairs, shots, max_context, output
    )
