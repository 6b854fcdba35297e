"""Causal language modelling (GPT-2, BLOOM): next-token prediction on packed blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def causal_lm_loss_sum(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of predicting token t+1 from tokens ≤ t (the shift every causal LM uses).

    The targets are shifted instead of the logits (the last position gets the ignore index), which avoids
    copying the largest tensor of the step.
    """
    targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


_NO_LOGITS = torch.zeros(0, dtype=torch.int64)  # logits_to_keep: project no position in the model's forward
_FUSED_HEAD_MODELS = ("gpt2", "bloom")  # last hidden state -> bias-free linear head, checked by the tests


def fused_head_applies(model: torch.nn.Module, engine) -> bool:
    """Whether the causal-LM loss can take the head out of the model's forward: a known architecture, and
    parameters that are whole outside the forward (not FSDP/DeepSpeed shards) with dynamic shapes allowed."""
    head = model.get_output_embeddings()
    return (model.config.model_type in _FUSED_HEAD_MODELS and isinstance(head, torch.nn.Linear)
            and head.bias is None and not engine.shards_parameters and not engine.static_shapes)


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

        output = model(input_ids=input_ids, use_cache=False, output_hidden_states=True, logits_to_keep=_NO_LOGITS)
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


def setup_causal_lm(recipe, engine, out, resume: bool):
    """Data, tokenizer and model for GPT-2/BLOOM pretraining, ready for the engine."""
    from transformers import AutoModelForCausalLM, set_seed

    from hftool.data.builtin_corpus import cache_dir
    from hftool.data.text import StreamingBlocks, load_documents, pack_documents
    from hftool.errors import HftoolError
    from hftool.models import build_config, check_vocab_fits
    from hftool.tasks.pretrain import PretrainJob, load_pretrained_model, obtain_tokenizer

    data = recipe.data
    docs = load_documents(data, recipe.train.seed)
    tokenizer = obtain_tokenizer(recipe, engine, out, resume, docs.train)
    separator = tokenizer.eos_token_id
    stats: dict = {"data": docs.source}
    with engine.accelerator.main_process_first():
        if data.streaming:
            train_data = StreamingBlocks(lambda: load_documents(data, recipe.train.seed).train, tokenizer,
                                         data.block_size, separator)
        else:
            train_data = pack_documents(docs.train, tokenizer, data.block_size, separator, cache_dir() / "blocks")
            if len(train_data) == 0:
                raise HftoolError(f"{docs.source}: the training text has {train_data.total_tokens} tokens, "
                                  f"fewer than one block of data.block_size={data.block_size}; add text or "
                                  "lower data.block_size")
            stats.update(train_blocks=len(train_data), train_tokens=train_data.total_tokens,
                         dropped_tokens=train_data.dropped_tokens)
            engine.print(f"packed {train_data.total_tokens:,} training tokens into {len(train_data):,} blocks "
                         f"of {data.block_size}; dropped the last {train_data.dropped_tokens} tokens")
        eval_blocks = pack_documents(docs.validation, tokenizer, data.block_size, separator,
                                     cache_dir() / "blocks") if docs.validation else []
    if docs.validation and len(eval_blocks) == 0:
        engine.print("warning: the validation split is shorter than one block; evaluation is skipped")
    stats["eval_blocks"] = len(eval_blocks)

    set_seed(recipe.train.seed)
    if recipe.model.init_from:
        model = load_pretrained_model(recipe, AutoModelForCausalLM, engine)
        check_vocab_fits(model, tokenizer, recipe.tokenizer.resize_embeddings)
    else:
        config = build_config(recipe.model.architecture, recipe.model.config, tokenizer, data.block_size)
        model = AutoModelForCausalLM.from_config(config)
    engine.print(f"model: {model.config.model_type}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
                 "parameters")

    def save(trained, folder, summary, state_dict):
        from transformers import GenerationConfig

        from hftool.tasks.pretrain import write_final_artifacts

        trained.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            do_sample=True, top_k=50, top_p=0.95, max_new_tokens=64,
        )
        card = model_card(recipe, summary, "text-generation", engine.batch_size)
        write_final_artifacts(trained, tokenizer, folder, summary, card, state_dict)
        print_sample(trained, tokenizer, docs.validation[0] if docs.validation else "", recipe.train.seed)

    task = CausalLMTask(eval_blocks, fused_head=fused_head_applies(model, engine))
    return PretrainJob(model=model, train_data=train_data, task=task, data_stats=stats, finish=save)


def print_sample(model, tokenizer, text: str, seed: int, prompt_words: int = 6, new_tokens: int = 48) -> str:
    """Show what the trained model writes after the first words of a held-out document (at least 16 tokens,
    so that a document-ending EOS right after the prompt does not leave the sample empty)."""
    prompt = " ".join(text.split()[:prompt_words]) or (tokenizer.bos_token or "")
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if positions is not None:
        inputs = {k: v[:, -(positions // 2):] for k, v in inputs.items()}
        new_tokens = min(new_tokens, positions - inputs["input_ids"].shape[1])
    torch.manual_seed(seed)
    model.eval()
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=min(16, new_tokens))
    sample = tokenizer.decode(output[0], skip_special_tokens=True)
    print(f"\nsample (prompt: {prompt!r}):\n{sample}\n")
    return sample


def model_card(recipe, summary: dict, pipeline_tag: str, batch_size: int) -> str:
    """A short model card: what was trained on what, the metrics, and how to load it without hftool.

    ``batch_size`` is the engine's per-process batch (resolved from ``train.global_batch_size`` when set)."""
    metrics = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                        for k, v in summary.items())
    shape = recipe.model.init_from or ", ".join(f"{k}={v}" for k, v in recipe.model.config.items()) or "defaults"
    return f"""---
library_name: transformers
pipeline_tag: {pipeline_tag}
tags: [hftool, {recipe.model.architecture}, {recipe.objective}]
---

# {recipe.model.architecture} ({recipe.objective}) trained with hftool

- Objective: `{recipe.objective}`; architecture `{recipe.model.architecture}` ({shape}).
- Data: {recipe.data.describe()}; block size {recipe.data.block_size}.
- Training: {summary.get('steps')} optimizer steps, lr {recipe.train.lr}, batch {batch_size} x
  accumulation {recipe.train.grad_accum}, mixed precision `{recipe.train.mixed_precision}`.
- The full recipe is in `hftool_recipe.yaml`; per-step metrics in `metrics.jsonl`.

| metric | value |
| --- | --- |
{metrics}

```python
from transformers import pipeline
pipe = pipeline("{pipeline_tag}", model="path/to/this/folder")
```
"""
