"""Relaying a job's events from the decoding thread to its request: collected whole, or streamed as SSE.

Generation runs on the :class:`~hftool.serve.scheduler.Scheduler`'s thread; a request only queues its job and
relays the events, so a slow client delays nobody but itself, and one that hangs up cancels its job.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref

from fastapi import Request
from fastapi.responses import StreamingResponse

from hftool.serve import schemas as s
from hftool.serve.errors import ApiError
from hftool.serve.scheduler import Closing, Job, QueueFull, TooLarge

DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


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


def submit(served, encoded, settings, logprobs: int | None, stream: bool):
    """Queue the job (``settings.num_return_sequences`` choices per prompt); its events arrive on an asyncio
    queue of this request's own."""
    loop = asyncio.get_running_loop()
    mailbox = _mailboxes.get(loop)
    if mailbox is None:
        mailbox = _mailboxes[loop] = _Mailbox(loop)
    events: asyncio.Queue = asyncio.Queue()
    job = Job(encoded, settings, lambda event: mailbox.post(events, event), logprobs=logprobs, stream=stream)
    try:
        served.batcher.submit(job)
    except QueueFull:
        served.metrics.count("rejected")
        raise ApiError(503, f"the server is busy: {served.batcher.max_queue} requests are already waiting "
                       "(--max-queue); retry after a second", code="queue_full", kind="server_error",
                       headers={"Retry-After": "1"}) from None
    except TooLarge as exc:
        raise ApiError(400, f"this request's rows would reserve {exc.need} cache tokens (prompt + max_tokens, per "
                       f"choice), more than this server's {exc.budget} (--max-cache-tokens); lower max_tokens, n or "
                       "the number of prompts", "max_tokens", "cache_budget_exceeded") from None
    except Closing:
        raise ApiError(503, "the server is shutting down", code="shutting_down", kind="server_error",
                       headers={"Retry-After": "5"}) from None
    return job, events


async def collect(request: Request, job: Job, events: asyncio.Queue, encoded, n: int):
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
    return choices, usage(encoded, n, completion)


def usage(encoded, n: int, completion: int) -> s.Usage:
    prompt = sum(len(ids) for ids in encoded)
    return s.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def sse(payload) -> str:
    data = payload.model_dump_json(exclude_none=False) if hasattr(payload, "model_dump_json") else payload
    return f"data: {data}\n\n"


def stream(request: Request, job: Job, events: asyncio.Queue, chunks) -> StreamingResponse:
    """Relay the job's events as server-sent events; a client that goes away cancels the job."""

    async def body():
        done = False  # the job finished: its "end" arrived
        over = False
        try:
            for first in chunks.start():
                yield sse(first)
            while not over:
                # Everything that has arrived goes out in one write (the tokens of several steps, when this
                # client or the loop fell behind): one send through the ASGI stack instead of one per event.
                pending, out = [await events.get()], []
                while not events.empty():
                    pending.append(events.get_nowait())
                for event in pending:
                    if event[0] == "error":
                        out.append(sse(json.dumps(s.ErrorResponse(error=s.ErrorBody(
                            message=event[1], type="server_error", code="generation_failed")).model_dump())))
                        over = True
                        break
                    if event[0] == "end":
                        done = over = True
                        out += [sse(last) for last in chunks.end()]
                        break
                    chunk = chunks.event(event)
                    if chunk is not None:
                        out.append(sse(chunk))
                if over:
                    out.append("data: [DONE]\n\n")
                if out:
                    yield "".join(out)
        finally:
            if not done:
                job.cancelled.set()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class CompletionChunks:
    """``text_completion`` chunks: text deltas, then one chunk with each choice's finish reason."""

    def __init__(self, served, rid, created, body, n, echo, encoded):
        self.base = dict(id=rid, created=created, model=served.name)
        self.n, self.echo, self.encoded, self.body = n, echo, encoded, body
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
            return self._chunk(index, text, logprobs=completion_logprobs(logprobs, 0) if lps else None)
        if event[0] == "finish":
            self.tokens += event[3]
            return self._chunk(event[1], "", event[2])
        return None

    def end(self):
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield s.Completion(**self.base, choices=[], usage=usage(self.encoded, self.n, self.tokens))


class ChatChunks:
    """``chat.completion.chunk``s: the assistant role first, content deltas, then each finish reason."""

    def __init__(self, served, rid, created, body, n, encoded):
        self.base = dict(id=rid, created=created, model=served.name)
        self.body, self.n, self.encoded = body, n, encoded
        self.tokens = 0

    def _chunk(self, index, delta, reason=None, logprobs=None):
        return s.ChatChunk(**self.base, choices=[s.ChatChunkChoice(index=index, delta=delta, finish_reason=reason,
                                                                   logprobs=logprobs)])

    def start(self):
        for index in range(self.n):
            yield self._chunk(index, s.Delta(role="assistant", content=""))

    def event(self, event):
        if event[0] == "text":
            _, index, text, logprobs = event
            return self._chunk(index, s.Delta(content=text),
                               logprobs=chat_logprobs(logprobs) if self.body.logprobs else None)
        if event[0] == "finish":
            self.tokens += event[3]
            return self._chunk(event[1], s.Delta(), event[2])
        return None

    def end(self):
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield s.ChatChunk(**self.base, choices=[], usage=usage(self.encoded, self.n, self.tokens))


def completion_logprobs(entries: list[dict], offset: int) -> s.LogProbs:
    result = s.LogProbs()
    for entry in entries:
        result.tokens.append(entry["token"])
        result.token_logprobs.append(entry["logprob"])
        result.top_logprobs.append(dict(entry["top"]))
        result.text_offset.append(offset)
        offset += len(entry["token"])
    return result


def chat_logprobs(entries: list[dict]) -> s.ChatLogProbs:
    return s.ChatLogProbs(content=[s.TokenLogProb(token=e["token"], logprob=e["logprob"], top_logprobs=[
        s.TopLogProb(token=t, logprob=v) for t, v in e["top"]]) for e in entries])
