"""``hftool serve``: a model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import typer

from hftool.cli.options import QA_DOC_STRIDE, QA_MAX_ANSWER_LENGTH, QA_MAX_LENGTH
from hftool.cli.setting_options import options, with_options
from hftool.generation.settings import ModelSettings


@with_options(*options(ModelSettings, ["name", "dtype", "device_map", "trust_remote_code"]))
def serve(
    recipe: str = typer.Option(None, "--recipe", "-r", show_default=False,
                               help="Generate recipe whose decoding settings are the defaults for requests."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 for every interface."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    api_key: str = typer.Option(None, "--api-key", envvar="HFTOOL_API_KEY", show_default=False,
                                show_envvar=True, help="Require 'Authorization: Bearer KEY' (except on /health)."),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Sequences decoded together, at most."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests waiting, at most; past it a 503."),
    max_cache_tokens: int = typer.Option(None, "--max-cache-tokens", show_default=False,
                                         help="Cache the running requests may reserve (prompt + max_tokens per "
                                              "sequence); over it requests wait (default: batch size x context)."),
    prefill_chunk: int = typer.Option(256, "--prefill-chunk",
                                      help="Prompt tokens prefilled between two decoding steps, at most."),
    threads: int = typer.Option(None, "--threads", show_default=False,
                                help="Torch threads for decoding (default: all cores but one, left to HTTP)."),
    max_tokens_cap: int = typer.Option(1024, "--max-tokens-cap", help="Largest max_tokens a request may ask."),
    max_length: int = QA_MAX_LENGTH,
    doc_stride: int = QA_DOC_STRIDE,
    max_answer_length: int = QA_MAX_ANSWER_LENGTH,
    **flags,
) -> None:
    """Serve a causal LM (a folder, a Hub id or an alias) behind OpenAI's API, or a SQuAD model on /v1/qa.

    Endpoints: POST /v1/completions, POST /v1/chat/completions (tokenizers with a chat template), GET
    /v1/models, GET /health, GET /metrics (Prometheus), and POST /v1/qa for 'hftool finetune squad' folders.
    Requests join the running batch at the next decoding step and leave it as soon as they end. Request fields
    left out take the --recipe's decoding settings (greedy, 64 tokens by default); temperature 0 is greedy.

    Examples:

      hftool serve --model runs/gpt2-tiny

      hftool serve --model bloom-560m --host 0.0.0.0 --port 8080 --api-key "$KEY"
    """
    from hftool.cli.generate import _recipe
    from hftool.config import load_recipe
    from hftool.generation.settings import GenerateRecipe
    from hftool.runs.serve import ServeOptions, run_serve

    base = load_recipe(GenerateRecipe, recipe, [])
    run_serve(ServeOptions(recipe=_recipe(base, flags), host=host, port=port, api_key=api_key or None,
                           max_batch_size=max_batch_size, max_queue=max_queue, max_tokens_cap=max_tokens_cap,
                           threads=threads, max_cache_tokens=max_cache_tokens, prefill_chunk=prefill_chunk,
                           qa_window=(max_length, doc_stride, max_answer_length)))
