"""oneDNN weight prepacking for the served causal LM's linear layers, in bf16 on a CPU that does bf16 natively.

There PyTorch runs a bf16 matrix product on oneDNN, which brings the plain (out, in) weight into its own blocked
layout inside every call: each decoding step reads every weight, writes a packed copy and reads that. Packing once
when the model loads, with the oneDNN ops inductor's freezing pass uses (``torch.ops.mkldnn._reorder_linear_weight``
and ``_linear_pointwise``), leaves one read of each weight per step. A decoding step of a loaded model is mostly
reading weights, so that is what the server's throughput gains (benchmarks/README.md, "Serving").

The swap replaces each ``nn.Linear`` and GPT-2 ``Conv1D`` by a :class:`PackedLinear` holding the packed weight
(the model's own weight goes, except one shared with the input embeddings, whose packed copy is extra memory).
Every layer is checked against the one it replaces on a probe input first; a layer that disagrees, an op this
PyTorch lacks or a model the swap does not fit leaves the model as it was, with one warning line. The products
round differently from the plain ones (bf16 rounding already depends on the batch), so it is off for float32,
where the server's greedy tokens equal ``hftool generate``'s, and ``--no-pack-weights`` turns it off.
"""

from __future__ import annotations

import sys

PROBE_ROWS = 3
TOLERANCE = 2e-2  # of the output's scale: bf16 keeps 8 bits of mantissa, two products may differ in the last ones


def _packed_linear_class():
    import torch

    class PackedLinear(torch.nn.Module):
        """A linear layer whose weight oneDNN packed once: ``x @ W.T + b`` with ``W`` given as (out, in)."""

        def __init__(self, weight, bias, rows: int):
            super().__init__()
            self.in_features, self.out_features = weight.shape[1], weight.shape[0]
            self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows))
            self.register_buffer("bias", None if bias is None else bias.detach())

        def forward(self, x):
            flat = x.reshape(-1, self.in_features)
            out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
            return out.view(*x.shape[:-1], self.out_features)

    return PackedLinear


def why_not_packed(model) -> str | None:
    """Why ``model``'s weights are not packed here (None: they can be)."""
    import torch

    from hftool.environment import cpu_has_native_bf16

    if model.dtype != torch.bfloat16:
        return "the model is not in bfloat16"
    if any(p.device.type != "cpu" for p in model.parameters()) or getattr(model, "hf_device_map", None):
        return "the model is not on the CPU"
    if not cpu_has_native_bf16():
        return "this CPU emulates bf16"
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return "this PyTorch has no oneDNN bf16 linear"
    return None


def pack_weights(model, rows: int) -> int:
    """Swap ``model``'s linear layers for packed ones (``rows``: the batch oneDNN packs for); returns how many were
    swapped, 0 where packing does not apply or a check failed (the model is then unchanged)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    reason = why_not_packed(model)
    if reason is not None:
        return 0
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
                    new = packed_class(weight.detach(), child.bias, rows)
                    _check(child, new)
                    swaps.append((parent, name, new))
    except (RuntimeError, MismatchError) as exc:
        print(f"warning: weights not packed ({exc}); the server uses the model's own layers", file=sys.stderr)
        return 0
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return len(swaps)


class MismatchError(Exception):
    """A packed layer's output differs from the layer it replaces."""


def _check(plain, packed) -> None:
    import torch

    probe = torch.randn(PROBE_ROWS, packed.in_features, dtype=torch.bfloat16,
                        generator=torch.Generator().manual_seed(0))
    want, got = plain(probe).float(), packed(probe).float()
    scale = want.abs().max().clamp(min=1e-6)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=0, atol=TOLERANCE * float(scale)):
        raise MismatchError(f"a packed {type(plain).__name__} of {tuple(want.shape)} differs from the plain one")
