"""``hftool serve``: load the model once, build the app, run uvicorn until SIGINT/SIGTERM.

uvicorn stops accepting on SIGTERM, lets in-flight requests finish for ``grace`` seconds, then the app's
shutdown refuses what is still queued with a clean error, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import signal
import sys

from hftool.errors import HftoolError
from hftool.schemas.serve import ServeOptions


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """Binding beyond this machine without a key lets anyone on the network use the model."""
    if api_key or is_loopback(host):
        return None
    return (f"warning: serving on {host} without --api-key (or HFTOOL_API_KEY): anyone who can reach this "
            "port can use the model")


# The architectures' class-name endings that make a folder a model of each encoder kind (registry.KINDS).
HEAD_KINDS = (("ForQuestionAnswering", "qa"), ("ForSequenceClassification", "classify"),
              ("ForTokenClassification", "tag"))
ENCODER_ENDINGS = ("ForMaskedLM", "ForPreTraining", "Model")  # a bare or pretraining encoder: embeddings


def model_kind(name: str, trust_remote_code: bool = False) -> str:
    """Which endpoints serve ``name``, from its config: a trained head's (/v1/qa, /v1/classify, /v1/tag), an
    encoder's (/v1/embeddings: BERT-family bodies), else generation (whose loading refuses what is no causal LM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from hftool.generation.loading import CAUSAL_SUFFIXES
    from hftool.loading import load_config, resolve_model

    config = load_config(resolve_model(name, "--model"), name, "--model", trust_remote_code)
    architectures = getattr(config, "architectures", None) or []
    for ending, kind in HEAD_KINDS:
        if any(a.endswith(ending) for a in architectures):
            return kind
    if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures) or getattr(config, "is_encoder_decoder", False):
        return "generate"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and any(a.endswith(ENCODER_ENDINGS)
                                                                       for a in architectures):
        return "embed"
    return "generate"


def build_all_served(options: ServeOptions) -> list:
    """Every model of ``--model`` (repeated), or the recipe's, loaded once, sharing one :class:`Metrics`; every
    name and config is checked before the first model loads."""
    from hftool.serve.metrics import Metrics
    from hftool.serve.registry import Registry, split_model_arg

    values = options.models or [options.recipe.model.name]
    if not all(values):
        raise HftoolError("--model is required (a folder, a Hub id or an alias), or a --recipe that names one")
    Registry.check_names([split_model_arg(value)[0] for value in values])
    kinds = [model_kind(split_model_arg(value)[1], options.recipe.model.trust_remote_code) for value in values]
    metrics = Metrics()
    return [build_served(options, value, metrics, kind) for value, kind in zip(values, kinds, strict=True)]


def build_served(options: ServeOptions, model: str | None = None, metrics=None, kind: str | None = None):
    """Load one model (``model``: a ``--model`` value, NAME=PATH or PATH; default the recipe's) of ``kind``
    (default: read from its config) and return the :class:`Served` the app takes (the app starts the batcher)."""
    import dataclasses

    from hftool.serve.app import Served
    from hftool.serve.layout import serving_layout
    from hftool.serve.metrics import Metrics
    from hftool.serve.registry import split_model_arg
    from hftool.serve.scheduler import Scheduler

    value = model or options.recipe.model.name
    if not value:
        raise HftoolError("--model is required (a folder, a Hub id or an alias), or a --recipe that names one")
    served_name, name = split_model_arg(value)
    metrics = metrics or Metrics()
    kind = kind or model_kind(name, options.recipe.model.trust_remote_code)
    if kind == "qa":
        return Served(name=served_name, metrics=metrics, qa=load_qa_service(name, options.qa_window))
    if kind != "generate":
        return Served(name=served_name, metrics=metrics, encoder=load_encoder(name, kind))
    from hftool.generation.loading import context_length, load_for_generation

    model, tokenizer = load_for_generation(dataclasses.replace(options.recipe.model, name=name), command="serve")
    context = context_length(model, tokenizer)
    layout = serving_layout(model, options.pack_weights, options.max_batch_size)
    if layout:
        print(f"{served_name}: {layout}", file=sys.stderr)
    batcher = Scheduler(model, tokenizer, context, options.max_batch_size, options.max_queue, metrics,
                        threads=options.threads, max_cache_tokens=options.max_cache_tokens,
                        prefill_chunk=options.prefill_chunk)
    return Served(name=served_name, metrics=metrics, tokenizer=copy.deepcopy(tokenizer), batcher=batcher,
                  defaults=options.recipe.decoding, context=context,
                  vocab_size=model.get_input_embeddings().num_embeddings,
                  max_tokens_cap=min(options.max_tokens_cap, context - 1))


def load_encoder(name: str, kind: str):
    """The encoder service of ``kind`` on this process's device: the model and tokenizer ``hftool classify`` and
    ``hftool tag`` load, or a bare encoder body for embeddings."""
    from accelerate import PartialState

    from hftool.serve.encoders import Embedder, Labeller, embedding_length

    device = PartialState().device
    if kind == "classify":
        from hftool.runs.classify import load_trained

        tokenizer, model = load_trained(name)
        return Labeller("classify", model.to(device), tokenizer)
    if kind == "tag":
        from hftool.runs.ner import load_trained

        tokenizer, model = load_trained(name, split_words=False)
        return Labeller("tag", model.to(device), tokenizer)
    from transformers import AutoModel

    from hftool.loading import load_model, load_tokenizer, resolve_model

    ref = resolve_model(name, "--model")
    tokenizer = load_tokenizer(ref, name, "--model")
    model = load_model(AutoModel, ref, name, "--model").to(device)
    return Embedder(model, tokenizer, embedding_length(ref.name_or_path, model, tokenizer))


def load_qa_service(name: str, window: tuple[int, int, int]):
    """The model, tokenizer and windows of ``hftool answer``, loaded once for every /v1/qa request."""
    from accelerate import PartialState
    from transformers import AutoModelForQuestionAnswering

    from hftool.data.squad import WindowSettings
    from hftool.loading import load_config, load_model, load_tokenizer, resolve_model
    from hftool.serve.qa import QAService

    settings = WindowSettings(*window, prefix="--")
    settings.validate()
    ref = resolve_model(name, "--model")
    tokenizer = load_tokenizer(ref, ref.name_or_path, "--model", offsets_for="question answering")
    settings.check_positions(load_config(ref, ref.name_or_path, "--model"), f"--model {ref.name_or_path}")
    model = load_model(AutoModelForQuestionAnswering, ref, name, "--model", head="question-answering")
    return QAService(model, tokenizer, settings, PartialState().device)


class PathOnly(logging.Filter):
    """Drops the query string from uvicorn's access lines: a client may put its API key there (``?api_key=``),
    and a log is no place for a key. Every text argument of the line loses what follows its ``?``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(arg.partition("?")[0] if isinstance(arg, str) else arg for arg in record.args)
        return True


def uvicorn_config(app, options: ServeOptions):
    """uvicorn's settings for ``app``, its access log writing paths without their query strings."""
    import uvicorn

    config = uvicorn.Config(app, host=options.host, port=options.port, log_level=options.log_level,
                            timeout_graceful_shutdown=options.grace_s, limit_concurrency=None)
    access = logging.getLogger("uvicorn.access")  # configured by uvicorn.Config above
    if not any(isinstance(f, PathOnly) for f in access.filters):
        access.addFilter(PathOnly())
    return config


@contextlib.contextmanager
def no_openmp_team():
    """Hold the calling thread (it loads the models, then runs the event loop) to one torch thread while it serves,
    so that it never starts an OpenMP team: the models compute on threads of their own, each with its own team
    (``claim_threads``), and a team more than the cores makes GNU OpenMP's idle threads sleep between parallel
    regions instead of waiting awake, which slows every product of the decoding thread (benchmarks/README.md,
    "Serving"). The thread's count is given back on return (in-process callers)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_serve(options: ServeOptions) -> None:
    import uvicorn

    from hftool.serve.app import create_app
    from hftool.serve.registry import KINDS

    options.validate()
    warning = exposure_warning(options.host, options.api_key)
    if warning:
        print(warning, file=sys.stderr)
    with no_openmp_team():
        served = build_all_served(options)
        app = create_app(served, api_key=options.api_key, max_body_bytes=options.max_body_bytes)
        shown = ", ".join(f"{item.name} ({KINDS[item.kind][1]})" for item in served)
        print(f"serving {shown} on http://{options.host}:{options.port}; Ctrl-C to stop", file=sys.stderr)
        server = uvicorn.Server(uvicorn_config(app, options))
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler found at start;
        # ignoring it there makes a requested shutdown a clean exit 0 (what service managers expect).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            server.run()
        except SystemExit:  # uvicorn's own exit when it cannot bind: the one-line error below says it instead
            if server.started:
                raise
    if not server.started:
        raise HftoolError(f"could not listen on {options.host}:{options.port} (in use, or not an address of "
                          "this machine); pick another --host/--port")
