"""Float32 matrix-vector products on a CPU, split by rows over threads, used only where they are bit-identical.

A decode step multiplies one row by every weight matrix, so it is bound by how fast the weights stream from
memory. In float32 PyTorch hands each product to MKL, which runs a one-row product on one core: on the 2-core
machine this was measured on, BLOOM-560m's 250,880 x 1,024 output embedding streamed at about half the DRAM
read bandwidth. Cutting the output rows into one block per thread and multiplying each block on its own thread
reads the weights with every core.

Each output element is still one dot product over the same row and the same input, so the split normally
gives the very bits of the plain product; but the BLAS picks its kernel by shape, and a different kernel may
sum in a different order. So the split is checked once per weight layout against the plain product, on a
seeded random input, and used only where every output matched; other weights keep the plain product. The
decode step therefore still returns the logits of transformers' own forward, bit for bit.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

# Smaller matrices are read faster than a thread hand-off (tens of microseconds) pays for.
MIN_SPLIT_BYTES = 4 << 20
# Block boundaries fall on multiples of this many rows, keeping every block's rows aligned like the whole's.
ROW_ALIGN = 64

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_verified: dict[tuple, bool] = {}


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hftool-matvec")
        return _pools[workers]


def _blocks(rows: int, parts: int) -> list[tuple[int, int]]:
    size = -(-rows // parts // ROW_ALIGN) * ROW_ALIGN
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


class SplitMatVec:
    """One-row products ``x @ W.T + b`` (nn.Linear layout) and ``b + x @ W`` (GPT-2's Conv1D layout).

    ``linear`` and ``addmm`` return exactly what ``F.linear`` and ``torch.addmm`` return for a single input
    row; a weight is split over ``threads`` row blocks when it is a large float32 CPU matrix and the split
    was verified bit-identical for its layout.
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads or torch.get_num_threads()

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._splits(weight, bias, rows_are_outputs=True):
            return F.linear(x, weight, bias)
        return self._split(x, weight, bias, rows_are_outputs=True).view(*x.shape[:-1], weight.shape[0])

    def addmm(self, bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not self._splits(weight, bias, rows_are_outputs=False):
            return torch.addmm(bias, x, weight)
        return self._split(x, weight, bias, rows_are_outputs=False)

    def _splits(self, weight: torch.Tensor, bias: torch.Tensor | None, rows_are_outputs: bool) -> bool:
        if (
            self.threads < 2
            or weight.device.type != "cpu"
            or weight.dtype != torch.float32
            or weight.dim() != 2
            or weight.numel() * weight.element_size() < MIN_SPLIT_BYTES
        ):
            return False
        key = (rows_are_outputs, tuple(weight.shape), weight.stride(), weight.data_ptr() % 64, bias is not None,
               self.threads)
        if key not in _verified:
            _verified[key] = self._matches_plain_product(weight, bias, rows_are_outputs)
        return _verified[key]

    def _matches_plain_product(self, weight, bias, rows_are_outputs: bool) -> bool:
        inputs = weight.shape[1] if rows_are_outputs else weight.shape[0]
        x = torch.randn(1, inputs, generator=torch.Generator().manual_seed(0))
        if rows_are_outputs:
            plain = F.linear(x, weight, bias)
        else:
            plain = torch.addmm(bias, x, weight)
        return torch.equal(plain, self._split(x, weight, bias, rows_are_outputs))

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
