"""Where a bfloat16/float16 decode step on a CPU runs with oneDNN off, and the forward made to match it.

For one input row ATen's own kernels beat oneDNN's on some parts of a step and lose on others, per layout:
ATen's matrix-vector kernel (which accumulates in float32) reads an output-major weight (``nn.Linear``) at
about twice oneDNN's rate (a 50,257 x 768 bfloat16 LM head: 3.8 against 8.2 ms on 2 cores), and with its
batched products all of a BLOOM-560m-shaped step but the weight products (mostly the attention over the cache)
takes 5.5 ms against oneDNN's 8.1; but ATen has no
matrix-vector kernel for input-major weights (GPT-2's Conv1D), where its general one was 3-5x slower, and a
prompt of many rows is oneDNN's ground (200 tokens through the BLOOM-560m shape: 0.5 s, against 4.5 s). So each
step names the modules it runs with oneDNN off (BLOOM: every block and the LM head; GPT-2: the LM head), and
:func:`off_inside` makes the model's own forward do the same on those modules when a step is checked against
it bit for bit. Everywhere else, and in float32, the libraries choose as always.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

REDUCED = (torch.bfloat16, torch.float16)


def applies(model) -> bool:
    """Whether ``model``'s steps switch oneDNN off anywhere: weights in bfloat16/float16 on a CPU."""
    parameter = next(model.parameters())
    return parameter.device.type == "cpu" and parameter.dtype in REDUCED


@contextmanager
def off(active: bool) -> Iterator[None]:
    """oneDNN off within, when ``active``; restored after."""
    if not active:
        yield
        return
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


@contextmanager
def off_inside(modules: Iterable[torch.nn.Module], active: bool) -> Iterator[None]:
    """Within it, the model's forward runs each of ``modules`` with oneDNN off (forward hooks, removed after)."""
    if not active:
        yield
        return
    saved: list[bool] = []

    def enter(module, args):
        saved.append(torch.backends.mkldnn.enabled)
        torch.backends.mkldnn.enabled = False

    def leave(module, args, output):
        torch.backends.mkldnn.enabled = saved.pop()

    entry = torch.backends.mkldnn.enabled
    handles = [hook for module in modules for hook in (module.register_forward_pre_hook(enter),
                                                       module.register_forward_hook(leave))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.mkldnn.enabled = entry
