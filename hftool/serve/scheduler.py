"""Continuous (iteration-level) batching: the decoding thread, which alone touches the model.

HTTP handlers put a :class:`Job` on a bounded queue and read its events. Between two decoding steps the thread
admits queued jobs (oldest first, while the running rows stay within ``max_batch_size`` and the reserved cache
within ``max_cache_tokens``: prompt plus ``max_new_tokens`` per row), prefills at most ``prefill_chunk`` prompt
tokens (short prompts together, a long one a chunk per step, so it never stalls the others' next token), and
runs one decoding step for every running row. Where the model's attention goes through transformers'
interface (GPT-2, Llama, ...), the short prompts are prefilled inside that step's forward instead of one of their
own (:mod:`hftool.serve.flat`). A row that ends (end of text, a stop string, its own
``max_tokens``) or whose client went away leaves the batch at once, and its cache with it.

The running rows share one cache laid out in slots (:class:`_Slots`): per layer a buffer of (slots, heads,
columns, head_dim), a row per slot, every row's tokens ending at the column the next step writes, so a step is
one forward over the running rows. A row that leaves frees its slot at the cost of copying one row (the last
row moves into it), a row that joins copies only its own prefilled cache, and a step attends over the columns
the oldest running row needs, each row's earlier columns hidden by the attention mask. Per-row position ids
(GPT-2's learned positions; BLOOM derives its ALiBi from the mask) make a row's logits independent of its
neighbours: its greedy tokens are those of ``model.generate`` on its prompt alone. A model whose cache is not
a plain ``DynamicCache`` keeps each prefill group in a batch of its own, in the model's cache.
Every decoding setting applies per row: repetition penalty, n-gram blocking, temperature, top-k and top-p run
as transformers' own logits processors on the row's prompt and tokens, and a sampled job draws from a
``torch.Generator`` of its own, seeded by its ``seed``, so its output does not depend on who else is decoding.

The fused single-prompt decode step (:mod:`hftool.generation.fastpath`) is not used here: every step is the
model's own forward, in the dtype the model was loaded in (``--dtype bfloat16`` included).

Per step the thread does O(new tokens) Python work per row: it decodes only a few trailing tokens, looks for
stop strings only in the newly decoded tail and recognises end of text by id. It sets its own torch thread
count (``threads``): by default every core the process may use (see benchmarks/README.md, "Serving").
"""

from __future__ import annotations

import inspect
import itertools
import os
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hftool.generation.decoding import trim_at_stop
from hftool.schemas.generate import DecodingSettings

_ids = itertools.count()
PREFILL_CHUNK = 256
SPARE_COLUMNS = 64  # free cache columns the slots keep after their window (and before it, for joining prompts)


class QueueFull(Exception):
    """More requests are waiting than ``--max-queue`` allows."""


class Closing(Exception):
    """The server is shutting down and takes no new work."""


class TooLarge(Exception):
    """A job whose rows alone reserve more cache than ``--max-cache-tokens``: it could never be admitted."""

    def __init__(self, need: int, budget: int):
        super().__init__(f"{need} > {budget}")
        self.need, self.budget = need, budget


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
    def cache_tokens(self) -> int:
        """The cache this job's rows may fill: each row's prompt and its ``max_new_tokens``."""
        return sum(len(p) + self.settings.max_new_tokens for p in self.prompts) * self.n


@dataclass(eq=False)
class _Row:
    job: Job
    choice: int
    prompt: list[int]
    processors: list = field(default_factory=list)  # transformers logits processors, in generate's order
    sampler: object = None  # the job's torch.Generator when sampling; None: greedy
    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far, in pieces; the full decode is done once, at the end
    sent: int = 0
    prefix: int = 0  # ids[prefix:read] were decoded last time: the context the next piece is decoded in
    read: int = 0
    done: bool = False
    logprobs: list[dict] = field(default_factory=list)
    unsent_logprobs: list[dict] = field(default_factory=list)

    @property
    def limit(self) -> int:
        return self.job.settings.max_new_tokens

    @property
    def position(self) -> int:
        """The position of the row's last token, the one the next step feeds."""
        return len(self.prompt) + len(self.ids) - 1


@dataclass(eq=False)
class _Prompt:
    """One prompt of a job being prefilled, with the rows (its ``n`` continuations) that will share its cache."""

    ids: list[int]
    rows: list[_Row]
    cache: object = None  # a long prompt's own cache while it is prefilled chunk by chunk
    done: int = 0  # prompt tokens already in ``cache``


@dataclass(eq=False)
class _Batch:
    """Rows decoded together in the model's own cache (one the scheduler cannot lay out in slots), left-padded to
    one width; finished rows leave through the cache's ``batch_select_indices``."""

    rows: list[_Row]
    cache: object
    mask: object  # (rows, width) long tensor, 0 on padding

    def inputs(self):
        """The cache and attention mask of the next decoding step."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        return self.cache, self.mask

    def stepped(self) -> None:
        """The step's keys and values are in the cache (the model appended them)."""

    def drop_done(self) -> None:
        import torch

        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) < len(self.rows) and keep:
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
        self.rows = [self.rows[i] for i in keep]


class _Slots:
    """The running rows in one cache of preallocated buffers, a slot (buffer row) per row.

    Every layer keeps its keys and values in a (slots, heads, columns, head_dim) buffer. All rows write the next
    token's keys at the same column, ``end``; a joining row's prefilled cache is copied, left-padded, to end just
    before it. A step attends over ``[lo, end]``, ``lo`` being the first column of the oldest running row, and
    the attention mask hides each row's columns before its own first. A finished row frees its slot: the last row
    moves into it, copying that row's window only, and the window shrinks when the oldest row leaves. When the
    columns run out, the window moves back to the buffers' start if it fits there without overlapping itself;
    otherwise (or when slots run out) buffers are reallocated, the live window copied once, with as many free
    columns after it as it is wide (at least ``SPARE_COLUMNS``), so the next move fits: a window of W columns is
    copied about once every W steps.
    """

    def __init__(self, cache, max_slots: int, dtype=None):
        self.cache = cache  # a DynamicCache whose layers become slot layers (below)
        self.max_slots = max_slots
        self.dtype = dtype  # the buffers' (None: the prefilled caches'); flat steps may attend wider (serve/flat.py)
        self.rows: list[_Row] = []
        self.starts: list[int] = []  # each row's first column
        self.lo = self.end = 0
        self.mask = None  # (slots, columns) long tensor; None: no buffers (no rows)
        self.flat = None  # the FlatStep of the forward running now, if it is one

    def add(self, rows: list[_Row], cache, mask) -> None:
        """Rows prefilled in ``cache``, left-padded to ``mask``'s width, take the next free slots."""
        width, count, first = mask.shape[1], len(rows), len(self.rows)
        if self.mask is None:
            self._allocate(cache, first + count, width)
        elif first + count > self.mask.shape[0] or width > self.end:
            self._reallocate(first + count, max(width - (self.end - self.lo), 0))
        start = self.end - width  # a slot's mask is 0 before its row's first column: no stale column shows
        for layer, new in zip(self.cache.layers, cache.layers, strict=True):
            layer.key_buffer[first:first + count, :, start:self.end] = new.keys
            layer.value_buffer[first:first + count, :, start:self.end] = new.values
        self.mask[first:first + count] = 0
        self.mask[first:first + count, start:self.end] = mask
        old_lo = self.lo
        self.rows += rows
        self.starts += (start + width - mask.sum(dim=1)).tolist()
        self.lo = min(self.starts)
        self._clear_unwritten(first, old_lo, [(slot, start) for slot in range(first, first + count)])
        self._views()

    def join_in_step(self, prompts: list[_Prompt]):
        """The next flat step (hftool/serve/flat.py): the running rows write column ``end``, and the joining
        prompts' rows take the next free slots, each prompt's tokens ending at column ``end`` too."""
        from hftool.serve.flat import FlatStep

        rows, count = len(self.rows), sum(len(p.rows) for p in prompts)
        before = max((len(p.ids) for p in prompts), default=1) - 1  # columns a prompt needs before ``end``
        if self.end == self.mask.shape[1]:
            self._slide()
        if rows + count > self.mask.shape[0] or before > self.end or self.end == self.mask.shape[1]:
            self._reallocate(rows + count, max(before - (self.end - self.lo), 0))
        self.mask[:rows, self.end] = 1
        step = FlatStep(rows, self.mask[:rows, None, None, self.lo:self.end + 1].bool(), self.lo,
                        self.cache.layers)
        position, written = rows, []
        for prompt in prompts:
            start, slots = self.end + 1 - len(prompt.ids), []
            for row in prompt.rows:
                slot = len(self.rows)
                self.mask[slot] = 0
                self.mask[slot, start:self.end + 1] = 1
                self.rows.append(row)
                self.starts.append(start)
                slots.append(slot)
                written.append((slot, start))
            step.spans.append((position, position + len(prompt.ids)))
            step.slots.append(slots)
            position += len(prompt.ids)
        old_lo, self.lo = self.lo, min(self.starts)
        self._clear_unwritten(rows, old_lo, written)
        self.flat = step
        return step

    def inputs(self):
        if self.end == self.mask.shape[1] and not self._slide():
            self._reallocate(len(self.rows), 0)
        self.mask[:len(self.rows), self.end] = 1
        return self.cache, self.mask[:len(self.rows), self.lo:self.end + 1]

    def stepped(self) -> None:
        self.end += 1
        self._views()

    def drop_done(self) -> None:
        for i in range(len(self.rows) - 1, -1, -1):
            if not self.rows[i].done:
                continue
            last = len(self.rows) - 1
            if i != last:
                window = slice(self.lo, self.end)
                for layer in self.cache.layers:
                    layer.key_buffer[i, :, window] = layer.key_buffer[last, :, window]
                    layer.value_buffer[i, :, window] = layer.value_buffer[last, :, window]
                self.mask[i, window] = self.mask[last, window]
                self.rows[i], self.starts[i] = self.rows[last], self.starts[last]
            self.rows.pop()
            self.starts.pop()
        if not self.rows:
            self.mask = None  # the buffers go; the next row allocates them again
            for layer in self.cache.layers:
                layer.key_buffer = layer.value_buffer = layer.keys = layer.values = None
            return
        self.lo = min(self.starts)
        self._views()

    def _clear_unwritten(self, old: int, old_lo: int, written: list[tuple[int, int]]) -> None:
        """Zero the columns of the window (from ``lo``) that no step wrote since the buffers were made: the
        ``old`` running rows' before ``old_lo``, and each new row's ``(slot, first written column)`` before that
        column. The buffers start uninitialised (``_empty``); the mask hides these columns, but a hidden
        column's weight is 0 and 0 * NaN is not."""
        spans = ([(slice(0, old), old_lo)] if old and self.lo < old_lo else []) + [
            (slot, column) for slot, column in written if self.lo < column]
        for layer in self.cache.layers:
            for where, column in spans:
                layer.key_buffer[where, :, self.lo:column] = 0
                layer.value_buffer[where, :, self.lo:column] = 0

    def _slots_for(self, rows: int) -> int:
        return max(rows, min(2 * rows, self.max_slots))

    def _allocate(self, template, rows: int, width: int) -> None:
        """The first buffers, shaped after the prefilled ``template`` cache: the window ends at ``width`` columns
        (room for the first rows and ``SPARE_COLUMNS`` before them for joining prompts)."""
        import torch

        layer_class = _slot_layer_class()
        slots, columns = self._slots_for(rows), SPARE_COLUMNS + width + SPARE_COLUMNS
        self.cache.layers = [layer_class(self, new.keys, new.values, slots, columns, self.dtype)
                             for new in template.layers]
        self.mask = template.layers[0].keys.new_zeros((slots, columns), dtype=torch.long)
        self.lo = self.end = SPARE_COLUMNS + width

    def _slide(self) -> bool:
        """Move the window back to ``SPARE_COLUMNS`` in the same buffers, if it does not overlap itself there.
        The columns it leaves keep finite stale values, hidden by the mask until a step writes them again."""
        if SPARE_COLUMNS + self.end - self.lo > self.lo:
            return False
        self._place_window(SPARE_COLUMNS, [(layer.key_buffer, layer.value_buffer) for layer in self.cache.layers],
                           self.mask)
        self._views()
        return True

    def _reallocate(self, rows: int, left: int) -> None:
        """New buffers with room for ``rows`` rows, ``left`` more columns before the window than now and as many
        after it as it is wide (at least ``SPARE_COLUMNS``); the running rows' window is copied over."""
        slots, lo, width = self._slots_for(rows), SPARE_COLUMNS + left, self.end - self.lo
        columns = lo + width + max(SPARE_COLUMNS, width)
        old = [(layer.key_buffer, layer.value_buffer) for layer in self.cache.layers]
        for layer, (keys, values) in zip(self.cache.layers, old, strict=True):
            layer.allocate(keys, values, slots, columns)
        old_mask, self.mask = self.mask, self.mask.new_zeros((slots, columns))
        self._place_window(lo, old, old_mask)

    def _place_window(self, lo: int, sources: list, mask) -> None:
        """Copy the running rows' window from ``sources`` (each layer's old key and value buffers) and ``mask``
        to start at column ``lo`` of the current buffers, and move the rows' columns with it."""
        count, window, target = len(self.rows), slice(self.lo, self.end), slice(lo, lo + self.end - self.lo)
        for layer, (keys, values) in zip(self.cache.layers, sources, strict=True):
            layer.key_buffer[:count, :, target] = keys[:count, :, window]
            layer.value_buffer[:count, :, target] = values[:count, :, window]
        self.mask[:count, target] = mask[:count, window]
        self.starts = [s - self.lo + lo for s in self.starts]
        self.lo, self.end = lo, target.stop

    def _views(self) -> None:
        for layer in self.cache.layers:
            layer.show(len(self.rows), self.lo, self.end)


class Scheduler:
    """Owns the model: ``submit`` from any thread; admission, prefill and decoding happen on its own thread."""

    def __init__(self, model, tokenizer, context: int, max_batch_size: int, max_queue: int, metrics=None,
                 threads: int | None = None, max_cache_tokens: int | None = None,
                 prefill_chunk: int = PREFILL_CHUNK, flat_steps: bool = True):
        from hftool.generation.loading import input_device
        from hftool.serve.flat import attention_dtype, supports_flat_steps, use_flat_attention

        self.model = model
        self.tokenizer = tokenizer
        self.context = context
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_cache_tokens = max_cache_tokens or max_batch_size * context
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics
        self.threads = threads or default_threads()
        self.device = input_device(model)
        eos = model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        accepted = inspect.signature(type(model).forward).parameters
        self.takes_positions = "position_ids" in accepted
        self.takes_logits_to_keep = "logits_to_keep" in accepted
        self.flat = flat_steps and supports_flat_steps(model)  # short prompts join a decoding step's forward
        if self.flat:
            use_flat_attention(model)
        self.slot_dtype = attention_dtype(model) if self.flat else None  # only flat steps attend to wider slots
        self.pending: deque[Job] = deque()
        self.prefilling: deque[_Prompt] = deque()
        self.joining: list[_Prompt] = []  # prompts the next flat step prefills
        self.batches: list = []  # a _Slots (at most one) and _Batch
        self.reserved: dict[int, int] = {}  # job number -> cache tokens it reserved while admitted
        self.rows_left: dict[int, int] = {}  # job number -> its rows not yet finished
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="hftool-decoder", daemon=True)
        if metrics:
            metrics.cache_reserved = lambda: self.cache_reserved

    # ---- the HTTP side ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        if job.cache_tokens > self.max_cache_tokens:
            raise TooLarge(job.cache_tokens, self.max_cache_tokens)
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

    @property
    def running(self) -> int:
        """Requests admitted and not yet finished (prefilling or decoding)."""
        return len(self.reserved)

    @property
    def cache_reserved(self) -> int:
        """Cache tokens the admitted jobs reserved (read from any thread: the values are copied at once)."""
        return sum(list(self.reserved.values()))

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, tell the queued ones the server is going away, let the admitted ones finish."""
        with self.cond:
            self.closed = True
            for job in self.pending:
                job.emit(("error", "the server is shutting down; retry on another replica or later"))
            self.pending.clear()
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # ---- the decoding thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        claim_threads(self.threads)  # OpenMP keeps it per thread: the HTTP thread keeps its own
        while self._admit():
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    self._prefill()
                    self._decode()
            except Exception as exc:  # a failed step fails the requests in flight, never the thread
                self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")

    def _admit(self) -> bool:
        """Move queued jobs that fit into the running set; wait while there is nothing to do. False: closed and
        idle, the thread ends."""
        with self.cond:
            while True:
                while self.pending and self.pending[0].cancelled.is_set():
                    count_cancelled(self.pending.popleft(), self.metrics)
                while self.pending and not self.closed and self._fits(self.pending[0]):
                    self._start(self.pending.popleft())
                if self.prefilling or self.batches:
                    return True
                if self.closed and not self.pending:
                    return False
                self.cond.wait(0.5)

    def _fits(self, job: Job) -> bool:
        if not self.reserved:
            return True
        rows = sum(len(b.rows) for b in self.batches) + sum(len(p.rows) for p in self.prefilling)
        return (rows + job.rows <= self.max_batch_size
                and self.cache_reserved + job.cache_tokens <= self.max_cache_tokens)

    def _start(self, job: Job) -> None:
        import torch

        self.reserved[job.number] = job.cache_tokens
        self.rows_left[job.number] = job.rows
        settings = job.settings
        sampler = None
        if settings.do_sample:
            seed = settings.seed if settings.seed is not None else random.randrange(2**32)
            sampler = torch.Generator(device=self.device).manual_seed(seed)
        for i, ids in enumerate(job.prompts):
            rows = [_Row(job, i * job.n + j, ids, logits_processors(settings), sampler) for j in range(job.n)]
            self.prefilling.append(_Prompt(ids, rows))
        if self.metrics:
            self.metrics.add_tokens(prompt=sum(len(p) for p in job.prompts))

    def _drop_cancelled(self) -> None:
        """Rows whose client went away leave now, before another token is computed for them."""
        for batch in self.batches:
            if any(row.job.cancelled.is_set() for row in batch.rows):
                for row in batch.rows:
                    if row.job.cancelled.is_set():
                        self._cancel(row)
        self._drop_done()
        for prompt in list(self.prefilling):
            if prompt.rows[0].job.cancelled.is_set():
                for row in prompt.rows:
                    self._cancel(row)
                self.prefilling.remove(prompt)

    def _cancel(self, row: _Row) -> None:
        row.done = True
        count_cancelled(row.job, self.metrics)
        self._row_ended(row.job, emit_end=False)

    def _prefill(self) -> None:
        """At most ``prefill_chunk`` prompt tokens: the next chunk of a long prompt, then whole short prompts
        together (left-padded into one forward); each prompt done gets its first token and joins the batch."""
        budget = self.prefill_chunk
        head = self.prefilling[0] if self.prefilling else None
        if head is not None and (head.cache is not None or len(head.ids) > budget):
            budget -= self._prefill_chunk(head, budget)
            if head.done == len(head.ids):
                self.prefilling.popleft()
        group = []
        while self.prefilling and self.prefilling[0].cache is None and len(self.prefilling[0].ids) <= budget:
            budget -= len(self.prefilling[0].ids)
            group.append(self.prefilling.popleft())
        if group and self.flat and any(isinstance(b, _Slots) for b in self.batches):
            self.joining = group
        elif group:
            self._prefill_group(group)

    def _prefill_chunk(self, prompt: _Prompt, budget: int) -> int:
        import torch
        from transformers import DynamicCache

        if prompt.cache is None:
            prompt.cache = DynamicCache(config=self.model.config)
        end = min(len(prompt.ids), prompt.done + budget)
        chunk = torch.tensor([prompt.ids[prompt.done:end]], device=self.device)
        mask = torch.ones((1, end), dtype=torch.long, device=self.device)
        positions = torch.arange(prompt.done, end, device=self.device)[None]
        logits = self._forward(chunk, mask, positions, prompt.cache)
        used, prompt.done = end - prompt.done, end
        if end == len(prompt.ids):
            self._join([prompt], prompt.cache, mask, logits)
        return used

    def _prefill_group(self, group: list[_Prompt]) -> None:
        import torch
        from transformers import DynamicCache

        width = max(len(p.ids) for p in group)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(p.ids)) + p.ids for p in group], device=self.device)
        mask = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in group], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache)
        self._join(group, cache, mask, logits)

    def _join(self, prompts: list[_Prompt], cache, mask, logits) -> None:
        """Each prompt's rows take their first token from ``logits``; the rows that go on join the batch with
        their prompt's cache (repeated for its ``n`` continuations)."""
        import torch
        from transformers import DynamicCache

        rows = [row for p in prompts for row in p.rows]
        if len(rows) != len(prompts):
            index = torch.tensor([i for i, p in enumerate(prompts) for _ in p.rows], device=self.device)
            _select(cache, index)
            mask, logits = mask[index], logits[index]
        for row, token in zip(rows, self._choose(rows, logits), strict=True):
            self._accept(row, token)
        keep = [i for i, row in enumerate(rows) if not row.done]
        if not keep:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=self.device)
            _select(cache, index)
            rows, mask = [rows[i] for i in keep], mask[index]
        if not _mergeable(cache):
            self.batches.append(_Batch(rows, cache, mask))
            return
        slots = next((b for b in self.batches if isinstance(b, _Slots)), None)
        if slots is None:
            slots = _Slots(DynamicCache(config=self.model.config), self.max_batch_size, self.slot_dtype)
            self.batches.insert(0, slots)
        slots.add(rows, cache, mask)

    def _decode(self) -> None:
        import torch

        for batch in self.batches:
            if self.flat and isinstance(batch, _Slots):
                self._flat_step(batch)
                continue
            cache, mask = batch.inputs()
            tokens = torch.tensor([[row.ids[-1]] for row in batch.rows], device=self.device)
            positions = torch.tensor([[row.position] for row in batch.rows], device=self.device)
            logits = self._forward(tokens, mask, positions, cache)
            batch.stepped()
            if self.metrics:
                self.metrics.batch(len(batch.rows))
            for row, token in zip(batch.rows, self._choose(batch.rows, logits), strict=True):
                self._accept(row, token)
        self._drop_done()

    def _flat_step(self, slots: _Slots) -> None:
        """One forward for the running rows' next tokens and the joining prompts (hftool/serve/flat.py): each
        prompt's rows get their first token and stay in the slots."""
        import torch

        prompts, self.joining = self.joining, []
        running = list(slots.rows)
        step = slots.join_in_step(prompts)
        tokens = [row.ids[-1] for row in running] + [token for p in prompts for token in p.ids]
        positions = [row.position for row in running] + [i for p in prompts for i in range(len(p.ids))]
        keep = list(range(len(running))) + [stop - 1 for _, stop in step.spans]
        try:
            out = self.model(input_ids=torch.tensor([tokens], device=self.device), attention_mask=step.mask,
                             position_ids=torch.tensor([positions], device=self.device), cache=slots.cache,
                             use_cache=True, logits_to_keep=torch.tensor(keep, device=self.device), flat_step=step)
        finally:
            slots.flat = None
        slots.stepped()
        logits = out.logits[0].to(dtype=torch.float32)
        if self.metrics:
            self.metrics.batch(len(running))
        joined = [row for p in prompts for row in p.rows]
        index = list(range(len(running))) + [len(running) + i for i, p in enumerate(prompts) for _ in p.rows]
        rows = running + joined
        for row, token in zip(rows, self._choose(rows, logits[index]), strict=True):
            self._accept(row, token)

    def _drop_done(self) -> None:
        for batch in self.batches:
            batch.drop_done()
        self.batches = [b for b in self.batches if b.rows]

    def _forward(self, ids, mask, positions, cache):
        """The model's own forward over ``ids`` continuing ``cache``: the last position's float32 logits."""
        import torch

        extra = {"position_ids": positions} if self.takes_positions else {}
        if self.takes_logits_to_keep:
            extra["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, **extra)
        return out.logits[:, -1].to(dtype=torch.float32)

    def _choose(self, rows: list[_Row], logits) -> list[int]:
        """Each row's next token: the argmax for plain greedy rows (one batched op), the row's processors and
        its job's generator otherwise. Log-probabilities are recorded from the scores the token is chosen from."""
        import torch

        chosen = logits.argmax(dim=-1).tolist()
        for index, row in enumerate(rows):
            if not row.processors and row.sampler is None and row.job.logprobs is None:
                continue
            scores = logits[index:index + 1]
            if row.processors:
                history = torch.tensor([row.prompt + row.ids], device=logits.device)
                for processor in row.processors:
                    scores = processor(history, scores)
            if row.sampler is not None:
                probs = torch.nn.functional.softmax(scores, dim=-1)
                chosen[index] = int(torch.multinomial(probs, num_samples=1, generator=row.sampler))
            else:
                chosen[index] = int(scores.argmax(dim=-1))
            if row.job.logprobs is not None:
                self._record(row, scores[0].log_softmax(-1), chosen[index])
        return chosen

    def _accept(self, row: _Row, token: int) -> None:
        """Take the row's new token: stream its text, or finish the row (end of text, stop string, limit). A row
        whose client went away during the step leaves without it."""
        if row.job.cancelled.is_set():
            self._cancel(row)
            return
        row.ids.append(token)
        if self.metrics:
            self.metrics.add_tokens(generated=1)
        if token in self.eos_ids:
            self._finish(row, "stop")
            return
        before = len(row.text)
        self._decode_tail(row)
        stops = row.job.settings.stop
        if stops and len(row.text) > before and _find_stop(row.text, stops, before) >= 0:
            self._finish(row, "stop")
        elif len(row.ids) >= row.limit:
            self._finish(row, "length")
        else:
            self._send(row, len(row.text) - _stop_prefix(row.text, stops))

    def _fail_all(self, message: str) -> None:
        jobs = {row.job.number: row.job for b in self.batches for row in b.rows}
        jobs.update({p.rows[0].job.number: p.rows[0].job for p in [*self.prefilling, *self.joining]})
        self.batches, self.prefilling, self.joining = [], deque(), []
        for number, job in jobs.items():
            self.reserved.pop(number, None)
            self.rows_left.pop(number, None)
            job.emit(("error", message))

    def _row_ended(self, job: Job, emit_end: bool = True) -> None:
        """Count a row of ``job`` as ended; the last one frees the job's cache reservation."""
        self.rows_left[job.number] -= 1
        if not self.rows_left[job.number]:
            del self.rows_left[job.number]
            with self.cond:
                self.reserved.pop(job.number, None)
            if emit_end and not job.cancelled.is_set():
                job.emit(("end",))

    # ---- text, events and log-probabilities of a row ----------------------------------------------------

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

    def _record(self, row: _Row, scores, token: int) -> None:
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
        self._row_ended(row.job)


def logits_processors(settings: DecodingSettings) -> list:
    """The logits processors ``model.generate`` builds for these settings, in its order, skipping the ones
    that would change nothing (as ``generate`` does)."""
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors: list = []
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    if settings.do_sample:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            processors.append(TopKLogitsWarper(top_k=settings.top_k, min_tokens_to_keep=1))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=settings.top_p, min_tokens_to_keep=1))
    return processors


def _mergeable(cache) -> bool:
    """Whether ``cache`` is a plain ``DynamicCache`` of (rows, heads, positions, head_dim) layers, whose rows
    the scheduler may copy into its slots."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4
                                for layer in layers)


_SLOT_LAYER: list = []


def _empty(shape: tuple, dtype, device):
    """A slot buffer (tests fill it with NaN to show that no unwritten column is ever read)."""
    import torch

    return torch.empty(shape, dtype=dtype, device=device)


def _slot_layer_class():
    """A ``DynamicLayer`` whose keys and values live in the buffers of a :class:`_Slots`: a step writes its
    column in place for every running row and the attention reads views of the window. Built on first use, so
    importing the scheduler does not import transformers."""
    if _SLOT_LAYER:
        return _SLOT_LAYER[0]
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        def __init__(self, slots: _Slots, keys, values, rows: int, columns: int, dtype=None):
            super().__init__()
            self.slots, self.is_initialized, self.device = slots, True, keys.device
            self.allocate(keys, values, rows, columns, dtype)

        def allocate(self, keys, values, rows: int, columns: int, dtype=None) -> None:
            """Uninitialised buffers shaped after ``keys`` and ``values``, in ``dtype`` (default theirs): the pages
            of slots and columns no row reaches are never touched (``_Slots._clear_unwritten`` zeroes the rest)."""
            self.key_buffer = _empty((rows, keys.shape[1], columns, keys.shape[-1]), dtype or keys.dtype, keys.device)
            self.value_buffer = _empty((rows, values.shape[1], columns, values.shape[-1]), dtype or values.dtype,
                                       values.device)

        def show(self, rows: int, lo: int, end: int) -> None:
            self.keys, self.values = self.key_buffer[:rows, :, lo:end], self.value_buffer[:rows, :, lo:end]

        def update(self, key_states, value_states, *args, **kwargs):
            if self.slots.flat is not None:
                return self._flat_update(key_states, value_states)
            rows, lo, end = len(self.slots.rows), self.slots.lo, self.slots.end
            new = key_states.shape[-2]
            self.key_buffer[:rows, :, end:end + new] = key_states
            self.value_buffer[:rows, :, end:end + new] = value_states
            self.show(rows, lo, end + new)
            return self.keys, self.values

        def _flat_update(self, key_states, value_states):
            """A flat step's keys and values, (1, heads, tokens, head_dim): the running rows' at column ``end``
            of their slots, each joining prompt's in its rows' slots, ending at ``end``. The attention reads the
            running rows' window from this layer's views and the prompts' keys from what this returns."""
            step, end = self.slots.flat, self.slots.end
            if step.rows:
                self.key_buffer[:step.rows, :, end] = key_states[0, :, :step.rows].transpose(0, 1)
                self.value_buffer[:step.rows, :, end] = value_states[0, :, :step.rows].transpose(0, 1)
            for (start, stop), slots in zip(step.spans, step.slots, strict=True):
                for slot in slots:
                    self.key_buffer[slot, :, end + 1 - (stop - start):end + 1] = key_states[0, :, start:stop]
                    self.value_buffer[slot, :, end + 1 - (stop - start):end + 1] = value_states[0, :, start:stop]
            self.show(step.rows, step.lo, end + 1)
            return key_states, value_states

    _SLOT_LAYER.append(SlotLayer)
    return SlotLayer


def _select(cache, index) -> None:
    """Keep (or repeat) the cache rows ``index``, in place."""
    if _mergeable(cache):
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
    else:
        cache.batch_select_indices(index)


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


def count_cancelled(job: Job, metrics) -> None:
    """Count a job whose client went away once, however many of its rows notice it."""
    if not job.cancel_counted:
        job.cancel_counted = True
        if metrics:
            metrics.count("cancelled")


def default_threads() -> int:
    """Torch threads for the decoding thread: every core this process may use (the HTTP side needs little)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def claim_threads(count: int) -> None:
    """Give the calling thread ``count`` torch threads for good. ATen sets a thread's count from the last one
    set anywhere in the process on its first parallel op; asking for the count first makes that happen now."""
    import torch

    torch.get_num_threads()
    torch.set_num_threads(count)
