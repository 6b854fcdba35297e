"""Fused single-token decode steps for GPT-2 and BLOOM: the same tensor operations as transformers' forward.

For small models on a CPU most of a decode step is Python: module calls, mask building, cache objects and
output dataclasses around a few small matrix products. This step calls the same kernels on the same
weights in the same order (``addmm`` for GPT-2's Conv1D, layer norm, SDPA with no mask for one query), so its
logits are bit-identical to ``model(...)``'s; the tests check the logits bit for bit and the tokens against
``model.generate``, and the fast path checks the first step against the forward on every run. Two things
differ in how, not in what, is computed: the keys and values go into buffers allocated once
(:class:`~hftool.generation.fastpath.cache.PreallocatedCache`), and large float32 weights may be multiplied in
row blocks on several threads where that gives the same bits (:mod:`hftool.generation.fastpath.matvec`).
Every operation runs on the kernel PyTorch picks for it by default, as in the forward: a step reads no backend
switch and sets none (``torch.backends.mkldnn.enabled`` is process-wide), so steps may run in any number of
threads at once, and in every dtype the logits are the forward's, bit for bit.
Anything it does not mirror (other architectures or attention backends, cross-attention, BLOOM's
``slow_but_exact`` tensor-parallel split, Accelerate-dispatched weights, training mode) is not for the fast path.
"""

from __future__ import annotations

from collections.abc import Callable

from hftool.generation.fastpath.cache import PreallocatedCache
from hftool.generation.fastpath.matvec import MatVec


class StepMismatch(Exception):
    """The model's cache or modules are not laid out as the step expects (a transformers change)."""


def step_builder(model) -> Callable | None:
    """The builder of ``model``'s fused step, or None where the model is not one the steps mirror.

    Reads transformers' config attributes directly: one that is missing raises ``AttributeError``, which the
    fast path turns into a warning and a fall-back to ``model.generate``.
    """
    if model.training or getattr(model, "hf_device_map", None):
        return None
    config = model.config
    if config.model_type == "gpt2":
        supported = config._attn_implementation == "sdpa" and not config.add_cross_attention
        return gpt2_decode_step if supported else None
    if config.model_type == "bloom":
        return None if config.pretraining_tp > 1 and config.slow_but_exact else bloom_decode_step
    return None


def _check_layers(cache, layers: int) -> None:
    if len(cache.layers) != layers:
        raise StepMismatch(f"the cache has {len(cache.layers)} layers, the model {layers}")


def gpt2_decode_step(model, cache, capacity: int = 0) -> Callable:
    """GPT-2's step ``step(token_ids, position) -> logits``, continuing ``cache`` (a filled ``DynamicCache``,
    extended in place): Conv1D as ``addmm``, SDPA over the cached keys/values, learned positions.
    ``capacity``: the positions the cache will reach, to allocate them once."""
    import torch
    import torch.nn.functional as F

    config = model.config
    _check_layers(cache, config.n_layer)
    transformer = model.transformer
    width, heads = config.n_embd, config.n_head
    head_dim = width // heads
    kv = PreallocatedCache(cache, capacity)
    blocks = [(b.ln_1, b.attn, b.ln_2, b.mlp) for b in transformer.h]
    wte, wpe, ln_f, lm_head = transformer.wte.weight, transformer.wpe.weight, transformer.ln_f, model.lm_head
    convs = [conv for _, attn, _, mlp in blocks for conv in (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)]
    matvec = MatVec([(c.weight, c.bias, False) for c in convs] + [(lm_head.weight, lm_head.bias, True)])

    def conv1d(layer, x):
        return matvec.addmm(layer.bias, x.view(-1, x.size(-1)), layer.weight).view(1, 1, -1)

    def norm(layer, x):
        return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)

    def step(token: torch.Tensor, position: int) -> torch.Tensor:
        hidden = F.embedding(token, wte) + wpe[position]
        for i, (ln_1, attn, ln_2, mlp) in enumerate(blocks):
            query, key, value = conv1d(attn.c_attn, norm(ln_1, hidden)).split(width, dim=2)
            query = query.view(1, 1, heads, head_dim).transpose(1, 2)
            keys, values = kv.append(i, key.view(1, 1, heads, head_dim).transpose(1, 2),
                                     value.view(1, 1, heads, head_dim).transpose(1, 2))
            context = F.scaled_dot_product_attention(query, keys, values, attn_mask=None, dropout_p=0.0,
                                                     scale=attn.scaling, is_causal=False)
            context = context.reshape(1, -1, 1, head_dim).transpose(1, 2).contiguous()
            hidden = conv1d(attn.c_proj, context.reshape(1, 1, -1).contiguous()) + hidden
            hidden = hidden + conv1d(mlp.c_proj, mlp.act(conv1d(mlp.c_fc, norm(ln_2, hidden))))
        return matvec.linear(norm(ln_f, hidden), lm_head.weight, lm_head.bias)

    return step


def bloom_decode_step(model, cache, capacity: int = 0) -> Callable:
    """BLOOM's step: fused QKV, ALiBi bias added by ``baddbmm``, float32 softmax, BLOOM's tanh GELU.

    For one new token and no padding the causal mask is all zeros, and adding zeros changes nothing, so the
    step leaves it out.
    """
    import torch
    import torch.nn.functional as F
    from transformers.models.bloom.modeling_bloom import bloom_gelu_forward

    config = model.config
    _check_layers(cache, config.n_layer)
    transformer = model.transformer
    width, heads = config.hidden_size, config.n_head
    head_dim = width // heads
    post_norm_residual = config.apply_residual_connection_post_layernorm
    kv = PreallocatedCache(cache, capacity)
    embeddings, embeddings_norm = transformer.word_embeddings.weight, transformer.word_embeddings_layernorm
    ln_f, lm_head = transformer.ln_f, model.lm_head
    linears = [layer for block in transformer.h for layer in (block.self_attention.query_key_value,
               block.self_attention.dense, block.mlp.dense_h_to_4h, block.mlp.dense_4h_to_h)]
    matvec = MatVec([(layer.weight, layer.bias, True) for layer in linears + [lm_head]])

    def norm(layer, x):
        return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)

    def linear(layer, x):
        return matvec.linear(x, layer.weight, layer.bias)

    def step(token: torch.Tensor, position: int) -> torch.Tensor:
        hidden = norm(embeddings_norm, F.embedding(token, embeddings))
        mask = torch.ones((1, position + 1), dtype=torch.long, device=token.device)
        alibi = transformer.build_alibi_tensor(mask, heads, dtype=hidden.dtype)
        for i, block in enumerate(transformer.h):
            attention, mlp = block.self_attention, block.mlp
            normed = norm(block.input_layernorm, hidden)
            residual = normed if post_norm_residual else hidden
            fused_qkv = linear(attention.query_key_value, normed).view(1, 1, heads, 3, head_dim)
            query = fused_qkv[..., 0, :].transpose(1, 2).reshape(heads, -1, head_dim)
            keys, values = kv.append(i, fused_qkv[..., 1, :].transpose(1, 2), fused_qkv[..., 2, :].transpose(1, 2))
            key_columns = keys.reshape(heads, -1, head_dim).transpose(-1, -2)
            scores = alibi.baddbmm(batch1=query, batch2=key_columns, beta=attention.beta,
                                   alpha=attention.inv_norm_factor)
            probs = F.softmax(scores.view(1, heads, 1, -1), dim=-1, dtype=torch.float32).to(query.dtype)
            context = torch.bmm(probs.view(heads, 1, -1), values.reshape(heads, -1, head_dim))
            context = context.view(1, heads, 1, head_dim).permute(0, 2, 1, 3).reshape(1, 1, width)
            attended = residual + linear(attention.dense, context)
            normed = norm(block.post_attention_layernorm, attended)
            residual = normed if post_norm_residual else attended
            activated = bloom_gelu_forward(linear(mlp.dense_h_to_4h, normed))
            hidden = residual + linear(mlp.dense_4h_to_h, activated)
        return matvec.linear(norm(ln_f, hidden), lm_head.weight, lm_head.bias)

    return step
