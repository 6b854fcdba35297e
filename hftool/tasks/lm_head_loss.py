"""Language-model head and cross-entropy in one pass, without the full float32 logits.

The usual path projects every position onto the vocabulary, casts the logits to float32, runs log-softmax, and
in backward fills a zero gradient, scatters into it, runs the log-softmax backward and casts back: six passes over
the largest tensor of the step. Here each chunk of positions is projected, its loss and its logit gradient
(softmax - one-hot) are computed at once, and the gradient is immediately multiplied back into the hidden-state
and weight gradients. The loss is the same summed cross-entropy, the matrix products run in the same precision
as under autocast, and peak memory no longer holds the (positions x vocabulary) logits in float32. This is the
"fused linear cross-entropy" of Liger-Kernel and torchtune, written in plain PyTorch.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
NO_LOGITS = torch.zeros(0, dtype=torch.int64)  # logits_to_keep: project no position in the model's forward
_FUSED_HEAD_MODELS = ("gpt2", "bloom")  # last hidden state -> bias-free linear head, checked by the tests
_CHUNK_ELEMENTS = 1 << 24  # float32 logits per chunk: 64 MiB


def fused_head_applies(model: torch.nn.Module, engine) -> bool:
    """Whether a causal-LM loss can take the head out of the model's forward: a known architecture, and
    parameters that are whole outside the forward (not FSDP/DeepSpeed shards) with dynamic shapes allowed."""
    head = _linear_head(model.get_output_embeddings())
    return (model.config.model_type in _FUSED_HEAD_MODELS and isinstance(head, torch.nn.Linear)
            and head.bias is None and not engine.shards_parameters and not engine.static_shapes)


def _linear_head(head: torch.nn.Module) -> torch.nn.Module:
    """The linear layer under peft's trainable-tokens wrapper (LoRA sft training the new ChatML rows), else ``head``."""
    adapter = getattr(head, "token_adapter", None)
    return adapter.base_layer if adapter is not None else head


def head_weight(head: torch.nn.Module) -> torch.Tensor:
    """The output head's weight as its forward uses it: under peft's trainable tokens, the frozen matrix with the
    trained rows copied in (differentiable in those rows), so the fused loss trains them as the plain one does."""
    adapter = getattr(head, "token_adapter", None)
    if adapter is None or adapter.disable_adapters or adapter.merged or not adapter.active_adapters:
        return _linear_head(head).weight
    return adapter.get_merged_weights(adapter.active_adapters)


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets, reduction="sum", ignore_index=-100)`` in float32.

    ``hidden`` is (positions, dim), ``weight`` (vocabulary, dim), ``targets`` (positions,). Under autocast the
    products run in the autocast dtype, as ``nn.Linear`` would.
    """
    device_type = hidden.device.type
    compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                     else weight.dtype)
    chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, compute_dtype, chunk)
    with torch.no_grad():
        return _chunked(hidden.to(compute_dtype), weight.to(compute_dtype), targets, chunk, gradients=False)[0]


def _chunked(hidden, weight, targets, chunk: int, gradients: bool):
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if gradients else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if gradients else None
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        target = targets[rows]
        valid = (target != IGNORE_INDEX).unsqueeze(1)
        safe_target = target.clamp(min=0).unsqueeze(1)
        log_probs = torch.log_softmax(hidden[rows] @ weight.T, dim=-1, dtype=torch.float32)
        loss -= (log_probs.gather(1, safe_target) * valid).sum()
        if gradients:
            # d loss / d logits = softmax - one_hot(target); ignored positions are zeroed on the narrow side.
            grad_logits = log_probs.exp_().scatter_add_(1, safe_target, -valid.to(log_probs.dtype)).to(hidden.dtype)
            kept = hidden[rows] * valid
            grad_hidden[rows] = (grad_logits @ weight) * valid
            grad_weight += grad_logits.T @ kept
    return loss, grad_hidden, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk):
        loss, grad_hidden, grad_weight = _chunked(hidden.to(compute_dtype), weight.to(compute_dtype), targets,
                                                  chunk, gradients=True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return ((grad_hidden * grad_loss).to(hidden_dtype), (grad_weight * grad_loss).to(weight_dtype),
                None, None, None)
