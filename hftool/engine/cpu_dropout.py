"""Faster dropout for training on CPU, where PyTorch's own is a large share of a small model's step.

Two costs (measured in benchmarks/bench_pretrain.py):

* ``bernoulli_`` draws one 32-bit Mersenne-Twister number per element, on one thread.
  :func:`fast_dropout` takes 16 random bits per element (four per 64-bit draw). The drop
  probability is rounded to a multiple of 1/65536 (0.1 becomes 0.100006) and kept values are scaled by the
  exact inverse of the resulting keep probability, so the output's expectation is the input, as with
  ``nn.Dropout``. The bits come from torch's default generator: seeds and checkpointed RNG state apply.
* With ``dropout_p > 0`` torch's CPU ``scaled_dot_product_attention`` leaves its fused kernel for a slower math
  path. :func:`attention` computes attention explicitly with the fast mask when training with dropout and
  hands everything else (evaluation, inference, other devices) to transformers' SDPA function.

:func:`use_fast_cpu_dropout` applies both to a model for the duration of training and undoes both after, whether
training returns or raises: the caller's model gets its own dropout modules back, and the attention function,
registered with transformers under a name of this run's own, is unregistered.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch

ATTENTION_NAME = "hftool_cpu_dropout"  # each run registers ATTENTION_NAME_<n>, so concurrent runs do not collide
_runs = itertools.count()
_LEVELS = 1 << 16


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout with masks drawn 16 bits per element; see the module docstring."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    dropped_levels = round(p * _LEVELS)
    count = x.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    bits = words.view(torch.int16)[:count].view(x.shape)
    keep = bits >= dropped_levels - _LEVELS // 2
    return x * keep * (_LEVELS / (_LEVELS - dropped_levels))  # autograd saves only the boolean mask


class FastDropout(torch.nn.Dropout):
    """``nn.Dropout`` drawing its mask with :func:`fast_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """A transformers attention function: explicit attention with :func:`fast_dropout` when training with
    dropout on CPU, transformers' SDPA otherwise. Receives the masks SDPA receives (boolean, additive or
    ``None`` for plain causal attention)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if dropout == 0.0 or query.device.type != "cpu" or grouped or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    probs = attention_probabilities(module, query, key, attention_mask, scaling, is_causal)
    probs = fast_dropout(probs.to(value.dtype), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def attention_probabilities(module, query, key, attention_mask, scaling, is_causal) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) in float32, with SDPA's reading of the mask and of ``is_causal``."""
    q_length, kv_length = query.shape[2], key.shape[2]
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif causal and q_length > 1:
        future = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).triu(kv_length - q_length + 1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


@contextlib.contextmanager
def _registered_attention() -> Iterator[str]:
    """A name under which transformers finds :func:`attention` (and SDPA's masks) within the block only."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    name = f"{ATTENTION_NAME}_{next(_runs)}"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask)
    try:
        yield name
    finally:  # transformers has register() but no unregister(): its class-wide mapping is the registry
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


@contextlib.contextmanager
def _fast_dropout_modules(model: torch.nn.Module) -> Iterator[None]:
    """``model``'s ``nn.Dropout`` layers replaced by :class:`FastDropout` within the block; the caller's own
    modules put back after, in the train/eval mode the model ended in."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                fast = FastDropout(child.p, child.inplace).train(child.training)
                setattr(parent, name, fast)
                swapped.append((parent, name, child, fast))
    try:
        yield
    finally:
        for parent, name, original, fast in reversed(swapped):
            setattr(parent, name, original.train(fast.training))


@contextlib.contextmanager
def use_fast_cpu_dropout(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s ``nn.Dropout`` layers and (where the model takes a pluggable attention
    function and uses SDPA) its attention dropout use the fast CPU masks; after it, the model and transformers'
    attention registry are as they were."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous == "sdpa" and hasattr(model, "set_attn_implementation") and model._can_set_attn_implementation()
    with contextlib.ExitStack() as undo:
        undo.enter_context(_fast_dropout_modules(model))
        if switch:
            name = undo.enter_context(_registered_attention())
            model.set_attn_implementation(name)
            undo.callback(model.set_attn_implementation, previous)
        yield
