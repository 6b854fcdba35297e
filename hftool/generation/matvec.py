"""Float32 one-row products on a CPU, made faster in ways that are used only where they give the plain product's
bits.

A decode step multiplies one row by every weight matrix, so it is bound by how fast the weights stream from
memory (or from the last-level cache, for a small model). In float32 PyTorch hands each product to MKL, which on
AMD CPUs runs a one-row product on one core with a 4-lane SSE kernel (pytorch/pytorch#96643): on the 2-core EPYC
this was measured on, BLOOM-560m's weights streamed at about 16 GB/s against 30 GB/s for a plain read. Two ways
around it, tried in this order for every matrix:

- **hftool's kernel** (``matvec_f32.c``, nn.Linear layout only), compiled once with the system's C compiler: it
  makes MKL's additions in MKL's order, with eight rows in flight, on the threads of PyTorch's own OpenMP
  runtime. It streams the weights about as fast as a plain read.
- **a batched product**: the weight viewed as equal blocks of output rows, and one ``torch.bmm``/``baddbmm`` of
  the same input against every block, so that ATen gives each block its own thread inside one operator.

Either gives the plain product's bits only if it sums as the plain product does, and the BLAS picks its kernel
by CPU, shape and thread count. So when a decode step is built, every product it will make is computed each way
on a seeded random input and compared with the plain product (``F.linear`` or ``torch.addmm``, as transformers'
forward computes it) under the same thread count. The first way that matches bit for bit is used, and only
while the thread count is the one it was checked with; a product no way matches stays plain.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

# Matrices below this stay with the plain product: handing blocks to the threads is a fixed cost per call. In the
# benchmark's tiny GPT-2, splitting every matrix of 1 MiB or more took it from 329 to 415 tokens/s; going down to
# 256 KiB neither helped nor hurt (415).
MIN_SPLIT_BYTES = 256 << 10
# Block boundaries fall on multiples of this many rows, keeping every block's rows aligned like the whole's.
ROW_ALIGN = 64

KERNEL_SOURCE = Path(__file__).with_name("matvec_f32.c")
# No contraction of a multiply and an add into one fused multiply-add: MKL's kernel rounds the product first.
KERNEL_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")

_matches: dict[tuple, bool] = {}  # way, product layout and thread count -> that way gives the plain product's bits


def kernel_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hftool" / "kernels"


@functools.cache
def compiled_kernel() -> Callable | None:
    """``hftool_matvec_f32`` from ``matvec_f32.c``, compiled into the user's cache on first use, or None where it
    cannot be: not Linux on x86-64, no C compiler, or a PyTorch that does not bring GNU OpenMP, whose threads
    the kernel must share (its ``libgomp.so.1`` is then the one already loaded)."""
    torch_openmp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if (sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64")
            or not torch_openmp.exists() or compiler is None):
        return None
    key = b"\0".join([KERNEL_SOURCE.read_bytes(), compiler.encode(), *(flag.encode() for flag in KERNEL_FLAGS)])
    library = kernel_cache_dir() / f"matvec_f32-{hashlib.sha256(key).hexdigest()[:16]}.so"
    partial = library.with_name(f"{library.name}.{os.getpid()}.partial")
    try:
        if not library.exists():
            library.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([compiler, *KERNEL_FLAGS, str(KERNEL_SOURCE), "-o", str(partial)], check=True,
                           capture_output=True, timeout=300)
            os.replace(partial, library)
        kernel = ctypes.CDLL(str(library)).hftool_matvec_f32
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        partial.unlink(missing_ok=True)
    kernel.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_int64, ctypes.c_int64]
    kernel.restype = None
    return kernel


class MatVec:
    """One-row products ``x @ W.T + b`` (nn.Linear layout) and ``b + x @ W`` (GPT-2's Conv1D layout).

    Built with every product a decode step makes, as ``(weight, bias, rows_are_outputs)``. ``linear`` and
    ``addmm`` return exactly what ``F.linear`` and ``torch.addmm`` return for a single input row: large float32
    CPU weights go to the fastest way verified on this machine, the rest to the plain product.
    """

    def __init__(self, products: Iterable[tuple[torch.Tensor, torch.Tensor | None, bool]],
                 threads: int | None = None):
        self.threads = threads or torch.get_num_threads()
        self.ways: dict[int, str] = {}  # id(weight) -> "kernel" or "split"
        for weight, bias, rows_are_outputs in products:
            for way in ("kernel", "split"):
                if self._fits(way, weight, bias, rows_are_outputs) and self._matches(way, weight, bias,
                                                                                     rows_are_outputs):
                    self.ways[id(weight)] = way
                    break

    @property
    def enabled(self) -> bool:
        return bool(self.ways)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        way = self._way(x, weight)
        if way is None:
            return F.linear(x, weight, bias)
        return self._product(way, x.reshape(1, -1), weight, bias, rows_are_outputs=True).view(*x.shape[:-1], -1)

    def addmm(self, bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        way = self._way(x, weight)
        if way is None:
            return torch.addmm(bias, x, weight)
        return self._product(way, x, weight, bias, rows_are_outputs=False)

    def _way(self, x: torch.Tensor, weight: torch.Tensor) -> str | None:
        """A faster way only under the thread count it was checked with, for an input of the weight's type,
        and outside autograd (it writes into its output in place)."""
        if torch.get_num_threads() != self.threads or torch.is_grad_enabled() or x.dtype != weight.dtype:
            return None
        return self.ways.get(id(weight))

    def _fits(self, way: str, weight: torch.Tensor, bias: torch.Tensor | None, rows_are_outputs: bool) -> bool:
        outputs = weight.shape[0] if rows_are_outputs else weight.shape[-1]
        if not (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2
                and weight.numel() * weight.element_size() >= MIN_SPLIT_BYTES):
            return False
        if way == "split":
            return self.threads >= 2 and outputs >= self.threads * ROW_ALIGN
        return (rows_are_outputs and weight.stride(1) == 1 and weight.stride(0) % 4 == 0 and weight.shape[1] >= 8
                and weight.shape[0] >= 4
                and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
                and compiled_kernel() is not None)

    def _matches(self, way: str, weight, bias, rows_are_outputs: bool) -> bool:
        key = (way, rows_are_outputs, tuple(weight.shape), weight.stride(), weight.data_ptr() % 64,
               bias is not None, self.threads)
        if key not in _matches:
            inputs = weight.shape[1] if rows_are_outputs else weight.shape[0]
            x = torch.randn(1, inputs, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                plain = F.linear(x, weight, bias) if rows_are_outputs else torch.addmm(bias, x, weight)
                _matches[key] = torch.equal(plain, self._product(way, x, weight, bias, rows_are_outputs))
        return _matches[key]

    def _product(self, way: str, x, weight, bias, rows_are_outputs: bool) -> torch.Tensor:
        if way == "kernel":
            return self._kernel(x, weight, bias)
        return self._split(x, weight, bias, rows_are_outputs)

    @staticmethod
    def _kernel(x, weight, bias) -> torch.Tensor:
        """The rows in groups of four by the kernel; MKL multiplies the last ``rows % 4`` rows with another
        kernel, so they go to the plain product."""
        x = x.contiguous()
        out = x.new_empty((1, weight.shape[0]))
        rows = weight.shape[0] // 4 * 4
        compiled_kernel()(weight.data_ptr(), weight.stride(0), x.data_ptr(),
                          None if bias is None else bias.data_ptr(), out.data_ptr(), rows, weight.shape[1])
        if rows < weight.shape[0]:
            out[:, rows:] = F.linear(x, weight[rows:], None if bias is None else bias[rows:])
        return out

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
