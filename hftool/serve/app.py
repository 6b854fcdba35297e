"""The FastAPI app: OpenAI's completions, chat and models endpoints, ``/v1/qa``, ``/health`` and ``/metrics``.

Every error, from invalid JSON to a full queue, leaves in OpenAI's shape ``{"error": {message, type, param,
code}}`` so client libraries raise their own exception types. Generation runs on the :class:`Batcher`'s thread;
handlers only tokenize, check, queue and relay events, so a slow client delays nobody but itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hftool.errors import HftoolError
from hftool.generation.settings import DecodingSettings
from hftool.serve import schemas as s
from hftool.serve.batcher import Batcher, Closing, Job, QueueFull
from hftool.serve.metrics import Metrics

DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = s.ErrorResponse(error=s.ErrorBody(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


@dataclass
class Served:
    """What the app serves: a causal LM (``batcher``) or an extractive-QA model (``qa``), and its limits."""

    name: str
    metrics: Metrics
    tokenizer: object = None  # the handlers' own copy: fast tokenizers refuse concurrent use across threads
    batcher: Batcher | None = None
    qa: object = None
    defaults: DecodingSettings = field(default_factory=DecodingSettings)
    context: int = 2048
    max_tokens_cap: int = 1024
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(served: Served, api_key: str | None = None, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The app for ``served``; ``api_key`` (when set) is required as ``Authorization: Bearer`` except on /health."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if served.batcher:
            served.batcher.start()
        yield
        if served.batcher:
            await asyncio.to_thread(served.batcher.close)

    app = FastAPI(title="hftool serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    metrics = served.metrics
    if served.batcher:
        metrics.queue_depth = lambda: served.batcher.depth
        metrics.running = lambda: served.batcher.running

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return _validation_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return error_response(exc.status_code, message, kind)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> s.ModelList:
        return s.ModelList(data=[s.ModelCard(id=served.name, created=served.created)])

    @app.post("/v1/completions")
    async def completions(body: s.CompletionRequest, request: Request):
        _check_model(served, body.model, generation=True)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        encoded = [_encode(served, p, "prompt" if len(prompts) == 1 else f"prompt.{i}")
                   for i, p in enumerate(prompts)]
        settings = _settings(served, body, body.max_tokens, encoded)
        job, events = _submit(served, encoded, settings, body.n, body.logprobs, body.stream)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        echo = prompts if body.echo else None
        if body.stream:
            return _stream(request, job, events, _completion_chunks(served, rid, created, body, prompts, echo,
                                                                    encoded))
        choices, usage = await _collect(request, job, events, encoded, body.n)
        return s.Completion(id=rid, created=created, model=served.name, usage=usage, choices=[
            s.CompletionChoice(index=i, text=(echo[i // body.n] if echo else "") + text, finish_reason=reason,
                               logprobs=_completion_logprobs(lps, len(echo[i // body.n]) if echo else 0)
                               if body.logprobs is not None else None)
            for i, (text, reason, lps) in enumerate(choices)])

    @app.post("/v1/chat/completions")
    async def chat(body: s.ChatRequest, request: Request):
        _check_model(served, body.model, generation=True)
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
        job, events = _submit(served, encoded, settings, body.n, logprobs, body.stream)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return _stream(request, job, events, _chat_chunks(served, rid, created, body, encoded))
        choices, usage = await _collect(request, job, events, encoded, body.n)
        return s.ChatCompletion(id=rid, created=created, model=served.name, usage=usage, choices=[
            s.ChatChoice(index=i, message=s.ChatMessage(content=text), finish_reason=reason,
                         logprobs=_chat_logprobs(lps) if body.logprobs else None)
            for i, (text, reason, lps) in enumerate(choices)])

    @app.post("/v1/qa")
    async def qa(body: s.QARequest) -> s.QAResponse:
        from hftool.data.squad import QAExample

        _check_model(served, body.model, generation=False)
        try:
            items = body.items()
        except ValueError as exc:
            raise ApiError(400, str(exc), "question") from None
        examples = [QAExample(id=item.id or str(i + 1), question=item.question, context=item.context)
                    for i, item in enumerate(items)]
        try:
            found = await asyncio.to_thread(served.qa.answer, examples, body.top_k)
        except HftoolError as exc:
            raise ApiError(400, str(exc), "question") from None
        return s.QAResponse(model=served.name, results=[
            s.QAResult(id=item.id, question=e.question, answers=[
                s.QAAnswer(text=a.text, score=round(a.probability, 4), start=a.start_char, end=a.end_char)
                for a in answers])
            for item, e, answers in zip(items, examples, found, strict=True)])

    return app


# ---- checks ----------------------------------------------------------------------------------------------

def _validation_response(errors) -> JSONResponse:
    """The first pydantic error as one OpenAI error naming its field (``messages.0.role``)."""
    error = errors[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "invalid")
    if kind == "json_invalid":
        return error_response(400, f"the request body is not valid JSON ({error.get('msg', '')})",
                              code="invalid_json")
    param = ".".join(loc) or None
    if kind == "extra_forbidden":
        message = f"unknown field '{param}'; remove it (see the OpenAI API reference for the fields)"
    elif kind == "missing":
        message = f"'{param}' is required"
    else:
        shown = json.dumps(error.get("input"), default=str)[:80]
        message = f"'{param}' = {shown}: {error.get('msg', 'invalid')}" if param else error.get("msg", "invalid")
    return error_response(400, message, param=param, code=kind)


def _check_model(served: Served, model: str | None, generation: bool) -> None:
    if model is not None and model != served.name:
        raise ApiError(404, f"model '{model}' is not served here; this server serves '{served.name}'", "model",
                       "model_not_found", kind="not_found_error")
    if generation and served.batcher is None:
        raise ApiError(400, f"{served.name} is a question-answering model; use POST /v1/qa", "model",
                       "wrong_endpoint")
    if not generation and served.qa is None:
        raise ApiError(400, f"{served.name} is not an extractive question-answering model (hftool finetune "
                       "squad output); /v1/qa needs one", "model", "wrong_endpoint")


def _encode(served: Served, prompt: str, param: str) -> list[int]:
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


def _settings(served: Served, body: s.Sampling, max_tokens: int | None, encoded: list[list[int]]):
    """The request's decoding settings over the server's defaults (``--recipe``); temperature 0 is greedy."""
    d = served.defaults
    max_tokens = d.max_new_tokens if max_tokens is None else max_tokens
    name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
    if max_tokens > served.max_tokens_cap:
        raise ApiError(400, f"'{name}' = {max_tokens} is above this server's cap of {served.max_tokens_cap} "
                       "(--max-tokens-cap)", name, "max_tokens_too_large")
    longest = max(len(ids) for ids in encoded)
    if longest + max_tokens > served.context:
        raise ApiError(400, f"the prompt is {longest} tokens; with '{name}' = {max_tokens} that is "
                       f"{longest + max_tokens}, more than the model's {served.context} positions; lower '{name}' "
                       "or shorten the prompt", name, "context_length_exceeded")
    do_sample = d.do_sample if body.temperature is None else body.temperature > 0
    return dataclasses.replace(
        d, max_new_tokens=max_tokens, do_sample=do_sample, num_beams=1, num_return_sequences=1,
        temperature=d.temperature if body.temperature is None else body.temperature,
        top_p=d.top_p if body.top_p is None else body.top_p, top_k=d.top_k if body.top_k is None else body.top_k,
        repetition_penalty=d.repetition_penalty if body.repetition_penalty is None else body.repetition_penalty,
        stop=list(d.stop) if body.stop is None else list(body.stop), seed=body.seed)


class _Mailbox:
    """Hands the decoding thread's events to the event loop with one wake-up for many events.

    Every request's events of one decoding step (a token for each of 16 streams) arrive in a single callback
    instead of one ``call_soon_threadsafe`` (a write to the loop's self-pipe, and a wake-up) per event.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = weakref.ref(loop)  # the registry below must not keep a closed loop alive
        self.lock = threading.Lock()
        self.letters: list[tuple[asyncio.Queue, tuple]] = []

    def post(self, events: asyncio.Queue, event: tuple) -> None:
        with self.lock:
            self.letters.append((events, event))
            if len(self.letters) > 1:  # a delivery is already scheduled and will take this one too
                return
        loop = self.loop()
        try:
            if loop is not None:
                loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop is closed (shutdown); nobody is listening
            pass

    def _deliver(self) -> None:
        with self.lock:
            letters, self.letters = self.letters, []
        for events, event in letters:
            events.put_nowait(event)


_mailboxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # one per event loop


def _submit(served: Served, encoded, settings, n: int, logprobs: int | None, stream: bool):
    """Queue the job; its events arrive on an asyncio queue of this request's own."""
    loop = asyncio.get_running_loop()
    mailbox = _mailboxes.get(loop)
    if mailbox is None:
        mailbox = _mailboxes[loop] = _Mailbox(loop)
    events: asyncio.Queue = asyncio.Queue()
    job = Job(encoded, settings, lambda event: mailbox.post(events, event), n=n, logprobs=logprobs, stream=stream)
    try:
        served.batcher.submit(job)
    except QueueFull:
        served.metrics.count("rejected")
        raise ApiError(503, f"the server is busy: {served.batcher.max_queue} requests are already waiting "
                       "(--max-queue); retry after a second", code="queue_full", kind="server_error",
                       headers={"Retry-After": "1"}) from None
    except Closing:
        raise ApiError(503, "the server is shutting down", code="shutting_down", kind="server_error",
                       headers={"Retry-After": "5"}) from None
    return job, events


async def _collect(request: Request, job: Job, events: asyncio.Queue, encoded, n: int):
    """Wait for every choice; a client that hangs up cancels its job (no tokens generated for nobody)."""
    finished: dict[int, tuple] = {}
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    break
                continue
            if event[0] == "finish":
                _, choice, reason, tokens, logprobs, text = event
                finished[choice] = (text, reason, tokens, logprobs)
            elif event[0] == "error":
                raise ApiError(503, event[1], kind="server_error", code="generation_failed")
            elif event[0] == "end":
                break
    finally:
        if len(finished) < job.rows:
            job.cancelled.set()
    choices = [(text, reason, logprobs) for text, reason, _, logprobs in (finished[i] for i in sorted(finished))]
    completion = sum(tokens for _, _, tokens, _ in finished.values())
    return choices, _usage(encoded, n, completion)


def _usage(encoded, n: int, completion: int) -> s.Usage:
    prompt = sum(len(ids) for ids in encoded)
    return s.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


# ---- streaming -------------------------------------------------------------------------------------------

def _sse(payload) -> str:
    data = payload.model_dump_json(exclude_none=False) if hasattr(payload, "model_dump_json") else payload
    return f"data: {data}\n\n"


def _stream(request: Request, job: Job, events: asyncio.Queue, chunks) -> StreamingResponse:
    """Relay the job's events as server-sent events; a client that goes away cancels the job."""

    async def body():
        done = False  # the job finished: its "end" arrived
        over = False
        try:
            for first in chunks.start():
                yield _sse(first)
            while not over:
                # Everything that has arrived goes out in one write (the tokens of several steps, when this
                # client or the loop fell behind): one send through the ASGI stack instead of one per event.
                pending, out = [await events.get()], []
                while not events.empty():
                    pending.append(events.get_nowait())
                for event in pending:
                    if event[0] == "error":
                        out.append(_sse(json.dumps(s.ErrorResponse(error=s.ErrorBody(
                            message=event[1], type="server_error", code="generation_failed")).model_dump())))
                        over = True
                        break
                    if event[0] == "end":
                        done = over = True
                        out += [_sse(last) for last in chunks.end()]
                        break
                    chunk = chunks.event(event)
                    if chunk is not None:
                        out.append(_sse(chunk))
                if over:
                    out.append("data: [DONE]\n\n")
                if out:
                    yield "".join(out)
        finally:
            if not done:
                job.cancelled.set()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _completion_chunks:
    """``text_completion`` chunks: text deltas, then one chunk with each choice's finish reason."""

    def __init__(self, served, rid, created, body, prompts, echo, encoded):
        self.base = dict(id=rid, created=created, model=served.name)
        self.n, self.echo, self.encoded, self.body = body.n, echo, encoded, body
        self.tokens = 0

    def _chunk(self, index, text, reason=None, logprobs=None):
        return s.Completion(**self.base, choices=[s.CompletionChoice(index=index, text=text, finish_reason=reason,
                                                                     logprobs=logprobs)])

    def start(self):
        if self.echo:
            for index in range(len(self.echo) * self.n):
                yield self._chunk(index, self.echo[index // self.n])

    def event(self, event):
        lps = self.body.logprobs is not None
        if event[0] == "text":
            _, index, text, logprobs = event
            return self._chunk(index, text, logprobs=_completion_logprobs(logprobs, 0) if lps else None)
        if event[0] == "finish":
            self.tokens += event[3]
            return self._chunk(event[1], "", event[2])
        return None

    def end(self):
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield s.Completion(**self.base, choices=[], usage=_usage(self.encoded, self.n, self.tokens))


class _chat_chunks:
    """``chat.completion.chunk``s: the assistant role first, content deltas, then each finish reason."""

    def __init__(self, served, rid, created, body, encoded):
        self.base = dict(id=rid, created=created, model=served.name)
        self.body, self.encoded = body, encoded
        self.tokens = 0

    def _chunk(self, index, delta, reason=None, logprobs=None):
        return s.ChatChunk(**self.base, choices=[s.ChatChunkChoice(index=index, delta=delta, finish_reason=reason,
                                                                   logprobs=logprobs)])

    def start(self):
        for index in range(self.body.n):
            yield self._chunk(index, s.Delta(role="assistant", content=""))

    def event(self, event):
        if event[0] == "text":
            _, index, text, logprobs = event
            return self._chunk(index, s.Delta(content=text),
                               logprobs=_chat_logprobs(logprobs) if self.body.logprobs else None)
        if event[0] == "finish":
            self.tokens += event[3]
            return self._chunk(event[1], s.Delta(), event[2])
        return None

    def end(self):
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield s.ChatChunk(**self.base, choices=[], usage=_usage(self.encoded, self.body.n, self.tokens))


def _completion_logprobs(entries: list[dict], offset: int) -> s.LogProbs:
    result = s.LogProbs()
    for entry in entries:
        result.tokens.append(entry["token"])
        result.token_logprobs.append(entry["logprob"])
        result.top_logprobs.append(dict(entry["top"]))
        result.text_offset.append(offset)
        offset += len(entry["token"])
    return result


def _chat_logprobs(entries: list[dict]) -> s.ChatLogProbs:
    return s.ChatLogProbs(content=[s.TokenLogProb(token=e["token"], logprob=e["logprob"], top_logprobs=[
        s.TopLogProb(token=t, logprob=v) for t, v in e["top"]]) for e in entries])


# ---- authentication, body size, request metrics ----------------------------------------------------------

class _Guard:
    """Pure ASGI middleware (streaming responses pass through untouched): the API key, the body-size cap,
    and the request counter and latency histogram. The key is compared in constant time and never logged."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                return await refusal(scope, receive, send_status)
            return await self.app(scope, self._capped(receive), send_status)
        except _TooLarge:
            return await self._too_large()(scope, receive, send_status)
        finally:
            self.metrics.request_done(endpoint, status[0], time.perf_counter() - started)

    def _refusal(self, scope, path: str) -> Response | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        if self.expected is not None and path != "/health":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                      "authentication_error", code="invalid_api_key")
        return None

    def _too_large(self) -> Response:
        return error_response(413, f"the request body is larger than this server's {self.max_body_bytes} "
                              "bytes", code="body_too_large")

    def _capped(self, receive):
        seen = [0]

        async def wrapped():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body_bytes:
                    raise _TooLarge()
            return message

        return wrapped


class _TooLarge(Exception):
    """A body without Content-Length grew past the cap while it was read."""


ENDPOINTS = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/qa", "/health", "/metrics"}
