"""``hftool explain``: pictures (PNG) and tables of what a transformer does, with real models."""

from __future__ import annotations

from pathlib import Path

import typer

from hftool.cli.options import OVERWRITE_FILE
from hftool.cli.setting_options import option
from hftool.schemas.explain import ExplainOptions

app = typer.Typer(
    help="See what a transformer does: positional encodings, attention, contextual embeddings and "
         "predictions, as PNG pictures plus a table in the terminal.\n\nExamples:\n\n"
         "  hftool explain attention --model gpt2 --text \"The robot must obey orders\" --layer -1\n\n"
         "  hftool explain next-token --model gpt2 --text \"A robot must obey\"",
    no_args_is_help=True,
)

MODEL_HELP = "Model folder, Hub id or alias (gpt2, bert-base-uncased, minilm)."
OUTPUT_HELP = "PNG file to write."


def _show(*renderables) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    for renderable in renderables:
        console.print(renderable)


def _short_name(model: str | None) -> str | None:
    """A model's name for titles: a folder's own name rather than its whole path."""
    return Path(model).name if model is not None and Path(model).is_dir() else model


def _wrote(path: Path) -> None:
    typer.echo(f"wrote {path}")


@app.command("positional-encoding")
def positional_encoding(
    d_model: int = option(ExplainOptions, "d_model"),
    positions: int = option(ExplainOptions, "positions"),
    dims: list[int] = option(ExplainOptions, "dims"),
    model: str = typer.Option(None, "--model", "-m",
                              help="Also draw this model's learned position embeddings (GPT-2, BERT)."),
    output: Path = typer.Option(Path("explain-positional-encoding.png"), "--output", "-o", help=OUTPUT_HELP),
    overwrite: bool = OVERWRITE_FILE,
    trust_remote_code: bool = option(ExplainOptions, "trust_remote_code"),
) -> None:
    """Draw the sinusoidal positional encoding: how a transformer without recurrence knows word order.

    Each pair of dimensions is a sine/cosine at its own frequency, so every position gets a unique pattern
    and nearby positions get similar ones. With --model, the model's learned position table is drawn below
    for comparison.

    Example: hftool explain positional-encoding --d-model 512 --positions 100
    """
    from hftool.explain import plots, positional, tables

    plots.check_output(output, overwrite)
    positional.check_encoding_size(positions, d_model or positional.DEFAULT_D_MODEL)
    if d_model is not None and dims:
        positional.check_dimensions(dims, d_model)
    learned = None
    if model is not None:
        learned = positional.learned_position_embeddings(model, trust_remote_code)
        if len(learned) < positions:
            typer.echo(f"note: {model} has {len(learned)} learned positions; drawing those")
        learned = learned[:positions]
    width = d_model or (learned.shape[1] if learned is not None else positional.DEFAULT_D_MODEL)
    encoding = positional.sinusoidal_encoding(positions, width)
    curve_dims = dims or positional.default_curve_dimensions(width)
    positional.check_dimensions(curve_dims, width)
    compared = {"sinusoidal": encoding}
    if learned is not None:
        compared[f"learned ({_short_name(model)})"] = learned
    by_distance = {name: positional.similarity_by_distance(table, tables.SIMILARITY_DISTANCES)
                   for name, table in compared.items()}
    _show(tables.encoding_preview(encoding), tables.distance_similarity(by_distance))
    _wrote(plots.save_png(plots.positional_figure(encoding, curve_dims, learned, _short_name(model)), output))


@app.command("attention")
def attention(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    text: str = typer.Option(..., "--text", "-t", help="The text whose attention to show."),
    layers: list[int] = option(ExplainOptions, "layers"),
    heads: list[int] = option(ExplainOptions, "heads"),
    output: Path = typer.Option(Path("explain-attention.png"), "--output", "-o", help=OUTPUT_HELP),
    overwrite: bool = OVERWRITE_FILE,
    trust_remote_code: bool = option(ExplainOptions, "trust_remote_code"),
) -> None:
    """Draw attention weights per layer and head: which tokens each token reads to build its next vector.

    Rows are the tokens attending, columns the tokens attended to; each row sums to 1. A decoder (GPT-2,
    BLOOM) is causal, so nothing lies above the diagonal; an encoder (BERT) attends both ways.

    Example: hftool explain attention --model gpt2 --text "The robot must obey orders" --layer -1
    """
    from hftool.explain import attention as attention_lib
    from hftool.explain import plots, tables
    from hftool.explain.loading import load_model

    plots.check_output(output, overwrite)
    loaded = load_model(model, "base", trust_remote_code, eager_attention=True)
    maps = attention_lib.attention_maps(loaded, text, layers, heads)
    kind = "causal" if maps.causal else "bidirectional"
    typer.echo(f"{maps.architecture}: {kind} attention, {len(maps.tokens)} tokens, "
               f"{len(maps.layers)} layer(s) × {len(maps.heads)} head(s) drawn")
    _show(tables.strongest_attention(maps, attention_lib.strongest_links(maps)))
    _wrote(plots.save_png(plots.attention_figure(maps), output))


@app.command("embeddings")
def embeddings(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    word: str = typer.Option(..., "--word", "-w", help="The word to follow across the sentences."),
    sentences: list[str] = typer.Option(..., "--sentence", "-s",
                                        help="A sentence containing the word (repeat, at least twice)."),
    layer: int = option(ExplainOptions, "layer"),
    output: Path = typer.Option(Path("explain-embeddings.png"), "--output", "-o", help=OUTPUT_HELP),
    overwrite: bool = OVERWRITE_FILE,
    trust_remote_code: bool = option(ExplainOptions, "trust_remote_code"),
) -> None:
    """Compare a word's contextual embedding across sentences with its static (input) embedding.

    A transformer gives 'bank' a different vector by a river than at a cash machine; its row of the input
    embedding matrix is the same in both. The word's vector is the mean over its subword tokens.

    Example: hftool explain embeddings -m minilm -w bank -s "A river bank." -s "The bank lent me money."
    """
    from hftool.explain import embeddings as embeddings_lib
    from hftool.explain import plots, tables
    from hftool.explain.loading import load_model

    plots.check_output(output, overwrite)
    embeddings_lib.word_spans(word, sentences)
    loaded = load_model(model, "base", trust_remote_code)
    result = embeddings_lib.word_embeddings(loaded, word, sentences, layer)
    _show(tables.word_contexts(result), tables.word_similarities(result))
    _wrote(plots.save_png(plots.embeddings_figure(result), output))


@app.command("fill-mask")
def fill_mask(
    model: str = typer.Option(..., "--model", "-m", help="A masked language model (BERT) with its MLM head."),
    text: str = typer.Option(..., "--text", "-t", help="Text with the tokenizer's mask token, e.g. [MASK]."),
    top_k: int = option(ExplainOptions, "top_k"),
    output: Path = typer.Option(Path("explain-fill-mask.png"), "--output", "-o", help=OUTPUT_HELP),
    overwrite: bool = OVERWRITE_FILE,
    trust_remote_code: bool = option(ExplainOptions, "trust_remote_code"),
) -> None:
    """Show the words a masked language model would put in place of each mask, with their probabilities.

    This is BERT's training task: guess the hidden word from both sides of it.

    Example: hftool explain fill-mask -m bert-base-uncased --text "A robot must obey the [MASK] it is given."
    """
    from hftool.explain import plots, predictions, tables
    from hftool.explain.loading import load_model

    plots.check_output(output, overwrite)
    predictions.check_top_k(top_k)
    loaded = load_model(model, "masked-lm", trust_remote_code)
    masks = predictions.fill_mask(loaded, text, top_k)
    panels = [(f"mask {number} (token {mask.position})", mask.candidates)
              for number, mask in enumerate(masks, start=1)]
    _show(*(tables.candidates_table(title, candidates) for title, candidates in panels))
    _wrote(plots.save_png(plots.predictions_figure(panels), output))


@app.command("next-token")
def next_token(
    model: str = typer.Option(..., "--model", "-m", help="A causal language model (GPT-2, BLOOM)."),
    text: str = typer.Option(..., "--text", "-t", help="The text to continue."),
    top_k: int = option(ExplainOptions, "top_k"),
    output: Path = typer.Option(Path("explain-next-token.png"), "--output", "-o", help=OUTPUT_HELP),
    overwrite: bool = OVERWRITE_FILE,
    trust_remote_code: bool = option(ExplainOptions, "trust_remote_code"),
) -> None:
    """Show the tokens a causal language model would write next, with their probabilities.

    This is GPT's training task and the one step that text generation repeats.

    Example: hftool explain next-token --model gpt2 --text "A robot must obey"
    """
    from hftool.explain import plots, predictions, tables
    from hftool.explain.loading import load_model

    plots.check_output(output, overwrite)
    predictions.check_top_k(top_k)
    loaded = load_model(model, "causal-lm", trust_remote_code)
    prediction = predictions.next_token(loaded, text, top_k)
    title = f"next token after {text!r}"
    _show(tables.candidates_table(title, prediction.candidates))
    _wrote(plots.save_png(plots.predictions_figure([(title, prediction.candidates)]), output))
