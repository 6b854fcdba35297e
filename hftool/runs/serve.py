"""``hftool serve``: load the model once, build the app, run uvicorn until SIGINT/SIGTERM.

uvicorn stops accepting on SIGTERM, lets in-flight requests finish for ``grace`` seconds, then the app's
shutdown refuses what is still queued with a clean error, and the process exits 0.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import signal
import sys
from dataclasses import dataclass, field

from hftool.errors import HftoolError
from hftool.generation.settings import GenerateRecipe


@dataclass
class ServeOptions:
    recipe: GenerateRecipe = field(default_factory=GenerateRecipe)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_size: int = 16
    max_queue: int = 64
    max_cache_tokens: int | None = None  # cache reserved by the running rows, at most; None: batch size x context
    prefill_chunk: int = 256  # prompt tokens prefilled between two decoding steps, at most
    threads: int | None = None  # torch threads of the decoding thread; None: all cores but one
    max_tokens_cap: int = 1024
    max_body_bytes: int = 1 << 20
    grace_s: float = 20.0
    log_level: str = "info"
    qa_window: tuple[int, int, int] = (384, 128, 30)  # max_length, doc_stride, max_answer_length, as hftool answer

    def validate(self) -> None:
        self.recipe.validate()
        beams = self.recipe.decoding.num_beams
        if beams != 1:
            raise HftoolError(f"--num-beams {beams} (decoding.num_beams in the recipe): serve decodes one beam per "
                              "sequence, greedy or sampled, streaming tokens as they come; set it to 1 (beam search: "
                              "hftool generate)")
        for flag, value, low in (("--port", self.port, 0), ("--max-batch-size", self.max_batch_size, 1),
                                 ("--max-queue", self.max_queue, 1), ("--max-tokens-cap", self.max_tokens_cap, 1),
                                 ("--max-cache-tokens", 1 if self.max_cache_tokens is None else self.max_cache_tokens,
                                  1), ("--prefill-chunk", self.prefill_chunk, 1),
                                 ("--threads", 1 if self.threads is None else self.threads, 1)):
            if value < low:
                raise HftoolError(f"{flag} {value}: must be at least {low}")
        if self.port > 65535:
            raise HftoolError(f"--port {self.port}: must be at most 65535")


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


def is_qa_model(name: str) -> bool:
    """An extractive-QA folder (``hftool finetune squad``) is served on /v1/qa instead of the generation API."""
    from hftool.loading import load_config, resolve_model

    config = load_config(resolve_model(name, "--model"), name, "--model")
    return any(a.endswith("ForQuestionAnswering") for a in getattr(config, "architectures", None) or [])


def build_served(options: ServeOptions):
    """Load the model and return the :class:`Served` the app takes (the scheduler is started by the app)."""
    from hftool.serve.app import Served
    from hftool.serve.metrics import Metrics
    from hftool.serve.scheduler import Scheduler

    name = options.recipe.model.name
    if not name:
        raise HftoolError("--model is required (a folder, a Hub id or an alias), or a --recipe that names one")
    metrics = Metrics()
    if is_qa_model(name):
        return Served(name=name, metrics=metrics, qa=load_qa_service(name, options.qa_window))
    from hftool.generation.loading import context_length, load_for_generation

    model, tokenizer = load_for_generation(options.recipe.model, command="serve")
    context = context_length(model, tokenizer)
    batcher = Scheduler(model, tokenizer, context, options.max_batch_size, options.max_queue, metrics,
                        threads=options.threads, max_cache_tokens=options.max_cache_tokens,
                        prefill_chunk=options.prefill_chunk)
    return Served(name=name, metrics=metrics, tokenizer=copy.deepcopy(tokenizer), batcher=batcher,
                  defaults=options.recipe.decoding, context=context,
                  vocab_size=model.get_input_embeddings().num_embeddings,
                  max_tokens_cap=min(options.max_tokens_cap, context - 1))


def load_qa_service(name: str, window: tuple[int, int, int]):
    """The model, tokenizer and windows of ``hftool answer``, loaded once for every /v1/qa request."""
    from accelerate import PartialState

    from hftool.data.squad import WindowSettings
    from hftool.loading import resolve_model
    from hftool.runs.squad import check_positions, load_qa_model, load_qa_tokenizer
    from hftool.serve.qa import QAService

    settings = WindowSettings(*window, prefix="--")
    settings.validate()
    ref = resolve_model(name, "--model")
    tokenizer = load_qa_tokenizer(ref, "--model")
    check_positions(ref, settings, "--model")
    return QAService(load_qa_model(ref, name=name), tokenizer, settings, PartialState().device)


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


def run_serve(options: ServeOptions) -> None:
    import uvicorn

    from hftool.serve.app import create_app

    options.validate()
    warning = exposure_warning(options.host, options.api_key)
    if warning:
        print(warning, file=sys.stderr)
    served = build_served(options)
    app = create_app(served, api_key=options.api_key, max_body_bytes=options.max_body_bytes)
    kind = "/v1/qa" if served.qa else "/v1/completions and /v1/chat/completions"
    print(f"serving {served.name} on http://{options.host}:{options.port} ({kind}); Ctrl-C to stop",
          file=sys.stderr)
    server = uvicorn.Server(uvicorn_config(app, options))
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler found at start;
    # ignoring it there makes a requested shutdown a clean exit 0 (what service managers expect).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server.run()
    if not server.started:
        raise HftoolError(f"could not listen on {options.host}:{options.port} (in use, or not an address of "
                          "this machine); pick another --host/--port")
