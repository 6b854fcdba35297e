"""Float32 matrix-vector products on a CPU, split by rows over threads, used only where they are bit-identical.

A decode step multiplies one row by every weight matrix, so it is bound by how fast the weights stream from
memory. In float32 PyTorch hands each product to MKL, which on AMD CPUs runs a one-row product on one core
(pytorch/pytorch#96643): on the 2-core EPYC this was measured on, BLOOM-560m's weights streamed at about
16 GB/s against 34 GB/s for a plain read. Cutting each product's output rows into one block per thread, and
multiplying the blocks at once on their own threads, reads the weights with every core. Meanwhile every other
operation of the step runs single-threaded: its OpenMP workers would otherwise spin on the cores the blocks need.

Each output element is still one dot product over the same row and the same input, so the split normally
gives the very bits of the plain product; but the BLAS picks its kernel by shape and thread count, and a
different kernel may sum in a different order. So when a decode step is built, every product it will make
is computed once the way the step will compute it (split, or single-threaded) and compared with the plain
product under the caller's thread settings, as transformers' forward computes it, on a seeded random input.
Only if every product matches bit for bit does the step use these paths; otherwise it keeps the plain ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
import torch.nn.functional as F

# Weights that fit in the CPU caches are read fast enough by one core: a step whose weights total less is left
# alone (measured: a 13 MB GPT-2 got slower split), and within a larger step so is a matrix smaller than
# MIN_SPLIT_BYTES, whose thread hand-off (tens of microseconds) would cost more than it saves.
MIN_STEP_BYTES = 64 << 20
MIN_SPLIT_BYTES = 4 << 20
# Block boundaries fall on multiples of this many rows, keeping every block's rows aligned like the whole's.
ROW_ALIGN = 64

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_matches: dict[tuple, bool] = {}  # (product layout, how it is computed) -> bit-identical to the plain product


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hftool-matvec")
        return _pools[workers]


def _blocks(rows: int, parts: int) -> list[tuple[int, int]]:
    size = -(-rows // parts // ROW_ALIGN) * ROW_ALIGN
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SplitMatVec:
    """One-row products ``x @ W.T + b`` (nn.Linear layout) and ``b + x @ W`` (GPT-2's Conv1D layout).

    Built with every product a decode step makes, as ``(weight, bias, rows_are_outputs)``. ``linear`` and
    ``addmm`` return exactly what ``F.linear`` and ``torch.addmm`` return for a single input row; inside
    :meth:`step_threads` large float32 weights are split over the caller's thread count. ``enabled`` is False
    (everything plain, threads untouched) unless all products were verified bit-identical on this machine.
    """

    def __init__(self, products: Iterable[tuple[torch.Tensor, torch.Tensor | None, bool]],
                 threads: int | None = None):
        self.threads = threads or torch.get_num_threads()
        self._split_weights: set[int] = set()
        products = list(products)
        weights = {id(weight): weight for weight, _, _ in products}.values()
        streamed = sum(weight.numel() * weight.element_size() for weight in weights)
        self.enabled = self.threads >= 2 and streamed >= MIN_STEP_BYTES and self._verify(products)

    @contextmanager
    def step_threads(self) -> Iterator[None]:
        """Run one decode step: its other operations single-threaded while the split products use all threads."""
        if not self.enabled:
            yield
            return
        with _torch_threads(1):
            yield

    @contextmanager
    def caller_threads(self) -> Iterator[None]:
        """Inside :meth:`step_threads`, run an operation whose result depends on the thread count (CPU SDPA
        splits its work by threads) with the caller's threads, as the forward runs it."""
        if not self.enabled:
            yield
            return
        with _torch_threads(self.threads):
            yield

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if id(weight) not in self._split_weights:
            return F.linear(x, weight, bias)
        return self._split(x, weight, bias, rows_are_outputs=True).view(*x.shape[:-1], weight.shape[0])

    def addmm(self, bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if id(weight) not in self._split_weights:
            return torch.addmm(bias, x, weight)
        return self._split(x, weight, bias, rows_are_outputs=False)

    def _verify(self, products: list) -> bool:
        """Choose split or single-threaded plain for each product; True if each choice gives the plain bits."""
        split = set()
        for weight, bias, rows_are_outputs in products:
            if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
                return False
            large = weight.numel() * weight.element_size() >= MIN_SPLIT_BYTES
            if large and self._matches(weight, bias, rows_are_outputs, "split"):
                split.add(id(weight))
            elif not self._matches(weight, bias, rows_are_outputs, "single-threaded"):
                return False
        self._split_weights = split
        return True

    def _matches(self, weight, bias, rows_are_outputs: bool, way: str) -> bool:
        key = (rows_are_outputs, tuple(weight.shape), weight.stride(), weight.data_ptr() % 64, bias is not None,
               self.threads, way)
        if key not in _matches:
            inputs = weight.shape[1] if rows_are_outputs else weight.shape[0]
            x = torch.randn(1, inputs, generator=torch.Generator().manual_seed(0))

            def plain():
                return F.linear(x, weight, bias) if rows_are_outputs else torch.addmm(bias, x, weight)

            reference = plain()
            with _torch_threads(1):
                candidate = self._split(x, weight, bias, rows_are_outputs) if way == "split" else plain()
            _matches[key] = torch.equal(reference, candidate)
        return _matches[key]

    def _split(self, x, weight, bias, rows_are_outputs: bool) -> torch.Tensor:
        x = x.reshape(1, x.shape[-1])
        outputs = weight.shape[0] if rows_are_outputs else weight.shape[1]
        out = x.new_empty((1, outputs))
        inference = torch.is_inference_mode_enabled()  # thread-local: the helper threads take the caller's

        def block(start: int, end: int) -> None:
            part = weight[start:end].t() if rows_are_outputs else weight[:, start:end]
            with torch.inference_mode(inference), torch.no_grad():
                if bias is None:
                    torch.mm(x, part, out=out[:, start:end])
                else:
                    torch.addmm(bias[start:end], x, part, out=out[:, start:end])

        first, *rest = _blocks(outputs, self.threads)
        pending = [_thread_pool(self.threads - 1).submit(block, *bounds) for bounds in rest]
        block(*first)
        for future in pending:
            future.result()
        return out
