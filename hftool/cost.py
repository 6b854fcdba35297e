"""Before a long run on a CPU: a rough time estimate from the model size and a short timed matrix product.

Training costs about 6 FLOPs per parameter per token (forward 2, backward 4; Kaplan et al. 2020). The CPU's
throughput is timed on one matrix product of the model's width (about 0.1 s), in the precision the run will use.
It ignores attention and the optimizer, so it underestimates: it is meant to catch GPU-sized recipes (hours or
days on a CPU), not to predict minutes.
"""

from __future__ import annotations

import time

WARN_ABOVE_S = 3600.0
SLOW_CPU_FLOPS = 20e9  # below any multi-core CPU of the last decade: a run short at this speed needs no timing


def matmul_flops_per_s(width: int, dtype) -> float:
    """Best of three timed (2048 x width) @ (width x 4*width) products, in FLOP/s."""
    import torch

    a, b = torch.randn(2048, width, dtype=dtype), torch.randn(width, 4 * width, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 * width * 4 * width / best


def estimated_seconds(parameters: int, tokens: int, flops_per_s: float) -> float:
    return 6.0 * parameters * tokens / flops_per_s


def _config_without_tokenizer(recipe):
    """The recipe's model with its architecture's default vocabulary, for a tokenizer not at hand (a Hub name
    offline): GPT-2's 50,257, BLOOM's 250,880 and BERT's 30,522 are those of the real tokenizers."""
    from hftool.errors import HftoolError
    from hftool.models import config_class

    if recipe.model.init_from:
        return None
    try:
        return config_class(recipe.model.architecture)(**recipe.model.config)
    except (HftoolError, TypeError, ValueError):
        return None


def long_cpu_run_warning(recipe, name: str) -> str | None:
    """A warning when a pretraining recipe started with no accelerator would take over an hour, else None."""
    import torch

    from hftool.environment import on_cpu_only, resolve_mixed_precision
    from hftool.errors import HftoolError
    from hftool.memory import meta_model, recipe_model_config

    train = recipe.train
    if not on_cpu_only() or train.max_steps is None:
        return None
    try:
        config = recipe_model_config(recipe)
    except (HftoolError, OSError, ValueError):
        config = _config_without_tokenizer(recipe)
        if config is None:
            return None  # the run itself reports what is missing
    parameters = sum(p.numel() for p in meta_model(config, torch.float32).parameters())
    tokens = train.max_steps * train.batch_size * train.grad_accum * recipe.data.block_size
    if estimated_seconds(parameters, tokens, SLOW_CPU_FLOPS) <= WARN_ABOVE_S:
        return None
    width = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 256)
    bf16 = resolve_mixed_precision(train.mixed_precision) == "bf16"
    flops = matmul_flops_per_s(width, torch.bfloat16 if bf16 else torch.float32)
    seconds = estimated_seconds(parameters, tokens, flops)
    if seconds <= WARN_ABOVE_S:
        return None
    return (f"warning: {name} on this machine (no GPU): {parameters / 1e6:.0f}M parameters x {tokens / 1e6:.0f}M "
            f"tokens ({train.max_steps} steps) at the {flops / 1e12:.2f} TFLOP/s measured here is at least "
            f"{seconds / 3600:.0f} h; it is sized for a GPU: lower train.max_steps or run it on a GPU machine")
