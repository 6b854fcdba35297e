"""One-row products on a CPU (float32, bfloat16), made faster in ways that are used only where they give the plain
product's bits.

A decode step multiplies one row by every weight matrix, so it is bound by how fast the weights stream from
memory (or from the last-level cache, for a small model). In float32 PyTorch hands each product to MKL, which on
AMD CPUs runs a one-row product on one core with a 4-lane SSE kernel (pytorch/pytorch#96643): on the 2-core EPYC
this was measured on, BLOOM-560m's weights streamed at about 16 GB/s against 30 GB/s for a plain read. Two ways
around it, tried in this order for every matrix:

- **hftool's kernels** (``matvec_kernels.c``), compiled once with the system's C compiler, on the threads of
  PyTorch's own OpenMP runtime. In float32 they make MKL's additions in MKL's order: for the nn.Linear layout
  with eight rows in flight, streaming the weights about as fast as a plain read; for GPT-2's Conv1D layout
  adding eight inputs' rows at a time to outputs held in registers. In bfloat16 (where the decode step runs
  ATen's matrix-vector kernel, oneDNN being off) they make ATen's additions in ATen's order, at 0.96 of a plain
  read's bandwidth against ATen's own 0.84.
- **a batched product** (float32): the weight viewed as equal blocks of output rows, and one
  ``torch.bmm``/``baddbmm`` of the same input against every block, so that ATen gives each block its own thread
  inside one operator.

Either gives the plain product's bits only if it sums as the plain product does, and the BLAS picks its kernel
by CPU, shape and thread count. So when a decode step is built, every product it will make is computed each way
on a seeded random input and compared with the plain product (``F.linear`` or ``torch.addmm``, as transformers'
forward computes it) under the same thread count and oneDNN setting. In bfloat16 a random input hides most
changes of order (the float32 sum is rounded to 8 bits), so the kernel must also match on probe rows that
reveal the order: two entries +2^40 and -2^40 among up to 200 ones; the ones summed with either before they
cancel are lost, and the count left (exact in bfloat16) says which they were. The first way that matches bit
for bit is used, and only under the thread count and oneDNN setting it was checked with; a product no way
matches stays plain.
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
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

# Matrices below this stay with the plain product: handing work to the threads is a fixed cost per call. In the
# benchmark's tiny GPT-2, splitting every matrix of 1 MiB or more took it from 329 to 415 tokens/s; going down to
# 256 KiB neither helped nor hurt (415).
MIN_FAST_BYTES = 256 << 10
# Block boundaries fall on multiples of this many rows, keeping every block's rows aligned like the whole's.
ROW_ALIGN = 64

KERNEL_SOURCE = Path(__file__).with_name("matvec_kernels.c")
# No contraction of a multiply and an add into one fused multiply-add: MKL's kernel rounds the product first.
# (The bfloat16 kernel asks for its fused multiply-adds explicitly, and only runs where the CPU has them.)
KERNEL_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")

_matches: dict[tuple, bool] = {}  # way, product layout and thread count -> that way gives the plain product's bits


def kernel_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hftool" / "kernels"


@functools.cache
def compiled_kernel() -> ctypes.CDLL | None:
    """``matvec_kernels.c``, compiled into the user's cache on first use, or None where it cannot be: not Linux
    on x86-64, no C compiler, or a PyTorch that does not bring GNU OpenMP, whose threads the kernels must share
    (its ``libgomp.so.1`` is then the one already loaded)."""
    torch_openmp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if (sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64")
            or not torch_openmp.exists() or compiler is None):
        return None
    key = b"\0".join([KERNEL_SOURCE.read_bytes(), compiler.encode(), *(flag.encode() for flag in KERNEL_FLAGS)])
    library = kernel_cache_dir() / f"matvec_kernels-{hashlib.sha256(key).hexdigest()[:16]}.so"
    partial = library.with_name(f"{library.name}.{os.getpid()}.partial")
    try:
        if not library.exists():
            library.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([compiler, *KERNEL_FLAGS, str(KERNEL_SOURCE), "-o", str(partial)], check=True,
                           capture_output=True, timeout=300)
            os.replace(partial, library)
        kernels = ctypes.CDLL(str(library))
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        partial.unlink(missing_ok=True)
    for kernel in (kernels.hftool_matvec_f32, kernels.hftool_matvec_f32_columns, kernels.hftool_matvec_bf16):
        kernel.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_int64]
        kernel.restype = None
    kernels.hftool_has_avx2_fma.restype = ctypes.c_int
    return kernels


class MatVec:
    """One-row products ``x @ W.T + b`` (nn.Linear layout) and ``b + x @ W`` (GPT-2's Conv1D layout).

    Built with every product a decode step makes, as ``(weight, bias, rows_are_outputs)``, under the thread count
    and oneDNN setting the step will run with. ``linear`` and ``addmm`` return exactly what ``F.linear`` and
    ``torch.addmm`` return for a single input row: large float32 and bfloat16 CPU weights go to the fastest way
    verified on this machine, the rest to the plain product.
    """

    def __init__(self, products: Iterable[tuple[torch.Tensor, torch.Tensor | None, bool]],
                 threads: int | None = None):
        self.threads = threads or torch.get_num_threads()
        self.onednn = torch.backends.mkldnn.enabled
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
        """A faster way only under the thread count and oneDNN setting it was checked with, for an input of the
        weight's type, and outside autograd (it writes into its output in place)."""
        if (torch.get_num_threads() != self.threads or torch.is_grad_enabled() or x.dtype != weight.dtype
                or torch.backends.mkldnn.enabled != self.onednn):
            return None
        return self.ways.get(id(weight))

    def _fits(self, way: str, weight: torch.Tensor, bias: torch.Tensor | None, rows_are_outputs: bool) -> bool:
        outputs = weight.shape[0] if rows_are_outputs else weight.shape[-1]
        if not (weight.device.type == "cpu" and weight.dim() == 2
                and weight.numel() * weight.element_size() >= MIN_FAST_BYTES):
            return False
        if way == "split":
            return weight.dtype == torch.float32 and self.threads >= 2 and outputs >= self.threads * ROW_ALIGN
        if not (weight.stride(1) == 1 and (bias is None or (bias.dtype == weight.dtype and bias.is_contiguous()))):
            return False
        kernels = compiled_kernel()
        if kernels is None:
            return False
        if not rows_are_outputs:
            return weight.dtype == torch.float32
        if weight.dtype == torch.float32:
            return weight.stride(0) % 4 == 0 and weight.shape[1] >= 8 and weight.shape[0] >= 4
        return weight.dtype == torch.bfloat16 and weight.shape[1] % 64 == 0 and bool(kernels.hftool_has_avx2_fma())

    def _matches(self, way: str, weight, bias, rows_are_outputs: bool) -> bool:
        key = (way, weight.dtype, rows_are_outputs, tuple(weight.shape), weight.stride(), weight.data_ptr() % 64,
               bias is not None, self.threads, self.onednn)
        if key not in _matches:
            inputs = weight.shape[1] if rows_are_outputs else weight.shape[0]
            x = torch.randn(1, inputs, generator=torch.Generator().manual_seed(0)).to(weight.dtype)
            with torch.no_grad():
                plain = F.linear(x, weight, bias) if rows_are_outputs else torch.addmm(bias, x, weight)
                same = torch.equal(plain, self._product(way, x, weight, bias, rows_are_outputs))
            if same and weight.dtype == torch.bfloat16:
                order_key = ("order", way, weight.dtype, inputs, self.threads, self.onednn)
                if order_key not in _matches:
                    _matches[order_key] = self._same_order(way, inputs, weight.dtype)
                same = _matches[order_key]
            _matches[key] = same
        return _matches[key]

    def _same_order(self, way: str, inputs: int, dtype: torch.dtype, probes: int = 4096) -> bool:
        """Whether ``way`` sums in the plain product's order, on probe rows that show it: in each, +2^40 and
        -2^40 at two random places and ones at up to 200 others (few enough for their count to be exact in
        bfloat16), times an input of ones. Every one summed with either big entry before they cancel is lost,
        so the result counts the ones that were not."""
        places = torch.randint(inputs, (probes, 202), generator=torch.Generator().manual_seed(1))
        rows = torch.zeros(probes, inputs).scatter_(1, places[:, 2:], 1.0)  # the big entries overwrite any clash
        rows.scatter_(1, places[:, :1], 2.0**40).scatter_(1, places[:, 1:2], -(2.0**40))
        rows, ones = rows.to(dtype), torch.ones(1, inputs, dtype=dtype)
        with torch.no_grad():
            return torch.equal(F.linear(ones, rows), self._product(way, ones, rows, None, rows_are_outputs=True))

    def _product(self, way: str, x, weight, bias, rows_are_outputs: bool) -> torch.Tensor:
        if way == "split":
            return self._split(x, weight, bias, rows_are_outputs)
        if not rows_are_outputs:
            return self._columns_kernel(x, weight, bias)
        return self._kernel(x, weight, bias)

    @staticmethod
    def _columns_kernel(x, weight, bias) -> torch.Tensor:
        x = x.contiguous()
        out = x.new_empty((1, weight.shape[1]))
        compiled_kernel().hftool_matvec_f32_columns(weight.data_ptr(), weight.stride(0), x.data_ptr(),
                                                    None if bias is None else bias.data_ptr(), out.data_ptr(),
                                                    weight.shape[0], weight.shape[1])
        return out

    @staticmethod
    def _kernel(x, weight, bias) -> torch.Tensor:
        """nn.Linear layout. In float32 the rows in groups of four: MKL multiplies the last ``rows % 4`` rows
        with another kernel, so they go to the plain product."""
        x = x.contiguous()
        out = x.new_empty((1, weight.shape[0]))
        kernels = compiled_kernel()
        if weight.dtype == torch.bfloat16:
            kernel, rows = kernels.hftool_matvec_bf16, weight.shape[0]
        else:
            kernel, rows = kernels.hftool_matvec_f32, weight.shape[0] // 4 * 4
        kernel(weight.data_ptr(), weight.stride(0), x.data_ptr(), None if bias is None else bias.data_ptr(),
               out.data_ptr(), rows, weight.shape[1])
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
