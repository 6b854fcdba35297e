"""How the served causal LM's linear layers meet the CPU's matrix products (``hftool serve`` only).

- **bfloat16**, on a CPU with native bf16: every ``nn.Linear`` and Conv1D becomes a :class:`PackedLinear`.
  oneDNN, which runs PyTorch's bfloat16 products on the CPU, otherwise brings each weight into its own layout
  inside every call. Where packing is off or fails, GPT-2's Conv1D layers at least become ``nn.Linear`` layers:
  Conv1D keeps its weight input-major, (in, out), and oneDNN reorders the output-major one faster.
- **float32 on a CPU not made by Intel** (AMD's): every ``nn.Linear`` and Conv1D becomes a :class:`PackedLinear`,
  its weight packed for oneDNN once at load. PyTorch runs float32 products on MKL, whose kernels on these CPUs are
  much slower at a decoding step's few rows than oneDNN's on a packed weight. The last bits of a
  product then round differently, as MKL's own already do between a row alone and the same row in a batch; the
  greedy tokens stay ``hftool generate``'s (tested, and checked on every benchmarked answer). On Intel CPUs, where
  MKL is at home, float32 layers stay as loaded; ``--no-pack-weights`` turns packing off in both dtypes.

A decoding step is mostly these products (benchmarks/README.md, "Serving").
"""

from __future__ import annotations

import sys

PROBE_ROWS = 3
# Of the output's scale: products that differ only in their summation order (bf16 keeps 8 bits of mantissa).
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
# oneDNN packs a weight for a batch size. A step's 1 to 64 rows run about as fast on a weight packed for 16 rows as
# on one packed for 1 or 64; through the server 16 served more bf16 tokens/s than 64 (benchmarks/README.md).
PACK_ROWS = 16


def serving_layout(model, pack_weights: bool = True, rows: int = PACK_ROWS) -> str | None:
    """Lay ``model``'s linear layers out for this CPU (above); ``rows``: the most rows a step runs. Returns what
    was done, for the start-up line, or None where the model is left as loaded."""
    import torch

    if model.device.type != "cpu" or getattr(model, "hf_device_map", None):
        return None
    count = pack_linears(model, min(rows, PACK_ROWS)) if pack_weights and not why_not_packed(model) else 0
    if count:
        return f"{count} linear layers packed for oneDNN"
    if model.dtype == torch.bfloat16:
        count = output_major_linears(model)
        return f"{count} Conv1D layers as nn.Linear" if count else None
    return None


def why_not_packed(model) -> str | None:
    """Why ``model``'s weights are not packed here (None: they are)."""
    import torch

    from hftool.environment import cpu_vendor

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return "this PyTorch has no oneDNN linear"
    if model.dtype == torch.bfloat16:
        from hftool.environment import cpu_has_native_bf16

        if not (cpu_has_native_bf16() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return "this CPU emulates bf16"
        return None
    if model.dtype != torch.float32:
        return "the model is neither float32 nor bfloat16"
    vendor = cpu_vendor()
    if vendor in ("GenuineIntel", ""):
        return "an Intel CPU, where MKL's products are at home" if vendor else "an unknown CPU maker"
    return None


def output_major_linears(model) -> int:
    """Replace each Conv1D of ``model`` (bfloat16, on the CPU) by an ``nn.Linear`` holding the transposed
    weight; the Conv1D's weight is freed. Returns how many were replaced (0: the model is left as it is)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if model.dtype != torch.bfloat16 or model.device.type != "cpu":
        return 0
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is Conv1D]
    for parent, name, conv in swaps:
        inputs, outputs = conv.weight.shape
        linear = torch.nn.Linear(inputs, outputs, bias=conv.bias is not None, device="meta", dtype=conv.weight.dtype)
        linear.weight = torch.nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=False)
        if conv.bias is not None:
            linear.bias = torch.nn.Parameter(conv.bias.detach(), requires_grad=False)
        setattr(parent, name, linear)
    return len(swaps)


def _packed_linear_class():
    import torch

    class PackedLinear(torch.nn.Module):
        """A linear layer whose weight oneDNN packed once: ``x @ W.T + b`` with ``W`` given as (out, in). The ops
        are those inductor's freezing pass uses (``_reorder_linear_weight``, ``_linear_pointwise``)."""

        def __init__(self, weight, bias, rows: int):
            super().__init__()
            self.in_features, self.out_features = weight.shape[1], weight.shape[0]
            self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(),
                                                                                     rows))
            self.register_buffer("bias", None if bias is None else bias.detach())

        def forward(self, x):
            flat = x.reshape(-1, self.in_features)
            out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
            return out.view(*x.shape[:-1], self.out_features)

    return PackedLinear


def pack_linears(model, rows: int) -> int:
    """Swap ``model``'s ``nn.Linear`` and Conv1D layers for packed ones; returns how many. Each is checked against
    the layer it replaces on a probe input first, and the whole model runs a probe forward after; an op this
    PyTorch lacks, a layer that disagrees or a forward that fails leaves the model as it was (0, one warning line).
    A weight shared with the input embeddings stays for them: its packed copy is extra memory."""
    import torch
    from transformers.pytorch_utils import Conv1D

    packed_class, swaps = _packed_linear_class(), []
    try:
        with torch.no_grad():
            for parent in model.modules():
                for name, child in parent.named_children():
                    if type(child) is torch.nn.Linear:
                        weight = child.weight
                    elif type(child) is Conv1D:
                        weight = child.weight.t()  # Conv1D keeps (in, out)
                    else:
                        continue
                    packed = packed_class(weight, child.bias, rows)
                    probe = torch.randn(PROBE_ROWS, weight.shape[1], dtype=weight.dtype)
                    want, got = child(probe), packed(probe)
                    tolerance = TOLERANCE[str(weight.dtype).removeprefix("torch.")]
                    if not (got - want).float().abs().max() <= tolerance * (want.float().abs().max() + 1):
                        raise ValueError(f"{name}: the packed product disagrees with the layer's")
                    swaps.append((parent, name, child, packed))
            for parent, name, _, packed in swaps:
                setattr(parent, name, packed)
            model(input_ids=torch.zeros((1, PROBE_ROWS), dtype=torch.long))  # code that reads a layer's .weight
    except (RuntimeError, ValueError, AttributeError, TypeError) as exc:
        for parent, name, original, _ in swaps:
            setattr(parent, name, original)
        print(f"warning: serving the linear layers as loaded (oneDNN packing failed: {exc})", file=sys.stderr)
        return 0
    return len(swaps)
