"""The FastAPI app: OpenAI's completions, chat and models endpoints, the encoder endpoints
(:mod:`~hftool.serve.encoders`: ``/v1/classify``, ``/v1/tag``, ``/v1/qa``, ``/v1/embeddings``), ``/health`` and
``/metrics``; each request goes to the model its ``model`` field names (:mod:`~hftool.serve.registry`).

Handlers only tokenize, check, queue and relay events (:mod:`~hftool.serve.streaming`); every error leaves in
OpenAI's shape (:mod:`~hftool.serve.errors`); the API key and body cap are checked first
(:mod:`~hftool.serve.guard`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from hftool.schemas.fields import SettingError, check_fields
from hftool.schemas.generate import DecodingSettings
from hftool.serve import schemas as s
from hftool.serve.encoders import router as encoder_router
from hftool.serve.errors import ApiError, add_error_handlers
from hftool.serve.guard import Guard
from hftool.serve.metrics import Metrics
from hftool.serve.registry import Registry
from hftool.serve.scheduler import Scheduler
from hftool.serve.streaming import (
    ChatChunks,
    CompletionChunks,
    chat_logprobs,
    collect,
    completion_logprobs,
    stream,
    submit,
)


@dataclass
class Served:
    """A model the app serves: a causal LM (``batcher``), an extractive-QA model (``qa``) or another encoder
    (``encoder``: a classifier, tagger or embedder of :mod:`~hftool.serve.encoders`), and its limits."""

    name: str
    metrics: Metrics
    tokenizer: object = None  # the handlers' own copy: fast tokenizers refuse concurrent use across threads
    batcher: Scheduler | None = None
    qa: object = None
    encoder: object = None
    defaults: DecodingSettings = field(default_factory=DecodingSettings)
    context: int = 2048
    vocab_size: int | None = None  # the model's embedding rows, which token-id prompts must stay below
    max_tokens_cap: int = 1024
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def kind(self) -> str | None:
        """Which endpoints serve it (a key of :data:`hftool.serve.registry.KINDS`)."""
        if self.batcher is not None:
            return "generate"
        if self.qa is not None:
            return "qa"
        return self.encoder.kind if self.encoder is not None else None


def create_app(served: Served | list[Served], api_key: str | None = None, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The app for ``served`` (one model or several, the first one's metrics counting for all); ``api_key`` (when
    set) is required as ``Authorization: Bearer`` (the scheme in any case) except on /health."""
    from contextlib import asynccontextmanager

    registry = Registry(served if isinstance(served, list) else [served])
    batchers = [item.batcher for item in registry.served if item.batcher]

    @asynccontextmanager
    async def lifespan(app):
        for batcher in batchers:
            batcher.start()
        yield
        for batcher in batchers:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="hftool serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    metrics = registry.served[0].metrics
    if batchers:
        metrics.queue_depth = lambda: sum(batcher.depth for batcher in batchers)
        metrics.running = lambda: sum(batcher.running for batcher in batchers)

    add_error_handlers(app)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": registry.served[0].name, "models": [item.name for item in registry.served]}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> s.ModelList:
        return s.ModelList(data=[s.ModelCard(id=item.name, created=item.created) for item in registry.served])

    @app.post("/v1/completions")
    async def completions(body: s.CompletionRequest, request: Request):
        served = registry.pick(body.model, "generate")
        prompts = body.prompt_list()
        encoded = [_encode(served, p, "prompt" if len(prompts) == 1 else f"prompt.{i}")
                   for i, p in enumerate(prompts)]
        settings = _settings(served, body, body.max_tokens, encoded)
        job, events = submit(served, encoded, settings, body.logprobs, body.stream)
        rid, created, n = f"cmpl-{uuid.uuid4().hex}", int(time.time()), job.n
        echo = [p if isinstance(p, str) else served.tokenizer.decode(p) for p in prompts] if body.echo else None
        if body.stream:
            return stream(request, job, events, CompletionChunks(served, rid, created, body, n, echo, encoded))
        choices, usage = await collect(request, job, events, encoded, n)
        return s.Completion(id=rid, created=created, model=served.name, usage=usage, choices=[
            s.CompletionChoice(index=i, text=(echo[i // n] if echo else "") + text, finish_reason=reason,
                               logprobs=completion_logprobs(lps, len(echo[i // n]) if echo else 0)
                               if body.logprobs is not None else None)
            for i, (text, reason, lps) in enumerate(choices)])

    @app.post("/v1/chat/completions")
    async def chat(body: s.ChatRequest, request: Request):
        served = registry.pick(body.model, "generate")
        template = getattr(served.tokenizer, "chat_template", None)
        if not template:
            raise ApiError(400, f"the model {served.name} has no chat template in its tokenizer, so chat "
                           "messages cannot be turned into a prompt; use /v1/completions with plain text",
                           "messages", "no_chat_template")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        try:
            text = served.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the template's own checks (roles, order) fail in Jinja
            raise ApiError(400, f"the chat template refused these messages: {exc}", "messages") from None
        ids = served.tokenizer(text, add_special_tokens=False)["input_ids"]
        encoded = [_fit(served, ids, "messages")]
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        settings = _settings(served, body, max_tokens, encoded)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        job, events = submit(served, encoded, settings, logprobs, body.stream)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return stream(request, job, events, ChatChunks(served, rid, created, body, job.n, encoded))
        choices, usage = await collect(request, job, events, encoded, job.n)
        return s.ChatCompletion(id=rid, created=created, model=served.name, usage=usage, choices=[
            s.ChatChoice(index=i, message=s.ChatMessage(content=text), finish_reason=reason,
                         logprobs=chat_logprobs(lps) if body.logprobs else None)
            for i, (text, reason, lps) in enumerate(choices)])

    app.include_router(encoder_router(registry))
    return app


# ---- checks ----------------------------------------------------------------------------------------------

def _encode(served: Served, prompt: str | list[int], param: str) -> list[int]:
    """A text prompt's token ids, or a token-id prompt checked against the vocabulary; as ``hftool generate``
    does, an empty prompt starts from the begin-of-text token."""
    if isinstance(prompt, list):
        vocab = served.vocab_size or len(served.tokenizer)
        bad = next((token for token in prompt if not 0 <= token < vocab), None)
        if bad is not None:
            raise ApiError(400, f"'{param}' holds the token id {bad}; this model's ids are 0 to {vocab - 1}", param,
                           "invalid_token_id")
        ids = list(prompt)
    else:
        ids = served.tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    if not ids:  # an empty prompt starts from the begin-of-text token, as hftool generate does
        start = served.tokenizer.bos_token_id
        start = served.tokenizer.eos_token_id if start is None else start
        if start is None:
            raise ApiError(400, "the prompt is empty and the tokenizer has no begin-of-text token", param)
        ids = [start]
    return _fit(served, ids, param)


def _fit(served: Served, ids: list[int], param: str) -> list[int]:
    if len(ids) >= served.context:
        raise ApiError(400, f"'{param}' is {len(ids)} tokens, which leaves no room in the model's {served.context}"
                       " positions; shorten it", param, "context_length_exceeded")
    return ids


# The request field that sets each decoding setting, where its name differs (the settings' own names otherwise).
REQUEST_FIELDS = {"max_new_tokens": "max_tokens", "num_return_sequences": "n", "do_sample": "temperature"}


def _settings(served: Served, body: s.Sampling, max_tokens: int | None, encoded: list[list[int]]):
    """The settings ``hftool generate`` would decode this request with: the server's recipe (``--recipe``)
    with the fields the request gives laid over it, checked by the settings' own bounds (``hftool generate``'s
    checks, answered as a 400 naming the request field). Temperature 0 is greedy."""
    name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
    given = {"max_new_tokens": max_tokens, "top_p": body.top_p, "top_k": body.top_k,
             "repetition_penalty": body.repetition_penalty, "num_return_sequences": body.n, "seed": body.seed,
             "stop": None if body.stop is None else list(body.stop)}
    if body.temperature is not None:
        given["do_sample"] = body.temperature != 0
        if body.temperature != 0:
            given["temperature"] = body.temperature
    settings = dataclasses.replace(served.defaults, **{k: v for k, v in given.items() if v is not None})
    try:
        check_fields(settings)
    except SettingError as exc:
        param = name if exc.field == "max_new_tokens" else REQUEST_FIELDS.get(exc.field, exc.field)
        raise ApiError(400, f"'{param}' = {json.dumps(exc.value)}: {exc.why}", param, "invalid_value") from None
    max_tokens = settings.max_new_tokens
    if max_tokens > served.max_tokens_cap:
        raise ApiError(400, f"'{name}' = {max_tokens} is above this server's cap of {served.max_tokens_cap} "
                       "(--max-tokens-cap)", name, "max_tokens_too_large")
    longest = max(len(ids) for ids in encoded)
    if longest + max_tokens > served.context:
        raise ApiError(400, f"the prompt is {longest} tokens; with '{name}' = {max_tokens} that is "
                       f"{longest + max_tokens}, more than the model's {served.context} positions; lower '{name}' "
                       "or shorten the prompt", name, "context_length_exceeded")
    return settings
