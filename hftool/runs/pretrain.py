"""``hftool pretrain``: from text to a Hugging Face model folder.

The run, top to bottom: check the recipe, claim the output folder, read the documents, obtain the tokenizer,
let the objective build data, model and task (:mod:`~hftool.runs.pretrain_causal_lm` for GPT-2/BLOOM,
:mod:`~hftool.runs.pretrain_bert` for BERT), train with the engine, write the model folder and report.
"""

from __future__ import annotations

from pathlib import Path

from hftool import config as cfgmod
from hftool.data.text import load_documents
from hftool.data.tokenizer_training import train_tokenizer
from hftool.errors import HftoolError
from hftool.loading import ModelRef, load_tokenizer, resolve_model
from hftool.outputs import releases_claims
from hftool.runs.artifacts import check_run_dir, finish_report, prepare_output_dir, save_tokenizer
from hftool.schemas.pretrain import PretrainRecipe


def run_inputs(recipe: PretrainRecipe) -> dict:
    """The local paths a pretraining run reads, by setting: its output folder may not touch them."""
    return {"model.init_from": recipe.model.init_from, "tokenizer.path": recipe.tokenizer.path,
            "data.files": recipe.data.files, "data.validation_files": recipe.data.validation_files}


@releases_claims
def run_pretrain(recipe: PretrainRecipe, resume: bool = False, overwrite: bool = False,
                 strict_resume: bool = False) -> dict:
    """Run a pretraining recipe end to end and return the final metrics (also written to metrics.json)."""
    recipe.validate()
    if recipe.adapter.enabled and (recipe.objective != "causal-lm" or not recipe.model.init_from):
        raise HftoolError(f"adapter.kind={recipe.adapter.kind} adapts a pretrained causal LM: set objective=causal-lm "
                          "and model.init_from (a fresh model trains all its weights), or adapter.kind=none")
    if recipe.adapter.enabled and recipe.tokenizer.resize_embeddings:
        raise HftoolError("tokenizer.resize_embeddings=true adds embedding rows that adapter.kind=lora would never "
                          "train (LoRA freezes the embeddings); use the checkpoint's own tokenizer, or a full run")
    if recipe.objective != "causal-lm" and recipe.data.streaming:
        raise HftoolError(f"data.streaming=true cannot be used with objective={recipe.objective}: pairs draw "
                          "their negatives from any document, so the corpus is held in memory; set "
                          "data.streaming=false (and data.max_documents to cap it)")
    out = Path(recipe.train.output_dir).expanduser()
    recipe_yaml = cfgmod.dump_yaml(recipe, "pretrain")
    check_run_dir(out, recipe_yaml, resume, overwrite, inputs=run_inputs(recipe))
    docs = load_documents(recipe.data, recipe.train.seed)  # bad data is refused before the folder is claimed
    # torch, transformers and accelerate load only once the recipe and data are known to be good (fail fast).
    from hftool.engine.trainer import Engine
    from hftool.runs.pretrain_bert import setup_bert_pretraining
    from hftool.runs.pretrain_causal_lm import setup_causal_lm

    engine = Engine(recipe.train, out)
    if engine.is_main:
        prepare_output_dir(out, recipe_yaml, resume, overwrite, inputs=run_inputs(recipe))
    engine.wait()

    tokenizer = obtain_tokenizer(recipe, engine, out, resume, docs.train)
    setup = setup_causal_lm if recipe.objective == "causal-lm" else setup_bert_pretraining
    job = setup(recipe, engine, docs, tokenizer)

    result = engine.fit(job.model, job.train_data, job.task, resume=resume, strict_resume=strict_resume,
                        tracker_config=cfgmod.to_dict(recipe))
    summary = {"steps": result.steps, "train_loss": result.last_loss, "tokens_per_s": result.tokens_per_s,
               "wall_s": round(result.wall_s, 1), **{f"eval_{k}": v for k, v in result.eval_metrics.items()},
               **job.data_stats}
    if result.interrupted:
        engine.print(f"checkpoint saved in {out / 'checkpoints'}; continue with --resume")
        return summary
    state_dict = engine.accelerator.get_state_dict(job.model)  # every rank: gathers FSDP / ZeRO-3 shards
    if engine.is_main:
        job.finish(engine.unwrap(job.model), out, summary, state_dict)
        finish_report(out, summary, title=f"hftool pretrain ({recipe.objective})",
                      curve_title=f"{recipe.objective} pretraining")
    engine.wait()
    return summary


def obtain_tokenizer(recipe: PretrainRecipe, engine, out: Path, resume: bool, train_docs):
    """The run's tokenizer: the one saved by the run being resumed, a given one, the checkpoint's, or new.

    A new tokenizer is trained on the training documents by the main process and saved in the output
    folder; the other processes then load that folder, so every process uses the same vocabulary.
    """
    tok_cfg = recipe.tokenizer
    if resume and (out / "tokenizer.json").is_file():
        return load_tokenizer(ModelRef(str(out)), str(out), "train.output_dir")
    source = tok_cfg.path or recipe.model.init_from
    if source is not None:
        if tok_cfg.path:
            flag, ref = "tokenizer.path", resolve_model(source, "tokenizer.path", marker="tokenizer_config.json")
        else:
            flag, ref = "model.init_from", resolve_model(source, "model.init_from")
        tokenizer = load_tokenizer(ref, source, flag, recipe.model.trust_remote_code)
        if not getattr(tokenizer, "is_fast", False):
            raise HftoolError(f"{source}: a fast (Rust) tokenizer is needed; this one is slow")
        return tokenizer
    if engine.is_main:
        if not isinstance(train_docs, list):
            raise HftoolError("streaming data needs an existing tokenizer: set tokenizer.path (or train one "
                              "first with 'hftool tokenizer train')")
        engine.print(f"training a {recipe.tokenizer_kind} tokenizer (vocab {recipe.tokenizer_vocab_size}) "
                     f"on {len(train_docs):,} documents")
        save_tokenizer(train_tokenizer(train_docs, recipe.tokenizer_kind, recipe.tokenizer_vocab_size,
                                       tok_cfg.lowercase, tok_cfg.min_frequency), out)
    engine.wait()
    return load_tokenizer(ModelRef(str(out)), str(out), "train.output_dir")
