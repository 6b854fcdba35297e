"""``hftool pretrain`` with objective ``causal-lm`` (GPT-2, BLOOM): packed blocks, the model, and the
generation settings and sample written at the end."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, set_seed

from hftool.adapters import apply_adapter
from hftool.data.text import Documents, StreamingBlocks, load_documents, pack_documents
from hftool.errors import HftoolError
from hftool.loading import cache_dir, load_model, resolve_model
from hftool.models import build_config, check_vocab_fits
from hftool.runs.artifacts import pretrain_card, write_final_artifacts
from hftool.runs.pretrain_recipe import PretrainJob
from hftool.schemas.generate import SAVED_MODEL_DECODING as SAVED
from hftool.schemas.pretrain import PretrainRecipe
from hftool.tasks.causal_lm import CausalLMTask, fused_head_applies


def setup_causal_lm(recipe: PretrainRecipe, engine, docs: Documents, tokenizer) -> PretrainJob:
    """Data and model for GPT-2/BLOOM pretraining, ready for the engine."""
    data = recipe.data
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
        ref = resolve_model(recipe.model.init_from, "model.init_from")
        engine.print(f"continuing from {ref.name_or_path}")
        model = load_model(AutoModelForCausalLM, ref, recipe.model.init_from, "model.init_from",
                           trust_remote_code=recipe.model.trust_remote_code)
        check_vocab_fits(model, tokenizer, recipe.tokenizer.resize_embeddings)
        model = apply_adapter(model, recipe.adapter, "causal-lm")
    else:
        config = build_config(recipe.model.architecture, recipe.model.config, tokenizer, data.block_size)
        model = AutoModelForCausalLM.from_config(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    engine.print(f"model: {model.config.model_type}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
                 f"parameters ({trainable / 1e6:.2f}M trained)")

    def save(trained, folder, summary, state_dict):
        trained.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            do_sample=SAVED.do_sample, top_k=SAVED.top_k, top_p=SAVED.top_p, max_new_tokens=SAVED.max_new_tokens,
        )
        card = pretrain_card(recipe, summary, "text-generation", engine.batch_size)
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


