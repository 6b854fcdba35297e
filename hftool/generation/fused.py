"""A fused single-token decode step for GPT-2: the same tensor operations as transformers' GPT-2 forward.

For small models on a CPU most of a decode step is Python: module calls, mask building, cache objects and
output dataclasses around a few small matrix products. This step calls the same kernels on the same
weights in the same order (``addmm`` for GPT-2's Conv1D, layer norm, SDPA with no mask for one query,
``torch.cat`` onto the key/value cache as ``DynamicCache`` does), so its logits are bit-identical to
``model(...)``'s; the tests check the tokens against ``model.generate``. Anything it does not mirror exactly
(other attention backends, cross-attention, Accelerate-dispatched weights, training mode) gets ``None`` and
the caller uses the model's own forward.
"""

from __future__ import annotations

from collections.abc import Callable


def gpt2_decode_step(model, cache) -> Callable | None:
    """A function ``step(token_ids, position) -> logits`` continuing ``cache``, or None if unsupported.

    ``cache`` is the ``DynamicCache`` a prefill through ``model(...)`` filled; the step extends it in place.
    """
    import torch
    import torch.nn.functional as F

    config = model.config
    if (
        config.model_type != "gpt2"
        or model.training
        or getattr(model, "hf_device_map", None)
        or config._attn_implementation != "sdpa"
        or config.add_cross_attention
        or len(cache.layers) != config.n_layer
    ):
        return None
    transformer = model.transformer
    width, heads = config.n_embd, config.n_head
    head_dim = width // heads
    keys = [layer.keys for layer in cache.layers]
    values = [layer.values for layer in cache.layers]
    blocks = [(b.ln_1, b.attn, b.ln_2, b.mlp) for b in transformer.h]
    wte, wpe, ln_f, lm_head = transformer.wte.weight, transformer.wpe.weight, transformer.ln_f, model.lm_head

    def conv1d(layer, x):
        return torch.addmm(layer.bias, x.view(-1, x.size(-1)), layer.weight).view(1, 1, -1)

    def norm(layer, x):
        return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)

    def step(token: torch.Tensor, position: int) -> torch.Tensor:
        hidden = F.embedding(token, wte) + wpe[position]
        for i, (ln_1, attn, ln_2, mlp) in enumerate(blocks):
            query, key, value = conv1d(attn.c_attn, norm(ln_1, hidden)).split(width, dim=2)
            query = query.view(1, 1, heads, head_dim).transpose(1, 2)
            keys[i] = torch.cat([keys[i], key.view(1, 1, heads, head_dim).transpose(1, 2)], dim=-2)
            values[i] = torch.cat([values[i], value.view(1, 1, heads, head_dim).transpose(1, 2)], dim=-2)
            cache.layers[i].keys, cache.layers[i].values = keys[i], values[i]
            context = F.scaled_dot_product_attention(query, keys[i], values[i], attn_mask=None, dropout_p=0.0,
                                                     scale=attn.scaling, is_causal=False)
            context = context.reshape(1, -1, 1, head_dim).transpose(1, 2).contiguous()
            hidden = conv1d(attn.c_proj, context.reshape(1, 1, -1).contiguous()) + hidden
            hidden = hidden + conv1d(mlp.c_proj, mlp.act(conv1d(mlp.c_fc, norm(ln_2, hidden))))
        return F.linear(norm(ln_f, hidden), lm_head.weight, lm_head.bias)

    return step
