"""The optimizer and learning-rate schedule of a run, from the recipe's ``train:`` section."""

from __future__ import annotations

import torch
from transformers import get_scheduler

from hftool.engine.config import TrainConfig


def adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and normalisation weights, as in BERT and GPT-2 training."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             fused=fused or None)


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Warm-up then ``linear``, ``cosine`` or ``constant`` over ``total_steps`` optimizer steps."""
    return get_scheduler("constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler, optimizer,
                         num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
