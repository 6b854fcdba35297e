"""``hftool serve``: a model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import typer

from hftool.cli.setting_options import option, options, with_options
from hftool.schemas.generate import ModelSettings
from hftool.schemas.inference import QAWindowOptions
from hftool.schemas.serve import ServeOptions


@with_options(*options(ModelSettings, ["name", "dtype", "device_map", "trust_remote_code"]))
def serve(
    recipe: str = typer.Option(None, "--recipe", "-r", show_default=False,
                               help="Generate recipe whose decoding settings are the defaults for requests."),
    host: str = option(ServeOptions, "host"),
    port: int = option(ServeOptions, "port"),
    api_key: str = typer.Option(None, "--api-key", envvar="HFTOOL_API_KEY", show_default=False,
                                show_envvar=True, help="Require 'Authorization: Bearer KEY' (except on /health)."),
    max_batch_size: int = option(ServeOptions, "max_batch_size"),
    max_queue: int = option(ServeOptions, "max_queue"),
    threads: int = option(ServeOptions, "threads"),
    max_tokens_cap: int = option(ServeOptions, "max_tokens_cap"),
    max_length: int = option(QAWindowOptions, "max_length"),
    doc_stride: int = option(QAWindowOptions, "doc_stride"),
    max_answer_length: int = option(QAWindowOptions, "max_answer_length"),
    **flags,
) -> None:
    """Serve a causal LM (a folder, a Hub id or an alias) behind OpenAI's API, or a SQuAD model on /v1/qa.

    Endpoints: POST /v1/completions, POST /v1/chat/completions (tokenizers with a chat template), GET
    /v1/models, GET /health, GET /metrics (Prometheus), and POST /v1/qa for 'hftool finetune squad' folders.
    Requests that arrive together are decoded together in batches. Request fields left out take the --recipe's
    decoding settings (greedy, 64 tokens by default); temperature 0 is greedy.

    Examples:

      hftool serve --model runs/gpt2-tiny

      hftool serve --model bloom-560m --host 0.0.0.0 --port 8080 --api-key "$KEY"
    """
    from hftool.cli.generate import _recipe
    from hftool.config import load_recipe
    from hftool.runs.serve import run_serve
    from hftool.schemas.generate import GenerateRecipe

    base = load_recipe(GenerateRecipe, recipe, [])
    run_serve(ServeOptions(recipe=_recipe(base, flags), host=host, port=port, api_key=api_key or None,
                           max_batch_size=max_batch_size, max_queue=max_queue, max_tokens_cap=max_tokens_cap,
                           threads=threads,
                           qa_window=(max_length, doc_stride, max_answer_length)))
