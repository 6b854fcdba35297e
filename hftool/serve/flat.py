"""A decoding step and the prompts joining it in one forward, laid out as one sequence.

A separate prefill forward reads every weight once more for a few dozen prompt tokens. Here the running rows'
next tokens and the joining prompts' tokens go through the model as one sequence (batch 1): every token-wise
layer sees them together, and only attention tells them apart. The attention function registered below
(``FLAT``, sdpa's own function when a forward carries no :class:`FlatStep`) gives each running row its own
slot of the cache (one batched SDPA over the slots' window, as a plain decoding step does) and each prompt
causal attention over its own tokens (as a prompt's prefill alone does); the cache's slot layers write the
new keys and values where the step says. Models whose forward is token-wise apart from attention and goes
through transformers' attention interface (GPT-2, Llama and most current decoders) qualify; the rest (BLOOM,
whose ALiBi comes from the attention mask) keep a prefill forward of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLAT = "hftool_flat"


@dataclass
class FlatStep:
    """What one flat forward holds: ``rows`` running rows' tokens first (row ``i`` at position ``i``, its keys
    and values written at the slots' column ``end``), then each joining prompt's tokens (``spans``: start and
    end in the sequence), whose keys and values go to its rows' slots (``slots``), ending at column ``end``."""

    rows: int
    mask: object  # (rows, 1, 1, window) bool: the running rows' columns of the window
    lo: int  # the window's first column: the oldest running row's first
    layers: list  # the cache's slot layers: layer i's keys and values views show the running rows' window
    spans: list[tuple[int, int]] = field(default_factory=list)
    slots: list[list[int]] = field(default_factory=list)


def supports_flat_steps(model) -> bool:
    """Whether ``model`` may run flat steps: its attention goes through transformers' interface (sdpa, or already
    the flat function) and its forward takes position ids and the positions to keep logits for."""
    import inspect

    accepted = inspect.signature(type(model).forward).parameters
    return (bool(getattr(model, "_supports_attention_backend", False))
            and getattr(model.config, "_attn_implementation", None) in ("sdpa", FLAT)
            and "position_ids" in accepted and "logits_to_keep" in accepted)


def attention_dtype(model):
    """The dtype a flat step's decoding rows attend in, and so the slots' cache is kept in: float32 for a bf16 or
    fp16 model on a CPU without AMX, whose reduced-precision attention kernel is several times slower than its
    float32 one (benchmarks/README.md, "Serving"), else the model's own. The keys and values are the model's
    (bf16 values are exact in float32); only the attention's arithmetic is wider."""
    import torch

    from hftool.environment import cpu_has_amx_bf16

    reduced = model.dtype in (torch.bfloat16, torch.float16)
    if reduced and model.device.type == "cpu" and not cpu_has_amx_bf16():
        return torch.float32
    return model.dtype


def use_flat_attention(model) -> None:
    """Give ``model`` the flat attention function: sdpa for every forward without a :class:`FlatStep`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FLAT, flat_attention)
    AttentionMaskInterface.register(FLAT, sdpa_mask)
    model.set_attn_implementation(FLAT)


def flat_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention for a forward; ``kwargs["flat_step"]`` makes it a flat one (query, key and value are then the
    new tokens', shaped (1, heads, tokens, head_dim)). Returns (1, tokens, heads, head_dim) like sdpa's."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    step: FlatStep | None = kwargs.pop("flat_step", None)
    if step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    parts = []
    if step.rows:
        layer = step.layers[module.layer_idx]
        rows = query[0, :, :step.rows].transpose(0, 1).unsqueeze(2)  # (rows, heads, 1, head_dim)
        out, _ = sdpa_attention_forward(module, rows.to(layer.keys.dtype), layer.keys, layer.values, step.mask,
                                        **kwargs)
        parts.append(out.view(1, step.rows, *out.shape[2:]).to(query.dtype))
    for start, end in step.spans:
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                        None, is_causal=True, **kwargs)
        parts.append(out)
    return torch.cat(parts, dim=1), None
