"""Causal language modelling (GPT-2, BLOOM): next-token prediction on packed blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hftool.tasks.lm_head_loss import NO_LOGITS, fused_head_applies  # noqa: F401  (fused_head_applies: re-exported)


def causal_lm_loss_sum(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of predicting token t+1 from tokens ≤ t (the shift every causal LM uses).

    The targets are shifted instead of the logits (the last position gets the ignore index), which avoids
    copying the largest tensor of the step.
    """
    targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


class CausalLMTask:
    """Batches of packed blocks; loss over every position but the last; eval loss and perplexity.

    With ``fused_head`` the model returns hidden states only and the vocabulary projection runs inside
    :func:`~hftool.tasks.lm_head_loss.linear_cross_entropy_sum` (same loss, no float32 logits); see
    :func:`fused_head_applies` for when that is possible.
    """

    def __init__(self, eval_blocks: Sequence[np.ndarray] = (), fused_head: bool = False):
        self.eval_blocks = eval_blocks
        self.fused_head = fused_head

    def collate(self, examples: list[np.ndarray], epoch: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(np.stack(examples).astype(np.int64))}

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        rows, length = batch["input_ids"].shape
        return rows * (length - 1)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = batch["input_ids"]
        if not self.fused_head:
            return causal_lm_loss_sum(model(input_ids=input_ids, use_cache=False).logits, input_ids)
        from accelerate.utils import extract_model_from_parallel

        from hftool.tasks.lm_head_loss import linear_cross_entropy_sum

        output = model(input_ids=input_ids, use_cache=False, output_hidden_states=True, logits_to_keep=NO_LOGITS)
        head = extract_model_from_parallel(model).get_output_embeddings()
        targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)
        return linear_cross_entropy_sum(output.hidden_states[-1].flatten(0, 1), head.weight, targets.flatten())

    def evaluate(self, model: torch.nn.Module, engine) -> dict[str, float]:
        if len(self.eval_blocks) == 0:
            return {}
        total = torch.zeros(2, dtype=torch.float64, device=engine.device)
        for batch in engine.eval_batches(self.eval_blocks, self):
            total[0] += self.loss_sum(model, batch).double()
            total[1] += self.count_targets(batch)
        loss_sum, count = engine.reduce_sum(total).tolist()
        loss = loss_sum / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
