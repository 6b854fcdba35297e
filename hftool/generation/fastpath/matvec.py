"""One-row float32 products on a CPU split over threads, used only where that gives the plain product's bits.

A decode step multiplies one row by every weight matrix. In float32 PyTorch hands each product to MKL, which on
AMD CPUs runs a one-row product on one core (pytorch/pytorch#96643). Viewing the weight as equal blocks of output
rows and making one ``torch.bmm``/``baddbmm`` of the same input against every block lets ATen give each block
its own thread inside one operator. That gives the plain product's bits only if each block sums as the whole
does, which the BLAS decides by CPU, shape and thread count; so when a step is built every product is computed
both ways on a seeded random input and compared with the plain product (``F.linear`` or ``torch.addmm``, as
transformers' forward computes it), and split only where they are equal, under that thread count.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

# Matrices below this stay with the plain product: handing work to the threads is a fixed cost per call.
MIN_SPLIT_BYTES = 256 << 10
# Block boundaries fall on multiples of this many rows, keeping every block's rows aligned like the whole's.
ROW_ALIGN = 64

_matches: dict[tuple, bool] = {}  # product layout and thread count -> the split gives the plain product's bits


class MatVec:
    """One-row products ``x @ W.T + b`` (nn.Linear layout) and ``b + x @ W`` (GPT-2's Conv1D layout).

    Built with every product a decode step makes, as ``(weight, bias, rows_are_outputs)``. ``linear`` and
    ``addmm`` return exactly what ``F.linear`` and ``torch.addmm`` return for a single input row.
    """

    def __init__(self, products: Iterable[tuple[torch.Tensor, torch.Tensor | None, bool]],
                 threads: int | None = None):
        self.threads = threads or torch.get_num_threads()
        self.split: set[int] = {id(weight) for weight, bias, rows_are_outputs in products
                                if self._fits(weight, rows_are_outputs)
                                and self._matches(weight, bias, rows_are_outputs)}

    @property
    def enabled(self) -> bool:
        return bool(self.split)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._use(x, weight):
            return F.linear(x, weight, bias)
        return self._split(x.reshape(1, -1), weight, bias, rows_are_outputs=True).view(*x.shape[:-1], -1)

    def addmm(self, bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not self._use(x, weight):
            return torch.addmm(bias, x, weight)
        return self._split(x, weight, bias, rows_are_outputs=False)

    def _use(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Only under the thread count it was checked with, for an input of the weight's type, and outside
        autograd (it writes into its output in place)."""
        return (id(weight) in self.split and torch.get_num_threads() == self.threads
                and not torch.is_grad_enabled() and x.dtype == weight.dtype)

    def _fits(self, weight: torch.Tensor, rows_are_outputs: bool) -> bool:
        outputs = weight.shape[0] if rows_are_outputs else weight.shape[-1]
        return (weight.device.type == "cpu" and weight.dim() == 2 and weight.dtype == torch.float32
                and weight.numel() * weight.element_size() >= MIN_SPLIT_BYTES
                and self.threads >= 2 and outputs >= self.threads * ROW_ALIGN)

    def _matches(self, weight, bias, rows_are_outputs: bool) -> bool:
        key = (rows_are_outputs, tuple(weight.shape), weight.stride(), weight.data_ptr() % 64, bias is not None,
               self.threads)
        if key not in _matches:
            inputs = weight.shape[1] if rows_are_outputs else weight.shape[0]
            x = torch.randn(1, inputs, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                plain = F.linear(x, weight, bias) if rows_are_outputs else torch.addmm(bias, x, weight)
                _matches[key] = torch.equal(plain, self._split(x, weight, bias, rows_are_outputs))
        return _matches[key]

    def _split(self, x, weight, bias, rows_are_outputs: bool) -> torch.Tensor:
        """The product as one batched product over ``threads`` equal blocks of outputs, plus a plain product for
        the rows left over when the outputs do not divide into aligned blocks."""
        outputs = weight.shape[0] if rows_are_outputs else weight.shape[1]
        size = outputs // self.threads // ROW_ALIGN * ROW_ALIGN
        split = size * self.threads
        if rows_are_outputs:
            blocks = weight[:split].view(self.threads, size, -1).transpose(1, 2)
            rest = weight[split:].t()
        else:
            blocks = weight[:, :split].unflatten(1, (self.threads, size)).permute(1, 0, 2)
            rest = weight[:, split:]
        rows = x.unsqueeze(0).expand(self.threads, 1, x.shape[-1])
        out = x.new_empty((1, outputs))
        into = out[:, :split].view(self.threads, 1, size)
        if bias is None:
            torch.bmm(rows, blocks, out=into)
        else:
            torch.baddbmm(bias[:split].view(self.threads, 1, size), rows, blocks, out=into)
        if split < outputs:
            if bias is None:
                torch.mm(x, rest, out=out[:, split:])
            else:
                torch.addmm(bias[split:], x, rest, out=out[:, split:])
        return out
