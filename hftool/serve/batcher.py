"""The decoding thread: it alone touches the model, and decodes the queued requests together.

HTTP handlers put a :class:`Job` on a bounded queue and read its events; the thread takes the oldest job plus
every queued job that can share its generation settings (up to ``max_batch_size`` sequences), left-pads them
into one ``model.generate`` call, and reports each sequence's new text as the tokens come. A job that arrives
while a batch runs joins the next one. Stop strings, end of text, each sequence's own ``max_tokens`` and a
client that went away all end a sequence through one stopping criterion, so no token is generated for nobody.
Greedy rows give the same tokens alone or in a batch (left padding with an attention mask; tested in
tests/test_generate.py).

Per step the thread does O(new tokens) Python work per row: it decodes only a few trailing tokens, looks for
stop strings only in the newly decoded tail and recognises end of text by id. It sets its own torch thread
count (``threads``): by default one core is left to the event loop, because a decoding thread whose intra-op
threads compete with the HTTP thread for the cores waits at every operator's barrier (measured in
benchmarks/bench_serve.py).

The file is one thing, the thread and the per-step bookkeeping only it runs (``_Tracker``), hence its length.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hftool.generation.decoding import Generator, trim_at_stop
from hftool.schemas.generate import SAMPLING_ONLY, DecodingSettings

_ids = itertools.count()
GATHER_S = 0.003  # how long the decoder waits for another request to join a new batch
# Settings the batcher applies to each row itself, so jobs that differ in them still share a batch: each row's
# token budget and stop strings end it through the stopping criterion, and a job's continuations are its rows.
PER_ROW = ("max_new_tokens", "stop", "num_return_sequences")


class QueueFull(Exception):
    """More requests are waiting than ``--max-queue`` allows."""


class Closing(Exception):
    """The server is shutting down and takes no new work."""


@dataclass
class Job:
    """One request: its prompts (token ids), ``settings.num_return_sequences`` sequences each, and how to decode
    them: ``settings`` are exactly those ``hftool generate`` would use (the server's recipe and the request).

    ``emit`` receives the events, from the decoding thread: ``("text", choice, delta, logprobs)``,
    ``("finish", choice, reason, tokens, logprobs, text)``, ``("error", message)`` and ``("end",)`` once every
    choice has finished.
    """

    prompts: list[list[int]]
    settings: DecodingSettings
    emit: Callable[[tuple], None]
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely ones'
    stream: bool = True  # False: no "text" events, only each choice's "finish" (fewer wake-ups of the loop)
    cancelled: threading.Event = field(default_factory=threading.Event)
    number: int = field(default_factory=lambda: next(_ids))
    cancel_counted: bool = False  # the decoding thread counts a cancelled job once, wherever it notices

    @property
    def n(self) -> int:
        return self.settings.num_return_sequences

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    @property
    def longest(self) -> int:
        return max(len(p) for p in self.prompts)

    def key(self) -> tuple:
        """Jobs with equal keys share one ``model.generate`` call: every setting but the per-row ones (and the
        sampling knobs greedy search ignores) is equal. A sampled job runs alone (its seed reproduces it)."""
        s = self.settings
        shared = tuple(repr(getattr(s, f.name)) for f in dataclasses.fields(s)
                       if f.name not in PER_ROW and (s.do_sample or f.name not in SAMPLING_ONLY))
        return (*shared, self.number) if s.do_sample else shared


@dataclass
class _Row:
    job: Job
    choice: int
    limit: int
    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far, in pieces; the full decode is done once, at the end
    sent: int = 0
    prefix: int = 0  # ids[prefix:read] were decoded last time: the context the next piece is decoded in
    read: int = 0
    done: bool = False
    logprobs: list[dict] = field(default_factory=list)
    unsent_logprobs: list[dict] = field(default_factory=list)


class Batcher:
    """Owns the model: ``submit`` from any thread, the decoding happens on this object's own thread."""

    def __init__(self, model, tokenizer, context: int, max_batch_size: int, max_queue: int, metrics=None,
                 threads: int | None = None, gather_s: float = GATHER_S):
        self.model = model
        self.gather_s = gather_s
        self.threads = threads or default_threads()
        self.tokenizer = tokenizer
        self.context = context
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.metrics = metrics
        self.pending: deque[Job] = deque()
        self.running = 0
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="hftool-decoder", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.closed:
                raise Closing()
            if len(self.pending) >= self.max_queue:
                raise QueueFull()
            self.pending.append(job)
            self.cond.notify()

    @property
    def depth(self) -> int:
        return len(self.pending)

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, tell the queued ones the server is going away, let the running batch finish."""
        with self.cond:
            self.closed = True
            for job in self.pending:
                job.emit(("error", "the server is shutting down; retry on another replica or later"))
            self.pending.clear()
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _take(self) -> list[Job] | None:
        """The oldest live job and the queued jobs that fit beside it; None when closed.

        While the batch has room and requests keep arriving (each within ``gather_s`` of the last, for at most
        four gaps) it waits for them: clients answered by one batch send their next requests together, and
        without the wait the first of them would start a batch of one. A lone request waits ``gather_s`` once.
        """
        with self.cond:
            while True:
                while self.pending and self.pending[0].cancelled.is_set():
                    count_cancelled(self.pending.popleft(), self.metrics)
                if self.pending:
                    break
                if self.closed:
                    return None
                self.cond.wait()
            batch = [self.pending.popleft()]
            deadline = time.monotonic() + 4 * self.gather_s
            while True:
                self._fill(batch)
                left = deadline - time.monotonic()
                if self.closed or sum(job.rows for job in batch) >= self.max_batch_size or left <= 0:
                    break
                seen = len(self.pending)
                if not self.cond.wait(min(self.gather_s, left)) or len(self.pending) == seen:
                    break
            self.running = len(batch)
            return batch

    def _fill(self, batch: list[Job]) -> None:
        """Move the queued jobs that can share ``batch``'s ``generate`` call into it. Holds ``cond``."""
        first = batch[0]
        rows = sum(job.rows for job in batch)
        longest = max(job.longest for job in batch)
        new_tokens = max(job.settings.max_new_tokens for job in batch)
        for job in list(self.pending):
            if job.cancelled.is_set() or job.key() != first.key() or rows + job.rows > self.max_batch_size:
                continue
            # Every row runs until the longest-running one ends, so the padded width plus the most new
            # tokens must stay within the model's positions.
            if max(longest, job.longest) + max(new_tokens, job.settings.max_new_tokens) > self.context:
                continue
            self.pending.remove(job)
            batch.append(job)
            rows += job.rows
            longest = max(longest, job.longest)
            new_tokens = max(new_tokens, job.settings.max_new_tokens)

    def _loop(self) -> None:
        import torch

        torch.set_num_threads(self.threads)  # OpenMP keeps it per thread: the HTTP thread keeps its own
        while (jobs := self._take()) is not None:
            try:
                self._run(jobs)
            except Exception as exc:  # a failed batch fails its requests, never the thread
                for job in jobs:
                    job.emit(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self.running = 0

    def _run(self, jobs: list[Job]) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList, set_seed

        rows = [_Row(job, i * job.n + j, job.settings.max_new_tokens)
                for job in jobs for i in range(len(job.prompts)) for j in range(job.n)]
        prompts = [p for job in jobs for p in job.prompts for _ in range(job.n)]
        first = jobs[0].settings
        generator = Generator(self.model, self.tokenizer, batch_settings(first, max(r.limit for r in rows)))
        if first.do_sample and first.seed is not None:
            set_seed(first.seed)
        if self.metrics:
            self.metrics.batch(len(rows))
            self.metrics.add_tokens(prompt=sum(len(p) for p in prompts))
        tracker = _Tracker(rows, self.tokenizer, generator.eos_ids, self.metrics)
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=generator.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=generator.device)
        processors = LogitsProcessorList([tracker.recorder]) if any(j.logprobs is not None for j in jobs) else None
        with torch.inference_mode():
            self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=generator.config,
                                streamer=tracker, stopping_criteria=StoppingCriteriaList([tracker.criteria]),
                                logits_processor=processors)
        tracker.end()


def batch_settings(settings: DecodingSettings, max_new_tokens: int) -> DecodingSettings:
    """What one ``generate`` call of a batch decodes with: a job's settings whole, but for the ones applied per
    row (:data:`PER_ROW`): the batch runs to its longest row's budget, one sequence per row, and stop strings are
    found by the tracker."""
    return dataclasses.replace(settings, max_new_tokens=max_new_tokens, stop=[], num_return_sequences=1)


def _find_stop(text: str, stops: list[str], since: int) -> int:
    """Where a stop string first occurs in ``text`` among those ending after ``since`` (-1: nowhere)."""
    found = [i for i in (text.find(stop, max(0, since - len(stop) + 1)) for stop in stops) if i >= 0]
    return min(found, default=-1)


def _stop_prefix(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still grow into a stop string (held back)."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held


class _Tracker:
    """``model.generate``'s streamer (new tokens per row), stopping criterion and log-probability recorder."""

    def __init__(self, rows: list[_Row], tokenizer, eos_ids: set[int], metrics):
        from transformers import LogitsProcessor, StoppingCriteria

        self.rows = rows
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.metrics = metrics
        self.prompt_seen = False
        self.ended = False
        self.scores = None
        self.left = {id(r.job): 0 for r in rows}
        for row in rows:
            self.left[id(row.job)] += 1
        tracker = self

        class Criteria(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                import torch

                return torch.tensor([r.done or r.job.cancelled.is_set() for r in tracker.rows],
                                    device=input_ids.device)

        class Recorder(LogitsProcessor):
            def __call__(self, input_ids, scores):
                tracker.scores = scores.float().log_softmax(-1)
                return scores

        self.criteria, self.recorder = Criteria(), Recorder()

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate first hands the streamer the prompts
            self.prompt_seen = True
            return
        tokens = value.tolist()
        generated = 0
        for index, (row, token) in enumerate(zip(self.rows, tokens, strict=True)):
            if row.done:
                continue
            if row.job.cancelled.is_set():
                row.done = True
                count_cancelled(row.job, self.metrics)
                continue
            row.ids.append(token)
            generated += 1
            if row.job.logprobs is not None and self.scores is not None:
                self._record(row, index, token)
            if token in self.eos_ids:
                self._finish(row, "stop")
                continue
            before = len(row.text)
            self._decode_tail(row)
            stops = row.job.settings.stop
            if stops and len(row.text) > before and _find_stop(row.text, stops, before) >= 0:
                self._finish(row, "stop")
            elif len(row.ids) >= row.limit:
                self._finish(row, "length")
            else:
                self._send(row, len(row.text) - _stop_prefix(row.text, stops))
        if self.metrics and generated:
            self.metrics.add_tokens(generated=generated)

    def _decode_tail(self, row: _Row) -> None:
        """Append the text of the newest tokens to ``row.text``, decoding only them and a little context.

        The new piece is the difference between decoding ``ids[prefix:]`` and ``ids[prefix:read]``: both start
        at the same token, so tokenizers that drop a leading space or join bytes agree on the shared part. A
        piece that ends inside a UTF-8 character waits for the token that completes it.
        """
        decode = self.tokenizer.decode
        done = decode(row.ids[row.prefix:row.read], skip_special_tokens=True) if row.read > row.prefix else ""
        full = decode(row.ids[row.prefix:], skip_special_tokens=True)
        if len(full) > len(done) and not full.endswith("\ufffd"):
            row.text += full[len(done):]
            row.prefix, row.read = row.read, len(row.ids)

    def _record(self, row: _Row, index: int, token: int) -> None:
        scores = self.scores[index]
        entry = {"token": self.tokenizer.decode([token]), "logprob": float(scores[token]), "top": []}
        if row.job.logprobs:
            values, ids = scores.topk(row.job.logprobs)
            entry["top"] = [(self.tokenizer.decode([i]), float(v))
                            for v, i in zip(values.tolist(), ids.tolist(), strict=True)]
        row.logprobs.append(entry)
        row.unsent_logprobs.append(entry)

    def _send(self, row: _Row, upto: int) -> None:
        if upto > row.sent and row.job.stream:
            row.job.emit(("text", row.choice, row.text[row.sent:upto], row.unsent_logprobs))
            row.sent, row.unsent_logprobs = upto, []

    def _finish(self, row: _Row, reason: str) -> None:
        row.text = trim_at_stop(self.tokenizer.decode(row.ids, skip_special_tokens=True), row.job.settings.stop)
        self._send(row, len(row.text))
        row.done = True
        row.job.emit(("finish", row.choice, reason, len(row.ids), row.logprobs, row.text))
        key = id(row.job)
        self.left[key] -= 1
        if not self.left[key]:
            row.job.emit(("end",))

    def end(self) -> None:
        """Rows still open when ``generate`` returns reached the batch's token budget or were cancelled.

        ``generate`` calls this as the streamer's end and ``Batcher._run`` again after it returns (for paths that
        do not); only the first call acts.
        """
        if self.ended:
            return
        self.ended = True
        for row in self.rows:
            if not row.done:
                if row.job.cancelled.is_set():
                    row.done = True
                    count_cancelled(row.job, self.metrics)
                    continue
                self._finish(row, "length")


def count_cancelled(job: Job, metrics) -> None:
    """Count a job whose client went away once, however many of its rows (or batches) notice it."""
    if not job.cancel_counted:
        job.cancel_counted = True
        if metrics:
            metrics.count("cancelled")


def default_threads() -> int:
    """Torch threads for the decoding thread: every core this process may use but one, left to the HTTP side."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)
