"""The decode fast path: greedy search of one prompt through a fused GPT-2/BLOOM step, behind one door.

:func:`greedy_tokens` returns the greedy continuation, or None when the fast path is not for this model; the
caller then runs ``model.generate``. It leans on transformers internals (config attributes, the modules of
GPT-2 and BLOOM, ``DynamicCache`` layers), so everything up to and including the first fused step runs under a
guard: a missing attribute, or a first step whose logits or keys/values are not bit-identical to the model's own
forward for the same token, turns the fast path off for that call with a one-time warning on stderr, never an
exception. Nothing is streamed before that check has passed, so a fall-back repeats no output.

A call changes nothing outside itself: no backend switch, no hook on the model, no module swapped; its cache
is its own. So one model may decode in several threads at once, each thread getting its single-thread tokens.
"""

from __future__ import annotations

import sys

import torch

from hftool.generation.fastpath.steps import StepMismatch, step_builder

_warned: set[str] = set()


def warn_once(reason: str) -> None:
    """One line on stderr the first time a reason comes up in this process."""
    if reason not in _warned:
        _warned.add(reason)
        print(f"warning: fast decode off ({reason}); using model.generate", file=sys.stderr)


def applies(model) -> bool:
    """Whether :func:`greedy_tokens` would try ``model`` (a missing transformers attribute counts as no)."""
    try:
        return step_builder(model) is not None
    except AttributeError:
        return False


def greedy_tokens(model, ids: list[int], max_new_tokens: int, eos_ids: set[int], device,
                  streamer=None) -> list[int] | None:
    """Greedy search of ``ids``: the new token ids (up to and including an end-of-text token), or None.

    None means "not for this model": an architecture or configuration the fused steps do not mirror, or a
    transformers attribute missing or a check failed (warned once). The caller then uses ``model.generate``.
    """
    try:
        build = step_builder(model)
    except AttributeError as exc:
        warn_once(f"transformers changed: {exc}")
        return None
    if build is None:
        return None
    with torch.inference_mode():
        try:
            started = _checked_start(model, build, ids, max_new_tokens, eos_ids, device)
        except Exception as exc:  # the code that mirrors transformers internals no longer matches them
            warn_once(f"{type(exc).__name__}: {exc}")
            return None
        new_ids, logits, step = started
        if streamer is not None:
            streamer.put(torch.tensor([ids]))
            for token in new_ids:
                streamer.put(torch.tensor([token]))
        while logits is not None:
            next_token = logits[:, -1].to(dtype=torch.float32).argmax(dim=-1, keepdim=True)
            token = int(next_token)
            new_ids.append(token)
            if streamer is not None:
                streamer.put(next_token.cpu())
            if token in eos_ids or len(new_ids) == max_new_tokens:
                break
            logits = step(next_token, len(ids) + len(new_ids) - 1)
    if streamer is not None:
        streamer.end()
    return new_ids


def _checked_start(model, build, ids: list[int], max_new_tokens: int, eos_ids: set[int], device):
    """The prompt through the model's forward, the fused step built, and the first step checked.

    Returns the tokens chosen so far, the logits of the next position (None when generation is already done)
    and the step. The first step is also computed by the model's forward on the same cache; its logits and the
    keys/values it appends must be bit-identical to the step's, or ``StepMismatch`` is raised.
    """
    from transformers import DynamicCache

    input_ids = torch.tensor([ids], device=device)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), cache=cache, use_cache=True,
                   logits_to_keep=1).logits
    first = logits[:, -1].to(dtype=torch.float32).argmax(dim=-1, keepdim=True)
    if int(first) in eos_ids or max_new_tokens == 1:
        return [int(first)], None, None
    step = build(model, cache, len(ids) + max_new_tokens)
    mask = torch.ones((1, len(ids) + 1), dtype=input_ids.dtype, device=device)
    expected = model(input_ids=first, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1).logits
    forward_cache = [(layer.keys, layer.values) for layer in cache.layers]
    logits = step(first, len(ids))
    if not torch.equal(logits, expected):
        raise StepMismatch("the first fused step's logits differ from the forward's")
    for (keys, values), layer in zip(forward_cache, cache.layers, strict=True):
        if not (torch.equal(keys, layer.keys) and torch.equal(values, layer.values)):
            raise StepMismatch("the first fused step's keys/values differ from the forward's")
    return [int(first)], logits, step
