"""``hftool finetune sft``: read the conversations, give the tokenizer its chat template, load the causal LM,
encode (and pack), train with the engine, and save a folder that ``apply_chat_template``, ``generate`` and
``serve``'s ``/v1/chat/completions`` use as it is."""

from __future__ import annotations

from pathlib import Path

from hftool import config as cfgmod
from hftool.data.sft import Conversation, read_conversations
from hftool.data.splits import SPLIT_FLAGS
from hftool.errors import HftoolError
from hftool.outputs import releases_claims
from hftool.runs.artifacts import (
    FINE_TUNE_SHAPE_FIELDS,
    MODEL_FLAG,
    FineTuneFolder,
    fine_tune_summary,
    model_card,
    training_fact,
)
from hftool.schemas.finetune import SftRecipe

COMMAND = "finetune sft"


def load_split(recipe: SftRecipe, split: str) -> list[Conversation]:
    data = recipe.data
    path = data.train_file if split == "train" else data.validation_file
    if not path:
        return []
    conversations = read_conversations(path, SPLIT_FLAGS[split], data.format)
    limit = data.max_train_examples if split == "train" else data.max_eval_examples
    return conversations[:limit] if limit else conversations


def check_base_exists(recipe: SftRecipe) -> None:
    """A recipe whose base model is made by another command (``model.missing_hint``) names that command when the
    folder is missing, before anything else is read."""
    name = recipe.model.name_or_path
    if recipe.model.missing_hint and not Path(name).expanduser().exists():
        raise HftoolError(f"{MODEL_FLAG} {name}: no such folder; make it first: {recipe.model.missing_hint}")


@releases_claims
def run_finetune_sft(recipe: SftRecipe, resume: bool = False, overwrite: bool = False,
                     strict_resume: bool = False) -> dict:
    """Fine-tune a causal LM on conversations; evaluates held-out completion loss (and answers, where the data
    has references) and saves a chat model folder with ``metrics.json``; returns the summary."""
    recipe.validate()
    check_base_exists(recipe)
    data = recipe.data
    folder = FineTuneFolder.check(recipe, COMMAND, resume, overwrite,
                                  FINE_TUNE_SHAPE_FIELDS + ("data.chat_template",))
    train_conversations = load_split(recipe, "train")
    eval_conversations = load_split(recipe, "validation")

    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, GenerationConfig

    from hftool.adapters import apply_adapter
    from hftool.engine.trainer import Engine
    from hftool.loading import load_config, load_model, load_tokenizer, resolve_model
    from hftool.runs.labelled import check_positions
    from hftool.tasks import sft
    from hftool.tasks.lm_head_loss import fused_head_applies

    ref = resolve_model(recipe.model.name_or_path, MODEL_FLAG)
    model_config = load_config(ref, recipe.model.name_or_path, MODEL_FLAG, recipe.model.trust_remote_code)
    check_positions(model_config, data.max_length, "data.max_length", MODEL_FLAG, recipe.model.name_or_path)
    if data.packing and model_config.model_type not in sft.PACKING_MODELS:
        raise HftoolError(f"data.packing=true: {model_config.model_type} models cannot keep packed conversations "
                          f"apart (supported: {', '.join(sft.PACKING_MODELS)}); set data.packing=false "
                          "(data.group_by_length keeps padding low)")
    tokenizer = load_tokenizer(ref, recipe.model.name_or_path, MODEL_FLAG, recipe.model.trust_remote_code)
    if not tokenizer.is_fast:
        raise HftoolError(f"{MODEL_FLAG} {recipe.model.name_or_path}: hftool needs a fast (Rust) tokenizer to find the "
                          "assistant's tokens by character offsets; save the tokenizer with tokenizer.json")
    added = sft.use_chat_template(tokenizer, data.chat_template)

    engine = Engine(recipe.train, folder.out)
    folder.claim(engine)
    train_items, train_stats = sft.encode(tokenizer, train_conversations, data.max_length, data.train_on_prompt,
                                          data.truncation)
    eval_items, eval_stats = sft.encode(tokenizer, eval_conversations, data.max_length, data.train_on_prompt,
                                        data.truncation)
    engine.print(train_stats.report("training data", data.max_length))
    if eval_conversations:
        engine.print(eval_stats.report("validation data", data.max_length))
    if not train_items:
        raise HftoolError(f"--train-file {data.train_file}: no conversation keeps an answer token within "
                          f"data.max_length={data.max_length}; raise it")
    rows = sft.pack(train_items, data.max_length) if data.packing else train_items
    if data.packing:
        engine.print(f"packed {len(train_items):,} conversations into {len(rows):,} rows of at most "
                     f"{data.max_length} tokens")
    positions = (getattr(model_config, "n_positions", None) or getattr(model_config, "max_position_embeddings", None)
                 or data.max_length + recipe.evaluation.max_new_tokens)
    check = sft.generation_check(tokenizer, eval_conversations, recipe.evaluation.max_generate_examples,
                                 recipe.evaluation.max_new_tokens, positions)
    if check.cut:
        engine.print(f"validation answers: {check.cut} of {len(check.prompts)} prompts cut from the left to leave "
                     f"{recipe.evaluation.max_new_tokens} positions for the answer")

    set_seed(recipe.train.seed)
    model = load_model(AutoModelForCausalLM, ref, recipe.model.name_or_path, MODEL_FLAG, head="causal-lm",
                       trust_remote_code=recipe.model.trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if added:
        engine.print(f"added {', '.join(added)} to the vocabulary for the ChatML chat template")
    model = apply_adapter(model, recipe.adapter, "causal-lm", tokenizer.convert_tokens_to_ids(added))
    if recipe.adapter.enabled:
        trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                            sum(p.numel() for p in model.parameters()))
        engine.print(f"LoRA: {trainable:,} of {total:,} parameters trained ({100 * trainable / total:.2f}%)"
                     f"{', with the embedding rows of ' + ', '.join(added) if added else ''}")
    task = sft.SftTask(tokenizer, data.max_length, eval_items, fused_head_applies(model, engine), check)
    lengths = [len(item["input_ids"]) for item in rows] if data.group_by_length and not data.packing else None
    result = engine.fit(model, rows, task, resume=resume, strict_resume=strict_resume,
                        tracker_config=cfgmod.to_dict(recipe), lengths=lengths)

    counts = {"train_conversations": train_stats.conversations, "train_truncated": train_stats.truncated,
              "train_dropped": train_stats.dropped, "train_tokens": train_stats.tokens,
              "train_target_tokens": train_stats.target_tokens,
              "eval_conversations": eval_stats.conversations, "eval_truncated": eval_stats.truncated}
    summary = fine_tune_summary(result, engine, task.eval_seconds, counts)
    engine.unwrap(model).generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=sft.stop_token_ids(tokenizer),
        pad_token_id=task.pad_token_id, do_sample=False, max_new_tokens=recipe.evaluation.max_new_tokens)

    def answers() -> list[dict] | None:
        return [{"answer": a, "references": list(r)} for a, r in zip(task.last_answers, check.references,
                                                                      strict=True)] if task.last_answers else None

    return folder.finish(engine, model, tokenizer, summary, result.interrupted, answers,
                         lambda: sft_card(recipe, summary, engine.batch_size), "instruction fine-tuning")


def sft_card(recipe: SftRecipe, summary: dict, batch_size: int) -> str:
    """The model card: data, masking, training, and how to chat with the folder."""
    data = recipe.data
    validation = f"`{Path(data.validation_file).name}`" if data.validation_file else "none"
    facts = (f"- Data: train `{Path(data.train_file).name}` (format `{data.format}`), validation {validation}; "
             f"conversations of at most {data.max_length} tokens, "
             f"{'every token' if data.train_on_prompt else 'the assistant tokens only'} trained on"
             f"{', packed' if data.packing else ''}.\n"
             f"{training_fact(recipe, summary, batch_size)}\n"
             "- The chat template is in the tokenizer; `predictions.json` holds the generated validation answers "
             "and their references; the full recipe is in `hftool_recipe.yaml`.")
    usage = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**ids)[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```

```bash
hftool serve --model path/to/this/folder   # then POST /v1/chat/completions
```
"""
    return model_card(f"{recipe.model.name_or_path} fine-tuned on instructions with hftool", "text-generation",
                      ["hftool", "text-generation", "sft", "chat"], facts, summary, usage)
